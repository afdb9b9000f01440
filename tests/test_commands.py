"""The README's main job and the benchmark, run as a user would."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, streamdet_command

from streamdet.demo import demo_clips_dir

from audiogen import clip, write

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)


def test_demo_replays_every_bundled_clip_to_a_subscriber():
    result = subprocess.run(streamdet_command("demo"), capture_output=True, text=True, cwd=REPO, timeout=180)
    assert result.returncode == 0, result.stderr
    for clip_path in demo_clips_dir().iterdir():
        assert clip_path.name[:18] in result.stdout
    received = re.findall(r"(\d+) windows received, (\d+) missed", result.stdout)
    assert received and all(int(n) > 0 and missed == "0" for n, missed in received), received


def test_bench_prints_its_figures(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write(data / "a.wav", clip(20.0, 44100, seed=1), 44100)
    write(data / "b.flac", clip(20.0, 16000, [(3, 1)], seed=2), 16000)
    figures = tmp_path / "bench.json"
    reader = f"{sys.executable} -c \"import pathlib, sys; [p.read_bytes() for p in pathlib.Path(sys.argv[1]).iterdir()]\" {{data}}"  # a stand-in for a peer
    vs = ["--vs", f"reader={reader}", "--vs", "broken=echo no such detector >&2; exit 3"]
    result = subprocess.run(streamdet_command("bench", "--data", str(data), "--model", str(tiny_model), "--passes", "2", "--json", str(figures), *vs), capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "end to end, steady state" in result.stdout and "reader, same data, process start included" in result.stdout
    got = json.loads(figures.read_text())
    assert got["audio_s"] == 40.0 and got["end_to_end_missed"] == 0
    assert got["end_to_end_x"] > 1 and got["latency_ms_scripted"]["p99"] > 0
    low, high = got["model_windows_per_s_range"]
    assert 0 < low <= got["model_windows_per_s"] <= high and "model alone (batches of 64, warm" in result.stdout
    assert got["decode_only_x"] > got["decode_resample_x"] > 0 and "end to end steady / decode alone" in result.stdout
    assert set(got["vs"]) == {"streamdet predict (cold cache)", "reader", "broken"}
    assert got["vs"]["reader"]["exit"] == 0 and got["vs"]["reader"]["x"] > 0 and got["vs"]["streamdet predict (cold cache)"]["exit"] == 0
    assert got["vs"]["broken"] == {**got["vs"]["broken"], "exit": 3, "error": "no such detector"}


def test_front_door_mistakes_are_one_line_and_exit_2(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "some.mp3").write_bytes(b"\xff\xfb" + bytes(range(256)) * 8)
    cases = [
        (("listen", "--endpoint", "nonsense"), "--endpoint: expected a ZeroMQ endpoint"),
        (("listen", "--jsonl", str(tmp_path / "missing" / "x.jsonl")), "no such folder"),
        (("listen", "--timeout", "-1"), "--timeout: expected a positive number"),
        (("bench", "--data", str(tmp_path / "empty")), "no audio files to measure with"),
        (("bench", "--vs", "nonsense"), "--vs 'nonsense': expected NAME=COMMAND"),
        (("listen", "--endpoint", "tcp://127.0.0.1:99999"), "--endpoint: expected a TCP port from 1 to 65535"),
        (("export", "--endpoint", "tcp://127.0.0.1:1", "--out", str(tmp_path / "out"), "--curve-secret-key", str(tmp_path / "none"), "--curve-server-key", str(tmp_path / "none")), "not a readable CURVE certificate"),
        (("mqtt", "--curve-secret-key", str(tmp_path / "none"), "--curve-server-key", str(tmp_path / "none")), "not a readable CURVE certificate"),
        (("run", "--model", str(tmp_path / "some.mp3"), "--replay", str(tmp_path / "empty")), "not a TorchScript archive ("),
    ]
    for args, expected in cases:
        result = subprocess.run(streamdet_command(*args), capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 2, (args, result.stderr[-500:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in result.stderr, (args, result.stderr[-500:])
        assert not args[0] == "run" or lines[0].endswith("...)")  # a long reason is cut with a mark, never mid-sentence


def test_listen_to_an_address_nobody_publishes_on_says_so_and_fails():
    result = subprocess.run(streamdet_command("listen", "--endpoint", "tcp://127.0.0.1:1", "--timeout", "1", "--quiet"), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1 and "no message arrived from tcp://127.0.0.1:1 within 1 s" in result.stderr


def test_soak_prints_memory_every_interval_and_counts_every_window(tiny_model, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write(data / "a.wav", clip(6.0, 22050, [(2, 1)], seed=1), 22050)
    figures, heap, jsonl = tmp_path / "soak.json", tmp_path / "heap", tmp_path / "all.jsonl"
    result = subprocess.run(streamdet_command("soak", "--data", str(data), "--minutes", "0.3", "--interval", "5", "--model", str(tiny_model), "--json", str(figures),
                                              "--heap", str(heap), "--jsonl", str(jsonl), "--set", "recording.enabled=true", "--set", f"recording.directory={tmp_path / 'clips'}"),
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(figures.read_text())
    assert got["windows"] > 100 and got["missed"] == 0 and len(got["rss_mib"]) >= 3
    assert all(50 < m < 2000 for m in got["rss_mib"]) and "slope" in result.stdout
    # The second subscriber recorded what the soak counted; the daemon wrote its heap snapshots and
    # malloc's counters every interval, and the soak compared them.
    assert sum(1 for line in jsonl.read_text().splitlines() if '"type": "loss"' in line) >= got["windows"] // 2
    assert len(list(heap.glob("heap-*.snapshot"))) >= 3 and {"traced_mib", "malloc_in_use_mib"} <= set(got["heap"])
    assert got["heap"]["grew_most"] and "MiB" in got["heap"]["grew_most"][0] and "listener" in result.stdout


def test_demo_with_a_daemon_that_cannot_start_returns_at_once(tmp_path):
    result = subprocess.run(streamdet_command("demo", "--model", str(tmp_path / "missing.pt")), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 1 and "missing.pt: no such file" in result.stderr
    assert "the daemon exited with status 2" in result.stdout


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_the_demo_leaves_no_daemon_behind(signum):
    """SIGTERM or closing the terminal (SIGHUP) ends the demo and its daemon; a SIGKILLed demo's
    daemon gets SIGTERM from the kernel."""
    demo = subprocess.Popen(streamdet_command("demo", "--pace", "realtime"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while not (children := _children(demo.pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert children, "the demo started no daemon"
        time.sleep(1.5)
        demo.send_signal(signum)
        demo.wait(30)
        deadline = time.monotonic() + 20
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(c) for c in children), "the daemon outlived the demo"
    finally:
        for c in _children(demo.pid):
            os.kill(c, signal.SIGKILL)
        demo.kill()
