"""One source's path to the bus: reader -> detector -> publisher, with the counters for status.

One thread runs every channel's framing and publishing; with a `scoring` executor (the daemon's:
one thread for all channels, so model calls never contend with each other) a batch's model call
runs there while this thread frames the next batch, which puts a second core to work at max pace
(torch releases the GIL in its kernels).  A channel has at most one batch in flight and frames at
most one batch ahead, and publishes every operation in stream order once its batch is scored.
Sources only fill their ring buffers.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Executor, Future
from typing import NamedTuple

import numpy as np
import torch

from streamdet.bus import messages
from streamdet.bus.sockets import Publisher
from streamdet.capture.markers import SegmentStart
from streamdet.capture.ringbuffer import RingBuffer
from streamdet.capture.source import Source
from streamdet.config import DetectorConfig, RecordingConfig
from streamdet.detect.artifact import Model
from streamdet.detect.detector import Detector
from streamdet.service.clips import Clips
from streamdet.service.histogram import Histogram
from streamdet.service.reader import Done, Down, End, Missing, Report, Start, StreamReader, Up, Windows, file_time

log = logging.getLogger(__name__)

RECENT_REPORTS = 20
LIVE_WAKE_EARLY_S = 0.1  # before a live window is due: audio blocks and their jitter are shorter
LATENCY_SAMPLES = 4096


class SourceStats(NamedTuple):
    windows: int
    events: int
    gaps: int
    dropped_samples: int
    files_played: int
    files_skipped: int
    audio_s: float
    wall_s: float
    up: bool  # delivering audio: not finished, not a microphone that is away
    finished: bool
    latency_buckets: list  # the latency histogram's cumulative counts, for metrics
    latency_sum: float

    @property
    def rtf(self) -> float:
        """Real-time factor: seconds of audio scored per wall-clock second since the source started."""
        return self.audio_s / max(self.wall_s, 1e-9)


def new_frames(window: torch.Tensor, start_frame: int, published_upto: int) -> tuple[int, np.ndarray] | None:
    """(first frame, frames) of a window [W, M] starting at `start_frame` that the segment's earlier
    windows did not show (all of a segment's first), or None."""
    first = max(start_frame, published_upto)
    if first >= start_frame + len(window):
        return None
    return first, window[first - start_frame:].cpu().numpy()


class Batches:
    """A channel's operations on their way through the model, batch by batch and in order: a
    batch's windows go to the model in one call (in the `scoring` executor when there is one, else
    at once), and `publish(ops, (losses, band errors) or None)` gets the batch once scored.  At most
    one batch is in flight."""

    def __init__(self, detector: Detector, scoring: Executor | None, publish):
        self.detector, self.scoring, self.publish = detector, scoring, publish
        self.in_flight: tuple[list, Future] | None = None

    @property
    def future(self) -> Future | None:
        """The model call in flight, for a loop with nothing else to do to wait on."""
        return None if self.in_flight is None else self.in_flight[1]

    def submit(self, ops: list, windows: list) -> None:
        if not windows:
            self.publish(ops, None)
            return
        batch = windows[0] if len(windows) == 1 else torch.cat(windows)
        if self.scoring is None:
            self.publish(ops, self.detector.errors(batch))
        else:
            self.in_flight = (ops, self.scoring.submit(self.detector.errors, batch))

    def collect(self, wait: bool = False) -> bool:
        """Publish the batch in flight once scored (`wait`: wait for it); a model failure raises here."""
        if self.in_flight is None or not (wait or self.in_flight[1].done()):
            return False
        ops, future = self.in_flight
        self.in_flight = None
        self.publish(ops, future.result())
        return True


class Channel:
    def __init__(self, source: Source, ring: RingBuffer, model: Model, detector: DetectorConfig, publisher: Publisher, batch_windows: int, run_id: str,
                 recording: RecordingConfig | None = None, spectrogram: bool = False, scoring: Executor | None = None):
        self.source, self.ring, self.publisher, self.run_id = source, ring, publisher, run_id
        self.spectrogram, self._spec_upto = spectrogram, 0  # publish new frames on spec.<source>; the segment's frames sent
        self.name, self.batch_windows = source.name, batch_windows
        self.reader = StreamReader(source, ring)
        self.clips = Clips(self.name, ring, self.reader.rate)
        self.detector = Detector(model, detector)
        self.batches = Batches(self.detector, scoring, self._publish_ops)
        self._use_model(model, detector, recording or RecordingConfig())
        self.quiet_until = 0.0  # a live source's next window is not due before this (monotonic; 0: poll)
        self.seq = self.files_played = self.files_skipped = self.events = 0
        self.finished = self.report_pending = False
        self.started_at = time.monotonic()
        self.reports, self.latencies = deque(maxlen=RECENT_REPORTS), deque(maxlen=LATENCY_SAMPLES)
        self.latency_histogram = Histogram()  # over the daemon's life, for metrics

    def _use_model(self, model: Model, detector: DetectorConfig, recording: RecordingConfig) -> None:
        self.model, p = model, model.features
        if not recording.enabled:
            self.finish_clips()
        read_chunk = self.clips.configure(recording, int(self.batch_windows * p.hop_seconds * self.reader.rate))
        self.reader.use(p, model.frontend, model.device, read_chunk)
        self.flush_windows = max(1, min(self.batch_windows, int(read_chunk / (p.hop_seconds * self.reader.rate))))

    def replace_model(self, model: Model, detector: DetectorConfig, recording: RecordingConfig) -> None:
        """SIGHUP: finish the current segment with the old model, go on with the new one."""
        current, r = self.reader.segment, self.reader
        r.end_segment()
        self._flush()
        self.detector.use(model, detector)
        self._use_model(model, detector, recording)
        if current is not None:  # the same file goes on, in a segment that knows where in it it starts
            into = file_time(current, (r.fed_pos - current.pos) / r.rate)
            r.begin(SegmentStart(r.fed_pos, current.file, {**current.info, "file_offset_s": into}))

    def finish_clips(self) -> None:
        [self._report("recording", self.name, error) for error in self.clips.finish()]

    def pump(self) -> bool:
        """Publish a scored batch; frame what has arrived (one batch ahead of the model at most); send
        a batch to the model once full or caught up (a paced source is scored at once); True if busy."""
        did = self.batches.collect()
        if self.reader.queued_windows < self.flush_windows:
            did |= self.reader.poll()
        if self.batches.in_flight is None and (self.reader.queued_windows >= self.flush_windows or (self.reader.ops and self.reader.caught_up)):
            self._submit()
            did = True
        for error in self.clips.poll():
            self._report("recording", self.name, error)
        return did

    def _report(self, kind: str, file: str, reason: str, t: float | None = None, log_it: bool = False) -> None:
        if log_it:
            log.warning("%s: %s: %s", self.name, file, reason)
        self.reports.append({"kind": kind, "file": file, "reason": reason, "t": round(self.reader.stream_time(self.ring.read_pos) if t is None else t, 3)})
        self.report_pending = True

    def _flush(self) -> None:
        """Score and publish everything queued now (a reload: the old model finishes its segment)."""
        self.batches.collect(wait=True)
        self._submit()
        self.batches.collect(wait=True)

    def _submit(self) -> None:
        self.batches.submit(ops := self.reader.take(), [op.windows for op in ops if isinstance(op, Windows)])

    def _publish_ops(self, ops: list, scored: tuple[np.ndarray, np.ndarray] | None) -> None:
        """Publish a batch's operations in stream order, its windows with their (loss, band errors)."""
        losses, band_errors = scored if scored is not None else (None, None)
        at = 0
        for op in ops:
            if isinstance(op, Windows):
                self._publish_windows(op, losses[at : at + len(op.starts)], band_errors[at : at + len(op.starts)])
                at += len(op.starts)
            elif isinstance(op, Start):
                self.detector.new_segment()
                self.clips.new_segment()
                self._spec_upto = 0
            elif isinstance(op, End):
                self._publish_events(self.detector.close(), op.segment, op.end_pos)
                self.files_played += op.segment.file is not None
            elif isinstance(op, Missing):
                log.warning("%s: gap at %.2f s: %s (%s)", self.name, op.t, "unknown length" if op.samples is None else f"{op.samples / self.reader.rate:.3f} s", op.reason)
                self._send(messages.gap(self.run_id, self.name, self.seq, op.t, op.samples, self.reader.rate, op.reason))
            elif isinstance(op, Down):
                self._send(messages.source_down(self.run_id, self.name, self.seq, op.t, op.reason))
            elif isinstance(op, Up):
                self._send(messages.source_up(self.run_id, self.name, self.seq, op.t))
            elif isinstance(op, Report):
                self.files_skipped += op.kind == "skipped"
                self._report(op.kind, op.file, op.reason, op.t, log_it=True)
            elif isinstance(op, Done):
                self.finished = True

    def _send(self, body: dict) -> None:
        self.publisher.send(messages.topic(body["type"], self.name), body)

    def _publish_windows(self, op: Windows, losses: np.ndarray, band_errors: np.ndarray) -> None:
        seg, p = op.segment, self.model.features
        scored = self.detector.decide(op.windows, losses, band_errors, op.silent)
        if scored.invalid:
            self._report("invalid", seg.file or self.name, f"{scored.invalid} window(s) gave a non-finite loss; published with loss 0 and score 0", log_it=True)
        arrived = self.ring.arrival_time(op.read_pos)  # when the audio completing these windows came in
        for i, (start_frame, loss, score) in enumerate(zip(op.starts, scored.losses.tolist(), scored.scores.tolist())):
            into = start_frame * p.hop_length / p.sample_rate
            t_start = op.t0 + into
            t_end = min(t_start + p.window_seconds, op.read_time)  # a segment shorter than a window ends where it ends
            energy = None if scored.energies is None else scored.energies[i]
            if self.spectrogram:
                self._publish_frames(op, i, start_frame, t_start)
            self._send(messages.loss(self.run_id, self.name, self.seq, t_start, t_end, loss, score, bool(scored.silent[i]), energy, seg.file, file_time(seg, into)))
            self.seq += 1
            if arrived is not None:
                self.latencies.append(latency := time.monotonic() - arrived)
                self.latency_histogram.observe(latency)
            self._publish_events(self.detector.step(t_start, t_end, score, scored.band_errors[i]), seg)
            self.clips.offer((t_start, t_end, score), self.detector.tracker.active or bool(scored.silent[i]), self.detector.tracker.config.off_score, self.reader, seg,
                             lambda: {"run_id": self.run_id, "model": self.model.describe(), **self.source.describe()})  # a stretch for a check ("missed a bird?")
        if arrived is not None and self.source.kind == "mic":  # audio arrives in real time: the next window a hop later
            self.quiet_until = arrived + p.hop_seconds - LIVE_WAKE_EARLY_S

    def _publish_frames(self, op: Windows, i: int, start_frame: int, t_start: float) -> None:
        p = self.model.features
        new = new_frames(op.windows[i], start_frame, self._spec_upto)
        if new is not None:
            first, frames = new
            frame_s = p.hop_length / p.sample_rate
            self._send(messages.spec(self.run_id, self.name, self.seq, t_start + (first - start_frame) * frame_s, frame_s, frames, (p.f_min, p.f_max)))
            self._spec_upto = start_frame + len(op.windows[i])

    def _publish_events(self, transitions: list[dict], seg: SegmentStart, segment_end: int | None = None) -> None:
        for t in transitions:
            file_onset = None if seg.file is None else file_time(seg, t["onset"] - self.reader.stream_time(seg.pos))
            body = messages.event(self.run_id, self.name, t, seg.file, file_onset)
            if t["state"] == "start" and self.clips.enabled:
                self.clips.opened(self.reader.ring_pos(t["onset"]), seg.pos)
            if t["state"] == "end" and self.clips.enabled:
                sidecar = self.clips.sidecar(t, body, self.run_id, self.reader.stream_time(0), self.model.describe(), self.source.describe())
                body["clip"] = self.clips.schedule(t, self.reader.ring_pos(t["onset"]), self.reader.ring_pos(t["offset"]), seg.pos, segment_end, sidecar)
            self.events += t["state"] == "end"
            log.info("%s: event %d %s at %.2f s%s", self.name, t["event_id"], t["state"], t.get("offset", t["onset"]), f" ({seg.file})" if seg.file else "")
            self._send(body)

    def stats(self) -> SourceStats:
        """The counters, read at once: what `status` publishes and the Prometheus collector serves.
        Safe from another thread: numbers, never the containers the loop is changing."""
        return SourceStats(self.seq, self.events, self.reader.gaps, self.ring.overwritten, self.files_played, self.files_skipped, self.reader.samples_read / self.reader.rate,
                           time.monotonic() - self.started_at, not self.finished and getattr(self.source, "state", "up") != "down", self.finished, self.latency_histogram.cumulative(), self.latency_histogram.sum)


def source_status(channel: Channel, s: SourceStats | None = None) -> dict:
    """A source's entry in a status message, from `s` when the caller already read it."""
    lat = np.array(channel.latencies) * 1000.0 if channel.latencies else None
    s = s or channel.stats()
    return messages.source_status(
        channel.source.kind, windows=s.windows, audio_s=s.audio_s, rtf=s.rtf,
        dropped_samples=s.dropped_samples, gaps=s.gaps, files_played=s.files_played, files_skipped=s.files_skipped,
        current_file=getattr(channel.source, "current_file", None), events=s.events,
        latency_ms=None if lat is None else {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
        reports=list(channel.reports), finished=channel.finished, extra={**channel.clips.describe(), **channel.source.describe()},
    )
