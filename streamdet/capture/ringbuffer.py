"""A preallocated single-producer, single-consumer ring of float32 samples.

Positions are absolute sample counts since the stream began, so a reader always knows exactly
which samples it got and how many it lost.  The producer never blocks unless asked to: a live
source overwrites the oldest samples and the loss is counted; a replay source waits for room.
No locks: each position is written by one thread only, and CPython makes an int store atomic.
A write reserves its span (`reserve_pos`) before it copies and commits it (`write_pos`) after, and
a read checks against the reservation after its copy: samples the producer was overwriting while
they were copied are dropped and counted, never returned.
"""
from __future__ import annotations

import time

import numpy as np


class RingBuffer:
    def __init__(self, capacity: int, arrival_slots: int = 4096):
        if capacity <= 0:
            raise ValueError("ring capacity must be positive")
        self.capacity = int(capacity)
        self._data = np.zeros(self.capacity, dtype=np.float32)
        self.write_pos = 0  # written only by the producer: everything before it is in the ring
        self.reserve_pos = 0  # written only by the producer: it may be writing anything before this
        self.read_pos = 0  # written only by the consumer
        self.overwritten = 0  # samples the consumer never saw, counted by the consumer
        # When each write completed, for latency: (end position, monotonic time), preallocated.
        self._arrival_pos = np.zeros(arrival_slots, dtype=np.int64)
        self._arrival_time = np.zeros(arrival_slots, dtype=np.float64)
        self._arrival_count = 0
        self._arrival_cursor = 0  # consumer side
        self.keep_behind = 0  # samples behind the reader a waiting writer must not overwrite
        # A position a waiting writer must not overwrite either, however far the reader goes on
        # (a clip's onset): absolute, so it holds between the consumer's updates of it.
        self.hold_pos: int | None = None

    def _floor(self) -> int:
        """The oldest position a waiting writer must keep."""
        floor, hold = self.read_pos - self.keep_behind, self.hold_pos
        return floor if hold is None else min(floor, hold)

    # -- producer side ---------------------------------------------------------------------
    def write(self, samples: np.ndarray, wait: bool = False, stop=None) -> int:
        """Copy `samples` in.  With `wait`, block while the consumer has no room for them
        (until `stop()` is true), keeping `keep_behind` already-read samples intact for whoever
        peeks back (the clip recorder's pre-roll); otherwise overwrite the oldest unread samples.
        Returns the number of samples written."""
        n = len(samples)
        if n > self.capacity:
            # Only the newest `capacity` samples can ever be read; the rest count as lost.
            if wait:
                written = 0
                for i in range(0, n, self.capacity):
                    written += self.write(samples[i : i + self.capacity], wait=True, stop=stop)
                return written
            self.write_pos += n - self.capacity
            self.reserve_pos = self.write_pos
            samples = samples[n - self.capacity :]
            n = self.capacity
        if wait:
            while self.write_pos + n - self._floor() > self.capacity:
                if stop is not None and stop():
                    return 0
                time.sleep(0.001)
        start = self.write_pos % self.capacity
        first = min(n, self.capacity - start)
        self.reserve_pos = self.write_pos + n  # reserve, then copy, then commit
        self._data[start : start + first] = samples[:first]
        if first < n:
            self._data[: n - first] = samples[first:]
        self.write_pos += n
        slot = self._arrival_count % len(self._arrival_pos)
        self._arrival_pos[slot] = self.write_pos
        self._arrival_time[slot] = time.monotonic()
        self._arrival_count += 1
        return n

    def skip(self, n: int) -> None:
        """Advance the stream without data: samples the source knows it lost."""
        self.write_pos += n
        self.reserve_pos = self.write_pos

    # -- consumer side ---------------------------------------------------------------------
    def read(self, max_samples: int) -> tuple[int, np.ndarray]:
        """Return (start position, copy of up to `max_samples` samples).

        If the producer lapped the reader, the start position jumps ahead of the previous
        read's end: that difference is the gap, and it is added to `overwritten`."""
        write_pos = self.write_pos
        if write_pos - self.read_pos > self.capacity:
            lost = write_pos - self.capacity - self.read_pos
            self.overwritten += lost
            self.read_pos += lost
        n = min(max_samples, write_pos - self.read_pos)
        start_pos, out = self._copy(self.read_pos, n)
        self.overwritten += start_pos - self.read_pos
        self.read_pos = start_pos + len(out)
        return start_pos, out

    def _copy(self, start_pos: int, n: int) -> tuple[int, np.ndarray]:
        """Copy n samples from absolute position start_pos; the producer may overwrite part of them
        while we copy, so the first ones are dropped if they were: returns (first position kept, samples).
        What it may have overwritten is known from its reservation, read after the copy."""
        out = np.empty(n, dtype=np.float32)
        start = start_pos % self.capacity
        first = min(n, self.capacity - start)
        out[:first] = self._data[start : start + first]
        out[first:] = self._data[: n - first]
        lost = min(max(self.reserve_pos - self.capacity - start_pos, 0), n)
        return start_pos + lost, out[lost:]

    def peek(self, start: int, end: int) -> tuple[int, np.ndarray]:
        """A copy of the samples at absolute positions [start, end) that are still held, without
        moving the reader: returns (first position actually copied, samples)."""
        end = min(end, self.write_pos)
        start = max(start, self.write_pos - self.capacity, 0)
        return self._copy(start, max(end - start, 0))

    def arrival_time(self, position: int) -> float | None:
        """Monotonic time at which the write covering sample `position - 1` completed.

        Positions asked for must not decrease (the consumer asks in stream order), which lets a
        cursor walk the arrival records forward in amortised constant time."""
        count, slots = self._arrival_count, len(self._arrival_pos)
        cursor = max(self._arrival_cursor, count - slots)
        while cursor < count and self._arrival_pos[cursor % slots] < position:
            cursor += 1
        self._arrival_cursor = cursor
        return float(self._arrival_time[cursor % slots]) if cursor < count else None
