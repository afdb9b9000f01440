"""Which stretches the detector did not call bird are recorded for the operator to check ("missed a
bird?"): false alarms show themselves as events, misses only if someone listens where the detector
stayed quiet.

At most `per_hour` stretches an hour of stream time.  Borderline first: a window whose score reaches
the event's off level without an event (the detector nearly said bird) is taken at once; a period
with none gives, at its end, its best window still within reach of the ring (`reach_s`), so quiet
hours are heard too.  Windows inside an event, silent ones and those of a finished segment are never
offered."""
from __future__ import annotations

import math
from collections import deque


class CheckPicker:
    def __init__(self, per_hour: float, reach_s: float):
        self.period = 3600.0 / per_hour
        self.reach_s = reach_s
        self.period_start: float | None = None
        self.taken = False  # this period's stretch was recorded
        # (t_start, t_end, score) of the windows within reach that no later one outscores: the first is the best.
        self.within: deque = deque()

    def reset(self) -> None:
        """A new segment (a file, or audio after a gap): what lies behind it cannot be recorded."""
        self.within.clear()

    def offer(self, t_start: float, t_end: float, score: float, off_score: float, quiet: bool) -> list[tuple[float, float, float]]:
        """The stretches (t_start, t_end, score) to record now, given the next window; `quiet`:
        inside an event, or silent."""
        out = []
        if self.period_start is None:
            self.period_start = t_start
        while self.within and self.within[0][0] < t_start - self.reach_s:
            self.within.popleft()
        if t_start >= self.period_start + self.period:
            if not self.taken and self.within:
                out.append(self.within[0])
            self.period_start += self.period * math.floor((t_start - self.period_start) / self.period)
            self.taken = False
            self.within.clear()
        if quiet or self.taken:
            return out
        if score >= off_score:
            self.taken = True
            self.within.clear()
            out.append((t_start, t_end, score))
            return out
        while self.within and self.within[-1][2] <= score:
            self.within.pop()
        self.within.append((t_start, t_end, score))
        return out
