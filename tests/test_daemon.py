"""The daemon as a real process, replaying generated clips to real subscribers over loopback TCP."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import REPO, collect, start_daemon, streamdet_command

from audiogen import clip, write

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)

# Chirp trains per file, as (start, duration) in file seconds.
CALLS = {"a_chirps.wav": [(3.0, 1.5), (9.0, 1.0)], "c_chirps.flac": [(2.0, 2.0)]}


def bad_files(d):
    (d / "b_notes.txt").write_text("field notes, not audio\n")
    (d / "b_zero.wav").write_bytes(b"")
    write(d / "d_silence.wav", np.zeros(22050 * 2, dtype=np.float32), 22050, subtype="PCM_16")
    nan = clip(3.0, 22050, seed=9)
    nan[int(1.5 * 22050) :] = np.nan
    write(d / "e_nan.wav", nan, 22050, subtype="FLOAT")
    huge = clip(3.0, 22050, seed=11)
    huge[int(1.2 * 22050) :] = 1e18  # a float WAV of garbage: it would overflow the front end
    write(d / "e_huge.wav", huge, 22050, subtype="FLOAT")
    trunc = write(d / "f_truncated.wav", clip(4.0, 22050, seed=10), 22050, subtype="PCM_16")
    trunc.write_bytes(trunc.read_bytes()[: 44 + 2 * 22050 * 2])  # header promises 4 s, 2 s remain


@pytest.fixture
def replay_dir(tmp_path):
    d = tmp_path / "replay"
    d.mkdir()
    write(d / "a_chirps.wav", clip(12.0, 44100, CALLS["a_chirps.wav"], seed=1), 44100, channels=2, subtype="PCM_16")
    write(d / "c_chirps.flac", clip(6.0, 16000, CALLS["c_chirps.flac"], seed=2), 16000)
    bad_files(d)
    return d


def split(messages):
    kinds = {"loss": [], "event": [], "status": []}
    for topic, msg, _ in messages:
        kinds[msg["type"]].append(msg)
        assert msg["v"] == 1
        assert topic == (msg["type"] if msg["type"] == "status" else f"{msg['type']}.{msg['source']}")
    return kinds


def test_replay_publishes_every_window_events_at_the_calls_and_a_final_status(tiny_model, replay_dir, endpoint):
    # Every call lasts over a second, so events shorter than two windows are blips of the background.
    daemon = start_daemon("--replay", str(replay_dir), "--pace", "max", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1", "--set", "detector.min_event_s=1.4")
    got = split(collect(endpoint))
    _, stderr = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, stderr

    losses = got["loss"]
    assert [m["seq"] for m in losses] == list(range(len(losses)))
    final = got["status"][-1]
    assert final["state"] == "finished"
    source = final["sources"]["replay"]
    assert source["windows"] == len(losses)
    # The NaN file contributes its first 1.5 s, the truncated file its 2 s, the good files all of theirs.
    files = {m["file"] for m in losses}
    assert files == {"a_chirps.wav", "c_chirps.flac", "e_huge.wav", "e_nan.wav", "f_truncated.wav"}
    assert all(m["t_end"] > m["t_start"] and 0 <= m["score"] <= 1 and m["anomaly"] == (m["score"] >= 0.5) for m in losses)
    assert all(b["t_start"] >= a["t_start"] for a, b in zip(losses, losses[1:]))

    # Every bad file is reported with its reason, and the stream went on past each of them.
    reports = {r["file"]: r for r in source["reports"]}
    assert "not an audio file" in reports["b_notes.txt"]["reason"]
    assert "empty file" in reports["b_zero.wav"]["reason"]
    assert "digital silence" in reports["d_silence.wav"]["reason"]
    assert "NaN" in reports["e_nan.wav"]["reason"] and "1.50 s" in reports["e_nan.wav"]["reason"]
    assert "absurd" in reports["e_huge.wav"]["reason"] and "1.20 s" in reports["e_huge.wav"]["reason"]
    assert reports["e_nan.wav"]["kind"] == reports["e_huge.wav"]["kind"] == "notice"  # played in part: not also skipped
    assert reports["f_truncated.wav"]["kind"] == "notice" and "truncated" in reports["f_truncated.wav"]["reason"]
    # Every file is counted once: played (in whole or in part) or skipped.
    assert source["files_skipped"] == 3 and source["files_played"] == 5
    for name in ("b_notes.txt", "b_zero.wav", "d_silence.wav", "e_nan.wav", "e_huge.wav"):
        assert name in stderr

    # Events: each chirp train is found, and nothing else is.
    ends = [e for e in got["event"] if e["state"] == "end"]
    starts = [e for e in got["event"] if e["state"] == "start"]
    assert len(starts) == len(ends)
    found = {(e["file"], e["file_onset"], e["file_onset"] + e["duration"]) for e in ends}
    expected = [(f, s, s + d) for f, calls in CALLS.items() for s, d in calls]
    for f, s, e in expected:
        # Windows are 1 s long with a 0.5 s hop: an event edge lies within a window of the call's edge.
        assert any(ff == f and s - 1.01 <= on <= s + 0.51 and e - 0.51 <= off <= e + 1.01 for ff, on, off in found), (f, s, e, found)
    assert len(ends) == len(expected), found
    # Each event says which frequencies made it: the calls sweep 2.5-5.5 kHz.
    for e in ends:
        low, high = e["band_hz"]
        assert low < 5500 and high > 2500 and high - low < 4000, e["band_hz"]


def test_realtime_pace_releases_audio_as_a_microphone_would(tiny_model, tmp_path, endpoint):
    write(tmp_path / "one.wav", clip(3.0, 22050, seed=3), 22050)
    daemon = start_daemon("--replay", str(tmp_path), "--pace", "realtime", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1")
    got = collect(endpoint)
    daemon.communicate(timeout=30)
    times = [t for _, m, t in got if m["type"] == "loss"]
    assert len(times) == 5  # windows at 0, 0.5, 1.0, 1.5, 2.0 s in a 3 s file
    # The last window ends at 3 s of audio; the first at 1 s: never sooner than 2 s apart in wall
    # time (a loaded machine may make it later, never earlier).
    assert times[-1] - times[0] > 1.6
    final = got[-1][1]
    assert final["sources"]["replay"]["rtf"] <= 1.1


def test_loop_repeats_until_stopped_and_stop_publishes_the_last_windows(tiny_model, tmp_path, endpoint):
    write(tmp_path / "short.wav", clip(2.0, 22050, seed=4), 22050)
    seen = {"windows": 0}
    daemon = start_daemon("--replay", str(tmp_path), "--pace", "4x", "--loop", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1")

    def stop_after_three_passes(topic, msg):
        if msg["type"] == "loss":
            seen["windows"] += 1
            if seen["windows"] == 9:  # 3 windows a pass
                daemon.send_signal(signal.SIGTERM)

    got = split(collect(endpoint, on_message=stop_after_three_passes, timeout_s=30))
    daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    assert got["status"][-1]["state"] == "stopped"
    seqs = [m["seq"] for m in got["loss"]]
    assert seqs == list(range(len(seqs))) and len(seqs) >= 9
    assert got["status"][-1]["sources"]["replay"]["windows"] == len(seqs)


def test_listen_records_every_message_as_jsonl(tiny_model, replay_dir, endpoint, tmp_path):
    record = tmp_path / "got.jsonl"
    listener = subprocess.Popen(streamdet_command("listen", "--endpoint", endpoint, "--jsonl", str(record), "--until-finished", "--timeout", "60", "--quiet"), cwd=REPO)
    daemon = start_daemon("--replay", str(replay_dir), "--pace", "max", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1")
    daemon.communicate(timeout=60)
    assert listener.wait(timeout=60) == 0
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    losses = [r["message"] for r in lines if r["topic"].startswith("loss.")]
    assert [m["seq"] for m in losses] == list(range(len(losses))) and len(losses) > 20
    assert lines[-1]["topic"] == "status" and lines[-1]["message"]["state"] == "finished"


def test_empty_directory_finishes_with_a_report(tiny_model, tmp_path, endpoint):
    (tmp_path / "empty").mkdir()
    daemon = start_daemon("--replay", str(tmp_path / "empty"), "--pace", "max", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1")
    got = split(collect(endpoint, timeout_s=30))
    daemon.communicate(timeout=30)
    assert daemon.returncode == 0
    final = got["status"][-1]
    assert final["state"] == "finished" and final["sources"]["replay"]["windows"] == 0
    assert final["sources"]["replay"]["reports"][0]["reason"] == "no files in directory"


def test_an_endpoint_already_in_use_is_a_clear_startup_error(tiny_model, tmp_path, endpoint):
    import zmq

    write(tmp_path / "one.wav", clip(2.0, 22050), 22050)
    holder = zmq.Context.instance().socket(zmq.PUB)
    holder.bind(endpoint)
    try:
        result = subprocess.run(streamdet_command("run", "--replay", str(tmp_path), "--model", str(tiny_model), "--endpoint", endpoint), capture_output=True, text=True, cwd=REPO, timeout=60)
    finally:
        holder.close(0)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"streamdet: error: bus.endpoint: cannot bind {endpoint} (Address already in use)"


def _many_short_files(d, n=60, seconds=2.0):
    d.mkdir()
    for i in range(n):
        write(d / f"f{i:03d}.wav", clip(seconds, 22050, seed=200 + i), 22050, subtype="PCM_16")
    return d


def test_a_slow_subscriber_of_a_replay_receives_everything_to_the_final_status(tiny_model, tmp_path, endpoint):
    """Back-pressure: the replay waits for a subscriber that reads slowly, and the last queued
    messages reach it before the daemon exits (here 240 windows read at 50 a second)."""
    folder = _many_short_files(tmp_path / "many")
    daemon = start_daemon("--replay", str(folder), "--pace", "max", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1", "--set", "bus.send_hwm=20")
    got = collect(endpoint, timeout_s=120, on_message=lambda *_: time.sleep(0.02))
    _, stderr = daemon.communicate(timeout=60)
    assert daemon.returncode == 0, stderr
    losses = [m for _, m, _ in got if m["type"] == "loss"]
    final = [m for _, m, _ in got if m["type"] == "status"][-1]
    assert final["state"] == "finished"
    assert [m["seq"] for m in losses] == list(range(final["sources"]["replay"]["windows"]))


def test_a_send_blocked_by_a_subscriber_that_never_reads_gives_up_at_the_deadline_and_counts_it(endpoint):
    """What lets SIGTERM end a replay held up by a stuck subscriber: a blocked send waits (pinging
    the watchdog) until the shutdown deadline, then gives up and counts the message."""
    import zmq

    from streamdet.bus.sockets import Publisher

    publisher = Publisher(endpoint, send_hwm=2, wait_when_full=True, context=zmq.Context())
    stuck = publisher.context.socket(zmq.SUB)
    stuck.setsockopt(zmq.RCVHWM, 2)
    stuck.setsockopt(zmq.RCVBUF, 4096)
    stuck.setsockopt_string(zmq.SUBSCRIBE, "")
    stuck.connect(endpoint)  # subscribes, then never reads
    assert publisher.wait_for_subscribers(1, timeout_s=10)
    pings = []
    publisher.while_blocked = lambda: pings.append(1)
    body = {"pad": "x" * 65536}  # large, so the socket buffers fill within a few messages
    sent = 0
    while sent < 2000 and not pings:
        publisher.send("loss.x", body)
        sent += 1
    assert pings and sent < 2000  # it blocked, and pinged while blocked
    publisher.give_up_at = time.monotonic() + 0.5
    started = time.monotonic()
    while publisher.send("loss.x", body) and sent < 4000:  # until the pipe is full again
        sent += 1
    assert 0.4 < time.monotonic() - started < 5 and publisher.dropped == 1
    assert publisher.send("loss.x", body) is False and publisher.dropped == 2  # past the deadline: at once
    stuck.close(0)
    publisher.close()
    publisher.context.term()


def test_a_replay_thread_that_dies_is_a_failure_not_a_finish(tmp_path, monkeypatch):
    """A crash in the replay thread (an allocation failure, a bug) ends the stream with a report
    and marks the source failed, which the daemon turns into a non-zero exit."""
    from streamdet.capture.markers import Finished, Skipped
    from streamdet.capture.replay import ReplaySource
    from streamdet.capture.ringbuffer import RingBuffer
    from streamdet.config import SourceConfig

    folder = _many_short_files(tmp_path / "files", n=3, seconds=1.0)
    source = ReplaySource(SourceConfig(kind="replay", name="r", path=str(folder), pace="max"), 22050, RingBuffer(22050 * 30))
    real_play = source._play

    def dies_on_the_second(path):
        if path.name == "f001.wav":
            raise MemoryError("cannot allocate 8.3 GB")
        return real_play(path)

    monkeypatch.setattr(source, "_play", dies_on_the_second)
    source.start()
    source.join(30)
    markers = list(source.markers)
    assert isinstance(markers[-1], Finished)
    skipped = [m for m in markers if isinstance(m, Skipped)]
    assert len(skipped) == 1 and "replay failed: MemoryError: cannot allocate 8.3 GB" in skipped[0].reason
    assert source.failed == "MemoryError: cannot allocate 8.3 GB" and source.describe()["failed"] == source.failed


FLOOD_CLIENT = """
import sys, time, zmq
ctx = zmq.Context()
flood = ctx.socket(zmq.XSUB)  # sends subscription messages as they are
flood.connect(sys.argv[1])
for i in range(20):
    flood.send(b"\\x01" + bytes([65 + i]) * 1_000_000)
time.sleep(4)
"""


def test_a_flood_of_huge_subscriptions_does_not_grow_the_daemon(tiny_model, tmp_path, endpoint):
    """A peer that can connect sends 1 MB topic prefixes, which XPUB would keep (a trie node per
    byte); subscriptions are capped at 4 KiB, so the peer is cut off and memory stays put."""
    import resource

    write(tmp_path / "long.wav", clip(60.0, 22050, seed=3), 22050)
    daemon = start_daemon("--replay", str(tmp_path), "--pace", "realtime", "--model", str(tiny_model), "--endpoint", endpoint)

    def rss_mb():
        for line in open(f"/proc/{daemon.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

    def big_stack():  # libzmq's own subscription trie recurses once per byte: the client needs it
        resource.setrlimit(resource.RLIMIT_STACK, (1 << 30, 1 << 30))

    try:
        time.sleep(4)  # loaded and running
        before = rss_mb()
        client = subprocess.run([sys.executable, "-c", FLOOD_CLIENT, endpoint], preexec_fn=big_stack, capture_output=True, text=True, timeout=120)
        assert client.returncode == 0, client.stderr[-1000:]
        assert daemon.poll() is None
        grown = rss_mb() - before
        assert grown < 100, grown
    finally:
        daemon.terminate()
        daemon.communicate(timeout=30)
