"""`streamdet soak`: the daemon replaying a folder in a loop at max pace for a given time, with a
subscriber counting every window: its memory every minute, the memory's slope, and what was lost.

Running for months is the product; this is how a leak, or a loss under load, shows up in an hour.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from .bus import Subscriber
from .demo import free_tcp_endpoint


def rss_mib(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def slope_mib_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per hour."""
    if len(samples) < 2:
        return float("nan")
    t, m = np.array(samples).T
    return float(np.polyfit(t / 3600.0, m, 1)[0])


def run_soak(data: Path, minutes: float, model: Path | None = None, interval_s: float = 60.0, console: Console | None = None) -> dict:
    console = console or Console()
    endpoint = free_tcp_endpoint()
    command = [sys.executable, "-m", "streamdet", "run", "--replay", str(data), "--loop", "--pace", "max", "--endpoint", endpoint, "--wait-subscribers", "1", "--log-level", "warning"]
    if model:
        command += ["--model", str(model)]
    sub = Subscriber(endpoint, topics=("loss.", "status"))
    daemon = subprocess.Popen(command)
    started, next_sample = time.monotonic(), 0.0
    samples, windows, missed, last_seq, run_id = [], 0, 0, None, None
    try:
        while time.monotonic() - started < minutes * 60:
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited with status {daemon.returncode} during the soak")
            got = sub.receive(timeout_s=0.5)
            if got is not None:
                _, msg = got
                if msg["type"] == "loss":
                    if msg["run_id"] != run_id:
                        run_id, last_seq = msg["run_id"], None
                    if last_seq is not None and msg["seq"] != last_seq + 1:
                        missed += max(0, msg["seq"] - last_seq - 1)
                    last_seq = msg["seq"]
                    windows += 1
            elapsed = time.monotonic() - started
            if elapsed >= next_sample and windows:
                samples.append((elapsed, rss_mib(daemon.pid)))
                console.print(f"{elapsed / 60:6.1f} min  RSS {samples[-1][1]:7.1f} MiB  windows {windows:>10,}  missed {missed}")
                next_sample += interval_s
    finally:
        daemon.terminate()
        daemon.wait(60)
        sub.close()
    # The first minute holds start-up (model load, first allocations): the slope is over the rest.
    steady = [s for s in samples if s[0] >= min(interval_s, samples[-1][0] / 2)] if samples else []
    result = {"minutes": round((time.monotonic() - started) / 60, 2), "windows": windows, "missed": missed,
              "rss_mib": [round(m, 1) for _, m in samples], "slope_mib_per_hour": round(slope_mib_per_hour(steady), 2)}
    console.print(f"soak: {result['minutes']} min, {windows:,} windows, {missed} missed; RSS {result['rss_mib'][0] if samples else '-'} -> {result['rss_mib'][-1] if samples else '-'} MiB, slope {result['slope_mib_per_hour']} MiB/h after the first minute")
    return result
