"""CURVE on the bus: only subscribers whose keys the daemon (or proxy) allows hear anything."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, collect, start_daemon, streamdet_command

from audiogen import clip, write

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)


def keys(folder, name):
    result = subprocess.run(streamdet_command("keys", str(folder), "--name", name), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    return folder / f"{name}.key", folder / f"{name}.key_secret"


def test_a_curve_bus_serves_allowed_subscribers_and_refuses_others(tiny_model, tmp_path, endpoint):
    from streamdet.bus.security import Curve
    from streamdet.bus.sockets import Subscriber

    server_public, server_secret = keys(tmp_path / "server", "station")
    allowed = tmp_path / "allowed"
    good_public, good_secret = keys(allowed, "home")
    _, bad_secret = keys(tmp_path / "strangers", "stranger")  # a valid key, never allowed
    replay = tmp_path / "replay"
    replay.mkdir()
    write(replay / "calls.wav", clip(6.0, 22050, [(2.0, 1.0)], seed=1), 22050)
    config = tmp_path / "daemon.yaml"
    config.write_text(f"sources: [{{kind: replay, path: {replay}, pace: max}}]\nmodel: {{path: {tiny_model}}}\nbus: {{curve_secret_key: {server_secret}, curve_clients: {allowed}}}\n")

    stranger = Subscriber(endpoint, curve=Curve(str(bad_secret), server_key=str(server_public)))
    plain = Subscriber(endpoint)  # no CURVE at all
    daemon = start_daemon("--config", str(config), "--endpoint", endpoint, "--wait-subscribers", "1")
    try:
        time.sleep(3)
        assert daemon.poll() is None  # still waiting: neither subscription was let through
        got = collect(endpoint, timeout_s=60, curve=Curve(str(good_secret), server_key=str(server_public)))
        _, stderr = daemon.communicate(timeout=60)
        assert daemon.returncode == 0, stderr
        assert got[-1][1]["state"] == "finished" and any(m["type"] == "loss" for _, m, _ in got)
        assert stranger.receive(timeout_s=0.5) is None and plain.receive(timeout_s=0.5) is None
    finally:
        stranger.close()
        plain.close()
        if daemon.poll() is None:
            daemon.kill()


def test_curve_settings_that_cannot_work_exit_2_before_starting(tiny_model, tmp_path):
    _, secret = keys(tmp_path / "k", "station")
    config = tmp_path / "daemon.yaml"
    config.write_text(f"sources: [{{kind: replay, path: {tmp_path}}}]\nbus: {{curve_secret_key: {secret}}}\n")
    result = subprocess.run(streamdet_command("run", "--config", str(config)), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2 and "bus.curve_clients: expected the folder of allowed clients' public certificates" in result.stderr


def test_a_curve_proxy_admits_allowed_stations_and_subscribers_only(tiny_model, tmp_path):
    import signal

    from streamdet.bus.security import Curve
    from streamdet.bus.sockets import Subscriber
    from streamdet.demo import free_tcp_endpoint

    hub_public, hub_secret = keys(tmp_path / "hub", "hub")
    allowed = tmp_path / "allowed"
    _, station_secret = keys(allowed, "north")
    _, reader_secret = keys(allowed, "reader")
    _, stranger_secret = keys(tmp_path / "strangers", "stranger")
    frontend, backend = free_tcp_endpoint(), free_tcp_endpoint()
    proxy = subprocess.Popen(streamdet_command("proxy", "--frontend", frontend, "--backend", backend, "--curve-secret-key", str(hub_secret), "--curve-clients", str(allowed)), cwd=REPO, stderr=subprocess.PIPE, text=True)
    reader = Subscriber(backend, curve=Curve(str(reader_secret), server_key=str(hub_public)))
    stranger = Subscriber(backend, curve=Curve(str(stranger_secret), server_key=str(hub_public)))
    replay = tmp_path / "replay"
    replay.mkdir()
    write(replay / "x.wav", clip(4.0, 22050, [(1.0, 1.0)], seed=3), 22050)
    station = None
    try:
        time.sleep(0.5)
        station = start_daemon("--replay", str(replay), "--name", "north", "--pace", "8x", "--model", str(tiny_model), "--connect", frontend, "--wait-subscribers", "1",
                               "--set", f"bus.curve_secret_key={station_secret}", "--set", f"bus.curve_server_key={hub_public}")
        final = None
        deadline = time.monotonic() + 60
        while final is None and time.monotonic() < deadline:
            got = reader.receive(timeout_s=0.5)
            if got and got[1]["type"] == "status" and got[1]["state"] == "finished":
                final = got[1]
        assert final is not None and final["sources"]["north"]["windows"] > 0
        assert stranger.receive(timeout_s=0.5) is None
        assert station.wait(30) == 0
    finally:
        reader.close()
        stranger.close()
        if station is not None and station.poll() is None:
            station.kill()
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(10) == 0


def _unblocked_threads(pid: int) -> list[int]:
    """The process's threads but the main one that do not block SIGTERM (ZeroMQ's own threads block
    every signal, so the kernel never hands one to them), in the order they were made."""
    import os
    import signal

    out = []
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid):
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        blocked = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigBlk:")), 16)
        if not blocked >> (signal.SIGTERM - 1) & 1:
            out.append(tid)
    return out


@pytest.mark.parametrize("which", [0, 1], ids=["older-thread", "newer-thread"])
def test_a_curve_proxy_stops_on_sigterm_whichever_thread_the_kernel_hands_it_to(tmp_path, which):
    """With CURVE the proxy has an authenticator thread and runs zmq_proxy in a thread of its own;
    a SIGTERM delivered to either (the kernel may choose any thread that does not block it) must
    still stop the proxy.  One signal per run: a second one sent while the first is shutting the
    proxy down may arrive after Python has put back the default action, and kill it (rc -15)."""
    import ctypes
    import signal

    from streamdet.demo import free_tcp_endpoint

    _, hub_secret = keys(tmp_path / "hub", "hub")
    keys(tmp_path / "allowed", "north")
    proxy = subprocess.Popen(streamdet_command("proxy", "--frontend", free_tcp_endpoint(), "--backend", free_tcp_endpoint(), "--curve-secret-key", str(hub_secret), "--curve-clients", str(tmp_path / "allowed")),
                             cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert "subscribers connect to" in proxy.stderr.readline()  # up: the proxy thread is starting
        deadline = time.monotonic() + 10
        while len(threads := _unblocked_threads(proxy.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(threads) == 2, threads  # the authenticator's and the proxy's
        SYS_tgkill = 234  # x86-64
        ctypes.CDLL(None, use_errno=True).syscall(SYS_tgkill, proxy.pid, threads[which], signal.SIGTERM)
        assert proxy.wait(10) == 0
    finally:
        if proxy.poll() is None:
            proxy.kill()


def _hears(endpoint, secret, server_public, timeout_s=3.0) -> bool:
    """Whether a fresh CURVE subscriber with `secret` receives anything within `timeout_s`."""
    from streamdet.bus.security import Curve
    from streamdet.bus.sockets import Subscriber

    sub = Subscriber(endpoint, curve=Curve(str(secret), server_key=str(server_public)))
    try:
        return sub.receive(timeout_s=timeout_s) is not None
    finally:
        sub.close()


def test_a_key_removed_from_the_daemons_allowed_folder_is_refused_after_sighup(tiny_model, tmp_path, endpoint):
    import signal

    server_public, server_secret = keys(tmp_path / "server", "station")
    allowed = tmp_path / "allowed"
    _, home_secret = keys(allowed, "home")
    laptop_public, laptop_secret = keys(allowed, "laptop")
    replay = tmp_path / "replay"
    replay.mkdir()
    write(replay / "calls.wav", clip(4.0, 22050, [(1.0, 1.0)], seed=1), 22050)
    config = tmp_path / "daemon.yaml"
    config.write_text(f"sources: [{{kind: replay, path: {replay}, pace: realtime, loop: true}}]\nmodel: {{path: {tiny_model}}}\n"
                      f"bus: {{endpoint: '{endpoint}', status_interval_s: 0.5, curve_secret_key: {server_secret}, curve_clients: {allowed}}}\n")
    daemon = start_daemon("--config", str(config))
    try:
        assert _hears(endpoint, laptop_secret, server_public, 20)
        laptop_public.rename(tmp_path / "laptop.key")  # revoked
        daemon.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert not _hears(endpoint, laptop_secret, server_public)
        assert _hears(endpoint, home_secret, server_public)
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    assert daemon.returncode == 0, stderr
    assert "CURVE: 1 allowed client key(s) read again" in stderr


def test_a_key_removed_from_the_proxys_allowed_folder_is_refused_after_sighup(tiny_model, tmp_path):
    import signal

    from streamdet.demo import free_tcp_endpoint

    hub_public, hub_secret = keys(tmp_path / "hub", "hub")
    allowed = tmp_path / "allowed"
    _, station_secret = keys(allowed, "north")
    _, reader_secret = keys(allowed, "reader")
    laptop_public, laptop_secret = keys(allowed, "laptop")
    frontend, backend = free_tcp_endpoint(), free_tcp_endpoint()
    proxy = subprocess.Popen(streamdet_command("proxy", "--frontend", frontend, "--backend", backend, "--curve-secret-key", str(hub_secret), "--curve-clients", str(allowed)), cwd=REPO, stderr=subprocess.PIPE, text=True)
    replay = tmp_path / "replay"
    replay.mkdir()
    write(replay / "x.wav", clip(4.0, 22050, [(1.0, 1.0)], seed=3), 22050)
    station = start_daemon("--replay", str(replay), "--name", "north", "--pace", "realtime", "--loop", "--model", str(tiny_model), "--connect", frontend,
                           "--set", f"bus.curve_secret_key={station_secret}", "--set", f"bus.curve_server_key={hub_public}", "--set", "bus.status_interval_s=0.5")
    try:
        assert _hears(backend, laptop_secret, hub_public, 20)
        laptop_public.rename(tmp_path / "laptop.key")
        proxy.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert proxy.poll() is None, "SIGHUP ended the proxy"
        assert not _hears(backend, laptop_secret, hub_public)
        assert _hears(backend, reader_secret, hub_public)
    finally:
        station.send_signal(signal.SIGTERM)
        station.wait(30)
        proxy.send_signal(signal.SIGTERM)
        _, stderr = proxy.communicate(timeout=30)
    assert proxy.returncode == 0 and "reloaded: 2 allowed client key(s)" in stderr, stderr


def test_keys_refuses_to_replace_a_pair_unnamed_folders_and_bad_names_in_one_line(tmp_path):
    folder = tmp_path / "k"
    public, secret = keys(folder, "station")
    assert oct(secret.stat().st_mode & 0o777) == "0o600" and oct(folder.stat().st_mode & 0o777) == "0o700"
    before = secret.read_bytes()
    for argv, says in (
        ([str(folder), "--name", "station"], "exists already"),  # a second run would cut off every client
        ([str(folder), "--name", "../x"], "plain file name stem"),
        ([str(folder), "--name", "a/b"], "plain file name stem"),
        ([str(public), "--name", "y"], "cannot write keys there"),  # a file in the folder's place
    ):
        result = subprocess.run(streamdet_command("keys", *argv), capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1, (argv, result.stderr)
    assert secret.read_bytes() == before and not (tmp_path / "x.key_secret").exists()
    result = subprocess.run(streamdet_command("keys", str(folder), "--name", "station", "--force"), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and secret.read_bytes() != before and oct(secret.stat().st_mode & 0o777) == "0o600"


READER = """
import os, sys, time
folder, got, end = sys.argv[1], 0, time.time() + float(sys.argv[2])
while time.time() < end:
    for name in os.listdir(folder):
        try:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
        except OSError:
            continue
        got += b"secret-key" in os.read(fd, 4096)
        os.close(fd)
print(got)
"""

@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to run a reader as another user")
def test_another_user_never_reads_a_secret_key_even_while_it_is_written_with_umask_000():
    import tempfile

    from streamdet.bus.security import make_keys

    folder = Path(tempfile.mkdtemp(prefix="streamdet-keys-"))
    try:
        folder.chmod(0o777)  # the worst case: a folder anyone may read (make_keys makes its own 700)
        # The reader needs only the standard library: the system's interpreter, which any user may run
        # wherever this checkout (and its .venv) lies.
        python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        reader = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", python, "-c", READER, str(folder), "4"], stdout=subprocess.PIPE, text=True)
        old = os.umask(0)
        try:
            time.sleep(0.5)
            for i in range(200):
                make_keys(folder, f"s{i}")
                make_keys(folder, f"s{i}", force=True)
        finally:
            os.umask(old)
        out, _ = reader.communicate(timeout=30)
        assert reader.returncode == 0 and int(out) == 0
        assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in folder.glob("*.key_secret"))
    finally:
        shutil.rmtree(folder)
