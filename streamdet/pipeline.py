"""The processing loop: each source's samples become windows, losses, scores, events and messages.

One thread does all of it, source by source, so model calls never contend with each other;
sources only fill their ring buffers.
"""
from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np
import torch

from .artifact import Model
from .bus import Publisher, message
from .config import DetectorConfig
from .events import EventTracker
from .features import StreamingWindows, mel_band_edges
from .ringbuffer import RingBuffer
from .sources import Finished, Notice, SegmentEnd, SegmentStart, Skipped

log = logging.getLogger("streamdet.pipeline")


class BandExplainer:
    """Which frequencies made an event: per-band errors of its windows (signed so that larger means
    more bird-like), summed; reported as the run of mel bands around the peak reaching half of it."""

    def __init__(self, params, sign: float):
        self.edges = mel_band_edges(params)
        self.sign = sign
        self._event, self._sum = None, None

    def add(self, event_id: int | None, band_errors: np.ndarray, hit: bool) -> None:
        if event_id is None:
            return
        if event_id != self._event:
            self._event, self._sum = event_id, np.zeros(len(self.edges))
        if hit:
            self._sum += self.sign * band_errors

    def explain(self, transitions: list[dict]) -> None:
        for t in transitions:
            if t["event_id"] == self._event and self._sum is not None and np.any(self._sum > 0):
                peak = int(np.argmax(self._sum))
                lo = hi = peak
                while lo > 0 and self._sum[lo - 1] >= self._sum[peak] / 2:
                    lo -= 1
                while hi < len(self._sum) - 1 and self._sum[hi + 1] >= self._sum[peak] / 2:
                    hi += 1
                t["band_hz"] = [round(float(self.edges[lo, 0])), round(float(self.edges[hi, 2]))]

RECENT_REPORTS = 20
LATENCY_SAMPLES = 4096


class Channel:
    """One source's path from its ring buffer to the bus."""

    def __init__(self, source, ring: RingBuffer, model: Model, detector: DetectorConfig, publisher: Publisher, batch_windows: int, run_id: str):
        self.source, self.ring, self.model, self.publisher, self.run_id = source, ring, model, publisher, run_id
        self.name = source.name
        self.params = model.features
        self.windows = StreamingWindows(self.params, frontend=model.frontend, device=model.device)
        self.tracker = EventTracker(detector)
        self.scorer = model.scorer()
        self.explainer = BandExplainer(self.params, 1.0 if model.polarity == "high_loss_is_bird" else -1.0)
        self.batch_windows = batch_windows
        self.read_chunk = batch_windows * self.params.hop_frames * self.params.hop_length
        self._queue: list = []  # ("start", seg) | ("windows", seg, starts, windows, read_pos) | ("end", seg)
        self._queued_windows = 0
        self.seq = 0
        self.segment: SegmentStart | None = None
        self.finished = False
        self.started_at = time.monotonic()
        self.samples_scored = 0
        self.files_played = 0
        self.files_skipped = 0
        self.events = 0
        self.reports: deque = deque(maxlen=RECENT_REPORTS)
        self.latencies: deque = deque(maxlen=LATENCY_SAMPLES)
        self.report_pending = False

    # -- reading -----------------------------------------------------------------------------
    def pump(self) -> bool:
        """Handle due markers and frame what has arrived; score once a batch is full or nothing
        more is waiting (so a paced source is scored at once); True if anything was done."""
        did = False
        write_pos = self.ring.write_pos  # before looking at markers: see sources/__init__.py
        markers = self.source.markers
        while markers and markers[0].pos <= self.ring.read_pos:
            self._handle(markers.popleft())
            did = True
        limit = min(write_pos, markers[0].pos) if markers else write_pos
        if limit > self.ring.read_pos:
            start, samples = self.ring.read(min(limit - self.ring.read_pos, self.read_chunk))
            if self.segment is None:
                # Samples outside a segment: a source that announces none starts one implicitly.
                self._begin(SegmentStart(start))
            self.samples_scored += len(samples)
            self._queue_windows(*self.windows.push(samples))
            did = True
        if self._queued_windows >= self.batch_windows or (self._queue and self.ring.write_pos == self.ring.read_pos):
            self._flush()
        return did

    def _begin(self, segment: SegmentStart) -> None:
        self.segment = segment
        self.windows.reset()
        self._queue.append(("start", segment))

    def _queue_windows(self, starts: list[int], windows) -> None:
        if starts:
            self._queue.append(("windows", self.segment, starts, windows, self.ring.read_pos))
            self._queued_windows += len(starts)

    def _handle(self, marker) -> None:
        if isinstance(marker, SegmentStart):
            self._begin(marker)
        elif isinstance(marker, SegmentEnd):
            self._queue_windows(*self.windows.finish())
            self._queue.append(("end", self.segment))
            self.segment = None
        elif isinstance(marker, Skipped):
            self.files_skipped += 1
            self._report("skipped", marker.file, marker.reason, logging.WARNING)
        elif isinstance(marker, Notice):
            self._report("notice", marker.file, marker.message, logging.WARNING)
        elif isinstance(marker, Finished):
            self._flush()
            self.finished = True

    def _report(self, kind: str, file: str, text: str, level: int) -> None:
        log.log(level, "%s: %s: %s", self.name, file, text)
        self.reports.append({"kind": kind, "file": file, "reason": text, "t": round(self.ring.read_pos / self.params.sample_rate, 3)})
        self.report_pending = True

    # -- scoring -----------------------------------------------------------------------------
    def _flush(self) -> None:
        """Score every queued window in one model call, then publish in stream order."""
        queue, self._queue, self._queued_windows = self._queue, [], 0
        batches = [op[3] for op in queue if op[0] == "windows"]
        if batches:
            windows = batches[0] if len(batches) == 1 else torch.cat(batches)
            losses, band_errors = self.model.errors(windows)
        at = 0
        for op in queue:
            if op[0] == "start":
                self.scorer.reset()
            elif op[0] == "end":
                self._publish_events(self.tracker.close(), op[1])
                self.files_played += op[1] is not None and op[1].file is not None
            else:
                n = len(op[2])
                self._publish_windows(op, losses[at : at + n], band_errors[at : at + n])
                at += n

    def _publish_windows(self, op, losses: np.ndarray, band_errors: np.ndarray) -> None:
        _, seg, starts, windows, read_pos = op
        decisions, energies = self.scorer.decide(losses, windows.cpu().numpy() if self.scorer.energy else None)
        scores = self.scorer.score(decisions)
        p = self.params
        sr = p.sample_rate
        for i, (start_frame, loss, score) in enumerate(zip(starts, losses.tolist(), scores.tolist())):
            start_pos = seg.pos + start_frame * p.hop_length
            # A segment shorter than a window ends where it ends: everything up to read_pos had been read.
            end_pos = min(start_pos + p.window_samples, read_pos)
            t_start, t_end = start_pos / sr, end_pos / sr
            body = message(
                "loss", run_id=self.run_id, source=self.name, seq=self.seq,
                t_start=round(t_start, 4), t_end=round(t_end, 4),
                loss=round(loss, 6), score=round(score, 6), anomaly=score >= 0.5,
            )
            if energies is not None:
                body["energy_db"] = round(float(energies[i]), 3)
            if seg.file is not None:
                body["file"] = seg.file
                body["offset"] = round(start_frame * p.hop_length / sr, 4)
            self.publisher.send(f"loss.{self.name}", body)
            self.seq += 1
            arrived = self.ring.arrival_time(end_pos)
            if arrived is not None:
                self.latencies.append(time.monotonic() - arrived)
            transitions = self.tracker.update(t_start, t_end, score)
            self.explainer.explain([t for t in transitions if t["state"] == "end"])
            self.explainer.add(self.tracker.open_id, band_errors[i], score >= self.tracker.config.off_score)
            self.explainer.explain([t for t in transitions if t["state"] == "start"])
            self._publish_events(transitions, seg)

    def _publish_events(self, transitions: list[dict], seg: SegmentStart | None) -> None:
        self.explainer.explain([t for t in transitions if "band_hz" not in t])
        for t in transitions:
            body = message("event", run_id=self.run_id, source=self.name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in t.items()})
            if seg is not None and seg.file is not None:
                body["file"] = seg.file
                body["file_onset"] = round(t["onset"] - seg.pos / self.params.sample_rate, 4)
            self.events += t["state"] == "end"
            log.info("%s: event %d %s at %.2f s%s", self.name, t["event_id"], t["state"], t.get("offset", t["onset"]), f" ({body['file']})" if "file" in body else "")
            self.publisher.send(f"event.{self.name}", body)

    # -- reporting ---------------------------------------------------------------------------
    def status(self) -> dict:
        wall = max(time.monotonic() - self.started_at, 1e-9)
        audio_s = self.samples_scored / self.params.sample_rate
        lat = np.array(self.latencies) * 1000.0 if self.latencies else None
        return {
            "kind": self.source.kind,
            "windows": self.seq,
            "audio_s": round(audio_s, 3),
            "rtf": round(audio_s / wall, 2),
            "dropped_samples": self.ring.overwritten,
            "files_played": self.files_played,
            "files_skipped": self.files_skipped,
            "current_file": getattr(self.source, "current_file", None),
            "events": self.events,
            "latency_ms": None if lat is None else {"p50": round(float(np.percentile(lat, 50)), 3), "p99": round(float(np.percentile(lat, 99)), 3)},
            "reports": list(self.reports),
            "finished": self.finished,
        }
