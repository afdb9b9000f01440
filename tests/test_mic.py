"""Live capture through the real audio path: PortAudio -> ALSA pulse plugin -> a private PulseAudio
server whose null sink we play into.  PulseAudio paces playback in real time, so these tests take
as long as the audio they play."""
import os
import re
import shutil
import signal
import subprocess
import threading
import time

import pytest
from helpers import REPO, start_daemon, streamdet_command

from audiogen import clip, write
from pulse import PulseServer

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)

needs_audio = os.environ.get("STREAMDET_REQUIRE_AUDIO") == "1"  # set by .ci/run: there, a missing server is a failure


@pytest.fixture(scope="module")
def pulse(tmp_path_factory):
    if not (shutil.which("pulseaudio") and shutil.which("paplay")):
        if needs_audio:
            pytest.fail("pulseaudio and paplay are required (Debian: pulseaudio pulseaudio-utils libasound2-plugins)")
        pytest.skip("no pulseaudio here: the microphone tests need a virtual input device")
    server = PulseServer(tmp_path_factory.mktemp("pulse")).start()
    yield server
    server.stop()


class Collector:
    """Subscribes in a thread and keeps every message with its arrival time."""

    def __init__(self, endpoint: str):
        from streamdet.bus.sockets import Subscriber

        self.messages = []
        self._sub = Subscriber(endpoint)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            got = self._sub.receive(timeout_s=0.2)
            if got:
                self.messages.append((got[0], got[1], time.time()))

    def of(self, kind):
        return [m for _, m, _ in self.messages if m["type"] == kind]

    def wait_for(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(m) for _, m, _ in list(self.messages)):
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._sub.close()


def run_mic(pulse, endpoint, *extra):
    return start_daemon("--mic", "pulse", "--endpoint", endpoint, "--wait-subscribers", "1", *extra, env=pulse.env)


def stop(daemon):
    daemon.send_signal(signal.SIGTERM)
    out, err = daemon.communicate(timeout=30)
    return daemon.returncode, err


def test_calls_played_into_the_room_become_events_at_their_times(pulse, tiny_model, tmp_path, endpoint):
    # Capture runs first (the idle null sink is digital silence, scored 0), then the room plays: the
    # times are measured from when it did, however long the daemon took to start.
    calls = [(4.0, 1.5), (10.0, 1.5)]
    path = write(tmp_path / "room.wav", clip(20.0, 44100, calls, seed=21), 44100, channels=2)
    collector = Collector(endpoint)
    daemon = run_mic(pulse, endpoint, "--model", str(tiny_model), "--set", "detector.min_event_s=1.4")
    player = None
    try:
        assert collector.wait_for(lambda m: m["type"] == "loss", 60), "no audio from the virtual microphone"
        player = pulse.play(path)
        played_at = time.time()
        time.sleep(max(0.0, played_at + 15.0 - time.time()))  # past the last call, before the recording ends
    finally:
        code, err = stop(daemon)
        collector.close()
        if player is not None:
            player.wait(30)
    assert code == 0, err
    final = collector.of("status")[-1]
    assert final["state"] == "stopped"
    mic = final["sources"]["mic"]
    assert mic["device"] == "pulse" and mic["gaps"] == 0 and mic["dropped_samples"] == 0
    losses = collector.of("loss")
    assert [m["seq"] for m in losses] == list(range(len(losses)))
    # Stream time -> wall clock through the time the source dated its first sample.
    start_wall = mic["stream_start_wall"]
    assert not any(m.get("silent") for m in losses if start_wall + m["t_start"] > played_at + 0.5)
    ends = [e for e in collector.of("event") if e["state"] == "end"]
    found = [(start_wall + e["onset"] - played_at, start_wall + e["offset"] - played_at) for e in ends]
    # 1 s windows every 0.5 s, plus up to 0.3 s of playback and capture latency.
    for start, duration in calls:
        assert any(start - 1.3 <= on <= start + 0.8 and start + duration - 0.8 <= off <= start + duration + 1.3 for on, off in found), (start, found)
    assert len(ends) == len(calls), found
    assert mic["latency_ms"]["p99"] <= 250  # the README's figure comes from `streamdet bench --mic`


def test_digital_silence_from_a_muted_input_is_never_a_bird(pulse, tiny_model, tmp_path, endpoint):
    collector = Collector(endpoint)
    daemon = run_mic(pulse, endpoint, "--model", str(tiny_model))
    try:
        assert collector.wait_for(lambda m: m["type"] == "loss" and m["seq"] >= 4, 20)
        player = pulse.play(write(tmp_path / "burst.wav", clip(3.0, 44100, seed=5), 44100))
        player.wait(30)
        time.sleep(2.0)
    finally:
        stop(daemon)
        collector.close()
    losses = collector.of("loss")
    silent = [m for m in losses if m.get("silent")]
    sounding = [m for m in losses if not m.get("silent")]
    assert len(silent) >= 4 and len(sounding) >= 2  # silence before and after the burst, and the burst
    assert all(m["score"] == 0.0 and not m["anomaly"] for m in silent)
    assert not collector.of("event")  # background noise starting and stopping is not a bird


def test_a_slow_consumer_produces_counted_gaps_never_a_silent_loss(pulse, tiny_model, tmp_path, endpoint):
    collector = Collector(endpoint)
    env = {**pulse.env, "STREAMDET_DEBUG_STALL": "2.5:1.8"}  # stall 1.8 s every 2.5 s; the ring holds 1 s
    config_path = tmp_path / "slow-consumer.yaml"
    config_path.write_text("sources:\n  - {kind: mic, name: mic, device: pulse, ring_seconds: 1.0}\n")
    daemon = start_daemon("--config", str(config_path), "--endpoint", endpoint, "--wait-subscribers", "1", "--model", str(tiny_model), env=env)
    try:
        assert collector.wait_for(lambda m: m["type"] == "gap", 30), "no gap reported"
        time.sleep(4)
    finally:
        code, err = stop(daemon)
        collector.close()
    assert code == 0, err
    gaps = collector.of("gap")
    assert gaps and all(g["reason"] == "overrun" and g["samples"] > 0 and g["duration_s"] > 0 for g in gaps)
    final = collector.of("status")[-1]["sources"]["mic"]
    assert final["gaps"] >= len(gaps) and final["dropped_samples"] >= sum(g["samples"] for g in gaps)
    losses = collector.of("loss")
    assert [m["seq"] for m in losses] == list(range(len(losses)))
    for g in gaps:  # no window straddles a gap
        assert not any(m["t_start"] < g["t"] < m["t_end"] - 1e-6 for m in losses), (g["t"], g["duration_s"], g["seq_next"], [(m["seq"], m["t_start"], m["t_end"]) for m in losses if abs(m["t_start"] - g["t"]) < 2])
    # After a gap, windows start again at the first sample after it.
    assert any(abs(m["t_start"] - (g["t"] + g["duration_s"])) < 0.01 for g in gaps for m in losses)


def test_the_device_going_away_is_reported_and_capture_resumes(pulse, tiny_model, endpoint):
    collector = Collector(endpoint)
    daemon = run_mic(pulse, endpoint, "--model", str(tiny_model), "--set", "bus.status_interval_s=1")
    try:
        assert collector.wait_for(lambda m: m["type"] == "loss", 20)
        pulse.stop()
        down_at = time.time()
        assert collector.wait_for(lambda m: m["type"] == "source_down", 10), "no source_down"
        statuses_while_down = len(collector.of("status"))
        time.sleep(2.5)
        assert len(collector.of("status")) > statuses_while_down  # the daemon keeps publishing status
        pulse.start()
        up_at = time.time()
        assert collector.wait_for(lambda m: m["type"] == "source_up" and m["t"] > 0.5, 40), "no source_up after the server came back"
        seq_after = len(collector.of("loss"))
        assert collector.wait_for(lambda m: m["type"] == "loss" and m["seq"] > seq_after + 2, 15), "no audio after coming back"
    finally:
        code, err = stop(daemon)
        collector.close()
    assert code == 0, err
    down = collector.of("source_down")[0]
    assert "pulse" in down["reason"]
    gap = [g for g in collector.of("gap") if g["reason"] == "source_down"][0]
    # The outage is a known gap: stream time keeps to the clock (up to the retry backoff).
    assert up_at - down_at - 1.0 <= gap["duration_s"] <= up_at - down_at + 35
    losses = collector.of("loss")
    assert [m["seq"] for m in losses] == list(range(len(losses)))
    assert not any(m["t_start"] < gap["t"] < m["t_end"] - 1e-6 for m in losses)
    final = collector.of("status")[-1]["sources"]["mic"]
    assert final["outages"] >= 1 and final["state"] == "up"


def test_devices_lists_inputs_and_an_unknown_device_is_one_clear_line(pulse):
    listing = subprocess.run(streamdet_command("devices"), capture_output=True, text=True, cwd=REPO, env=pulse.env, timeout=60)
    assert listing.returncode == 0 and "pulse" in listing.stdout
    bad = subprocess.run(streamdet_command("run", "--mic", "no-such-mic"), capture_output=True, text=True, cwd=REPO, env=pulse.env, timeout=60)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(r"streamdet: error: microphone 'no-such-mic': no such input device \(inputs: .*'pulse'.*\)", lines[0]), lines


def test_without_portaudio_the_microphone_says_how_to_install_it_and_replay_still_works(tmp_path, tiny_model, endpoint):
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "sounddevice.py").write_text("raise OSError('PortAudio library not found')\n")
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    mic = subprocess.run(streamdet_command("run", "--mic"), capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert mic.returncode == 2 and "libportaudio2" in mic.stderr and len(mic.stderr.strip().splitlines()) == 1
    write(tmp_path / "one.wav", clip(2.0, 22050), 22050)
    replay = subprocess.run(streamdet_command("run", "--replay", str(tmp_path), "--pace", "max", "--model", str(tiny_model), "--endpoint", endpoint), capture_output=True, text=True, cwd=REPO, env=env, timeout=60)
    assert replay.returncode == 0, replay.stderr


def test_a_microphone_and_a_replay_in_one_daemon(pulse, tiny_model, tmp_path, endpoint):
    write(tmp_path / "calls.wav", clip(4.0, 22050, [(1.5, 1.0)], seed=7), 22050)
    collector = Collector(endpoint)
    daemon = start_daemon("--mic", "pulse", "--replay", str(tmp_path), "--pace", "2x", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1", env=pulse.env)
    try:
        assert collector.wait_for(lambda m: m["type"] == "loss" and m["source"] == "mic" and m["seq"] >= 3, 20)
        assert collector.wait_for(lambda m: m["type"] == "status" and m["sources"]["replay"]["finished"], 20)
    finally:
        code, err = stop(daemon)
        collector.close()
    assert code == 0, err
    topics = {t for t, _, _ in collector.messages}
    assert {"loss.mic", "loss.replay"} <= topics
    for name in ("mic", "replay"):
        seqs = [m["seq"] for m in collector.of("loss") if m["source"] == name]
        assert seqs == list(range(len(seqs))) and seqs, name
    final = collector.of("status")[-1]["sources"]
    assert final["mic"]["kind"] == "mic" and final["replay"]["kind"] == "replay" and final["replay"]["files_played"] == 1


class FakeStatus:
    input_overflow = False


class FakeStream:
    """A PortAudio input stream whose callbacks the test makes itself."""

    opened: list = []

    def __init__(self, callback=None, blocksize=0, **kwargs):
        self.callback, self.block, self.active = callback, blocksize, True
        FakeStream.opened.append(self)

    def start(self):
        pass

    def close(self, ignore_errors=True):
        self.active = False

    def deliver(self, blocks: int, value: float):
        import numpy as np

        for _ in range(blocks):
            self.callback(np.full((self.block, 1), value, dtype=np.float32), self.block, None, FakeStatus())


class FakeSoundDevice:
    InputStream = FakeStream

    @staticmethod
    def query_devices():
        return [{"name": "fake", "max_input_channels": 1, "default_samplerate": 16000.0, "hostapi": 0}]

    @staticmethod
    def check_input_settings(**kwargs):
        pass

    @staticmethod
    def query_hostapis(index=None):
        return {"name": "fake"}


def test_a_reconnect_places_its_gap_and_source_up_where_the_new_audio_starts(monkeypatch):
    """Audio that arrives between the reconnect and the consumer's next look belongs after the
    gap: source_up and the gap sit at the new stream's first sample (they sat at the ring's end
    when the consumer polled, so that audio was read as if no outage had happened)."""
    from streamdet.capture import mic
    from streamdet.capture.markers import Gap, SourceDown, SourceUp
    from streamdet.config import SourceConfig

    monkeypatch.setattr(mic, "import_sounddevice", lambda: FakeSoundDevice)
    monkeypatch.setattr(mic, "BACKOFF_S", (0.05, 0.05))
    monkeypatch.setattr(mic, "resolve_input", lambda sd, spec: {"index": 0, "name": "fake", "channels": 1, "default_rate": 16000})
    FakeStream.opened = []
    source = mic.MicSource(SourceConfig(kind="mic", name="m", sample_rate=16000, block_frames=160), 16000)
    source.start()
    try:
        deadline = time.monotonic() + 5
        while not FakeStream.opened and time.monotonic() < deadline:
            time.sleep(0.01)
        first = FakeStream.opened[0]
        first.deliver(50, 0.1)  # 0.5 s
        while source.state != "up" and time.monotonic() < deadline:
            time.sleep(0.01)
        source.poll()
        first.active = False  # the device went away
        while len(FakeStream.opened) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        second = FakeStream.opened[1]
        second.deliver(30, 0.2)  # audio of the new stream, before the supervisor or the consumer look
        while source.state != "up" and time.monotonic() < deadline:
            time.sleep(0.01)
        second.deliver(20, 0.2)
        source.poll()
        markers = list(source.markers)
        down = [m for m in markers if isinstance(m, SourceDown)]
        gap = [m for m in markers if isinstance(m, Gap)]
        up = [m for m in markers if isinstance(m, SourceUp)]
        assert down and down[-1].pos == 50 * 160, markers
        assert gap and gap[-1].pos == 50 * 160 and gap[-1].samples > 0, markers
        assert len(up) == 2 and up[-1].pos == 50 * 160, markers  # not 100 * 160, where the ring ended at the poll
        assert source.ring.write_pos == 100 * 160
    finally:
        source.stop()
