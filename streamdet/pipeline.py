"""The processing loop: each source's samples become windows, losses, scores, events and messages.

One thread does all of it, source by source, so model calls never contend with each other;
sources only fill their ring buffers.
"""
from __future__ import annotations

import logging
import time
from collections import deque

import numpy as np

from .artifact import Model
from .bus import Publisher, message
from .config import DetectorConfig
from .events import EventTracker
from .features import StreamingWindows
from .ringbuffer import RingBuffer
from .sources import Finished, Notice, SegmentEnd, SegmentStart, Skipped

log = logging.getLogger("streamdet.pipeline")

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
        self.read_chunk = batch_windows * self.params.hop_frames * self.params.hop_length
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
        """Handle due markers and score what has arrived; True if anything was done."""
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
                self.segment = SegmentStart(start)
            self.samples_scored += len(samples)
            self._score(*self.windows.push(samples))
            did = True
        return did

    def _handle(self, marker) -> None:
        if isinstance(marker, SegmentStart):
            self.segment = marker
            self.windows.reset()
        elif isinstance(marker, SegmentEnd):
            self._score(*self.windows.finish())
            self._publish_events(self.tracker.close())
            self.files_played += self.segment is not None and self.segment.file is not None
            self.segment = None
        elif isinstance(marker, Skipped):
            self.files_skipped += 1
            self._report("skipped", marker.file, marker.reason, logging.WARNING)
        elif isinstance(marker, Notice):
            self._report("notice", marker.file, marker.message, logging.WARNING)
        elif isinstance(marker, Finished):
            self.finished = True

    def _report(self, kind: str, file: str, text: str, level: int) -> None:
        log.log(level, "%s: %s: %s", self.name, file, text)
        self.reports.append({"kind": kind, "file": file, "reason": text, "t": round(self.ring.read_pos / self.params.sample_rate, 3)})
        self.report_pending = True

    # -- scoring -----------------------------------------------------------------------------
    def _score(self, starts: list[int], windows) -> None:
        if not starts:
            return
        losses = self.model.losses(windows)
        scores = self.model.calibration.score(losses)
        p, seg = self.params, self.segment
        sr = p.sample_rate
        for start_frame, loss, score in zip(starts, losses.tolist(), scores.tolist()):
            start_pos = seg.pos + start_frame * p.hop_length
            # A segment shorter than a window ends where it ends: everything up to it has been read.
            end_pos = min(start_pos + p.window_samples, self.ring.read_pos)
            t_start, t_end = start_pos / sr, end_pos / sr
            body = message(
                "loss", run_id=self.run_id, source=self.name, seq=self.seq,
                t_start=round(t_start, 4), t_end=round(t_end, 4),
                loss=round(loss, 6), score=round(score, 6), anomaly=score >= 0.5,
            )
            if seg.file is not None:
                body["file"] = seg.file
                body["offset"] = round(start_frame * p.hop_length / sr, 4)
            self.publisher.send(f"loss.{self.name}", body)
            self.seq += 1
            arrived = self.ring.arrival_time(end_pos)
            if arrived is not None:
                self.latencies.append(time.monotonic() - arrived)
            self._publish_events(self.tracker.update(t_start, t_end, score))

    def _publish_events(self, transitions: list[dict]) -> None:
        for t in transitions:
            body = message("event", run_id=self.run_id, source=self.name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in t.items()})
            if self.segment is not None and self.segment.file is not None:
                body["file"] = self.segment.file
                body["file_onset"] = round(t["onset"] - self.segment.pos / self.params.sample_rate, 4)
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
