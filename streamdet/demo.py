"""The bundled demonstration: the daemon replays the bundled clips; this process subscribes and shows them."""
from __future__ import annotations

import ctypes
import importlib.resources
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

from streamdet.subscribers.listen import duration_text, events_table, listen

DEMO_TIMEOUT_S = 120


def demo_clips_dir() -> Path:
    return Path(str(importlib.resources.files("streamdet") / "assets" / "demo"))


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


PR_SET_PDEATHSIG = 1


def die_with(parent: int):
    """For the daemon, between fork and exec: SIGTERM when the demo dies, however it dies (even
    SIGKILL; Linux's PR_SET_PDEATHSIG), so no daemon is left waiting for subscribers forever."""
    def arm() -> None:
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            return  # not Linux: the demo's own handlers below still stop it
        if os.getppid() != parent:  # the demo died before the prctl took hold
            os.kill(os.getpid(), signal.SIGTERM)

    return arm


def _exit_on(signum, frame):
    raise SystemExit(128 + signum)  # through the `finally` that stops the daemon


def run_demo(pace: str = "max", model: Path | None = None) -> int:
    console = Console()
    endpoint = free_tcp_endpoint()
    clips = demo_clips_dir()
    command = [sys.executable, "-m", "streamdet", "run", "--replay", str(clips), "--pace", pace, "--endpoint", endpoint, "--wait-subscribers", "1", "--log-level", "warning"]
    if model is not None:
        command += ["--model", str(model)]
    console.print(f"[bold]streamdet demo[/]: a daemon replays the {len(list(clips.iterdir()))} bundled clips at pace {pace}; this subscriber shows what it publishes.")
    # Closing the terminal (SIGHUP) or a SIGTERM ends the demo and its daemon; to the daemon
    # alone SIGHUP would be a reload.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _exit_on)
    daemon = subprocess.Popen(command, preexec_fn=die_with(os.getpid()))
    try:
        # The live view goes when the run ends, so that the summary below fits a 24-row terminal.
        view = listen(endpoint, until_finished=True, timeout_s=DEMO_TIMEOUT_S, live=True, console=console, give_up=lambda: daemon.poll() is not None, transient=True)
        code = daemon.wait(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(timeout=15)
            except subprocess.TimeoutExpired:
                daemon.kill()
    summary = Table(title="what the subscriber received, file by file", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for col in ("file", "windows", "scored bird", "top score", "events"):
        summary.add_column(col, justify="left" if col == "file" else "right", no_wrap=True, overflow="ellipsis")
    for (_, file), f in sorted(view.files.items()):
        summary.add_row(file, str(f["windows"]), str(f["bird_windows"]), f"{f['top_score']:.2f}", str(f["events"]))
    console.print(summary)
    console.print(events_table(view, console.size.width, 4))
    for name, v in view.sources.items():
        status = view.status.get(v.daemon, {})
        console.print(f"source {name}: {v.received} windows received, {v.missed} missed (from gaps in seq), {v.events} events; the daemon {status.get('state', '?')} after {duration_text(status.get('uptime_s', 0.0))}")
    if code != 0 or not view.all_final():
        console.print(f"[red]the daemon exited with status {code}[/]" if code else "[red]no final status arrived[/]")
        return 1
    return 0
