"""The MQTT bridge against a real broker (Debian's mosquitto on a free loopback port): Home
Assistant discovery, state changes, events, a daemon going offline, the bridge's Last Will, and
discovery sent again when the broker comes back."""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from datetime import date

import pytest
from helpers import REPO, start_daemon, streamdet_command

from streamdet.subscribers.mqtt import Bridge, MqttConfig

from audiogen import clip, write

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/sbin")
needs_broker = os.environ.get("STREAMDET_REQUIRE_AUDIO") == "1"  # CI: the real parts must be there


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, tmp_path):
        self.port, self.conf = free_port(), tmp_path / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process = None

    def start(self):
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise AssertionError("mosquitto did not start")

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        if needs_broker:
            pytest.fail("mosquitto is not installed (bootstrap.sh installs it for the tests)")
        pytest.skip("mosquitto is not installed")
    b = Broker(tmp_path)
    b.start()
    yield b
    if b.process.poll() is None:
        b.stop()


class Watcher:
    """A plain MQTT subscriber to everything, keeping (topic, payload, retained) in order."""

    def __init__(self, port):
        import paho.mqtt.client as mqtt

        self.got, self.lock = [], threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="watcher")
        self.client.on_connect = lambda c, *_: c.subscribe("#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.got.append((message.topic, message.payload.decode(), message.retain))

    def messages(self, prefix=""):
        with self.lock:
            return [m for m in self.got if m[0].startswith(prefix)]

    def wait_for(self, predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(*m) for m in self.messages()):
                return True
            time.sleep(0.05)
        return False

    def close(self):
        self.client.loop_stop()
        self.client.disconnect()


def test_bridge_state_folds_messages_with_injected_clocks():
    now = [100.0]
    bridge = Bridge(MqttConfig(state_interval_s=5.0), clock=lambda: now[0], wall=lambda: 1_700_000_000.0, today=lambda: date(2026, 11, 26))
    status = {"type": "status", "daemon": "yard pi", "run_id": "r1", "state": "running", "status_interval_s": 1.0, "sources": {"mic": {"stream_start_wall": 1_700_000_000.0}}}
    early = {"type": "event", "source": "mic", "run_id": "r1", "state": "end", "event_id": 0, "onset": 2.0, "offset": 3.0, "duration": 1.0, "peak_score": 0.9, "band_hz": [2000, 5000]}
    assert bridge.on_message(early) == []  # before the daemon's first status: kept, not lost
    out = bridge.on_message(status)
    topics = [p.topic for p in out]
    assert "homeassistant/binary_sensor/streamdet_yard_pi/mic_bird/config" in topics and "streamdet/yard_pi/availability" in topics
    event = [p for p in out if p.topic == "streamdet/yard_pi/mic/event"]
    assert len(event) == 1 and json.loads(event[0].payload)["at"] == "2023-11-14T22:13:22+00:00"  # stream start + onset
    state = json.loads([p for p in out if p.topic == "streamdet/yard_pi/mic/state"][-1].payload)
    assert state["bird"] == "OFF" and state["events_today"] == 1 and state["last_event"]["band_hz"] == [2000, 5000]
    start = bridge.on_message({"type": "event", "source": "mic", "run_id": "r1", "state": "start", "event_id": 1, "onset": 9.0, "peak_score": 0.8})
    assert json.loads(start[0].payload)["bird"] == "ON" and start[0].retain
    loss = {"type": "loss", "source": "mic", "run_id": "r1", "score": 0.42}
    assert bridge.on_message(loss) == []  # the score is republished at most every state_interval_s
    now[0] += 5.0
    assert json.loads(bridge.on_message(loss)[0].payload)["score"] == 0.42
    now[0] += 3.5  # three status intervals of 1 s without a status
    assert [(p.topic, p.payload) for p in bridge.tick()] == [("streamdet/yard_pi/availability", "offline")]


def test_home_assistant_sees_the_station_its_events_and_its_going_away(broker, tiny_model, tmp_path, endpoint):
    replay = tmp_path / "replay"
    replay.mkdir()
    write(replay / "calls.wav", clip(12.0, 22050, [(3.0, 1.5), (8.0, 1.5)], seed=1), 22050)
    watcher = Watcher(broker.port)
    bridge = subprocess.Popen(streamdet_command("mqtt", "--endpoint", endpoint, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--client-id", "test-bridge"), cwd=REPO, stderr=subprocess.PIPE, text=True)
    daemon = None
    try:
        assert watcher.wait_for(lambda t, p, r: t == "streamdet/bridge/test-bridge/availability" and p == "online"), "the bridge never came online"
        daemon = start_daemon("--replay", str(replay), "--name", "yard", "--pace", "2x", "--model", str(tiny_model), "--endpoint", endpoint, "--wait-subscribers", "1",
                              "--set", "bus.status_interval_s=0.5", "--set", "detector.min_event_s=1.0")
        daemon.communicate(timeout=60)
        assert daemon.returncode == 0
        assert watcher.wait_for(lambda t, p, r: t.endswith("/availability") and "/bridge/" not in t and p == "offline"), "the finished daemon never went offline"
        host = next(t.split("/")[1] for t, p, r in watcher.messages("streamdet/") if t.endswith("/yard/state"))
        node = f"streamdet_{host}"
        # Discovery: a device per daemon, per source a bird binary sensor and three sensors, retained.
        configs = {t: json.loads(p) for t, p, r in watcher.messages("homeassistant/")}
        expected = {f"homeassistant/binary_sensor/{node}/yard_bird/config", f"homeassistant/sensor/{node}/yard_score/config",
                    f"homeassistant/sensor/{node}/yard_events_today/config", f"homeassistant/sensor/{node}/yard_last_event/config"}
        assert set(configs) == expected
        for config in configs.values():
            assert config["device"]["identifiers"] == [node] and config["state_topic"] == f"streamdet/{host}/yard/state"
            assert config["unique_id"].startswith(node) and {a["topic"] for a in config["availability"]} == {"streamdet/bridge/test-bridge/availability", f"streamdet/{host}/availability"}
        bird = configs[f"homeassistant/binary_sensor/{node}/yard_bird/config"]
        assert bird["payload_on"] == "ON" and bird["value_template"] == "{{ value_json.bird }}"
        # State: ON while an event is open, OFF after; one event message per finished event.
        states = [json.loads(p) for t, p, r in watcher.messages(f"streamdet/{host}/yard/state")]
        flips = [s["bird"] for a, s in zip([None, *states], states) if a is None or a["bird"] != s["bird"]]
        events = [json.loads(p) for t, p, r in watcher.messages(f"streamdet/{host}/yard/event")]
        assert len(events) == 2 and flips == ["OFF", "ON", "OFF", "ON", "OFF"], (flips, events)
        assert states[-1]["events_today"] == 2 and states[-1]["last_event"]["file"] == "calls.wav"
        for event, start in zip(events, (3.0, 8.0)):  # 1-s windows every 0.5 s: within a window of the call
            assert start - 1.01 <= event["file_onset"] <= start + 0.51, events
        # The broker restarts (forgetting everything): the bridge reconnects and sends discovery again.
        broker.stop()
        watcher.got.clear()
        broker.start()
        assert watcher.wait_for(lambda t, p, r: t == f"homeassistant/binary_sensor/{node}/yard_bird/config"), "discovery was not sent again"
        # Killed without a goodbye: the broker publishes the bridge's Last Will.
        watcher.got.clear()
        bridge.send_signal(signal.SIGKILL)
        assert watcher.wait_for(lambda t, p, r: t == "streamdet/bridge/test-bridge/availability" and p == "offline"), "no Last Will"
    finally:
        watcher.close()
        for p in (bridge, daemon):
            if p is not None and p.poll() is None:
                p.kill()


def test_the_bridge_without_paho_or_with_a_bad_broker_is_one_line(tmp_path):
    fake = tmp_path / "fake" / "paho" / "mqtt"
    fake.mkdir(parents=True)
    for d in (fake.parent, fake):
        (d / "__init__.py").write_text("")
    (fake / "client.py").write_text("raise ImportError('no paho')\n")
    missing = subprocess.run(streamdet_command("mqtt"), capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(tmp_path / "fake")}, timeout=60)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1 and "pip install 'streamdet[mqtt]'" in missing.stderr
    bad = subprocess.run(streamdet_command("mqtt", "--broker", "http://x"), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == "streamdet: error: mqtt.broker: expected mqtt://HOST:PORT or mqtts://HOST:PORT, found 'http://x'"


def test_the_bridge_skips_messages_it_cannot_read_and_goes_on():
    bridge = Bridge(MqttConfig())
    status = {"type": "status", "daemon": "d", "run_id": "r", "state": "running", "status_interval_s": 1.0, "sources": {"s": {}}}
    assert bridge.on_message(status)
    for bad in ({"type": "status", "daemon": "d", "sources": ["not", "a", "dict"]}, {"type": "event", "run_id": "r", "source": "s", "state": "end"},
                {"type": "loss", "run_id": "r", "source": "s", "score": "high"}):
        assert bridge.on_message(bad) == []
    assert bridge.unreadable == 3
    start = bridge.on_message({"type": "event", "run_id": "r", "source": "s", "state": "start", "event_id": 0, "onset": 1.0, "peak_score": 0.9})
    assert json.loads(start[0].payload)["bird"] == "ON"  # and it goes on


def test_a_broker_that_refuses_the_credentials_ends_the_bridge_with_one_line(broker, endpoint, tmp_path):
    """Retrying cannot cure a refused password: after a few refusals the bridge exits non-zero, so
    that systemd and its operator see the failure."""
    broker.stop()
    broker.conf.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous false\npersistence false\n")
    broker.start()
    password = tmp_path / "pw"
    password.write_text("wrong\n")
    bridge = subprocess.Popen(streamdet_command("mqtt", "--endpoint", endpoint, "--broker", f"mqtt://127.0.0.1:{broker.port}", "--username", "station", "--password-file", str(password)),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, stderr = bridge.communicate(timeout=90)
    finally:
        if bridge.poll() is None:
            bridge.kill()
    assert bridge.returncode == 1, stderr
    assert stderr.strip().splitlines()[-1].startswith(f"streamdet mqtt: error: broker mqtt://127.0.0.1:{broker.port} refused the connection 5 times: Not authorized"), stderr
