"""Running for months: systemd notify and watchdog, signals, reload, clip recording, the proxy, logs."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import REPO, collect, start_daemon, streamdet_command

from streamdet.capture.audio import load_resampled
from streamdet.demo import free_tcp_endpoint

from audiogen import clip, write

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)


def notify_socket(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(0.2)
    return sock, path


def drain(sock, into: list, seconds: float):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            into.append(sock.recv(4096).decode())
        except socket.timeout:
            pass


def test_notify_ready_watchdog_and_stopping(tiny_model, tmp_path, endpoint):
    write(tmp_path / "a.wav", clip(30.0, 22050, seed=1), 22050)
    sock, path = notify_socket(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    daemon = start_daemon("--replay", str(tmp_path), "--model", str(tiny_model), "--endpoint", endpoint, env=env)
    got = []
    drain(sock, got, 6.0)
    daemon.send_signal(signal.SIGTERM)
    drain(sock, got, 3.0)
    assert daemon.wait(30) == 0
    states = [line for message in got for line in message.splitlines()]
    assert states[0] == "READY=1"  # nothing before it: ready means the model and the source are up
    assert states.count("WATCHDOG=1") >= 5  # every 0.2 s (half of WATCHDOG_USEC) from the processing loop
    assert states[-1] == "STOPPING=1"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
@pytest.mark.parametrize("name", ["streamdet.service", "streamdet-web.service"])
def test_the_unit_files_verify_and_are_hardened(tmp_path, name):
    unit = (REPO / "systemd" / name).read_text().replace("/opt/streamdet/.venv/bin/streamdet", str(REPO / ".venv" / "bin" / "streamdet"))
    (tmp_path / name).write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    # Hardened well past systemd's "OK" (below 4.0); the daemon's unit was 2.3 before its last round of directives.
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(tmp_path / name)], capture_output=True, text=True, timeout=60)
    exposure = float(security.stdout.split(f"Overall exposure level for {name}:")[1].split()[0])
    assert exposure <= 1.5, security.stdout[-2000:]


def test_sigterm_publishes_everything_then_stopped(tiny_model, tmp_path, endpoint):
    write(tmp_path / "long.wav", clip(20.0, 22050, [(2.0, 1.0)], seed=2), 22050)
    daemon = start_daemon("--replay", str(tmp_path), "--pace", "realtime", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1")

    def stop_at_third_window(topic, msg):
        if msg["type"] == "loss" and msg["seq"] == 3:
            daemon.send_signal(signal.SIGTERM)

    started = time.monotonic()
    got = collect(endpoint, on_message=stop_at_third_window, timeout_s=30)
    assert daemon.wait(30) == 0
    assert time.monotonic() - started < 12  # well before the 20 s file is over
    losses = [m for _, m, _ in got if m["type"] == "loss"]
    final = got[-1][1]
    assert final["type"] == "status" and final["state"] == "stopped"
    assert [m["seq"] for m in losses] == list(range(len(losses))) == list(range(final["sources"]["replay"]["windows"]))


def write_config(path, model, replay_dir, on_score=0.5, model_keys="", bus_keys="", status_interval_s=0.5):
    path.write_text(f"sources:\n  - {{kind: replay, name: r, path: {replay_dir}, pace: 4x, loop: true}}\nmodel: {{path: {model}{model_keys}}}\n"
                    f"detector: {{on_score: {on_score}, off_score: 0.3}}\nbus: {{status_interval_s: {status_interval_s}{bus_keys}}}\n")


def run_with_reloads(tiny_model, tmp_path, endpoint, steer):
    """A looping replay from a config; `steer(msg, statuses, daemon, config)` sees every status.
    Returns (every message, the daemon's stderr, the daemon, the config's path)."""
    replay = tmp_path / "replay"
    replay.mkdir()
    write(replay / "a.wav", clip(4.0, 22050, [(1.0, 1.0)], seed=3), 22050)
    config = tmp_path / "daemon.yaml"
    write_config(config, tiny_model, replay)
    daemon = start_daemon("--config", str(config), "--endpoint", endpoint, "--wait-subscribers", "1")
    statuses = []

    def on_message(topic, msg):
        if msg["type"] == "status":
            statuses.append(msg)
            steer(msg, statuses, daemon, config, replay)

    got = collect(endpoint, on_message=on_message, timeout_s=60)
    _, stderr = daemon.communicate(timeout=30)
    return got, stderr, daemon, statuses


def test_sighup_reloads_a_good_config_and_keeps_running_on_a_bad_one(tiny_model, tmp_path, endpoint):
    def steer(msg, statuses, daemon, config, replay):
        if len(statuses) == 2:
            write_config(config, REPO / "streamdet" / "assets" / "default.pt", replay, on_score=0.6)
            daemon.send_signal(signal.SIGHUP)
        elif msg["reloads"]["done"] == 1 and msg["reloads"]["rejected"] == 0 and msg["detector"]["on_score"] == 0.6:
            config.write_text(config.read_text() + "detector_typo: 1\n")
            daemon.send_signal(signal.SIGHUP)
        elif msg["reloads"]["rejected"] == 1:
            daemon.send_signal(signal.SIGTERM)

    got, stderr, daemon, statuses = run_with_reloads(tiny_model, tmp_path, endpoint, steer)
    assert daemon.returncode == 0, stderr
    first, final = statuses[0], got[-1][1]
    assert final["state"] == "stopped" and final["reloads"] == {"done": 1, "rejected": 1, "last": final["reloads"]["last"]}
    assert final["model"]["sha256"] != first["model"]["sha256"] and final["model"]["mode"] == "contrast"
    assert final["detector"]["on_score"] == 0.6  # the good reload stayed in force after the bad one
    assert "detector_typo: unknown key" in final["reloads"]["last"]["reason"]
    assert re.search(r"reload rejected, still running the previous config and model: .*detector_typo", stderr)
    losses = [m for _, m, _ in got if m["type"] == "loss"]
    assert [m["seq"] for m in losses] == list(range(len(losses)))  # one stream across both reloads
    # The 4-s file loops: each pass starts 4 s of stream time after the last, so a window's offset in
    # the file is its start modulo 4 s, also across a reload in the middle of the file.
    assert all(abs(m["offset"] - m["t_start"] % 4.0) < 2e-3 for m in losses), [(m["t_start"], m["offset"]) for m in losses if abs(m["offset"] - m["t_start"] % 4.0) >= 2e-3]


def replay_recording(tiny_model, replay, endpoint, recording: str, timeout_s: float = 60, detector: str = "min_event_s: 1.4"):
    """Replay a folder at max pace with clip recording on (`recording`, `detector`: the sections'
    YAML keys); returns every message and the events' ends."""
    config = replay.parent / "daemon.yaml"
    config.write_text(f"sources: [{{kind: replay, name: yard, path: {replay}, pace: max}}]\nmodel: {{path: {tiny_model}}}\ndetector: {{{detector}}}\nrecording: {{enabled: true, {recording}}}\n")
    daemon = start_daemon("--config", str(config), "--endpoint", endpoint, "--wait-subscribers", "1")
    got = collect(endpoint, timeout_s=timeout_s)
    assert daemon.wait(timeout_s) == 0
    return got, [m for _, m, _ in got if m["type"] == "event" and m["state"] == "end"]


def test_events_are_recorded_with_pre_and_post_roll_taken_from_the_stream(tiny_model, tmp_path, endpoint):
    replay = tmp_path / "replay"
    replay.mkdir()
    source = write(replay / "calls.wav", clip(12.0, 44100, [(3.0, 1.5), (8.0, 1.0)], seed=4), 44100)
    clips = tmp_path / "clips"
    got, ends = replay_recording(tiny_model, replay, endpoint, f"directory: {clips}, pre_roll_s: 1.0, post_roll_s: 0.5")
    assert len(ends) == 2
    audio = load_resampled(source, 22050)
    for end in ends:
        path = tmp_path / end["clip"] if not end["clip"].startswith("/") else type(tmp_path)(end["clip"])
        assert path.exists() and path.parent == clips / "yard"
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["event_id"] == end["event_id"] and sidecar["file"] == "calls.wav" and sidecar["band_hz"] == end["band_hz"]
        assert sidecar["clip_start"] == pytest.approx(max(end["onset"] - 1.0, 0.0), abs=1e-3)
        assert sidecar["clip_end"] == pytest.approx(min(end["offset"] + 0.5, 12.0), abs=1e-3)
        assert not sidecar["truncated"]
        recorded, rate = sf.read(str(path), dtype="float32")
        assert rate == 22050
        a = int(round(sidecar["clip_start"] * rate))
        np.testing.assert_allclose(recorded, audio[a : a + len(recorded)], atol=2e-5)  # 24-bit FLAC of the very samples scored
    final = got[-1][1]["sources"]["yard"]["recording"]
    assert final["written"] == 2 and final["failed"] == 0


def test_clips_recorded_at_max_pace_hold_all_the_audio_they_announce(tiny_model, tmp_path, endpoint):
    """At --pace max the reader takes large reads and the writer races ahead: a clip must still
    find its pre-roll and its post-roll in the ring (24 files, 288 s, through a 30 s ring)."""
    replay = tmp_path / "replay"
    replay.mkdir()
    for i in range(24):
        write(replay / f"f{i:02d}.wav", clip(12.0, 22050, [(4.0, 2.0), (9.0, 1.5)], seed=40 + i), 22050)
    _, ends = replay_recording(tiny_model, replay, endpoint, f"directory: {tmp_path / 'clips'}, pre_roll_s: 2.0, post_roll_s: 2.0", timeout_s=120)
    assert len(ends) >= 24
    for end in ends:
        path = Path(end["clip"])
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert not sidecar["truncated"], json.dumps(sidecar)
        assert sf.info(str(path)).duration == pytest.approx(sidecar["clip_end"] - sidecar["clip_start"], abs=1e-3) and sf.info(str(path)).duration > 2.0


def test_eight_minutes_of_continuous_song_give_events_no_longer_than_the_maximum_each_clip_holding_its_onset(tiny_model, tmp_path, endpoint):
    """A chorus (here: every window a hit, on_score 0) is cut at max_event_s into events that follow
    each other; every one ends, and every clip holds its event's onset with the pre-roll."""
    replay = tmp_path / "replay"
    replay.mkdir()
    write(replay / "chorus.wav", clip(480.0, 22050, [(t, 1.5) for t in range(0, 480, 2)], seed=9), 22050)
    clips = tmp_path / "clips"
    got, ends = replay_recording(tiny_model, replay, endpoint, f"directory: {clips}, pre_roll_s: 2.0, post_roll_s: 1.0", 120, "on_score: 0.0, off_score: 0.0, max_event_s: 20")
    assert len(ends) == 24 and all(e["duration"] <= 20.0 for e in ends)
    assert all(e.get("cut") for e in ends[:-1]) and [e.get("continues") for e in ends[1:]] == [e["event_id"] for e in ends[:-1]]
    for end in ends:
        sidecar = json.loads(Path(end["clip"]).with_suffix(".json").read_text())
        # The onset with its pre-roll is always there; only a post-roll past the end of the file is not.
        assert sidecar["clip_start"] == pytest.approx(max(0.0, end["onset"] - 2.0), abs=0.01), json.dumps(sidecar)
        assert sidecar["truncated"] == (end["offset"] + 1.0 > 480.0)


def test_stretches_without_an_event_are_recorded_for_a_check_at_most_as_often_as_asked(tiny_model, tmp_path, endpoint):
    """Only windows at the top score (1.0) reach the event thresholds, so nothing is borderline:
    each minute's end records the best window outside events still within reach of the ring,
    named _cN beside the events' clips, its sidecar `kind: check`; status counts them apart."""
    replay = tmp_path / "replay"
    replay.mkdir()
    write(replay / "long.wav", clip(150.0, 22050, [(20.0, 1.0), (100.0, 1.0)], seed=6), 22050)
    clips = tmp_path / "clips"
    got, ends = replay_recording(tiny_model, replay, endpoint, f"directory: {clips}, checks_per_hour: 60, pre_roll_s: 1.0, post_roll_s: 1.0", 60, "on_score: 1.0, off_score: 1.0")
    events = [(m["onset"], m["offset"]) for m in ends]
    # Windows an event did not hold (it holds from its onset to the window that closed it).
    scores = {m["t_start"]: m["score"] for _, m, _ in got if m["type"] == "loss" and m["score"] < 1.0 and not any(a <= m["t_start"] <= b + 1.0 for a, b in events)}
    # By the last part of the name: the hex part before it may start with a "c" too.
    checks = sorted(p for p in (clips / "yard").glob("yard_*.flac") if p.name.rsplit("_", 1)[1].startswith("c"))
    assert [p.name.rsplit("_", 1)[1] for p in checks] == ["c1.flac", "c2.flac"]
    for period_end, path in zip((60.0, 120.0), checks):
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["kind"] == "check" and sidecar["writer"] == "streamdet" and sidecar["file"] == "long.wav"
        reach = [t for t in scores if period_end - 26.0 <= t < period_end]
        assert sidecar["onset"] in reach and sidecar["peak_score"] == pytest.approx(max(scores[t] for t in reach), abs=1e-4)
        assert sf.info(str(path)).duration == pytest.approx(1.0 + 1.0 + 1.0, abs=0.05)
    final = got[-1][1]["sources"]["yard"]["recording"]
    assert final["checks"] == 2 and final["written"] == len(events)


def test_retention_deletes_the_oldest_clips_beyond_age_and_size(tiny_model, tmp_path, endpoint):
    replay = tmp_path / "replay"
    replay.mkdir()
    write(replay / "calls.wav", clip(8.0, 22050, [(3.0, 1.5)], seed=5), 22050)
    clips = tmp_path / "clips"
    (clips / "yard").mkdir(parents=True)
    old = time.time() - 40 * 86400
    for i, age in enumerate([old, old, time.time() - 3600, time.time() - 60]):
        path = clips / "yard" / f"yard_20261001T00000{i}_0a0b0c0d_e{i}.flac"  # what an earlier run wrote
        path.write_bytes(b"\0" * 300_000)
        path.with_suffix(".json").write_text(json.dumps({"writer": "streamdet", "source": "yard", "run_id": "0a0b0c0d"}))
        os.utime(path, (age, age))
    # The user's own recordings in the same folder, older and bigger than any limit: never touched.
    mine = [clips / "yard" / "dawn chorus.flac", clips / "yard" / "yard_20261001T000000_0a0b0c0d_e9.flac"]
    for path in mine:
        path.write_bytes(b"\0" * 900_000)
        os.utime(path, (old, old))
    mine[1].with_suffix(".json").write_text('{"note": "my own sidecar"}')
    config = tmp_path / "daemon.yaml"
    config.write_text(f"sources: [{{kind: replay, name: yard, path: {replay}, pace: max}}]\nmodel: {{path: {tiny_model}}}\ndetector: {{min_event_s: 1.4}}\nrecording: {{enabled: true, directory: {clips}, max_age_days: 30, max_total_mb: 0.7}}\n")
    daemon = start_daemon("--config", str(config), "--endpoint", endpoint, "--wait-subscribers", "1")
    got = collect(endpoint, timeout_s=60)
    assert daemon.wait(30) == 0
    left = sorted(p.name[:26] for p in (clips / "yard").glob("yard_*_e?.flac") if p not in mine)
    # The 40-day-old pair goes by age; then the oldest remaining until under 0.7 MB; the new clip stays.
    assert left[0] == "yard_20261001T000003_0a0b0" and len(left) == 2, left
    assert not (clips / "yard" / "yard_20261001T000000_0a0b0c0d_e0.json").exists()
    assert all(p.exists() for p in mine) and mine[1].with_suffix(".json").exists()
    assert got[-1][1]["sources"]["yard"]["recording"]["deleted"] == 3


def test_a_failing_disk_is_reported_and_detection_goes_on(tiny_model, tmp_path, endpoint):
    replay = tmp_path / "replay"
    replay.mkdir()
    write(replay / "calls.wav", clip(8.0, 22050, [(3.0, 1.5)], seed=6), 22050)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the clips folder should be")
    config = tmp_path / "daemon.yaml"
    config.write_text(f"sources: [{{kind: replay, name: yard, path: {replay}, pace: max}}]\nmodel: {{path: {tiny_model}}}\ndetector: {{min_event_s: 1.4}}\nrecording: {{enabled: true, directory: {blocker}}}\n")
    daemon = start_daemon("--config", str(config), "--endpoint", endpoint, "--wait-subscribers", "1")
    got = collect(endpoint, timeout_s=60)
    _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    final = got[-1][1]
    assert final["state"] == "finished" and final["sources"]["yard"]["recording"]["failed"] == 1
    report = [r for r in final["sources"]["yard"]["reports"] if r["kind"] == "recording"][0]
    assert "could not write" in report["reason"]
    assert any(m["type"] == "event" for _, m, _ in got) and "clip recording failed" in stderr


def test_three_daemons_through_one_proxy(tiny_model, tmp_path):
    frontend, backend = free_tcp_endpoint(), free_tcp_endpoint()
    proxy = subprocess.Popen(streamdet_command("proxy", "--frontend", frontend, "--backend", backend), cwd=REPO, stderr=subprocess.PIPE, text=True)
    daemons = []
    try:
        from streamdet.bus.sockets import Subscriber

        sub = Subscriber(backend)
        for i, name in enumerate("abc"):
            folder = tmp_path / name
            folder.mkdir()
            write(folder / "x.wav", clip(6.0 + i, 22050, [(2.0, 1.0)], seed=10 + i), 22050)
            daemons.append(start_daemon("--replay", str(folder), "--name", name, "--pace", "8x", "--model", str(tiny_model), "--connect", frontend, "--wait-subscribers", "1"))
        seen, finals = {}, {}
        deadline = time.monotonic() + 60
        while len(finals) < 3 and time.monotonic() < deadline:
            got = sub.receive(timeout_s=0.5)
            if got is None:
                continue
            _, msg = got
            if msg["type"] == "loss":
                seen.setdefault(msg["source"], []).append(msg["seq"])
            elif msg["type"] == "status" and msg["state"] == "finished":
                finals[list(msg["sources"])[0]] = msg
        sub.close()
        for daemon in daemons:
            assert daemon.wait(30) == 0
    finally:
        for daemon in daemons:
            if daemon.poll() is None:
                daemon.kill()
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(10) == 0
    assert sorted(finals) == ["a", "b", "c"]
    for name, seqs in seen.items():
        assert seqs == list(range(finals[name]["sources"][name]["windows"])), name  # contiguous, nothing lost


def test_logs_are_one_line_per_record_and_journald_friendly(tiny_model, tmp_path):
    (tmp_path / "notes.txt").write_text("not audio\n")
    write(tmp_path / "a.wav", clip(2.0, 22050), 22050)
    for journal, pattern in ((None, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) streamdet[.\w]*: "), ("8:1234", r"^<[2-7]>streamdet[.\w]*: ")):
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal:
            env["JOURNAL_STREAM"] = journal  # set by systemd for a service whose stderr goes to the journal
        result = subprocess.run(streamdet_command("run", "--replay", str(tmp_path), "--pace", "max", "--model", str(tiny_model), "--endpoint", free_tcp_endpoint(), "--log-level", "info"), capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
        assert result.returncode == 0
        lines = result.stderr.strip().splitlines()
        assert lines and all(re.match(pattern, line) for line in lines), lines
        assert any("notes.txt: not an audio file" in line for line in lines)


MDWE_LAUNCH = """
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit(77)  # a kernel before 6.3: cannot be tried here
try:  # the restriction is on: memory both writable and executable is refused
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    sys.exit(78)
except OSError:
    pass
os.execv(sys.executable, [sys.executable, "-m", "streamdet", *sys.argv[1:]])
"""


def test_the_daemon_runs_under_memory_deny_write_execute(tiny_model, tmp_path, endpoint):
    """What systemd's MemoryDenyWriteExecute=yes enforces (the kernel's PR_SET_MDWE, kept across
    exec): torch, TorchScript, soundfile and ZeroMQ must not need writable executable memory."""
    write(tmp_path / "a.wav", clip(6.0, 44100, [(2.0, 1.0)], seed=8), 44100)
    args = ["run", "--replay", str(tmp_path), "--pace", "max", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1", "--log-level", "info"]
    daemon = subprocess.Popen([sys.executable, "-c", MDWE_LAUNCH, *args], stderr=subprocess.PIPE, text=True, cwd=REPO)
    got = collect(endpoint, timeout_s=60)
    _, stderr = daemon.communicate(timeout=30)
    if daemon.returncode == 77:
        pytest.skip("this kernel has no PR_SET_MDWE")
    assert daemon.returncode == 0, stderr
    final = got[-1][1]
    assert final["state"] == "finished" and final["sources"]["replay"]["windows"] == 11
    assert "oneDNN off" in stderr  # its JIT would need that memory: torch's native kernels instead
    unit = (REPO / "systemd" / "streamdet.service").read_text()
    assert "\nMemoryDenyWriteExecute=yes\n" in unit


def test_a_reload_applies_each_changed_key_or_reports_it_kept(tiny_model, tmp_path, endpoint):
    def steer(msg, statuses, daemon, config, replay):
        if len(statuses) == 2:
            write_config(config, tiny_model, replay, on_score=0.6, model_keys=", batch_windows: 16, threads: 2", bus_keys=", send_hwm: 77, wait_timeout_s: 5", status_interval_s=0.4)
            daemon.send_signal(signal.SIGHUP)
        elif msg["reloads"]["done"] == 1:
            daemon.send_signal(signal.SIGTERM)

    got, stderr, daemon, _ = run_with_reloads(tiny_model, tmp_path, endpoint, steer)
    assert daemon.returncode == 0, stderr
    last = got[-1][1]["reloads"]["last"]
    assert last["applied"] == ["bus.status_interval_s", "detector.on_score", "model.batch_windows", "model.threads"], last
    assert last["kept"] == ["bus.send_hwm", "bus.wait_timeout_s"], last
    assert got[-1][1]["detector"]["on_score"] == 0.6
    assert "bus.send_hwm, bus.wait_timeout_s changed, which needs a restart" in stderr


def test_every_config_key_is_either_applied_on_reload_or_reported_kept():
    from dataclasses import fields, is_dataclass

    from streamdet.config import Config
    from streamdet.service.reload import APPLIED_ON_RELOAD, config_keys, reload_plan, set_key

    running = Config()
    keys = config_keys(running)
    assert len(keys) > 20 and all(is_dataclass(getattr(running, f.name)) or f.name == "sources" for f in fields(Config))
    for key, value in keys.items():
        changed = Config()
        set_key(changed, key, [] if key == "sources" else (not value if isinstance(value, bool) else "x" if not isinstance(value, (int, float)) else value + 1))
        applied, kept = reload_plan(running, changed)
        assert (applied, kept) == (([key], []) if key.startswith(APPLIED_ON_RELOAD) else ([], [key])), key
