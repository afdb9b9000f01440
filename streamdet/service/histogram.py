"""A cumulative histogram of latencies for metrics: fixed buckets, counted over the daemon's life."""
from __future__ import annotations

from bisect import bisect_left

BOUNDS_S = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


class Histogram:
    def __init__(self, bounds: tuple[float, ...] = BOUNDS_S):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """[(upper bound, observations at or below it)], ending with ('+Inf', all), as Prometheus has them."""
        counts, running, out = list(self.counts), 0, []
        for bound, n in zip((*map(str, self.bounds), "+Inf"), counts):
            running += n
            out.append((bound, running))
        return out
