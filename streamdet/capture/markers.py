"""Sources write samples into a RingBuffer and say what those samples are through markers.

A marker carries the absolute stream position (in model-rate samples) at which it applies.
A source appends a marker before writing the samples that follow it, and the consumer reads
samples only up to the next marker's position, so boundaries are exact.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SegmentStart:
    """Continuous audio begins here (a file, or a capture run); windows never straddle segments."""

    pos: int
    file: str | None = None
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SegmentEnd:
    pos: int


@dataclass(frozen=True)
class Skipped:
    """Something the source could not use, with the reason, so it can be reported."""

    pos: int
    file: str
    reason: str


@dataclass(frozen=True)
class Notice:
    """Something worth telling about audio that was used anyway (e.g. a truncated file)."""

    pos: int
    file: str
    message: str


@dataclass(frozen=True)
class Finished:
    """The source has nothing more to give."""

    pos: int


@dataclass(frozen=True)
class Gap:
    """Audio missing before `pos`: `samples` of it (None if PortAudio could not say how much)."""

    pos: int
    samples: int | None
    reason: str


@dataclass(frozen=True)
class SourceDown:
    pos: int
    reason: str


@dataclass(frozen=True)
class SourceUp:
    pos: int
