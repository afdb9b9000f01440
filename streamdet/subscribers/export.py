"""Detections for archive work: Raven selection tables, Audacity labels and one CSV, from the
messages of a run (a `listen --jsonl` recording, or the bus itself).

Per replayed file, times are relative to the file (`file_onset`), as Raven and Audacity open it.
Every file that was scored gets its tables, empty ones included, so a scanned file with no
detection is told apart from one never scanned.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Iterable, Iterator

from streamdet.bus.messages import UnreadableMessage, body_problem

RAVEN_COLUMNS = ("Selection", "View", "Channel", "Begin Time (s)", "End Time (s)", "Low Freq (Hz)", "High Freq (Hz)", "Peak Score", "Event ID", "Review")
CSV_COLUMNS = ("source", "file", "begin_s", "end_s", "low_hz", "high_hz", "peak_score", "event_id", "review")
LABEL = "bird"


class ExportError(Exception):
    pass


@dataclass(frozen=True)
class Detection:
    source: str
    file: str | None  # None for a live source: times are then stream seconds
    begin_s: float
    end_s: float
    low_hz: float | None
    high_hz: float | None
    peak_score: float
    event_id: int
    review: str | None = None  # the operator's answer on the page (bird, not_bird), read from the clip's sidecar with --clips


def detection(msg: dict) -> Detection:
    """An `end` event as a detection: its span in the file, or in the stream for a live source."""
    band = msg.get("band_hz") or [None, None]
    begin = msg["file_onset"] if "file" in msg else msg["onset"]
    return Detection(msg["source"], msg.get("file"), begin, begin + msg["duration"], band[0], band[1], msg["peak_score"], msg["event_id"])


def reviewed(d: Detection, clip, clips: Path | None) -> Detection:
    """`d` with the review stored in its clip's sidecar under `clips` (the daemon's recording
    directory), if any.  The clip's name comes from a message: only `<source>/<name>` as the
    recorder names clips is looked up, inside `clips`."""
    from dataclasses import replace

    from streamdet.service.recorder import CLIP_NAME, read_sidecar, review_of

    if clips is None or not isinstance(clip, str):
        return d
    parts = PurePosixPath(clip.replace("\\", "/")).parts[-2:]
    if len(parts) != 2 or not CLIP_NAME.fullmatch(parts[1]) or not parts[1].startswith(parts[0] + "_"):
        return d
    return replace(d, review=review_of(read_sidecar((clips / parts[0] / parts[1]).with_suffix(".json"))))


def read_jsonl(path: Path) -> Iterator[tuple[str, dict | UnreadableMessage]]:
    """The (topic, message) pairs of a `listen --jsonl` recording; a line that is not one is
    passed on as an UnreadableMessage naming its number (counted, never fatal)."""
    try:
        lines = path.open(encoding="utf-8")
    except OSError as exc:
        raise ExportError(f"{path}: cannot read ({exc.strerror})") from None
    with lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                topic, message = record["topic"], record["message"]
                if not isinstance(topic, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError, RecursionError):
                yield "", UnreadableMessage(f"{path}, line {number}: expected a JSON object with 'topic' and 'message', as `streamdet listen --jsonl` writes")
                continue
            problem = body_problem(message)
            yield (topic, message) if problem is None else ("", UnreadableMessage(f"{path}, line {number}: {problem}"))


class Collector:
    """Folds messages into the files scored and the detections found; a message it cannot read
    (a field missing or of the wrong type) is counted and the first one described, never fatal."""

    def __init__(self, clips: Path | None = None):
        self.clips = clips  # the daemon's recording directory: reviews are read from its sidecars
        self.files: dict[tuple[str, str], None] = {}  # (source, file) in the order first scored
        self.detections: list[Detection] = []
        self.unreadable = 0
        self.first_unreadable: str | None = None
        # Per source, the first window's seq seen (0 unless export joined after the stream began):
        # what came before it is not in the tables, which must say so rather than read as "no bird".
        self.first_seq: dict[str, int] = {}

    def add(self, msg: dict | UnreadableMessage) -> None:
        try:
            if isinstance(msg, UnreadableMessage):
                raise msg
            self._add(msg)
        except UnreadableMessage as exc:
            self._unreadable(str(exc))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self._unreadable(f"a {str(msg.get('type', '?'))[:20]} message without a usable {exc}")

    def _unreadable(self, reason: str) -> None:
        self.unreadable += 1
        if self.first_unreadable is None:
            self.first_unreadable = reason

    def _add(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "loss":
            self.first_seq.setdefault(msg["source"], msg["seq"])
        if kind == "loss" and "file" in msg:
            self.files.setdefault((msg["source"], msg["file"]))
        elif kind == "event" and msg.get("state") == "end":
            self.detections.append(reviewed(detection(msg), msg.get("clip"), self.clips))
            if "file" in msg:
                self.files.setdefault((msg["source"], msg["file"]))


def _n(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def raven_table(detections: list[Detection]) -> str:
    """A Raven Pro selection table: tab-separated, one selection per row, in the spectrogram view."""
    rows = ["\t".join(RAVEN_COLUMNS)]
    for i, d in enumerate(sorted(detections, key=lambda d: d.begin_s), 1):
        rows.append("\t".join([str(i), "Spectrogram 1", "1", _n(d.begin_s), _n(d.end_s), _n(d.low_hz), _n(d.high_hz), f"{d.peak_score:.4f}", str(d.event_id), d.review or ""]))
    return "\n".join(rows) + "\n"


def audacity_labels(detections: list[Detection]) -> str:
    """Audacity region labels (`start<TAB>end<TAB>label`), each followed by its frequency line
    (`\\<TAB>low<TAB>high`, Audacity's extended format) when the band is known."""
    lines = []
    for d in sorted(detections, key=lambda d: d.begin_s):
        lines.append(f"{d.begin_s:.6f}\t{d.end_s:.6f}\t{LABEL} {d.peak_score:.2f}")
        if d.low_hz is not None:
            lines.append(f"\\\t{d.low_hz:.6f}\t{d.high_hz:.6f}")
    return "\n".join(lines) + ("\n" if lines else "")


def write_tables(collector: Collector, out: Path) -> dict:
    """Per scored file `<file>.streamdet.selections.txt` and `.labels.txt` under `out` (under
    `out/<source>/` when several sources played), and `streamdet.detections.csv` for the run."""
    sources = {s for s, _ in collector.files} | {d.source for d in collector.detections}
    by_file: dict[tuple[str, str], list[Detection]] = {key: [] for key in collector.files}
    for d in collector.detections:
        if d.file is not None:
            by_file.setdefault((d.source, d.file), []).append(d)
    written, refused = [], []
    for (source, file), found in by_file.items():
        relative = safe_relative(source, file, len(sources) > 1)
        if relative is None:
            refused.append(f"{source}: {file}"[:200])
            continue
        base = out / relative
        base.parent.mkdir(parents=True, exist_ok=True)
        raven, labels = base.parent / f"{base.name}.streamdet.selections.txt", base.parent / f"{base.name}.streamdet.labels.txt"
        raven.write_text(raven_table(found))
        labels.write_text(audacity_labels(found))
        written += [raven, labels]
    out.mkdir(parents=True, exist_ok=True)
    table = out / "streamdet.detections.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for d in sorted(collector.detections, key=lambda d: (d.source, d.file or "", d.begin_s)):
            writer.writerow([d.source, d.file or "", _n(d.begin_s), _n(d.end_s), _n(d.low_hz), _n(d.high_hz), f"{d.peak_score:.4f}", d.event_id, d.review or ""])
    return {"files": len(by_file) - len(refused), "detections": len(collector.detections), "tables": written, "csv": table, "refused": refused}


def safe_relative(source: str, file: str, per_source: bool) -> Path | None:
    """Where a file's tables go under --out: its path as the daemon named it, relative and inside;
    None for a name that would leave --out (absolute, '..', a drive) or cannot be a file name.
    The names come from messages, which anyone who can publish on the bus can write."""
    parts = ([source] if per_source else []) + list(PurePosixPath(file).parts)
    if PurePosixPath(file).is_absolute() or PureWindowsPath(file).drive or PureWindowsPath(file).root:
        return None
    if not parts or any(p in ("", ".", "..") or "/" in p or "\\" in p or "\0" in p for p in parts):
        return None
    return Path(*parts)


def export(messages: Iterable[tuple[str, dict]], out: Path, clips: Path | None = None) -> dict:
    collector = Collector(clips)
    for _, msg in messages:
        collector.add(msg)
    missed = {source: seq for source, seq in collector.first_seq.items() if seq > 0}
    return {**write_tables(collector, out), "unreadable": collector.unreadable, "first_unreadable": collector.first_unreadable, "joined_late": missed}


def from_bus(endpoint: str, timeout_s: float | None = None, curve=None, ready=None) -> Iterator[tuple[str, dict]]:
    """Messages from a daemon until every daemon seen has finished (or `timeout_s` passes with none)."""
    from streamdet.bus.sockets import Subscriber
    from streamdet.subscribers.streamview import StreamView

    view = StreamView()
    subscriber = Subscriber(endpoint, curve=curve)  # one subscription, so `--wait-subscribers 1` waits for it
    if ready:
        ready()
    try:
        while (got := subscriber.receive_any(timeout_s)) is not None:
            topic, msg = got
            yield topic, msg
            if isinstance(msg, dict):
                view.update(topic, msg)
                if msg.get("type") == "status" and view.all_final():
                    return
    finally:
        subscriber.close()
