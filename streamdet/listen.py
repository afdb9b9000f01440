"""A subscriber: what arrives on the bus, what was missed, shown with rich and optionally recorded."""
from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .bus import SCHEMA_VERSION, Subscriber

FINAL_STATES = ("finished", "stopped")


@dataclass
class SourceView:
    run_id: str | None = None
    next_seq: int = 0
    received: int = 0
    missed: int = 0
    last: dict = field(default_factory=dict)
    anomalous: int = 0
    events: int = 0


class StreamView:
    """Folds messages into a per-source picture; counts windows missed from gaps in `seq`."""

    def __init__(self):
        self.sources: dict[str, SourceView] = {}
        self.files: dict[tuple[str, str], dict] = {}  # (source, file) -> windows, bird windows, top score, events
        self.events: deque = deque(maxlen=12)
        self.status: dict[str, dict] = {}
        self.messages = 0
        self.unknown_versions = 0

    def update(self, topic: str, msg: dict) -> None:
        self.messages += 1
        if msg.get("v") != SCHEMA_VERSION:
            self.unknown_versions += 1
            return
        kind = msg.get("type")
        if kind == "loss":
            view = self.sources.setdefault(msg["source"], SourceView())
            if msg.get("run_id") != view.run_id:  # a new daemon run numbers its windows from 0 again
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
            view = self.sources.setdefault(msg["source"], SourceView())
            if msg.get("state") == "end":
                view.events += 1
                self.events.append(msg)
                if "file" in msg:
                    self._file(msg)["events"] += 1
        elif kind == "status":
            self.status[msg.get("daemon", "?")] = msg

    def _file(self, msg: dict) -> dict:
        return self.files.setdefault((msg["source"], msg["file"]), {"windows": 0, "bird_windows": 0, "top_score": 0.0, "events": 0})

    def all_final(self) -> bool:
        return bool(self.status) and all(s.get("state") in FINAL_STATES for s in self.status.values())

    def render(self) -> Group:
        sources = Table(title="windows", expand=False)
        for col in ("source", "seq", "received", "missed", "loss", "score", "bird?", "events", "file"):
            sources.add_column(col, justify="right" if col not in ("source", "file", "bird?") else "left")
        for name, v in sorted(self.sources.items()):
            last = v.last
            score = last.get("score")
            sources.add_row(
                name, str(last.get("seq", "-")), str(v.received), Text(str(v.missed), style="red" if v.missed else ""),
                f"{last['loss']:.4f}" if "loss" in last else "-", _bar(score), Text("BIRD", style="bold green") if last.get("anomaly") else "",
                str(v.events), str(last.get("file", "")),
            )
        events = Table(title="recent events", expand=False)
        for col in ("source", "id", "onset s", "offset s", "peak", "file", "at in file"):
            events.add_column(col)
        for e in self.events:
            events.add_row(e["source"], str(e["event_id"]), f"{e['onset']:.2f}", f"{e['offset']:.2f}", f"{e['peak_score']:.2f}", str(e.get("file", "")), f"{e['file_onset']:.2f}" if "file_onset" in e else "")
        status = Table(title="status", expand=False)
        for col in ("daemon", "state", "source", "rtf", "latency p50/p99 ms", "dropped", "skipped", "last report"):
            status.add_column(col)
        for daemon, s in sorted(self.status.items()):
            for name, src in s.get("sources", {}).items():
                lat = src.get("latency_ms") or {}
                report = src["reports"][-1] if src.get("reports") else None
                status.add_row(
                    daemon, s.get("state", "?"), name, f"{src.get('rtf', 0):.1f}x",
                    f"{lat.get('p50', 0):.1f} / {lat.get('p99', 0):.1f}" if lat else "-",
                    str(src.get("dropped_samples", 0)), str(src.get("files_skipped", 0)),
                    f"{report['file']}: {report['reason']}" if report else "",
                )
        return Group(sources, events, status)


def _bar(score: float | None, width: int = 10) -> Text:
    if score is None:
        return Text("-")
    filled = int(round(score * width))
    return Text("█" * filled + "·" * (width - filled) + f" {score:.2f}", style="green" if score >= 0.5 else "dim")


def listen(endpoint: str, topics: tuple[str, ...] = ("",), sources: tuple[str, ...] = (), jsonl: Path | None = None,
           until_finished: bool = False, timeout_s: float | None = None, live: bool = True, console: Console | None = None,
           view: StreamView | None = None, ready=None) -> StreamView:
    """Receive until interrupted, until every daemon seen is finished (`until_finished`), or until
    `timeout_s` passes without a message.  `ready` is called once the socket is connected."""
    console = console or Console(stderr=False)
    view = view or StreamView()
    subscriber = Subscriber(endpoint, topics)
    out = open(jsonl, "a", buffering=1) if jsonl else None
    if ready:
        ready()
    last_draw = 0.0
    try:
        with Live(view.render(), console=console, auto_refresh=False, transient=False) if live else _NoLive() as display:
            while True:
                got = subscriber.receive(timeout_s if timeout_s else 0.25)
                if got is None:
                    if timeout_s:
                        break
                    continue
                topic, msg = got
                if sources and msg.get("source") not in (None, *sources):
                    continue
                view.update(topic, msg)
                if out:
                    out.write(json.dumps({"topic": topic, "message": msg}) + "\n")
                now = time.monotonic()
                if live and (now - last_draw > 0.1 or msg.get("type") != "loss"):
                    display.update(view.render(), refresh=True)
                    last_draw = now
                if until_finished and msg.get("type") == "status" and view.all_final():
                    break
            if live:
                display.update(view.render(), refresh=True)
    finally:
        subscriber.close()
        if out:
            out.close()
    return view


class _NoLive:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *args, **kwargs):
        pass
