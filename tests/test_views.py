"""What people read: `listen` and `demo` fit a standard 80x24 terminal, with details at 160x45,
seen in a real terminal (tmux) as well as rendered in-process."""
import os
import re
import shutil
import subprocess
import time

import pytest
from helpers import REPO
from rich.console import Console

from streamdet.subscribers.listen import render
from streamdet.subscribers.streamview import StreamView

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)

TMUX = shutil.which("tmux")
needs_tmux = os.environ.get("STREAMDET_REQUIRE_AUDIO") == "1"  # CI: the real parts must be there


def busy_view() -> StreamView:
    """A long-running station's picture: two sources, many events, a problem report."""
    view = StreamView(clock=lambda: 0.0)
    sources = {"garden": {"state": "up", "rtf": 1.0, "latency_ms": {"p50": 9.0, "p99": 17.0}, "reports": [], "dropped_samples": 0, "files_skipped": 0},
               "archive": {"rtf": 812.0, "latency_ms": None, "files_skipped": 3, "dropped_samples": 0,
                           "reports": [{"kind": "skipped", "file": "2026/06/01/dawn_chorus_recorder_b.wav", "reason": "not an audio file (unknown format)", "t": 1.0}]}}
    view.update("status", {"v": 1, "type": "status", "daemon": "station-north", "state": "running", "uptime_s": 86400.0 * 3, "status_interval_s": 5.0,
                           "model": {"sha256": "720df83d1234abcd"}, "detector": {"on_score": 0.5}, "subscriber_overflows": 0, "sources": sources})
    for seq in range(40):
        for name in sources:
            view.update(f"loss.{name}", {"v": 1, "type": "loss", "run_id": "r", "source": name, "seq": seq, "loss": 0.0123, "score": 0.73, "anomaly": True,
                                         **({"file": "2026/06/01/dawn_chorus_recorder_a.flac"} if name == "archive" else {})})
    for i in range(12):
        view.update("event.archive", {"v": 1, "type": "event", "source": "archive", "state": "end", "event_id": i, "onset": 100.0 + i, "offset": 101.5 + i,
                                      "duration": 1.5, "peak_score": 0.91, "band_hz": [2412, 6004], "file": "2026/06/01/dawn_chorus_recorder_a.flac", "file_onset": 3600.0 + i})
    return view


@pytest.mark.parametrize("width,rows", [(80, 24), (160, 45)])
def test_the_live_view_fits_the_terminal_without_cutting_what_matters(width, rows):
    console = Console(width=width, record=True, color_system=None)
    console.print(render(busy_view(), width))
    lines = console.export_text().rstrip("\n").splitlines()
    assert len(lines) <= rows and all(len(line) <= width for line in lines), "\n".join(lines)
    source_rows = lines[3:5]
    assert len(source_rows) == 2  # one line per source: the score bar never wraps
    assert all(" up " in row and " 40 " in row and "BIRD" in row for row in source_rows)  # state, windows and the verdict, whole
    assert "72.0 h" in "\n".join(lines)  # three days up, in hours
    assert ("p99 ms" in lines[1]) == (width >= 120)


def tmux_capture(command: str, width: int, height: int, wait_for: str, timeout_s: float = 60.0) -> str:
    session = f"streamdet-test-{os.getpid()}-{width}"
    # The terminal's own size, not a COLUMNS/LINES the test runner's environment may carry.
    subprocess.run([TMUX, "new-session", "-d", "-s", session, "-x", str(width), "-y", str(height), f"cd {REPO} && env -u COLUMNS -u LINES {command}; sleep 60"], check=True)
    try:
        deadline, screen = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            screen = subprocess.run([TMUX, "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout
            if wait_for in screen:
                return screen
            time.sleep(0.2)
        raise AssertionError(f"{wait_for!r} never appeared:\n{screen}")
    finally:
        subprocess.run([TMUX, "kill-session", "-t", session], capture_output=True)


@pytest.mark.parametrize("width,height", [(80, 24), (160, 45)])
def test_the_demo_summary_fits_a_real_terminal(width, height):
    if TMUX is None:
        if needs_tmux:
            pytest.fail("tmux is not installed (bootstrap.sh installs it for the tests)")
        pytest.skip("tmux is not installed")
    screen = tmux_capture(".venv/bin/streamdet demo", width, height, "windows received")
    lines = screen.rstrip("\n").splitlines()
    text = "\n".join(lines)
    assert "what the subscriber received, file by file" in text and "streamdet demo" in text  # nothing scrolled away
    for name in ("01_robin_inspectorj.ogg", "03_train_markedit.wav", "06_dog_sardin.mp3"):
        assert name in text
    assert re.search(r"\b\d+ windows received, 0 missed", text) and "finished after" in text and "…" not in text


@pytest.mark.parametrize("width,height", [(80, 24), (160, 45)])
def test_listen_fits_a_real_terminal_while_a_daemon_runs(width, height, tiny_model, tmp_path, endpoint):
    if TMUX is None:
        if needs_tmux:
            pytest.fail("tmux is not installed (bootstrap.sh installs it for the tests)")
        pytest.skip("tmux is not installed")
    from helpers import start_daemon

    from audiogen import clip, write

    replay = tmp_path / "a_rather_long_folder_name_for_a_recorder" / "2026-06-01"
    replay.mkdir(parents=True)
    write(replay / "dawn_chorus_with_a_long_file_name.wav", clip(20.0, 22050, [(3.0, 1.5), (9.0, 1.5)], seed=3), 22050)
    daemon = start_daemon("--replay", str(replay.parent.parent), "--pace", "2x", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1", "--set", "bus.status_interval_s=0.5")
    try:
        screen = tmux_capture(f".venv/bin/streamdet listen --endpoint {endpoint}", width, height, "finished", timeout_s=90)
    finally:
        daemon.kill()
    lines = screen.rstrip("\n").splitlines()
    source_row = [line for line in lines if line.startswith("replay ") and "finished" in line]
    last = source_row[0].split()[-1] if len(source_row) == 1 else ""
    assert last.endswith(".wav") if width >= 120 else last.isdigit(), screen  # one whole row, ending in its last column
    assert "daemons" in screen and len(lines) <= height
    assert ("p99 ms" in screen) == (width >= 120) and ("dawn_chorus_with_a_long_file_name.wav" in screen) == (width >= 120)
