"""The bundled demonstration: the daemon replays the bundled clips; this process subscribes and shows them."""
from __future__ import annotations

import importlib.resources
import socket
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .listen import listen

DEMO_TIMEOUT_S = 120


def demo_clips_dir() -> Path:
    return Path(str(importlib.resources.files("streamdet") / "assets" / "demo"))


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def run_demo(pace: str = "max", model: Path | None = None) -> int:
    console = Console()
    endpoint = free_tcp_endpoint()
    clips = demo_clips_dir()
    command = [sys.executable, "-m", "streamdet", "run", "--replay", str(clips), "--pace", pace, "--endpoint", endpoint, "--wait-subscribers", "1", "--log-level", "warning"]
    if model is not None:
        command += ["--model", str(model)]
    console.print(f"[bold]streamdet demo[/]: the daemon replays {len(list(clips.iterdir()))} bundled clips from {clips} at pace {pace}; this subscriber shows what arrives on {endpoint}.")
    daemon = subprocess.Popen(command)
    try:
        view = listen(endpoint, until_finished=True, timeout_s=DEMO_TIMEOUT_S, live=True, console=console, give_up=lambda: daemon.poll() is not None)
        code = daemon.wait(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    console.print()
    summary = Table(title="what the subscriber received, file by file")
    for col in ("file", "windows", "windows scored bird", "top score", "events"):
        summary.add_column(col, justify="left" if col == "file" else "right")
    for (_, file), f in sorted(view.files.items()):
        summary.add_row(file, str(f["windows"]), str(f["bird_windows"]), f"{f['top_score']:.2f}", str(f["events"]))
    console.print(summary)
    for name, v in view.sources.items():
        console.print(f"source {name}: {v.received} windows received, {v.missed} missed (from gaps in seq)")
    if code != 0 or not view.all_final():
        console.print(f"[red]the daemon exited with status {code}[/]" if code else "[red]no final status arrived[/]")
        return 1
    return 0
