"""`streamdet bench`: throughput and latency figures from one run, printed (not asserted)."""
from __future__ import annotations

import resource
import shlex
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from streamdet.bus.sockets import Subscriber
from streamdet.capture.audio import AudioError, FileDecoder, list_audio_candidates, probe, read_mono_blocks
from streamdet.config import BusConfig, Config, ModelConfig, SourceConfig
from streamdet.demo import demo_clips_dir, free_tcp_endpoint
from streamdet.detect.artifact import load
from streamdet.detect.features import LogMel, StreamingWindows
from streamdet.detect.model import rebuild_eager
from streamdet.service.daemon import Daemon

MODEL_BATCH = 64  # the daemon's default model.batch_windows: the end-to-end runs and the model alone


def run_bench(data: Path | None, model_path: Path | None, device: str, passes: int, console: Console | None = None, peers: dict[str, str] | None = None,
              spectrogram: bool = False, forms: bool = False) -> dict:
    """`peers`: name -> a shell command with `{data}` for the folder, timed on the same data in
    this run, process start included, beside this project's `predict` timed the same way."""
    console = console or Console()
    data = data or demo_clips_dir()
    model = load(model_path, device, optimise=True)
    p = model.features
    files = [f for f in list_audio_candidates(data)]
    console.print(f"bench: {len(files)} files from {data}; model {model.path} on {model.device}; torch threads {torch.get_num_threads()}")
    results: dict = {"data": str(data), "device": str(model.device), "threads": torch.get_num_threads(), "spectrogram": spectrogram}

    # End to end: the daemon itself, replaying at max pace to a real subscriber on loopback.
    e2e = []
    for _ in range(passes):
        e2e.append(_end_to_end(data, model_path, device, spectrogram))
    results["end_to_end_x_first"] = e2e[0]["x"]
    later = sorted(r["x"] for r in e2e[1:]) or [e2e[0]["x"]]
    results["end_to_end_x"] = later[len(later) // 2]  # the median pass after the first
    results["end_to_end_x_range"] = [later[0], later[-1]]
    results["end_to_end_missed"] = sum(r["missed"] for r in e2e)
    results["end_to_end_latency_ms"] = e2e[-1]["latency_ms"]

    results["peak_rss_mib_daemon"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)

    all_windows, audio_s = _stages(files, model, results)

    # Per-window latency of the model alone, one window at a time (the live case).
    saved = load(model_path, "cpu")  # as on disk, before the daemon's inference optimisation
    eager = rebuild_eager(saved.module, saved.meta["model"], LogMel(p), p.window_frames, p.n_mels).to(model.device)
    scripted = load(model_path, model.device).module
    one = all_windows[:1].to(model.device)
    for name, module in (("eager", eager), ("scripted", scripted), ("as_the_daemon_runs_it", model.module)):
        results[f"latency_ms_{name}"] = _latency(module, one)

    if forms:
        from streamdet.benchforms import run_forms

        results["forms"] = run_forms(saved, all_windows, console=console)
    if peers:
        ours = f"{shlex.quote(sys.executable)} -m train predict --data {{data}} --out {{tmp}}/predict.csv --cache {{tmp}}/cache"
        ours += f" --model {shlex.quote(str(model_path))}" if model_path is not None else ""
        results["vs"] = time_commands({"streamdet predict (cold cache)": ours, **peers}, data, audio_s)
    _print(console, results)
    return results


def time_commands(commands: dict[str, str], data: Path, audio_s: float) -> dict:
    """Each command's wall time on `data` (process start included) as a real-time factor; a
    command that fails is reported with its exit status and last line, and the others go on."""
    import subprocess
    import tempfile

    out = {}
    for name, command in commands.items():
        with tempfile.TemporaryDirectory() as tmp:
            line = command.replace("{data}", shlex.quote(str(data))).replace("{tmp}", shlex.quote(tmp))
            t = time.perf_counter()
            done = subprocess.run(line, shell=True, capture_output=True, text=True)
            wall = time.perf_counter() - t
        last = (done.stderr.strip().splitlines() or [""])[-1][:160]
        out[name] = {"x": round(audio_s / wall, 1), "wall_s": round(wall, 2), "exit": done.returncode, **({"error": last} if done.returncode else {})}
    return out


def _stages(files: list[Path], model, results: dict) -> tuple[torch.Tensor, float]:
    """Decoding, log-mel and the model timed apart, each on the output of the one before; returns
    every window and the seconds of audio."""
    p = model.features
    t = time.perf_counter()
    for f in files:  # the floor: libsndfile decoding at each file's own rate, nothing else
        try:
            for _ in read_mono_blocks(f, 8 * probe(f).samplerate):
                pass
        except AudioError:
            pass
    decode_only_s = time.perf_counter() - t
    t = time.perf_counter()
    decoded = []
    for f in files:
        try:
            decoded.append(np.concatenate(list(FileDecoder(f, p.sample_rate).blocks())))
        except (AudioError, ValueError):
            pass
    decode_s = time.perf_counter() - t
    audio_s = sum(len(x) for x in decoded) / p.sample_rate
    results["audio_s"] = round(audio_s, 1)
    results["decode_resample_x"] = round(audio_s / decode_s, 1)
    results["decode_only_x"] = round(audio_s / decode_only_s, 1)

    t = time.perf_counter()
    windows = []
    for x in decoded:
        framer = StreamingWindows(p, frontend=model.frontend, device=model.device)
        for i in range(0, len(x), p.sample_rate * 4):
            windows.append(framer.push(x[i : i + p.sample_rate * 4])[1].contiguous())
        windows.append(framer.finish()[1].contiguous())
    features_s = time.perf_counter() - t
    results["logmel_x"] = round(audio_s / features_s, 1)
    all_windows = torch.cat([w for w in windows if len(w)])
    results["windows"] = len(all_windows)

    rates = _model_alone(model, all_windows)
    results["model_windows_per_s"] = round(float(np.median(rates)))
    results["model_windows_per_s_range"] = [round(min(rates)), round(max(rates))]

    return all_windows, audio_s


def _model_alone(model, windows: torch.Tensor, rounds: int = 7, batches: int = 20) -> list[float]:
    """Windows per second of the model alone on `windows` in batches of MODEL_BATCH, warm (as a
    daemon running for hours is), one figure per round.  The demo's few windows are repeated to
    `batches` batches a round: a single pass over 88 windows timed TorchScript's first, profiling
    calls and the machine's noise more than the model."""
    timed = windows.repeat(-(-batches * MODEL_BATCH // len(windows)), *[1] * (windows.dim() - 1))[: batches * MODEL_BATCH]
    for i in range(3):
        model.errors(timed[i * MODEL_BATCH : (i + 1) * MODEL_BATCH])
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        for i in range(0, len(timed), MODEL_BATCH):
            model.errors(timed[i : i + MODEL_BATCH])
        rates.append(len(timed) / (time.perf_counter() - t))
    return rates


def _end_to_end(data: Path, model_path: Path | None, device: str, spectrogram: bool = False) -> dict:
    endpoint = free_tcp_endpoint()
    config = Config(
        sources=[SourceConfig(kind="replay", name="bench", path=str(data), pace="max")],
        model=ModelConfig(path=None if model_path is None else str(model_path), device=device, batch_windows=MODEL_BATCH, threads=torch.get_num_threads()),
        bus=BusConfig(endpoint=endpoint, wait_subscribers=1, wait_timeout_s=10, status_interval_s=60, spectrogram=spectrogram),
    )
    daemon = Daemon.from_config(config, name="bench")
    model, publisher = daemon.model, daemon.publisher
    counts = {"loss": 0, "missed": 0, "status": None}

    def subscribe():
        sub = Subscriber(endpoint)
        expected = 0
        try:
            for _, msg in sub.messages(idle_timeout_s=30):
                if msg["type"] == "loss":
                    counts["missed"] += msg["seq"] - expected
                    expected = msg["seq"] + 1
                    counts["loss"] += 1
                elif msg["type"] == "status" and msg["state"] != "running":
                    counts["status"] = msg
                    return
        finally:
            sub.close()

    listener = threading.Thread(target=subscribe, daemon=True)
    listener.start()
    t = time.perf_counter()
    daemon.run()
    wall = time.perf_counter() - t
    listener.join(30)
    publisher.close()
    channel = daemon.channels[0]
    audio_s = channel.reader.samples_read / model.features.sample_rate
    status = counts["status"] or {}
    return {"x": round(audio_s / wall, 1), "missed": counts["missed"], "latency_ms": status.get("sources", {}).get("bench", {}).get("latency_ms")}


def _latency(module, window: torch.Tensor, calls: int = 500) -> dict:
    times = []
    with torch.no_grad():
        for _ in range(20):
            module(window)
        for _ in range(calls):
            t = time.perf_counter()
            module(window)
            if window.is_cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3)}


def _print(console: Console, r: dict) -> None:
    table = Table(title="streamdet bench")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("audio in the data set", f"{r['audio_s']:.1f} s in {r['windows']} windows")
    table.add_row("decode alone (libsndfile, each file's own rate): the floor", f"{r['decode_only_x']:.0f}x real time")
    table.add_row("decode + resample alone", f"{r['decode_resample_x']:.0f}x real time")
    table.add_row("log-mel + windows alone", f"{r['logmel_x']:.0f}x real time")
    low, high = r["model_windows_per_s_range"]
    table.add_row(f"model alone (batches of {MODEL_BATCH}, warm, as the daemon runs it; median, range)", f"{r['model_windows_per_s']} ({low}-{high}) windows/s")
    table.add_row("end to end, first pass (cold)", f"{r['end_to_end_x_first']:.0f}x real time")
    table.add_row("end to end, steady state (median, range)", f"{r['end_to_end_x']:.0f}x ({r['end_to_end_x_range'][0]:.0f}-{r['end_to_end_x_range'][1]:.0f}x) real time")
    table.add_row("end to end steady / decode alone, / decode + resample", f"{r['end_to_end_x'] / r['decode_only_x']:.2f}, {r['end_to_end_x'] / r['decode_resample_x']:.2f}")
    table.add_row("windows missed by the subscriber", str(r["end_to_end_missed"]))
    if r["end_to_end_latency_ms"]:
        table.add_row("end to end latency p50 / p99", f"{r['end_to_end_latency_ms']['p50']:.1f} / {r['end_to_end_latency_ms']['p99']:.1f} ms")
    for name in ("eager", "scripted", "as_the_daemon_runs_it"):
        lat = r[f"latency_ms_{name}"]
        table.add_row(f"one window, {name.replace('_', ' ')} (model), p50 / p99", f"{lat['p50']:.3f} / {lat['p99']:.3f} ms")
    table.add_row("peak memory (RSS) after the end-to-end runs", f"{r['peak_rss_mib_daemon']:.0f} MiB")
    for name, v in r.get("vs", {}).items():
        shown = f"{v['x']:.0f}x real time ({v['wall_s']:.1f} s)" if not v["exit"] else f"failed, exit {v['exit']}: {v['error']}"
        table.add_row(f"{name}, same data, process start included", shown)
    console.print(table)


def run_mic_bench(device: str, seconds: float, model_path: Path | None, console: Console | None = None) -> dict:
    """The daemon as its own process, monitoring `device` in real time: its CPU use and latency."""
    import signal
    import subprocess
    import sys

    from streamdet.service.heapwatch import cpu_seconds

    console = console or Console()
    endpoint = free_tcp_endpoint()
    command = [sys.executable, "-m", "streamdet", "run", "--mic", device, "--endpoint", endpoint, "--wait-subscribers", "1", "--set", "bus.status_interval_s=1", "--log-level", "warning"]
    if model_path is not None:
        command += ["--model", str(model_path)]
    statuses, first = [], threading.Event()

    def subscribe(sub):
        for _, msg in sub.messages(idle_timeout_s=seconds + 30):
            if msg["type"] == "loss":
                first.set()
            elif msg["type"] == "status":
                statuses.append(msg)
                if msg["state"] != "running":
                    return

    sub = Subscriber(endpoint)
    listener = threading.Thread(target=subscribe, args=(sub,), daemon=True)
    listener.start()
    daemon = subprocess.Popen(command)

    try:
        if not first.wait(30):
            raise RuntimeError(f"no audio from microphone {device!r} within 30 s")
        time.sleep(3.0)  # past start-up work: imports, model load, the first windows
        c0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(seconds)
        c1, t1 = cpu_seconds(daemon.pid), time.monotonic()
    finally:
        daemon.send_signal(signal.SIGINT)
        daemon.wait(30)
        listener.join(10)
        sub.close()
    # The last status while monitoring: the final one also counts the windows scored while the
    # daemon stopped (after the source closed), which a station never waits for.
    running = [s for s in statuses if s["state"] == "running"] or statuses
    final = running[-1]["sources"]["mic"] if running else {}
    results = {
        "device": final.get("device"), "rate": final.get("rate"), "seconds": seconds,
        "cpu_percent_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 1),
        "latency_ms": final.get("latency_ms"), "windows": final.get("windows"), "gaps": final.get("gaps"), "dropped_samples": final.get("dropped_samples"),
    }
    _print_mic(console, results)
    return results


def _print_mic(console: Console, results: dict) -> None:
    table = Table(title="streamdet bench --mic")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("device, rate", f"{results['device']}, {results['rate']} Hz")
    table.add_row(f"daemon CPU while monitoring ({results['seconds']:g} s)", f"{results['cpu_percent_of_one_core']:.1f}% of one core")
    lat = results["latency_ms"] or {}
    table.add_row("latency, last sample in -> loss published, p50 / p99", f"{lat.get('p50', float('nan')):.1f} / {lat.get('p99', float('nan')):.1f} ms")
    table.add_row("windows, gaps, dropped samples", f"{results['windows']}, {results['gaps']}, {results['dropped_samples']}")
    console.print(table)
