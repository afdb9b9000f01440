"""The processing loop: each source's samples become windows, losses, scores, events and messages.

One thread does all of it, source by source, so model calls never contend with each other;
sources only fill their ring buffers.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import NamedTuple

import numpy as np
import torch

from .artifact import Model
from .audio import StreamingResampler
from .bus import Publisher, message
from .config import DetectorConfig, RecordingConfig
from .events import EventTracker
from .features import StreamingWindows, mel_band_edges
from .recorder import ClipRecorder
from .ringbuffer import RingBuffer
from .sources import Finished, Gap, Notice, SegmentEnd, SegmentStart, Skipped, SourceDown, SourceUp

log = logging.getLogger("streamdet.pipeline")

RECENT_REPORTS = 20
LATENCY_SAMPLES = 4096


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


class _Start(NamedTuple):
    segment: SegmentStart


class _Windows(NamedTuple):
    """Windows framed, waiting for the next model call."""

    segment: SegmentStart
    t0: float  # stream time of the segment's first sample
    starts: list  # first frame of each window in the segment
    windows: torch.Tensor
    read_time: float  # stream time up to which audio had been read: no window ends after it
    read_pos: int
    silent: np.ndarray


class _End(NamedTuple):
    segment: SegmentStart
    end_pos: int


class _Notice(NamedTuple):
    """A gap, source_down or source_up message, published in its place in the stream."""

    kind: str
    body: dict


class Channel:
    """One source's path from its ring buffer to the bus."""

    def __init__(self, source, ring: RingBuffer, model: Model, detector: DetectorConfig, publisher: Publisher, batch_windows: int, run_id: str, recording: RecordingConfig | None = None):
        self.source, self.ring, self.publisher, self.run_id = source, ring, publisher, run_id
        self.name = source.name
        self.batch_windows = batch_windows
        self.rate = source.rate  # of the ring: the model's for replay, the device's for a microphone
        self.tracker = EventTracker(detector)
        self.recorder: ClipRecorder | None = None
        self._use_model(model, detector, recording or RecordingConfig())
        self.offset = 0  # audio known to be lost, in ring samples, so stream time keeps to the clock
        self._expected: int | None = None  # where the next read should start
        self._queue: list = []  # operations in stream order, run by _flush with one model call
        self._queued_windows = 0
        self.gaps = 0
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

    def _use_model(self, model: Model, detector: DetectorConfig, recording: RecordingConfig) -> None:
        self.model = model
        self.params = model.features
        self.windows = StreamingWindows(self.params, frontend=model.frontend, device=model.device)
        self.scorer = model.scorer()
        self.explainer = BandExplainer(self.params, 1.0 if model.polarity == "high_loss_is_bird" else -1.0)
        self.resampler = StreamingResampler(self.rate, self.params.sample_rate)
        self.read_chunk = int(self.batch_windows * self.params.hop_seconds * self.rate)
        self.flush_windows = self.batch_windows
        self.tracker.config = detector
        if not recording.enabled:
            self.recorder_finish()
            self.recorder = None
        elif self.recorder is None:
            self.recorder = ClipRecorder(recording, self.name, self.ring, self.rate)
        else:
            self.recorder.configure(recording)  # clips still waiting for their post-roll keep waiting
        # A replay waits for room in its ring; keep half of it behind the reader for clips' pre-roll.
        self.ring.keep_behind = self.ring.capacity // 2 if recording.enabled else 0
        if recording.enabled:  # small reads and batches, so that what a clip needs is still behind the reader
            self.read_chunk = min(self.read_chunk, self.ring.capacity // 8)
            self.flush_windows = max(1, min(self.batch_windows, int(self.read_chunk / (self.params.hop_seconds * self.rate))))

    def replace_model(self, model: Model, detector: DetectorConfig, recording: RecordingConfig) -> None:
        """SIGHUP: finish the current segment with the old model, go on with the new one."""
        current = self.segment
        self._end_segment()
        self._flush()
        self._use_model(model, detector, recording)
        if current is not None:
            # The same file goes on: a new segment that knows how far into the file it starts.
            pos = self._fed_pos
            into = current.info.get("file_offset_s", 0.0) + (pos - current.pos) / self.rate
            self._begin(SegmentStart(pos, current.file, {**current.info, "file_offset_s": into}))

    def recorder_finish(self) -> None:
        if self.recorder is not None:
            self.recorder.poll(final=True)
            self._take_recorder_errors()

    def _take_recorder_errors(self) -> None:
        while self.recorder.errors:
            self._report("recording", self.name, self.recorder.errors.pop(0), logging.ERROR, log_it=False)

    # -- reading -----------------------------------------------------------------------------
    def ring_pos(self, t: float) -> int:
        return int(round(t * self.rate)) - self.offset

    def stream_time(self, pos: int) -> float:
        return (pos + self.offset) / self.rate

    @property
    def _fed_pos(self) -> int:
        """Where the audio fed to the current segment ends (a read that found a gap has moved past it)."""
        return self._expected if self._expected is not None else self.ring.read_pos

    def pump(self) -> bool:
        """Handle due markers and frame what has arrived; score once a batch is full or nothing
        more is waiting (so a paced source is scored at once); True if anything was done."""
        did = False
        self.source.poll()
        write_pos = self.ring.write_pos  # before looking at markers: see sources/__init__.py
        markers = self.source.markers
        while markers and markers[0].pos <= self.ring.read_pos:
            self._handle(markers.popleft())
            did = True
        limit = min(write_pos, markers[0].pos) if markers else write_pos
        if limit > self.ring.read_pos:
            start, samples = self.ring.read(min(limit - self.ring.read_pos, self.read_chunk))
            if self._expected is not None and start != self._expected:
                # The ring was lapped: the source overwrote audio we had not read yet.
                self._gap(self._expected, start - self._expected, "overrun")
            self._expected = start + len(samples)
            if self.segment is None:
                # Samples outside a segment: a source that announces none starts one implicitly.
                self._begin(SegmentStart(start))
            self.samples_scored += len(samples)
            self._frame(self.resampler.process(samples))
            did = True
        if self._queued_windows >= self.flush_windows or (self._queue and self.ring.write_pos == self.ring.read_pos):
            self._flush()
        if self.recorder is not None:
            self.recorder.poll()
            self._take_recorder_errors()
            self._hold_for_clips()
        return did

    def _hold_for_clips(self) -> None:
        """A waiting writer (replay) must not overwrite audio a planned clip still needs; at most
        the ring less a few reads is held, so the writer can always go on."""
        oldest = self.recorder.oldest_needed()
        need = self.ring.read_pos - oldest if oldest is not None else 0
        self.ring.keep_behind = max(self.ring.capacity // 2, min(need, self.ring.capacity - 2 * self.read_chunk))

    def _begin(self, segment: SegmentStart) -> None:
        self.segment = segment
        self.segment_t0 = self.stream_time(segment.pos)
        self.windows.reset()
        self.resampler.reset()
        self._queue.append(_Start(segment))

    def _frame(self, samples: np.ndarray, final: bool = False) -> None:
        starts, windows = self.windows.push(samples) if not final else self.windows.finish()
        if starts:
            read_pos = self._fed_pos
            self._queue.append(_Windows(self.segment, self.segment_t0, starts, windows, self.stream_time(read_pos), read_pos, self.windows.silent))
            self._queued_windows += len(starts)

    def _end_segment(self) -> None:
        if self.segment is None:
            return
        self._frame(self.resampler.flush())
        self._frame(np.zeros(0, np.float32), final=True)
        self._queue.append(_End(self.segment, self._fed_pos))
        self.segment = None

    def _gap(self, pos: int, samples: int | None, reason: str) -> None:
        """Audio is missing at `pos`: close the segment, so no window straddles it, and say so."""
        self._end_segment()
        self.gaps += 1
        t = self.stream_time(pos)
        self._queue.append(_Notice("gap", {"t": round(t, 4), "samples": samples, "duration_s": None if samples is None else round(samples / self.rate, 4), "reason": reason}))
        if reason == "source_down" and samples:
            self.offset += samples  # never written to the ring: stream time jumps over it

    def _handle(self, marker) -> None:
        if isinstance(marker, SegmentStart):
            self._end_segment()
            self._begin(marker)
        elif isinstance(marker, SegmentEnd):
            self._end_segment()
        elif isinstance(marker, Gap):
            self._gap(marker.pos, marker.samples, marker.reason)
        elif isinstance(marker, SourceDown):
            self._end_segment()
            self._queue.append(_Notice("source_down", {"t": round(self.stream_time(marker.pos), 4), "reason": marker.reason}))
        elif isinstance(marker, SourceUp):
            self._queue.append(_Notice("source_up", {"t": round(self.stream_time(marker.pos), 4)}))
        elif isinstance(marker, Skipped):
            self.files_skipped += 1
            self._report("skipped", marker.file, marker.reason, logging.WARNING)
        elif isinstance(marker, Notice):
            self._report("notice", marker.file, marker.message, logging.WARNING)
        elif isinstance(marker, Finished):
            self._end_segment()
            self._flush()
            self.finished = True

    def _report(self, kind: str, file: str, text: str, level: int, log_it: bool = True) -> None:
        if log_it:
            log.log(level, "%s: %s: %s", self.name, file, text)
        self.reports.append({"kind": kind, "file": file, "reason": text, "t": round(self.stream_time(self.ring.read_pos), 3)})
        self.report_pending = True

    # -- scoring -----------------------------------------------------------------------------
    def _flush(self) -> None:
        """Score every queued window in one model call, then publish in stream order."""
        queue, self._queue, self._queued_windows = self._queue, [], 0
        batches = [op.windows for op in queue if isinstance(op, _Windows)]
        if batches:
            windows = batches[0] if len(batches) == 1 else torch.cat(batches)
            losses, band_errors = self.model.errors(windows)
        at = 0
        for op in queue:
            if isinstance(op, _Start):
                self.scorer.reset()
            elif isinstance(op, _End):
                self._publish_events(self.tracker.close(), op.segment, segment_end=op.end_pos)
                self.files_played += op.segment is not None and op.segment.file is not None
            elif isinstance(op, _Windows):
                n = len(op.starts)
                self._publish_windows(op, losses[at : at + n], band_errors[at : at + n])
                at += n
            else:
                if op.kind == "gap":
                    b = op.body
                    log.warning("%s: gap at %.2f s: %s (%s)", self.name, b["t"], "unknown length" if b["samples"] is None else f"{b['duration_s']:.3f} s", b["reason"])
                topic = "gap" if op.kind == "gap" else "source"
                self.publisher.send(f"{topic}.{self.name}", message(op.kind, run_id=self.run_id, source=self.name, seq_next=self.seq, **op.body))

    def _publish_windows(self, op: _Windows, losses: np.ndarray, band_errors: np.ndarray) -> None:
        seg, t0, starts, windows, read_time, silent = op.segment, op.t0, op.starts, op.windows, op.read_time, op.silent
        invalid = ~np.isfinite(losses)
        if invalid.any():  # audio far beyond full scale, or a model that misbehaves: never a crash, never a bird
            losses, band_errors = np.where(invalid, 0.0, losses), np.where(invalid[:, None], 0.0, band_errors)
            silent = silent | invalid
            self._report("invalid", seg.file if seg is not None and seg.file else self.name, f"{int(invalid.sum())} window(s) gave a non-finite loss; published with loss 0 and score 0", logging.WARNING)
        decisions, energies = self.scorer.decide(losses, windows.cpu().numpy() if self.scorer.energy else None, silent)
        scores = self.scorer.score(decisions)
        p = self.params
        sr = p.sample_rate
        arrived = self.ring.arrival_time(op.read_pos)  # when the audio completing these windows came in
        for i, (start_frame, loss, score) in enumerate(zip(starts, losses.tolist(), scores.tolist())):
            t_start = t0 + start_frame * p.hop_length / sr
            # A segment shorter than a window ends where it ends: nothing after read_time had been read.
            t_end = min(t_start + p.window_seconds, read_time)
            body = message(
                "loss", run_id=self.run_id, source=self.name, seq=self.seq,
                t_start=round(t_start, 4), t_end=round(t_end, 4),
                loss=round(loss, 6), score=round(score, 6), anomaly=score >= 0.5,
            )
            if silent[i]:
                body["silent"] = True  # digital silence: a muted or dead input, scored 0
            elif energies is not None:
                body["energy_db"] = round(float(energies[i]), 3)
            if seg.file is not None:
                body["file"] = seg.file
                body["offset"] = round(seg.info.get("file_offset_s", 0.0) + start_frame * p.hop_length / sr, 4)
            self.publisher.send(f"loss.{self.name}", body)
            self.seq += 1
            if arrived is not None:
                self.latencies.append(time.monotonic() - arrived)
            transitions = self.tracker.update(t_start, t_end, score)
            self.explainer.explain([t for t in transitions if t["state"] == "end"])
            self.explainer.add(self.tracker.open_id, band_errors[i], score >= self.tracker.config.off_score)
            self.explainer.explain([t for t in transitions if t["state"] == "start"])
            self._publish_events(transitions, seg)

    def _publish_events(self, transitions: list[dict], seg: SegmentStart | None, segment_end: int | None = None) -> None:
        self.explainer.explain([t for t in transitions if "band_hz" not in t])
        for t in transitions:
            body = message("event", run_id=self.run_id, source=self.name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in t.items()})
            if seg is not None and seg.file is not None:
                body["file"] = seg.file
                body["file_onset"] = round(t["onset"] - self.stream_time(seg.pos) + seg.info.get("file_offset_s", 0.0), 4)
            if t["state"] == "end" and self.recorder is not None and seg is not None:
                body["clip"] = str(self._schedule_clip(t, body, seg, segment_end))
            self.events += t["state"] == "end"
            log.info("%s: event %d %s at %.2f s%s", self.name, t["event_id"], t["state"], t.get("offset", t["onset"]), f" ({body['file']})" if "file" in body else "")
            self.publisher.send(f"event.{self.name}", body)

    def _schedule_clip(self, t: dict, body: dict, seg: SegmentStart, segment_end: int | None):
        sidecar = {
            "source": self.name, "run_id": self.run_id, "stream_time_of_pos0": self.stream_time(0),
            **{k: body[k] for k in ("event_id", "onset", "offset", "duration", "peak_score", "band_hz", "file", "file_onset") if k in body},
            "model": self.model.describe(),
        }
        source = self.source.describe()
        if "stream_start_wall" in source:
            start_wall = source["stream_start_wall"]
            sidecar["onset_wall"] = None if start_wall is None else round(start_wall + t["onset"], 3)
        return self.recorder.schedule(t, self.ring_pos(t["onset"]), self.ring_pos(t["offset"]), seg.pos, segment_end, sidecar)

    # -- reporting ---------------------------------------------------------------------------
    def status(self) -> dict:
        wall = max(time.monotonic() - self.started_at, 1e-9)
        audio_s = self.samples_scored / self.rate
        lat = np.array(self.latencies) * 1000.0 if self.latencies else None
        return {
            "kind": self.source.kind,
            "windows": self.seq,
            "audio_s": round(audio_s, 3),
            "rtf": round(audio_s / wall, 2),
            "dropped_samples": self.ring.overwritten,
            "gaps": self.gaps,
            "files_played": self.files_played,
            "files_skipped": self.files_skipped,
            "current_file": getattr(self.source, "current_file", None),
            "events": self.events,
            "latency_ms": None if lat is None else {"p50": round(float(np.percentile(lat, 50)), 3), "p99": round(float(np.percentile(lat, 99)), 3)},
            "reports": list(self.reports),
            "finished": self.finished,
            **({"recording": self.recorder.describe()} if self.recorder is not None else {}),
            **self.source.describe(),
        }
