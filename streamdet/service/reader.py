"""A source's ring and markers in, operations in stream order out: segments, windows, gaps, reports.

No model, no bus: the channel takes the operations, scores the windows in one model call and
publishes in this order. Stream time counts every sample the source delivered, plus audio known
to be lost (a device that was away), so it keeps to the clock.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from streamdet.capture.audio import StreamingResampler
from streamdet.capture.markers import Finished, Gap, Notice, SegmentEnd, SegmentStart, Skipped, SourceDown, SourceUp
from streamdet.capture.ringbuffer import RingBuffer
from streamdet.capture.source import Source
from streamdet.detect.features import StreamingWindows


def file_time(segment: SegmentStart, into_segment_s: float) -> float:
    """Seconds into the segment's file: where the segment starts in it (a reload or a resumed file
    starts a segment part-way), plus the seconds into the segment."""
    return segment.info.get("file_offset_s", 0.0) + into_segment_s


class Start(NamedTuple):
    segment: SegmentStart


class Windows(NamedTuple):
    """Windows framed, waiting for the next model call."""

    segment: SegmentStart
    t0: float  # stream time of the segment's first sample
    starts: list  # first frame of each window in the segment
    windows: torch.Tensor
    read_time: float  # stream time up to which audio had been read: no window ends after it
    read_pos: int
    silent: np.ndarray


class End(NamedTuple):
    segment: SegmentStart
    end_pos: int


class Missing(NamedTuple):
    """Audio missing at stream time `t`: `samples` of it (None when unknown)."""

    t: float
    samples: int | None
    reason: str


class Down(NamedTuple):
    t: float
    reason: str


class Up(NamedTuple):
    t: float


class Report(NamedTuple):
    """Something to tell about a file: `kind` is skipped or notice."""

    kind: str
    file: str
    reason: str
    t: float  # stream time read so far when it was told


class Done(NamedTuple):
    """The source has finished."""


class StreamReader:
    def __init__(self, source: Source, ring: RingBuffer):
        self.source, self.ring = source, ring
        self.rate = source.rate  # of the ring: the model's for replay, the device's for a microphone
        self.offset = 0  # audio known to be lost, in ring samples
        self.segment: SegmentStart | None = None
        self.ops: list = []
        self.queued_windows = 0
        self.samples_read = 0
        self.gaps = 0
        self._expected: int | None = None  # where the next read should start

    def use(self, params, frontend, device, read_chunk: int) -> None:
        """The front end of a (new) model; call `end_segment` first when one is open."""
        self.params = params
        self.windows = StreamingWindows(params, frontend=frontend, device=device)
        self.resampler = StreamingResampler(self.rate, params.sample_rate)
        self.read_chunk = read_chunk

    def ring_pos(self, t: float) -> int:
        return int(round(t * self.rate)) - self.offset

    def stream_time(self, pos: int) -> float:
        return (pos + self.offset) / self.rate

    @property
    def fed_pos(self) -> int:
        """Where the audio fed to the current segment ends (a read that found a gap has moved past it)."""
        return self._expected if self._expected is not None else self.ring.read_pos

    def take(self) -> list:
        ops, self.ops, self.queued_windows = self.ops, [], 0
        return ops

    def poll(self) -> bool:
        """Handle due markers and frame what has arrived; True if anything was done."""
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
                self.begin(SegmentStart(start))
            self.samples_read += len(samples)
            self._frame(self.resampler.process(samples))
            did = True
        return did

    @property
    def caught_up(self) -> bool:
        return self.ring.write_pos == self.ring.read_pos

    def begin(self, segment: SegmentStart) -> None:
        self.segment = segment
        self.segment_t0 = self.stream_time(segment.pos)
        self.windows.reset()
        self.resampler.reset()
        self.ops.append(Start(segment))

    def end_segment(self) -> None:
        if self.segment is None:
            return
        self._frame(self.resampler.flush())
        self._frame(np.zeros(0, np.float32), final=True)
        self.ops.append(End(self.segment, self.fed_pos))
        self.segment = None

    def _frame(self, samples: np.ndarray, final: bool = False) -> None:
        starts, windows = self.windows.push(samples) if not final else self.windows.finish()
        if starts:
            read_pos = self.fed_pos
            self.ops.append(Windows(self.segment, self.segment_t0, starts, windows, self.stream_time(read_pos), read_pos, self.windows.silent))
            self.queued_windows += len(starts)

    def _gap(self, pos: int, samples: int | None, reason: str) -> None:
        """Close the segment, so no window straddles the missing audio, and say so."""
        self.end_segment()
        self.gaps += 1
        self.ops.append(Missing(self.stream_time(pos), samples, reason))
        if reason == "source_down" and samples:
            self.offset += samples  # never written to the ring: stream time jumps over it

    def _handle(self, marker) -> None:
        if isinstance(marker, SegmentStart):
            self.end_segment()
            self.begin(marker)
        elif isinstance(marker, SegmentEnd):
            self.end_segment()
        elif isinstance(marker, Gap):
            self._gap(marker.pos, marker.samples, marker.reason)
        elif isinstance(marker, SourceDown):
            self.end_segment()
            self.ops.append(Down(self.stream_time(marker.pos), marker.reason))
        elif isinstance(marker, SourceUp):
            self.ops.append(Up(self.stream_time(marker.pos)))
        elif isinstance(marker, Skipped):
            self.ops.append(Report("skipped", marker.file, marker.reason, self.stream_time(self.ring.read_pos)))
        elif isinstance(marker, Notice):
            self.ops.append(Report("notice", marker.file, marker.message, self.stream_time(self.ring.read_pos)))
        elif isinstance(marker, Finished):
            self.end_segment()
            self.ops.append(Done())
