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
        view = listen(endpoint, until_finished=True, timeout_s=DEMO_TIMEOUT_S, live=True, console=console)
        code = daemon.wait(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    summary = Table(title="what the subscriber received")
    for col in ("source", "windows", "missed", "windows scored bird", "events"):
        summary.add_column(col, justify="right")
    for name, v in view.sources.items():
        summary.add_row(name, str(v.received), str(v.missed), str(v.anomalous), str(v.events))
    console.print(summary)
    if code != 0 or not view.all_final():
        console.print(f"[red]the daemon exited with status {code}[/]" if code else "[red]no final status arrived[/]")
        return 1
    return 0
