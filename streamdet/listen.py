"""A subscriber: what arrives on the bus, what was missed, shown with rich and optionally recorded."""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .bus import Subscriber
from .streamview import StreamView


def render(view: StreamView) -> Group:
    """The picture as rich tables: sources, recent events, daemons."""
    sources = Table(title="sources", expand=False)
    many = len(view.status) > 1  # name the daemon only when several share the bus
    for col in ("source", "daemon", "state", "seq", "missed", "gaps", "loss", "score", "bird?", "events", "rtf", "p99 ms", "file"):
        if col != "daemon" or many:
            sources.add_column(col, justify="right" if col in ("seq", "missed", "gaps", "loss", "events", "rtf", "p99 ms") else "left")
    for name, v in sorted(view.sources.items()):
        last = v.last
        status = view.source_status(name)
        on = view.status.get(v.daemon, {}).get("detector", {}).get("on_score", 0.5)
        state = view.source_state(name)
        lat = status.get("latency_ms") or {}
        sources.add_row(
            name, *([v.daemon or "?"] if many else []), Text(state, style="bold red" if state in ("STALE", "down") else "green" if state == "up" else ""),
            str(last.get("seq", "-")), Text(str(v.missed), style="red" if v.missed else ""), Text(str(v.gaps), style="yellow" if v.gaps else ""),
            f"{last['loss']:.4f}" if "loss" in last else "-", _bar(last.get("score"), on), Text("BIRD", style="bold green") if last.get("anomaly") else ("silent" if last.get("silent") else ""),
            str(v.events), f"{status['rtf']:.1f}x" if "rtf" in status else "-", f"{lat['p99']:.0f}" if lat else "-", str(last.get("file", "")),
        )
    events = Table(title="recent events", expand=False)
    for col in ("source", "id", "onset s", "offset s", "peak", "band Hz", "file", "at in file"):
        events.add_column(col)
    for e in view.events:
        band = e.get("band_hz")
        events.add_row(e["source"], str(e["event_id"]), f"{e['onset']:.2f}", f"{e['offset']:.2f}", f"{e['peak_score']:.2f}", f"{band[0]}-{band[1]}" if band else "", str(e.get("file", "")), f"{e['file_onset']:.2f}" if "file_onset" in e else "")
    status = Table(title="daemons", expand=False)
    for col in ("daemon", "state", "uptime s", "model", "dropped samples", "skipped files", "last report"):
        status.add_column(col)
    for daemon, s in sorted(view.status.items()):
        srcs = s.get("sources", {}).values()
        reports = [r for src in srcs for r in src.get("reports", [])]
        status.add_row(
            daemon, "STALE" if view.stale(daemon) else s.get("state", "?"), f"{s.get('uptime_s', 0):.0f}", s.get("model", {}).get("sha256", "?"),
            str(sum(src.get("dropped_samples", 0) for src in srcs)), str(sum(src.get("files_skipped", 0) for src in srcs)),
            f"{reports[-1]['file']}: {reports[-1]['reason']}" if reports else "",
        )
    return Group(sources, events, status)


def _bar(score: float | None, threshold: float = 0.5, width: int = 10) -> Text:
    """The score as a bar, with the threshold marked '|'."""
    if score is None:
        return Text("-")
    cells = ["█" if i < round(score * width) else "·" for i in range(width)]
    mark = min(width - 1, int(threshold * width))
    cells[mark] = "|" if cells[mark] == "·" else cells[mark]
    return Text("".join(cells) + f" {score:.2f}", style="green" if score >= threshold else "dim")


def listen(endpoint: str, topics: tuple[str, ...] = ("",), sources: tuple[str, ...] = (), jsonl: Path | None = None,
           until_finished: bool = False, timeout_s: float | None = None, live: bool = True, console: Console | None = None,
           view: StreamView | None = None, ready=None, curve=None, give_up=None) -> StreamView:
    """Receive until interrupted, until every daemon seen is finished (`until_finished`), or until
    `timeout_s` passes without a message, or `give_up()` is true after a quiet second (the demo's
    daemon has exited).  `ready` is called once the socket is connected."""
    console = console or Console(stderr=False)
    view = view or StreamView()
    subscriber = Subscriber(endpoint, topics, curve=curve)
    out = open(jsonl, "a", buffering=1) if jsonl else None
    if ready:
        ready()
    last_draw = 0.0
    last_message = time.monotonic()
    received = 0
    try:
        with Live(render(view), console=console, auto_refresh=False, transient=False) if live else _NoLive() as display:
            while True:
                got = subscriber.receive(min(timeout_s, 1.0) if timeout_s else 1.0)
                if got is None:
                    if timeout_s and time.monotonic() - last_message > timeout_s:
                        break
                    if give_up is not None and give_up():
                        break
                    if live:  # redraw anyway: a daemon going quiet must show up as stale
                        display.update(render(view), refresh=True)
                    continue
                last_message = time.monotonic()
                received += 1
                topic, msg = got
                if sources and msg.get("source") not in (None, *sources):
                    continue
                view.update(topic, msg)
                if out:
                    out.write(json.dumps({"topic": topic, "message": msg}) + "\n")
                now = time.monotonic()
                if live and (now - last_draw > 0.1 or msg.get("type") != "loss"):
                    display.update(render(view), refresh=True)
                    last_draw = now
                if until_finished and msg.get("type") == "status" and view.all_final():
                    break
            if live:
                display.update(render(view), refresh=True)
    finally:
        subscriber.close()
        if out:
            out.close()
    view.received = received
    return view


class _NoLive:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, *args, **kwargs):
        pass
