"""Prometheus metrics, scraped over HTTP from a running daemon."""
import signal
import socket
import subprocess
import sys
import urllib.request

import pytest
from helpers import REPO, collect, start_daemon, streamdet_command
from prometheus_client.parser import text_string_to_metric_families

from audiogen import clip, write

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_scrape_counts_what_the_subscriber_received(tiny_model, tmp_path, endpoint):
    write(tmp_path / "a.wav", clip(6.0, 22050, [(2.0, 1.0)], seed=5), 22050)
    port = free_port()
    daemon = start_daemon("--replay", str(tmp_path), "--pace", "max", "--loop", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1", "--metrics", f"127.0.0.1:{port}")
    seen = {"windows": 0}

    def stop_after_two_passes(topic, msg):
        seen["windows"] += msg["type"] == "loss"
        if seen["windows"] == 22:
            seen["metrics"] = scrape(port)  # the daemon goes on meanwhile: these are lower bounds
            daemon.send_signal(signal.SIGTERM)

    got = collect(endpoint, on_message=stop_after_two_passes, timeout_s=60)
    daemon.communicate(timeout=30)
    m = seen["metrics"]
    src = (("source", "replay"),)
    assert m[("streamdet_windows_total", src)] >= 22 and m[("streamdet_files_played_total", src)] >= 1
    assert m[("streamdet_latency_seconds_count", src)] == m[("streamdet_latency_seconds_bucket", (("le", "+Inf"), ("source", "replay")))] >= 22
    assert m[("streamdet_realtime_factor", src)] > 1.0 and m[("streamdet_source_up", src)] == 1.0
    assert m[("streamdet_gaps_total", src)] == 0 and m[("streamdet_dropped_samples_total", src)] == 0
    assert m[("streamdet_subscriber_overflows_total", ())] == 0 and m[("streamdet_reloads_total", (("outcome", "rejected"),))] == 0
    info = [k for k in m if k[0] == "streamdet_model_info"]
    assert len(info) == 1 and dict(info[0][1])["path"] == str(tiny_model)
    final = got[-1][1]
    assert final["sources"]["replay"]["windows"] >= m[("streamdet_windows_total", src)]  # a scrape never counts ahead of the stream


def test_metrics_without_the_extra_or_at_a_bad_address_are_one_line(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "prometheus_client.py").write_text("raise ImportError('no module named prometheus_client')\n")
    env = {"PYTHONPATH": str(fake), "PATH": "/usr/bin:/bin"}
    missing = subprocess.run([sys.executable, "-m", "streamdet", "run", "--replay", str(tmp_path), "--metrics", "127.0.0.1:9108"], capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "pip install 'streamdet[metrics]'" in missing.stderr
    bad = subprocess.run(streamdet_command("run", "--replay", str(tmp_path), "--metrics", "localhost"), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "streamdet: error: metrics.address: expected HOST:PORT such as 127.0.0.1:9108, found 'localhost'"


def test_a_thousand_slow_clients_neither_multiply_threads_nor_stop_publishing(tiny_model, tmp_path, endpoint):
    """Connections are bounded (MAX_CLIENTS at once, the rest closed at once) and so is the time a
    client may take; a scrape works again once they are gone, and windows flow meanwhile."""
    import os
    import time

    from streamdet.bus.sockets import Subscriber
    from streamdet.service.metrics import CLIENT_TIMEOUT_S, MAX_CLIENTS

    write(tmp_path / "a.wav", clip(6.0, 22050, [(2.0, 1.0)], seed=5), 22050)
    port = free_port()
    daemon = start_daemon("--replay", str(tmp_path), "--pace", "realtime", "--loop", "--model", str(tiny_model), "--endpoint", endpoint, "--metrics", f"127.0.0.1:{port}")
    sub = Subscriber(endpoint)
    clients = []
    try:
        # Windows flowing: the scoring thread has started, so `base` counts it (a status can come first).
        assert any((got := sub.receive(30)) is not None and got[1]["type"] == "loss" for _ in range(20))
        scrape(port)
        base = len(os.listdir(f"/proc/{daemon.pid}/task"))
        for _ in range(1000):
            c = socket.socket()
            c.settimeout(5)
            try:
                c.connect(("127.0.0.1", port))
            except OSError:
                c.close()
                continue
            clients.append(c)
        time.sleep(0.5)
        threads = len(os.listdir(f"/proc/{daemon.pid}/task"))
        assert threads <= base + MAX_CLIENTS, (base, threads)
        got = 0
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            got += sub.receive(0.2) is not None
        assert got >= 2  # publishing goes on
        time.sleep(CLIENT_TIMEOUT_S + 1)  # the slow ones are dropped
        for c in clients:
            c.close()
        clients.clear()
        time.sleep(0.5)
        assert scrape(port)[("streamdet_windows_total", (("source", "replay"),))] > 0
        assert len(os.listdir(f"/proc/{daemon.pid}/task")) <= base + 1
    finally:
        for c in clients:
            c.close()
        sub.close()
        daemon.send_signal(signal.SIGTERM)
        daemon.communicate(timeout=30)
