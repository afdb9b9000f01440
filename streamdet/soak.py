"""`streamdet soak`: the daemon replaying a folder in a loop (at max pace, or `--pace`) for a given
time, with a subscriber counting every window: its memory every interval, the memory's slope, and
what was lost; with `--jsonl` and `--web` the other subscribers a station runs beside it.

Running for months is the product; this is how a leak, or a loss under load, shows up in an hour.
With `--heap DIR` the daemon also writes heap snapshots and malloc's counters (see heapwatch), and
the soak says which of them grows with RSS.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console

from streamdet.bus.sockets import Subscriber
from streamdet.demo import free_tcp_endpoint
from streamdet.service.heapwatch import read_counters, rss_mib, top_growth


def slope_mib_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per hour."""
    if len(samples) < 2:
        return float("nan")
    t, m = np.array(samples).T
    return float(np.polyfit(t / 3600.0, m, 1)[0])


def steady(samples: list[tuple[float, float]], interval_s: float) -> list[tuple[float, float]]:
    """The samples after start-up (model load, first allocations): after the first interval, or the
    second half of a soak shorter than two intervals."""
    return [s for s in samples if s[0] >= min(interval_s, samples[-1][0] / 2)] if samples else []


def halves(samples: list[tuple[float, float]]) -> tuple[float, float]:
    """The slope over each half: a leak grows in both, start-up and allocator warm-up in the first."""
    if len(samples) < 4:
        return float("nan"), float("nan")
    middle = samples[0][0] + (samples[-1][0] - samples[0][0]) / 2
    return (slope_mib_per_hour([s for s in samples if s[0] <= middle]), slope_mib_per_hour([s for s in samples if s[0] >= middle]))


def daemon_command(data: Path, endpoint: str, model: Path | None, overrides: list[str], subscribers: int, heap: Path | None, interval_s: float, pace: str = "max") -> list[str]:
    command = [sys.executable, "-m", "streamdet", "run", "--replay", str(data), "--loop", "--pace", pace, "--endpoint", endpoint,
               "--wait-subscribers", str(subscribers), "--log-level", "warning"]
    if model:
        command += ["--model", str(model)]
    for override in overrides:
        command += ["--set", override]
    if heap:
        command += ["--heap-snapshots", str(heap), "--heap-interval", str(interval_s)]
    return command


def start_subscribers(endpoint: str, jsonl: Path | None, web: bool, overrides: list[str]) -> dict[str, subprocess.Popen]:
    """The other subscribers a station runs: a JSONL listener, and the web server (serving the
    clips folder when recording is on) with a headless Chromium keeping its page open."""
    out = {}
    if jsonl:
        out["listener"] = subprocess.Popen([sys.executable, "-m", "streamdet", "listen", "--endpoint", endpoint, "--jsonl", str(jsonl), "--quiet"])
    if web:
        port = int(free_tcp_endpoint().rsplit(":", 1)[1])
        clips = next((o.split("=", 1)[1] for o in overrides if o.startswith("recording.directory=")), None)
        out["web"] = subprocess.Popen([sys.executable, "-m", "streamdet", "web", "--endpoint", endpoint, "--listen", f"127.0.0.1:{port}", *(["--clips", clips] if clips else [])],
                                      stderr=subprocess.DEVNULL)
        browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
        if browser is None:
            raise RuntimeError("--web: no Chromium to keep the page open (Debian: apt-get install chromium)")
        time.sleep(3)  # the server's socket first
        out["browser"] = subprocess.Popen([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0", f"http://127.0.0.1:{port}/"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


def run_soak(data: Path, minutes: float, model: Path | None = None, interval_s: float = 60.0, console: Console | None = None,
             overrides: list[str] = (), jsonl: Path | None = None, heap: Path | None = None, pace: str = "max", web: bool = False) -> dict:
    console = console or Console()
    endpoint = free_tcp_endpoint()
    sub = Subscriber(endpoint, topics=("loss.", "status"))
    others = start_subscribers(endpoint, jsonl, web, list(overrides))
    daemon = subprocess.Popen(daemon_command(data, endpoint, model, list(overrides), 1 + ("listener" in others) + ("web" in others), heap, interval_s, pace))
    watched = {"daemon": daemon, **{k: v for k, v in others.items() if k != "browser"}}  # a browser is many processes: only its life is watched
    started, next_sample = time.monotonic(), 0.0
    samples: dict[str, list] = {name: [] for name in watched}
    windows, missed, last_seq, run_id = 0, 0, None, None
    try:
        while time.monotonic() - started < minutes * 60:
            for name, process in {"daemon": daemon, **others}.items():
                if process.poll() is not None:
                    raise RuntimeError(f"the {name} exited with status {process.returncode} during the soak")
            got = sub.receive(timeout_s=0.5)
            if got is not None and got[1]["type"] == "loss":
                msg = got[1]
                if msg["run_id"] != run_id:
                    run_id, last_seq = msg["run_id"], None
                if last_seq is not None and msg["seq"] != last_seq + 1:
                    missed += max(0, msg["seq"] - last_seq - 1)
                last_seq = msg["seq"]
                windows += 1
            elapsed = time.monotonic() - started
            if elapsed >= next_sample and windows:
                for name, process in watched.items():
                    samples[name].append((elapsed, rss_mib(process.pid)))
                console.print(f"{elapsed / 60:6.1f} min  windows {windows:>10,}  missed {missed}  RSS " + "  ".join(f"{n} {s[-1][1]:.1f} MiB" for n, s in samples.items()))
                next_sample += interval_s
    finally:
        for process in (*others.values(), daemon):
            process.terminate()
            process.wait(60)
        sub.close()
    return _report(samples, windows, missed, (time.monotonic() - started) / 60, interval_s, heap, console)


def _report(samples: dict, windows: int, missed: int, minutes: float, interval_s: float, heap: Path | None, console: Console) -> dict:
    rss = steady(samples["daemon"], interval_s)
    first_half, second_half = halves(rss)
    result = {"minutes": round(minutes, 2), "windows": windows, "missed": missed,
              "rss_mib": [round(m, 1) for _, m in samples["daemon"]], "slope_mib_per_hour": round(slope_mib_per_hour(rss), 2),
              "slope_halves_mib_per_hour": [round(first_half, 2), round(second_half, 2)]}
    console.print(f"soak: {result['minutes']} min, {windows:,} windows, {missed} missed; RSS {result['rss_mib'][0] if rss else '-'} -> "
                  f"{result['rss_mib'][-1] if rss else '-'} MiB, slope {result['slope_mib_per_hour']} MiB/h after the first interval "
                  f"({result['slope_halves_mib_per_hour'][0]} and {result['slope_halves_mib_per_hour'][1]} MiB/h over its halves)")
    for name in ("listener", "web"):
        if samples.get(name):
            result[f"{name}_rss_mib"] = [round(m, 1) for _, m in samples[name]]
            result[f"{name}_slope_mib_per_hour"] = round(slope_mib_per_hour(steady(samples[name], interval_s)), 2)
            console.print(f"{name}: RSS {samples[name][0][1]:.1f} -> {samples[name][-1][1]:.1f} MiB, slope {result[f'{name}_slope_mib_per_hour']} MiB/h")
    if heap:
        result["heap"] = heap_report(heap, interval_s, console)
    return result


def heap_report(folder: Path, interval_s: float, console: Console) -> dict:
    """Which of the daemon's own counters grows with its RSS, and the Python lines that grew most."""
    counters = read_counters(folder)
    if len(counters) < 2:
        console.print("heap: fewer than two samples; nothing to compare")
        return {}
    report = {}
    for key in ("rss_mib", "traced_mib", "malloc_in_use_mib", "malloc_free_mib", "malloc_mmapped_mib"):
        if key in counters[0]:
            series = steady([(c["elapsed_s"], c[key]) for c in counters], interval_s)
            report[key] = {"first": series[0][1], "last": series[-1][1], "slope_mib_per_hour": round(slope_mib_per_hour(series), 2),
                           "slope_halves_mib_per_hour": [round(h, 2) for h in halves(series)]}
            console.print(f"heap: {key:<20} {series[0][1]:8.1f} -> {series[-1][1]:8.1f} MiB, slope {report[key]['slope_mib_per_hour']:7.2f} MiB/h"
                          f" (halves {report[key]['slope_halves_mib_per_hour'][0]}, {report[key]['slope_halves_mib_per_hour'][1]})")
    report["threads"] = [counters[1]["threads"], counters[-1]["threads"]]
    report["open_files"] = [counters[1]["open_files"], counters[-1]["open_files"]]
    first = next(c["index"] for c in counters if c["elapsed_s"] >= min(interval_s, counters[-1]["elapsed_s"] / 2))
    report["grew_most"] = top_growth(folder, first, counters[-1]["index"])
    console.print(f"heap: threads {report['threads'][0]} -> {report['threads'][1]}, open files {report['open_files'][0]} -> {report['open_files'][1]}; "
                  f"Python allocations that grew most since snapshot {first}:")
    for line in report["grew_most"]:
        console.print("  " + line)
    return report
