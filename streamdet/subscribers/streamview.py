"""What a subscriber knows: messages folded into a per-source and per-daemon picture.

No drawing and no socket here (`listen` does both), and the clock is injected, so the folding
is tested message by message.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from streamdet.bus.messages import SCHEMA_VERSION

FINAL_STATES = ("finished", "stopped", "failed")
STALE_AFTER_INTERVALS = 3  # status messages missed before a daemon is called stale


@dataclass
class SourceView:
    daemon: str | None = None
    run_id: str | None = None
    next_seq: int = 0
    received: int = 0
    missed: int = 0
    last: dict = field(default_factory=dict)
    anomalous: int = 0
    events: int = 0
    gaps: int = 0
    state: str = "up"


class StreamView:
    """Counts windows missed from jumps in `seq` (per run: a new daemon run numbers from 0 again)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, sources: tuple[str, ...] = ()):
        """`sources`: only these (and messages of no source, such as status); all when empty."""
        self.clock, self.only = clock, sources
        self.sources: dict[str, SourceView] = {}
        self.files: dict[tuple[str, str], dict] = {}  # (source, file) -> windows, bird windows, top score, events
        self.events: deque = deque(maxlen=12)
        self.status: dict[str, dict] = {}
        self.status_seen: dict[str, float] = {}  # daemon -> clock time of its last status
        self.received = 0  # every message offered, shown or not
        self.messages = 0  # those of the sources shown
        self.unknown_versions = 0
        self.unreadable = 0  # schema-v1 messages lacking a field this view needs
        self.skipped = 0  # messages the subscriber could not read at all (streamdet.bus.messages.read)
        self.first_skipped: str | None = None

    def update(self, topic: str, msg: dict) -> bool:
        """Fold one message in, if it is of a source shown (then True); one that is not schema v1, or
        lacks a field it needs, is counted."""
        self.received += 1
        if self.only and isinstance(msg, dict) and msg.get("source") not in (None, *self.only):
            return False
        self.messages += 1
        if not isinstance(msg, dict) or msg.get("v") != SCHEMA_VERSION:
            self.unknown_versions += 1
            return True
        try:
            self._update(msg)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.unreadable += 1
        return True

    def _update(self, msg: dict) -> None:
        kind = msg.get("type")
        if kind == "loss":
            view = self._source(msg)
            if msg.get("run_id") != view.run_id:
                view.run_id, view.next_seq = msg.get("run_id"), 0
            view.missed += max(0, msg["seq"] - view.next_seq)
            view.next_seq = msg["seq"] + 1
            view.received += 1
            view.anomalous += bool(msg.get("anomaly"))
            view.last = msg
            if "file" in msg:
                f = self._file(msg)
                f["windows"] += 1
                f["bird_windows"] += bool(msg.get("anomaly"))
                f["top_score"] = max(f["top_score"], msg["score"])
        elif kind == "event":
            view = self._source(msg)
            if msg.get("state") == "end":
                view.events += 1
                self.events.append(msg)
                if "file" in msg:
                    self._file(msg)["events"] += 1
        elif kind == "gap":
            self._source(msg).gaps += 1
        elif kind in ("source_down", "source_up"):
            self._source(msg).state = "down" if kind == "source_down" else "up"
        elif kind == "status":
            daemon = msg.get("daemon", "?")
            if not isinstance(msg.get("sources", {}), dict):
                raise TypeError("sources")
            self.status[daemon] = msg
            self.status_seen[daemon] = self.clock()
            for name in msg.get("sources", {}):
                self.sources.setdefault(name, SourceView()).daemon = daemon

    def _source(self, msg: dict) -> SourceView:
        return self.sources.setdefault(msg["source"], SourceView())

    def _file(self, msg: dict) -> dict:
        return self.files.setdefault((msg["source"], msg["file"]), {"windows": 0, "bird_windows": 0, "top_score": 0.0, "events": 0})

    def stale(self, daemon: str | None) -> bool:
        """A daemon whose status stopped arriving: gone, hung, or cut off from us."""
        if daemon not in self.status:
            return False
        status = self.status[daemon]
        if status.get("state") in FINAL_STATES:
            return False
        return self.clock() - self.status_seen[daemon] > STALE_AFTER_INTERVALS * status.get("status_interval_s", 5.0)

    def source_state(self, name: str) -> str:
        view = self.sources[name]
        if self.stale(view.daemon):
            return "STALE"
        status = self.status.get(view.daemon, {})
        if status.get("state") in FINAL_STATES:
            return status["state"]
        return status.get("sources", {}).get(name, {}).get("state") or view.state

    def source_status(self, name: str) -> dict:
        """The source's entry in its daemon's latest status (empty before one arrives)."""
        return self.status.get(self.sources[name].daemon, {}).get("sources", {}).get(name, {})

    def all_final(self) -> bool:
        return bool(self.status) and all(s.get("state") in FINAL_STATES for s in self.status.values())
