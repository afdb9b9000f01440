"""A subscriber: what arrives on the bus, what was missed, shown with rich and optionally recorded."""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streamdet.bus.sockets import Subscriber
from streamdet.subscribers.streamview import StreamView

WIDE = 120  # from this many columns on, the details too


def render(view: StreamView, width: int = 80, events: int = 6) -> Group:
    """The picture as rich tables: sources, the last `events` events, daemons; at `width` below
    WIDE only the columns that matter most, so a standard 80x24 terminal shows it whole."""
    return Group(_sources(view, width), events_table(view, width, events), _daemons(view, width))


FLEXIBLE = ("where", "file", "problems")  # the only columns that give way, keeping their ends


def _table(title: str, columns: list[tuple[str, str]], rows: list[list], width: int) -> Table:
    """Every column as wide as its widest cell, but the flexible ones get only the room left, so
    that nothing that matters is ever cut."""
    def plain(cell) -> int:
        return cell.cell_len if isinstance(cell, Text) else len(str(cell))

    widths = [max([len(name), *(plain(r[i]) for r in rows)]) for i, (name, _) in enumerate(columns)]
    room = max(12, width - sum(w for w, (name, _) in zip(widths, columns) if name not in FLEXIBLE) - 3 * (len(columns) - 1))
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=False)
    for w, (name, justify) in zip(widths, columns):
        fixed = name not in FLEXIBLE
        table.add_column(name, justify=justify, no_wrap=True, overflow="ellipsis", min_width=w if fixed else None, max_width=None if fixed else room)
    for row in rows:
        table.add_row(*row)
    return table


def _tail(text: str, n: int) -> str:
    """The end of a long path: the file name is what tells files apart."""
    return text if len(text) <= n else "…" + text[-(n - 1):]


def _sources(view: StreamView, width: int) -> Table:
    wide = width >= WIDE
    many = len(view.status) > 1  # name the daemon only when several share the bus
    columns = [("source", "left"), *([("daemon", "left")] if many else []), ("state", "left"), ("windows", "right"), ("missed", "right"),
               ("score", "left"), ("now", "left"), ("events", "right")]
    if wide:
        columns += [("gaps", "right"), ("loss", "right"), ("rtf", "right"), ("p99 ms", "right"), ("file", "left")]
    rows = []
    for name, v in sorted(view.sources.items()):
        last, status = v.last, view.source_status(name)
        on = view.status.get(v.daemon, {}).get("detector", {}).get("on_score", 0.5)
        state = view.source_state(name)
        now = Text("BIRD", style="bold green") if last.get("anomaly") else Text("silent" if last.get("silent") else "no" if last else "-", style="dim")
        row = [name, *([v.daemon or "?"] if many else []), Text(state, style="bold red" if state in ("STALE", "down") else "green" if state == "up" else ""),
               str(v.received), Text(str(v.missed), style="red" if v.missed else ""), _bar(last.get("score"), on, 6 if not wide else 10), now, str(v.events)]
        if wide:
            lat = status.get("latency_ms") or {}
            row += [Text(str(v.gaps), style="yellow" if v.gaps else ""), f"{last['loss']:.4f}" if "loss" in last else "-",
                    f"{status['rtf']:.1f}x" if "rtf" in status else "-", f"{lat['p99']:.0f}" if lat else "-", _tail(str(last.get("file", "")), 44)]
        rows.append(row)
    return _table("sources", columns, rows, width)


def events_table(view: StreamView, width: int, limit: int) -> Table:
    wide = width >= WIDE
    columns = [("source", "left"), ("where", "left"), ("length s", "right"), ("peak", "right"), ("band kHz", "left")]
    if wide:
        columns = [("source", "left"), ("id", "right"), ("onset s", "right"), ("offset s", "right"), ("peak", "right"), ("band Hz", "left"), ("file", "left"), ("s into file", "right")]
    rows = []
    for e in list(view.events)[-limit:]:
        band = e.get("band_hz")
        if wide:
            rows.append([e["source"], str(e["event_id"]), f"{e['onset']:.2f}", f"{e['offset']:.2f}", f"{e['peak_score']:.2f}", f"{band[0]}-{band[1]}" if band else "",
                         _tail(str(e.get("file", "")), 44), f"{e['file_onset']:.2f}" if "file_onset" in e else ""])
        else:
            where = f"{_tail(e['file'], 30)} @ {e['file_onset']:.1f} s" if "file" in e else f"{e['onset']:.1f} s into the stream"
            rows.append([e["source"], where, f"{e['duration']:.1f}", f"{e['peak_score']:.2f}", f"{band[0] / 1000:.1f}-{band[1] / 1000:.1f}" if band else ""])
    return _table(f"last {limit} events" if len(view.events) > limit else "events", columns, rows, width)


def _daemons(view: StreamView, width: int) -> Table:
    wide = width >= WIDE
    columns = [("daemon", "left"), ("state", "left"), ("ran" if view.all_final() else "up", "right"), ("model", "left"), ("problems", "left")]
    if wide:
        columns[4:4] = [("dropped samples", "right"), ("skipped files", "right"), ("overflows", "right")]
    rows = []
    for daemon, s in sorted(view.status.items()):
        srcs = list(s.get("sources", {}).values())
        reports = [r for src in srcs for r in src.get("reports", [])]
        dropped, skipped = sum(src.get("dropped_samples", 0) for src in srcs), sum(src.get("files_skipped", 0) for src in srcs)
        problems = f"{_tail(reports[-1]['file'], 24)}: {reports[-1]['reason']}" if reports else ""
        if not wide and (dropped or skipped) and not reports:
            problems = f"{dropped} samples dropped, {skipped} files skipped"
        row = [daemon, "STALE" if view.stale(daemon) else s.get("state", "?"), duration_text(s.get("uptime_s", 0.0)), s.get("model", {}).get("sha256", "?")[:8]]
        if wide:
            row += [str(dropped), str(skipped), str(s.get("subscriber_overflows", 0))]
        rows.append([*row, problems])
    table = _table("daemons", columns, rows, width)
    unreadable = view.skipped + view.unreadable + view.unknown_versions
    if unreadable:
        table.caption = f"{unreadable} message(s) skipped: unreadable or of another schema version"
        table.caption_justify = "left"
    return table


def duration_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


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
           ready=None, curve=None, give_up=None, transient: bool = False) -> StreamView:
    """Receive until interrupted, until every daemon seen is finished (`until_finished`), or until
    `timeout_s` passes without a message, or `give_up()` is true after a quiet second (the demo's
    daemon has exited).  `ready` is called once the socket is connected."""
    console = console or Console(stderr=False)
    view = StreamView(sources=sources)
    subscriber = Subscriber(endpoint, topics, curve=curve)
    out = open(jsonl, "a", buffering=1) if jsonl else None
    if ready:
        ready()
    last_draw = 0.0
    last_message = time.monotonic()
    try:
        with Live(render(view, console.size.width), console=console, auto_refresh=False, transient=transient) if live else _NoLive() as display:
            while True:
                got = subscriber.receive(min(timeout_s, 1.0) if timeout_s else 1.0)
                view.skipped, view.first_skipped = subscriber.unreadable, subscriber.first_unreadable
                if got is None:
                    if timeout_s and time.monotonic() - last_message > timeout_s:
                        break
                    if give_up is not None and give_up():
                        break
                    if live:  # redraw anyway: a daemon going quiet must show up as stale
                        display.update(render(view, console.size.width), refresh=True)
                    continue
                last_message = time.monotonic()
                topic, msg = got
                if not view.update(topic, msg):
                    continue
                if out:
                    out.write(json.dumps({"topic": topic, "message": msg}) + "\n")
                now = time.monotonic()
                if live and (now - last_draw > 0.1 or msg.get("type") != "loss"):
                    display.update(render(view, console.size.width), refresh=True)
                    last_draw = now
                if until_finished and msg.get("type") == "status" and view.all_final():
                    break
            if live:
                display.update(render(view, console.size.width), refresh=True)
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
