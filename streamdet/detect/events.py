"""Window scores in, bird events out: hysteresis, a minimum duration, and merging across short gaps.

In the manner of silero-vad's VADIterator: a small state machine fed one window at a time.
An event opens when a window's score reaches `on_score`, stays open while scores stay at or
above `off_score`, and closes once a window starting `merge_gap_s` after the last such window
is still below it; a window at `on_score` starting within that gap continues the same event.  It is announced ("start") as soon as
it has lasted `min_event_s`, and reported again with its offset when it closes ("end").

An event is never longer than `max_event_s` (silero-vad's `max_speech_duration_s`): an insect
chorus or a dawn chorus would otherwise be one event for as long as it lasts, with no end for a
subscriber to count and no clip that holds its start.  There it ends (`cut: true`), and if the
scores stay up the next window opens a new event at once, marked `continues` with the id of the
one before; its onset is where the cut one ended, so the two do not overlap.
"""
from __future__ import annotations

from dataclasses import dataclass

from streamdet.config import DetectorConfig


@dataclass
class _Open:
    id: int
    onset: float
    last_hit: float  # end time of the last window at or above off_score
    peak: float
    windows: int = 1
    announced: bool = False
    quiet: bool = False  # fallen below off_score; only on_score continues it
    continues: int | None = None  # the id of the event cut at max_event_s that this one carries on


class EventTracker:
    def __init__(self, config: DetectorConfig):
        self.config = config
        self._open: _Open | None = None
        self._next_id = 0
        self._cut: tuple[int, float] | None = None  # (id, offset) of an event just cut at max_event_s

    def update(self, t_start: float, t_end: float, score: float) -> list[dict]:
        """Feed one window; returns the transitions it caused (none, one, or an end and a start)."""
        c, out = self.config, []
        ev = self._open
        if ev is not None and ev.quiet:
            if score >= c.on_score:
                if t_start - ev.last_hit > c.merge_gap_s:
                    out += self._close()
                    ev = None
            elif t_start - ev.last_hit >= c.merge_gap_s:
                # Every later window starts later still, so no hit can continue this event.
                out += self._close()
                return out
        cut, self._cut = self._cut, None
        # Right after a cut the scores were up: staying at off_score carries the event on.
        hit = score >= (c.off_score if cut is not None else c.on_score if ev is None or ev.quiet else c.off_score)
        if ev is None:
            if not hit:
                return out
            onset = t_start if cut is None else max(t_start, cut[1])
            self._open = ev = _Open(self._next_id, onset, t_end, score, continues=None if cut is None else cut[0])
            self._next_id += 1
        elif hit:
            ev.last_hit, ev.peak, ev.quiet = t_end, max(ev.peak, score), False
            ev.windows += 1
        else:
            ev.quiet = True
        # A continuation is announced at once: the event it carries on already lasted min_event_s.
        if not ev.announced and (ev.continues is not None or ev.last_hit - ev.onset >= min(c.min_event_s, c.max_event_s)):
            ev.announced = True
            out.append({"state": "start", "event_id": ev.id, "onset": ev.onset, "peak_score": ev.peak, **({"continues": ev.continues} if ev.continues is not None else {})})
        if ev.announced and not ev.quiet and ev.last_hit - ev.onset >= c.max_event_s:
            self._cut = (ev.id, ev.last_hit)
            out += self._close(cut=True)
        return out

    def close(self) -> list[dict]:
        """End of a segment or a gap: whatever is open ends at its last hit."""
        return self._close()

    @property
    def active(self) -> bool:
        return self._open is not None

    @property
    def open_id(self) -> int | None:
        return None if self._open is None else self._open.id

    def _close(self, cut: bool = False) -> list[dict]:
        ev, self._open = self._open, None
        if not cut:
            self._cut = None  # a gap or the end of a segment: nothing carries on
        if ev is None or not ev.announced:
            return []
        extra = ({"continues": ev.continues} if ev.continues is not None else {}) | ({"cut": True} if cut else {})
        return [{"state": "end", "event_id": ev.id, "onset": ev.onset, "offset": ev.last_hit, "duration": ev.last_hit - ev.onset, "peak_score": ev.peak, "windows": ev.windows, **extra}]
