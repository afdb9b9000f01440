"""`streamdet mqtt`: a subscriber of the bus that publishes to an MQTT broker, with Home Assistant
discovery, so a station shows up in Home Assistant as a device with a "bird" sensor per source.

Topics (`topic_prefix`, default `streamdet`; names slugged to letters, digits, _ and -):
  <prefix>/bridge/<client_id>/availability   online/offline, retained; the bridge's Last Will
  <prefix>/<daemon>/availability             online while its status heartbeat arrives, retained
  <prefix>/<daemon>/<source>/state           JSON: bird ON/OFF, score, events_today, last event; retained
  <prefix>/<daemon>/<source>/event           JSON of every finished event
  <discovery_prefix>/.../config              Home Assistant discovery, retained, sent again on reconnect

`Bridge` is the state (messages in, publications out, clocks injected); `run_bridge` connects it
to the bus and the broker.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Callable, NamedTuple

from streamdet import __version__
from streamdet.addresses import AddressError, broker_address, endpoint_problem
from streamdet.subscribers.streamview import FINAL_STATES
from streamdet.typedconfig import PATH, build, check, in_file, load_yaml, rebase_paths

log = logging.getLogger(__name__)
INSTALL = "pip install 'streamdet[mqtt]' (in this checkout: .venv/bin/pip install -e '.[mqtt]')"
# Refusals no retry cures: after this many in a row the bridge exits non-zero instead of retrying forever.
MAX_REFUSALS = 5
REFUSED_FOR_GOOD = ("Not authorized", "Bad user name or password", "Client identifier not valid", "Banned")
MAX_QUEUED = 1000  # publications kept while the broker is away; retained state is sent again on reconnect
PENDING_EVENTS = 100  # events of a daemon whose first status has not arrived yet


class MqttError(Exception):
    pass


class Publication(NamedTuple):
    topic: str
    payload: str
    retain: bool = False
    qos: int = 0


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name) or "_"


@dataclass
class MqttConfig:
    """`streamdet mqtt`: a subscriber of `endpoint` publishing to an MQTT broker, with Home
    Assistant discovery (needs the mqtt extra). The daemon itself ignores this section."""

    endpoint: str = "tcp://127.0.0.1:5556"  # the daemon (or proxy backend) to subscribe to
    broker: str = "mqtt://127.0.0.1:1883"  # mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS
    username: str | None = None
    password_file: str | None = field(default=None, metadata=PATH)  # a file holding the password, so it stays out of the config
    tls_ca: str | None = field(default=None, metadata=PATH)  # CA certificate file for mqtts:// (default: the system's)
    client_id: str = "streamdet-bridge"
    topic_prefix: str = "streamdet"
    discovery_prefix: str = "homeassistant"
    state_interval_s: float = field(default=5.0, metadata={"above": 0.0, "max": 86400.0})  # how often the score is republished
    stale_after_intervals: float = field(default=3.0, metadata={"above": 0.0, "max": 1000.0})  # status intervals without one: offline

    def problems(self):
        try:
            broker_address(self.broker)
        except AddressError as exc:
            yield "broker", str(exc)
        if problem := endpoint_problem(self.endpoint):
            yield "endpoint", problem
        if self.password_file and not Path(self.password_file).is_file():
            yield "password_file", f"expected a file holding the password, found {self.password_file[:80]!r}"
        if self.tls_ca and not Path(self.tls_ca).is_file():
            yield "tls_ca", f"expected a CA certificate file, found {self.tls_ca[:80]!r}"
        for name in ("topic_prefix", "discovery_prefix"):
            if not re.fullmatch(r"[A-Za-z0-9_\-/]+", getattr(self, name)) or getattr(self, name).startswith("/"):
                yield name, f"expected an MQTT topic prefix of letters, digits, _ - and /, found {getattr(self, name)[:40]!r}"


def load_mqtt_config(path: Path | str | None) -> MqttConfig:
    """The `mqtt:` section of a config file (paths relative to the file), or the defaults; checked
    once the command line's overrides are applied (`check_mqtt_config`)."""
    if path is None:
        return MqttConfig()
    config = in_file(path, lambda: build(MqttConfig, load_yaml(path).get("mqtt") or {}, "mqtt"))
    rebase_paths(config, path)
    return config


def check_mqtt_config(config: MqttConfig, path: Path | str | None = None) -> MqttConfig:
    in_file(path, lambda: check(config, "mqtt"))
    return config


@dataclass
class SourceState:
    bird: bool = False
    score: float = 0.0
    events_today: int = 0
    day: date | None = None
    last_event: dict | None = None
    last_event_at: str | None = None
    published_at: float = float("-inf")
    changed: bool = True

    def body(self) -> dict:
        return {"bird": "ON" if self.bird else "OFF", "score": round(self.score, 4), "events_today": self.events_today,
                "last_event_at": self.last_event_at, "last_event": self.last_event}


@dataclass
class DaemonState:
    run_id: str | None = None
    online: bool = False
    status_interval_s: float = 5.0
    seen: float = 0.0
    sources: dict[str, SourceState] = field(default_factory=dict)
    stream_start_wall: dict[str, float | None] = field(default_factory=dict)


class Bridge:
    def __init__(self, config: MqttConfig, clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time, today: Callable[[], date] = date.today):
        self.config, self.clock, self.wall, self.today = config, clock, wall, today
        self.daemons: dict[str, DaemonState] = {}
        self.run_ids: dict[str, str] = {}  # run_id -> daemon
        self.pending: list[dict] = []  # events that came before their daemon's first status
        self.unreadable = 0

    # -- topics --------------------------------------------------------------------------------
    @property
    def bridge_availability(self) -> str:
        return f"{self.config.topic_prefix}/bridge/{slug(self.config.client_id)}/availability"

    def availability(self, daemon: str) -> str:
        return f"{self.config.topic_prefix}/{slug(daemon)}/availability"

    def state_topic(self, daemon: str, source: str) -> str:
        return f"{self.config.topic_prefix}/{slug(daemon)}/{slug(source)}/state"

    def event_topic(self, daemon: str, source: str) -> str:
        return f"{self.config.topic_prefix}/{slug(daemon)}/{slug(source)}/event"

    # -- messages in, publications out ----------------------------------------------------------
    def on_connect(self) -> list[Publication]:
        """Everything retained, again: a broker that restarted has forgotten it."""
        out = [Publication(self.bridge_availability, "online", True, 1)]
        for name, d in self.daemons.items():
            out.append(Publication(self.availability(name), "online" if d.online else "offline", True, 1))
            for source, s in d.sources.items():
                out += self.discovery(name, source)
                out.append(self._state(name, source, s))
        return out

    def on_message(self, msg: dict) -> list[Publication]:
        """A message that lacks a field it needs is skipped and counted (logged the first time)."""
        try:
            return self._on_message(msg)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self.unreadable += 1
            if self.unreadable == 1:
                log.warning("skipping a %s message without a usable %s (more are counted, not logged)", str(msg.get("type", "?"))[:20] if isinstance(msg, dict) else "non-object", exc)
            return []

    def _on_message(self, msg: dict) -> list[Publication]:
        kind = msg.get("type")
        if kind == "status":
            return self._status(msg)
        daemon = self.run_ids.get(msg.get("run_id"))
        if daemon is None:
            if kind == "event" and msg.get("state") == "end" and len(self.pending) < PENDING_EVENTS:
                self.pending.append(msg)
            return []
        d = self.daemons[daemon]
        s = d.sources.get(msg.get("source"))
        if s is None:
            return []
        self._roll_day(s)
        if kind == "loss":
            s.score = float(msg.get("score", 0.0))
            if self.clock() - s.published_at >= self.config.state_interval_s:
                return [self._state(daemon, msg["source"], s)]
            return []
        if kind == "event":
            return self._event(daemon, d, s, msg)
        return []

    def tick(self) -> list[Publication]:
        """Daemons whose heartbeat stopped go offline; a new day resets the day's count."""
        out = []
        now = self.clock()
        for name, d in self.daemons.items():
            if d.online and now - d.seen > self.config.stale_after_intervals * d.status_interval_s:
                d.online = False
                log.warning("daemon %s: no status for %.0f s: offline", name, now - d.seen)
                out.append(Publication(self.availability(name), "offline", True, 1))
            for source, s in d.sources.items():
                if self._roll_day(s):
                    out.append(self._state(name, source, s))
        return out

    def _status(self, msg: dict) -> list[Publication]:
        name = msg.get("daemon", "?")
        d = self.daemons.setdefault(name, DaemonState())
        out = []
        d.run_id, d.seen = msg.get("run_id"), self.clock()
        d.status_interval_s = float(msg.get("status_interval_s") or 5.0)
        self.run_ids[d.run_id] = name
        for source, status in (msg.get("sources") or {}).items():
            d.stream_start_wall[source] = status.get("stream_start_wall")
            if source not in d.sources:
                d.sources[source] = SourceState(day=self.today())
                out += self.discovery(name, source)
                out.append(self._state(name, source, d.sources[source]))
        online = msg.get("state") not in FINAL_STATES
        if online != d.online:
            d.online = online
            out.append(Publication(self.availability(name), "online" if online else "offline", True, 1))
        waiting, self.pending = self.pending, []
        for event in waiting:
            out += self.on_message(event)
        return out

    def _event(self, daemon: str, d: DaemonState, s: SourceState, msg: dict) -> list[Publication]:
        source, onset = msg["source"], float(msg["onset"])
        if msg.get("state") == "start":
            s.bird = True
            return [self._state(daemon, source, s)]
        s.bird = False
        s.events_today += 1
        start_wall = d.stream_start_wall.get(source)
        # A microphone dates its stream; a replayed file's events are dated when they arrive.
        at = start_wall + onset if start_wall is not None else self.wall()
        s.last_event_at = datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds")
        s.last_event = {k: msg[k] for k in ("event_id", "onset", "offset", "duration", "peak_score", "band_hz", "clip", "file", "file_onset") if k in msg}
        body = {"daemon": daemon, "source": source, "at": s.last_event_at, **s.last_event}
        return [self._state(daemon, source, s), Publication(self.event_topic(daemon, source), json.dumps(body), False, 1)]

    def _state(self, daemon: str, source: str, s: SourceState) -> Publication:
        s.published_at = self.clock()
        return Publication(self.state_topic(daemon, source), json.dumps(s.body()), True, 1)

    def _roll_day(self, s: SourceState) -> bool:
        today = self.today()
        if s.day != today:
            s.day, s.events_today = today, 0
            return True
        return False

    def discovery(self, daemon: str, source: str) -> list[Publication]:
        return discovery(self, daemon, source)


def discovery(bridge: Bridge, daemon: str, source: str) -> list[Publication]:
    """Home Assistant's discovery messages for one source: a bird sensor, its score, the day's events and the last one."""
    node, state = f"streamdet_{slug(daemon)}", bridge.state_topic(daemon, source)
    common = {
        "state_topic": state,
        "availability": [{"topic": bridge.bridge_availability}, {"topic": bridge.availability(daemon)}],
        "availability_mode": "all",
        "device": {"identifiers": [node], "name": f"streamdet {daemon}", "manufacturer": "streamdet", "model": "streaming bird-call detector", "sw_version": __version__},
    }
    entities = {
        ("binary_sensor", "bird"): {"name": f"{source} bird", "value_template": "{{ value_json.bird }}", "payload_on": "ON", "payload_off": "OFF", "device_class": "sound",
                                    "json_attributes_topic": state, "json_attributes_template": "{{ value_json.last_event | tojson }}"},
        ("sensor", "score"): {"name": f"{source} score", "value_template": "{{ value_json.score }}", "state_class": "measurement", "icon": "mdi:bird"},
        ("sensor", "events_today"): {"name": f"{source} events today", "value_template": "{{ value_json.events_today }}", "state_class": "total_increasing"},
        ("sensor", "last_event"): {"name": f"{source} last event", "value_template": "{{ value_json.last_event_at }}", "device_class": "timestamp",
                                   "json_attributes_topic": state, "json_attributes_template": "{{ value_json.last_event | tojson }}"},
    }
    out = []
    for (component, what), entity in entities.items():
        object_id = f"{slug(source)}_{what}"
        payload = {**entity, **common, "unique_id": f"{node}_{object_id}", "object_id": f"{node}_{object_id}"}
        out.append(Publication(f"{bridge.config.discovery_prefix}/{component}/{node}/{object_id}/config", json.dumps(payload), True, 1))
    return out


def import_paho():
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise MqttError(f"the MQTT bridge needs paho-mqtt, which is not installed: {INSTALL}") from None
    return mqtt


class BrokerLink:
    """paho's callbacks: connected (discovery and retained state sent again), lost, unreachable
    (said once per outage), refused (MAX_REFUSALS in a row for credentials set `stop`)."""

    def __init__(self, client, bridge: Bridge, lock: threading.Lock, stop: threading.Event):
        self.client, self.bridge, self.lock, self.stop = client, bridge, lock, stop
        self.broker = bridge.config.broker
        self.refusals: list[str] = []
        self.refused: str | None = None
        self.unreachable = False
        client.on_connect, client.on_disconnect, client.on_connect_fail = self.on_connect, self.on_disconnect, self.on_connect_fail

    def publish(self, publications: list[Publication]) -> None:
        for p in publications:
            self.client.publish(p.topic, p.payload, qos=p.qos, retain=p.retain)

    def on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", self.broker, reason_code)
            if str(reason_code) in REFUSED_FOR_GOOD:
                self.refusals.append(str(reason_code))
                if len(self.refusals) >= MAX_REFUSALS:
                    self.refused = f"broker {self.broker} refused the connection {MAX_REFUSALS} times: {reason_code}; check mqtt.username and mqtt.password_file"
                    self.stop.set()
            return
        log.info("connected to %s", self.broker)
        self.refusals.clear()  # only refusals in a row end the bridge
        self.unreachable = False
        with self.lock:
            self.publish(self.bridge.on_connect())

    def on_disconnect(self, client, userdata, flags, reason_code, properties):
        if not self.stop.is_set():
            log.warning("lost the broker %s (%s); reconnecting", self.broker, reason_code)

    def on_connect_fail(self, client, userdata):
        if not self.unreachable:  # once per outage: it retries every few seconds
            log.warning("cannot reach the broker %s; retrying", self.broker)
        self.unreachable = True


def make_client(mqtt, config: MqttConfig, bridge: Bridge):
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id)
    client.will_set(bridge.bridge_availability, "offline", qos=1, retain=True)
    client.max_queued_messages_set(MAX_QUEUED)
    client.reconnect_delay_set(1, 30)
    if config.username:
        password = Path(config.password_file).read_text().strip() if config.password_file else None
        client.username_pw_set(config.username, password)
    if broker_address(config.broker)[2]:
        client.tls_set(ca_certs=config.tls_ca)
    return client


def run_bridge(config: MqttConfig, stop: threading.Event, curve=None) -> None:
    """Until `stop` is set: the bus in, the broker out; reconnects to the broker on its own, except
    after MAX_REFUSALS refusals that retrying cannot cure (credentials): MqttError, so that the
    service fails where systemd and its operator see it."""
    from streamdet.bus.sockets import Subscriber

    host, port, _ = broker_address(config.broker)
    bridge, lock = Bridge(config), threading.Lock()
    client = make_client(import_paho(), config, bridge)
    link = BrokerLink(client, bridge, lock, stop)
    client.connect_async(host, port, keepalive=30)
    client.loop_start()
    subscriber = Subscriber(config.endpoint, curve=curve)  # one subscription: `--wait-subscribers 1` waits for it
    log.info("bridging %s to %s", config.endpoint, config.broker)
    try:
        while not stop.is_set():
            got = subscriber.receive(timeout_s=0.5)
            with lock:
                out = bridge.on_message(got[1]) if got else []
                out += bridge.tick()
                link.publish(out)
    finally:
        subscriber.close()
        info = client.publish(bridge.bridge_availability, "offline", qos=1, retain=True)  # a clean exit sends no Last Will
        try:
            info.wait_for_publish(timeout=3)
        except (RuntimeError, ValueError):
            pass  # not connected: the broker will send the Last Will instead
        client.disconnect()
        client.loop_stop()
    if link.refused:
        raise MqttError(link.refused)
