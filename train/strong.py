"""When, not only whether: window scores against strong labels, in 1-s segments.

NIPS4Bplus (V. Morfi, D. Stowell, H. Pamuła; CC BY 4.0) marks the start and length of every
vocalisation in the development NIPS4B clips.  A clip is cut into 1-s segments from its start; a
segment is bird when a bird vocalisation overlaps it, and left out of the figures when only a
vocalisation the annotators could not assign (`Unknown`) does.  Clips the annotators left out
(`has_annotation_file` False: ambiguous or insects only) are unknown, not empty, and left out.

Two ways a detector says "bird" in a segment, both scored here:
  - windows: the highest score of the windows overlapping it (ranked: segment ROC AUC; at the
    calibrated threshold: precision, recall, F1);
  - events: the daemon's hysteresis (streamdet.detect.events, the settings of a DetectorConfig) run
    over the clip's scores; a segment is called bird when an event overlaps it.
These are the segment-based metrics of sed_eval (Mesaros et al. 2016) at a 1-s resolution, pooled
over all segments of all clips (micro-averaged), counted here in numpy."""
from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from streamdet.config import DetectorConfig
from streamdet.detect.events import EventTracker
from streamdet.detect.scoring import calibrated_score
from train.metrics import roc_auc

SEGMENT_S = 1.0
FOLDER = "nips4bplus"  # beside the folder of the clips it labels
_NUMBER = re.compile(r"nips4b_birds_trainfile(\d+)\.")


@dataclass
class Strong:
    """One clip's vocalisations: (start, end) in seconds, birds and unknowns apart."""

    duration: float
    birds: list[tuple[float, float]]
    unknown: list[tuple[float, float]]

    def segments(self) -> np.ndarray:
        """Per 1-s segment: 1 bird, 0 no bird, -1 left out (only an unknown vocalisation)."""
        n = max(1, math.ceil(self.duration / SEGMENT_S - 0.05))  # a last segment under 50 ms is no segment
        out = np.zeros(n, dtype=np.int8)
        for spans, value in ((self.unknown, -1), (self.birds, 1)):
            for start, end in spans:
                first, last = int(start // SEGMENT_S), min(n - 1, int(math.ceil(end / SEGMENT_S)) - 1)
                out[first : last + 1] = value
        return out


def load_strong(clips_dir: Path) -> dict[str, Strong]:
    """{clip file name: Strong} from `clips_dir`/../nips4bplus/, or {} where it is not there."""
    root = Path(clips_dir).parent / FOLDER
    events, summary = root / "events.csv", root / "file_summary.csv"
    if not (events.is_file() and summary.is_file()):
        return {}
    out = {}
    with summary.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["has_annotation_file"].strip() == "True":
                out[int(row["file_number"])] = Strong(float(row["file_duration_s"]), [], [])
    with events.open(newline="") as f:
        for row in csv.DictReader(f):
            clip = out.get(int(row["file_number"]))
            if clip is None:
                continue
            span = (float(row["start_s"]), float(row["end_s"]))
            if row["taxon"] == "bird":
                clip.birds.append(span)
            elif row["taxon"] == "Unknown":
                clip.unknown.append(span)
    return {f"nips4b_birds_trainfile{n:03d}.flac": s for n, s in out.items()}


class StrongLabels:
    """Strong labels found beside any clip's folder, looked up by the clip's path."""

    def __init__(self):
        self._folders: dict[Path, dict[str, Strong]] = {}

    def of(self, path: Path) -> Strong | None:
        if not _NUMBER.search(Path(path).name):
            return None
        folder = Path(path).parent
        if folder not in self._folders:
            self._folders[folder] = load_strong(folder)
        return self._folders[folder].get(Path(path).name)


# A window is a call's when a bird vocalisation overlaps it by at least this long (about 5 frames).
CALL_OVERLAP_S = 0.05


def overlapping(spans: list[tuple[float, float]], starts_s: np.ndarray, window_s: float, at_least: float) -> np.ndarray:
    """Which windows (starting at `starts_s`, `window_s` long) a span overlaps by more than `at_least` s."""
    starts = np.asarray(starts_s, dtype=np.float64)
    out = np.zeros(len(starts), dtype=bool)
    for a, b in spans:
        out |= np.minimum(starts + window_s, b) - np.maximum(starts, a) > at_least
    return out


def window_choosers(window_s: float) -> tuple:
    """(calls, quiet): for WindowSet.of, the windows of a clip with strong labels that a bird
    vocalisation overlaps, and those no vocalisation overlaps at all (an Unknown one neither: it
    may be a bird); None or nothing for a clip without them."""
    strong = StrongLabels()

    def calls(item, starts_s: np.ndarray) -> np.ndarray | None:
        labels = strong.of(item.path)
        return None if labels is None else overlapping(labels.birds, starts_s, window_s, CALL_OVERLAP_S)

    def quiet(item, starts_s: np.ndarray) -> np.ndarray:
        labels = strong.of(item.path)
        if labels is None:
            return np.zeros(len(starts_s), dtype=bool)
        return ~overlapping(labels.birds + labels.unknown, starts_s, window_s, 0.0)

    return calls, quiet


def window_segment_scores(decisions: np.ndarray, starts_s: np.ndarray, n_segments: int, window_s: float) -> np.ndarray:
    """Each segment's highest window decision among the windows overlapping it (-inf where none does)."""
    out = np.full(n_segments, -np.inf)
    for start, d in zip(np.asarray(starts_s, dtype=np.float64), np.asarray(decisions, dtype=np.float64)):
        end = start + window_s
        first, last = int(start // SEGMENT_S), min(n_segments - 1, int(math.ceil(end / SEGMENT_S - 1e-9)) - 1)
        if first <= last:
            out[first : last + 1] = np.maximum(out[first : last + 1], d)
    return out


def event_spans(scores: np.ndarray, starts_s: np.ndarray, window_s: float, detector: DetectorConfig) -> list[tuple[float, float]]:
    """(onset, offset) of every event the daemon's hysteresis makes of one clip's window scores."""
    tracker, spans = EventTracker(detector), []
    for start, s in zip(np.asarray(starts_s, dtype=np.float64).tolist(), np.asarray(scores, dtype=np.float64).tolist()):
        spans += [(t["onset"], t["offset"]) for t in tracker.update(start, start + window_s, s) if t["state"] == "end"]
    return spans + [(t["onset"], t["offset"]) for t in tracker.close() if t["state"] == "end"]


def event_segments(scores: np.ndarray, starts_s: np.ndarray, n_segments: int, window_s: float, detector: DetectorConfig) -> np.ndarray:
    """Which segments an event of the daemon's hysteresis overlaps, over one clip's window scores."""
    out = np.zeros(n_segments, dtype=bool)
    for onset, offset in event_spans(scores, starts_s, window_s, detector):
        first, last = int(onset // SEGMENT_S), min(n_segments - 1, int(math.ceil(offset / SEGMENT_S - 1e-9)) - 1)
        out[first : last + 1] = True
    return out


def prf(truth: np.ndarray, called: np.ndarray) -> dict:
    tp, fp, fn = int((truth & called).sum()), int((~truth & called).sum()), int((truth & ~called).sum())
    p = tp / (tp + fp) if tp + fp else float("nan")
    r = tp / (tp + fn) if tp + fn else float("nan")
    return {"precision": p, "recall": r, "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else float("nan"), "nobird_called": fp / max(1, int((~truth).sum()))}


def segment_report(clips: list[tuple[Strong, np.ndarray, np.ndarray, float, float]], window_s: float, detector: DetectorConfig | None = None) -> dict | None:
    """Segment figures over clips given as (strong labels, window decisions, window starts in s,
    threshold, scale):
    ROC AUC of the window scores, and precision/recall/F1 of windows at the threshold and of the
    hysteresis events (score = sigmoid((decision - threshold) / scale), as the daemon's)."""
    if not clips:
        return None
    detector = detector or DetectorConfig()
    truth, ranked, by_window, by_event = [], [], [], []
    for strong, decisions, starts, threshold, scale in clips:
        labels = strong.segments()
        n = len(labels)
        seg = window_segment_scores(decisions, starts, n, window_s)
        events = event_segments(calibrated_score(decisions, threshold, scale), starts, n, window_s, detector)
        keep = (labels >= 0) & np.isfinite(seg)
        truth.append(labels[keep] == 1)
        ranked.append(seg[keep])  # pooled as they are, as clip decisions are (cross_val_predict)
        by_window.append(seg[keep] >= threshold)
        by_event.append(events[keep])
    truth_a = np.concatenate(truth)
    return {
        "clips": len(clips), "segments": int(len(truth_a)), "bird_segments": int(truth_a.sum()),
        "auc": roc_auc(truth_a, np.concatenate(ranked)),
        "windows": prf(truth_a, np.concatenate(by_window)),
        "events": prf(truth_a, np.concatenate(by_event)),
    }


# The event settings tried: the calibrated score's on and off levels (0.5 is the threshold), the
# gap merged across, and the shortest event announced (one window spans 1 s).
EVENT_GRID = {"on_score": (0.3, 0.4, 0.5, 0.6, 0.7), "off_score": (0.2, 0.3, 0.35, 0.4, 0.5), "merge_gap_s": (0.0, 0.5, 1.0, 2.0), "min_event_s": (1.0, 1.5)}


def choose_events(rows: list[dict], window_s: float, strong: StrongLabels | None = None) -> list[dict]:
    """Every setting of EVENT_GRID (off at most on) scored on out-of-fold window decisions of clips
    with strong labels (crossval's `strong_windows`), best event F1 first."""
    import itertools

    strong = strong or StrongLabels()
    clips = [(s, np.asarray(r["decisions"]), np.asarray(r["starts"]), r["threshold"], r["scale"]) for r in rows if (s := strong.of(Path(r["file"]))) is not None]
    out = []
    for on, off, gap, shortest in itertools.product(*EVENT_GRID.values()):
        if off > on:
            continue
        setting = {"on_score": on, "off_score": off, "merge_gap_s": gap, "min_event_s": shortest}
        report = segment_report(clips, window_s, DetectorConfig(**setting))
        out.append({**setting, **report["events"]})
    return sorted(out, key=lambda r: -r["f1"])
