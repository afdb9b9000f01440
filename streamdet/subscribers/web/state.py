"""What the page shows, folded from bus messages and bounded: each source's recent scores and
spectrogram frames, the last events, detections per hour, and each daemon's latest status.
No web library here, so it is tested on its own."""
from __future__ import annotations

import functools
import json
import time
from collections import deque
from datetime import datetime, timedelta

SCORES_KEPT = 1200  # per source: 10 minutes of windows at two a second
FRAMES_KEPT = 240  # per source: spectrogram messages (about two minutes of audio)
# And in bytes, over all sources: 240 messages of the bundled model's 25 x 64 frames are 0.5 MB a
# source; a publisher sending the largest frames the schema allows is cut here, not at 240.
FRAME_BYTES_KEPT = 8 * 2**20
EVENTS_KEPT = 100
MAX_SOURCES = MAX_DAEMONS = 64  # a bus naming more (a hostile or broken publisher) gets the rest counted, not kept
DAYS_KEPT = 8  # today and the 7 days before
SILENT_INTERVALS = 3  # a daemon not heard from for this many of its status intervals is taken for dead (kill -9, a cut cable)
FORWARDED = ("loss", "spec", "event", "gap", "source_down", "source_up", "status")


class HourCounts:
    """Detections per local hour of the last DAYS_KEPT days; each detection counted once (by key)."""

    def __init__(self, now=time.time):
        self.now = now
        self.counts: dict[str, list[int]] = {}
        self.seen: dict[str, set[str]] = {}  # day -> the detections counted on it (forgotten with the day)

    def add(self, key: str, wall: float) -> bool:
        stamp = datetime.fromtimestamp(wall).astimezone()
        day = stamp.date().isoformat()
        if day < self._first_day() or any(key in keys for keys in self.seen.values()):
            return False
        self.seen.setdefault(day, set()).add(key)
        self.counts.setdefault(day, [0] * 24)[stamp.hour] += 1
        for old in [d for d in self.counts if d < self._first_day()]:
            del self.counts[old]
            self.seen.pop(old, None)
        return True

    def _first_day(self) -> str:
        return (datetime.fromtimestamp(self.now()).astimezone().date() - timedelta(days=DAYS_KEPT - 1)).isoformat()

    def snapshot(self) -> dict:
        today = datetime.fromtimestamp(self.now()).astimezone().date()
        days = [(today - timedelta(days=i)).isoformat() for i in range(DAYS_KEPT)]
        return {"today": days[0], "hours": self.counts.get(days[0], [0] * 24), "days": {d: sum(self.counts.get(d, [])) for d in days},
                "grid": {d: self.counts.get(d, [0] * 24) for d in days}}


class SourceState:
    def __init__(self):
        self.scores: deque = deque(maxlen=SCORES_KEPT)
        self.frames: deque = deque()  # each message as JSON text, ready for a snapshot
        self.frame_bytes = 0


class WebState:
    def __init__(self, now=time.time):
        self.now = now
        self.sources: dict[str, SourceState] = {}
        self.events: deque = deque(maxlen=EVENTS_KEPT)
        self.daemons: dict[str, dict] = {}
        self.hours = HourCounts(now)
        self.messages = 0
        self.unreadable = 0  # messages the subscriber could not read (set by the server)
        self.overflow = 0  # messages of sources or daemons beyond MAX_SOURCES / MAX_DAEMONS
        self.frame_bytes = 0  # over all sources, at most FRAME_BYTES_KEPT

    def update(self, body: dict) -> bool:
        """Fold one checked message in; True when browsers should get it."""
        kind = body.get("type")
        if kind not in FORWARDED:
            return False
        self.messages += 1
        if kind == "status":
            # Keyed by run: two daemons on one host (both named by it) are two; a restarted one
            # replaces its earlier run once that said it ended or fell silent.
            key = f"{str(body['daemon'])[:64]}/{str(body.get('run_id', ''))[:64]}"
            if key not in self.daemons:
                for old in [k for k, d in self.daemons.items() if d["daemon"] == body["daemon"] and not self.alive(d)]:
                    del self.daemons[old]
                if len(self.daemons) >= MAX_DAEMONS:
                    self.overflow += 1
                    return False
            self.daemons[key] = {**body, "seen": self.now()}
            return True
        name = str(body["source"])[:64]
        if name not in self.sources and len(self.sources) >= MAX_SOURCES:
            self.overflow += 1
            return False
        source = self.sources.setdefault(name, SourceState())
        if kind == "loss":
            source.scores.append({k: body.get(k) for k in ("ts", "run_id", "seq", "t_start", "t_end", "score", "anomaly", "silent")})
        elif kind == "spec":
            self._keep_frames(source, json.dumps(body, separators=(",", ":")))
        elif kind == "event" and body.get("state") == "end":
            key, wall = f"{body.get('run_id')}/{body['source']}/{body['event_id']}", float(body.get("ts") or self.now())
            self.hours.add(key, wall)
            self.events.appendleft(body)
        return True

    def alive(self, daemon: dict) -> bool:
        """Running, and heard from within SILENT_INTERVALS of its own status interval."""
        interval = daemon.get("status_interval_s") or 5.0
        return daemon.get("state") == "running" and self.now() - daemon["seen"] <= SILENT_INTERVALS * interval

    def _keep_frames(self, source: SourceState, text: str) -> None:
        source.frames.append(text)
        source.frame_bytes += len(text)
        self.frame_bytes += len(text)
        while len(source.frames) > FRAMES_KEPT or self.frame_bytes > FRAME_BYTES_KEPT:
            # The oldest message of this source, or of the source holding the most, goes.
            victim = source if len(source.frames) > FRAMES_KEPT else max(self.sources.values(), key=lambda s: s.frame_bytes)
            gone = len(victim.frames.popleft())
            victim.frame_bytes -= gone
            self.frame_bytes -= gone

    def snapshot(self) -> dict:
        """Everything a page needs when it (re)connects."""
        return json.loads(self.snapshot_json())

    def snapshot_json(self, extra: dict | None = None) -> str:
        """The snapshot as JSON text: the kept frames joined as they are, the rest encoded now."""
        dump = functools.partial(json.dumps, separators=(",", ":"))
        sources = ",".join(f'{dump(name)}:{{"scores":{dump(list(s.scores))},"frames":[{",".join(s.frames)}]}}' for name, s in self.sources.items())
        rest = {"events": list(self.events), "daemons": list(self.daemons.values()), "hours": self.hours.snapshot(), "now": self.now(), "unreadable": self.unreadable, **(extra or {})}
        return f'{{"sources":{{{sources}}},{dump(rest)[1:]}'


