"""The daemon's configuration: what to listen to, which model, how to decide, where to publish."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from streamdet.addresses import AddressError, endpoint_problem, host_port
from streamdet.typedconfig import PATH, build, check, in_file, load_yaml, rebase_paths

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
PACE_PATTERN = re.compile(r"^(realtime|max|\d+(\.\d+)?x)$")


def pace_speed(pace: str) -> float:
    """'realtime' -> 1.0, 'max' -> inf, '4x' -> 4.0."""
    if pace == "realtime":
        return 1.0
    if pace == "max":
        return float("inf")
    return float(pace[:-1])


@dataclass
class SourceConfig:
    kind: str = field(default="replay", metadata={"choices": ("replay", "mic")})
    name: str = "replay"
    # replay
    path: str | None = field(default=None, metadata=PATH)
    pace: str = "realtime"
    loop: bool = False
    block_seconds: float = field(default=0.05, metadata={"above": 0.0, "max": 10.0})
    # mic
    device: str | None = None  # index or part of the name; None: the default input
    sample_rate: int | None = field(default=None, metadata={"min": 1000, "max": 768_000})  # None: the model's if the device takes it
    channels: int = field(default=1, metadata={"min": 1, "max": 64})  # captured, then averaged to mono
    block_frames: int = field(default=1024, metadata={"min": 16, "max": 65536})
    latency: float | None = field(default=None, metadata={"above": 0.0, "max": 10.0})  # seconds; None: the device's low latency
    # An hour of 48 kHz audio is 660 MB; a minute holds a clip of the longest event (max_event_s) with room to read.
    ring_seconds: float = field(default=60.0, metadata={"above": 0.0, "max": 3600.0})

    def problems(self):
        if not NAME_PATTERN.match(self.name):
            yield "name", f"expected 1-64 letters, digits, '_' or '-' (it becomes part of ZeroMQ topics), found {self.name!r}"
        if not PACE_PATTERN.match(self.pace) or (self.pace.endswith("x") and pace_speed(self.pace) <= 0):
            yield "pace", f"expected 'realtime', 'max' or a positive speed factor such as '4x', found {self.pace!r}"
        if self.kind == "replay" and not self.path:
            yield "path", "expected the directory to replay (or --replay DIR)"
        if self.kind == "replay" and self.ring_seconds < 4 * self.block_seconds:
            yield "ring_seconds", f"expected at least 4 blocks ({4 * self.block_seconds:g} s), found {self.ring_seconds:g}"
        if self.kind == "mic" and self.ring_seconds * (self.sample_rate or 8000) < 4 * self.block_frames:
            yield "ring_seconds", f"expected room for at least 4 blocks of {self.block_frames} frames, found {self.ring_seconds:g} s"


@dataclass
class ModelConfig:
    path: str | None = field(default=None, metadata=PATH)  # None: the model bundled with streamdet
    device: str = "auto"
    batch_windows: int = field(default=64, metadata={"min": 1, "max": 4096})
    # torch intra-op threads: one, so that the source thread keeps a core to decode on
    # (docs/measurements.md).  0 keeps torch's default.
    threads: int = field(default=1, metadata={"min": 0, "max": 1024})

    def problems(self):
        if not re.match(r"^(auto|cpu|cuda(:\d+)?)$", self.device):
            yield "device", f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', found {self.device!r}"


@dataclass
class DetectorConfig:
    """Hysteresis on the calibrated bird score (0..1; 0.5 is the model's calibrated threshold)."""

    on_score: float = field(default=0.5, metadata={"min": 0.0, "max": 1.0})
    off_score: float = field(default=0.35, metadata={"min": 0.0, "max": 1.0})
    min_event_s: float = field(default=1.0, metadata={"min": 0.0, "max": 86400.0})  # one window spans 1 s: 1.0 is one window
    merge_gap_s: float = field(default=1.0, metadata={"min": 0.0, "max": 86400.0})
    # No event lasts longer: a chorus is cut here into events that follow each other (`cut`,
    # `continues`), so that every event ends, is counted, and has a clip holding its start.
    max_event_s: float = field(default=20.0, metadata={"min": 1.0, "max": 3600.0})

    def problems(self):
        if self.off_score > self.on_score:
            yield "off_score", f"expected at most on_score ({self.on_score:g}), found {self.off_score:g}"


@dataclass
class BusConfig:
    endpoint: str = "tcp://127.0.0.1:5556"
    connect: bool = False  # connect to the endpoint (a `streamdet proxy` frontend) instead of binding it
    wait_subscribers: int = field(default=0, metadata={"min": 0, "max": 100_000})
    wait_timeout_s: float = field(default=0.0, metadata={"min": 0.0, "max": 1e7})  # 0: wait forever
    status_interval_s: float = field(default=5.0, metadata={"above": 0.0, "max": 86400.0})
    send_hwm: int = field(default=1000, metadata={"min": 1, "max": 10_000_000})
    spectrogram: bool = False  # publish each window's new model-input frames on spec.<source> (for `streamdet web`)
    # CURVE (README, "Security"): this daemon's secret certificate; with it, a bound bus admits only
    # the clients whose public certificates are in curve_clients, and a connecting one (connect: true)
    # needs the proxy's public certificate in curve_server_key.
    curve_secret_key: str | None = field(default=None, metadata=PATH)
    curve_clients: str | None = field(default=None, metadata=PATH)
    curve_server_key: str | None = field(default=None, metadata=PATH)

    def curve(self):
        from streamdet.bus.security import Curve

        return Curve(self.curve_secret_key, self.curve_clients, self.curve_server_key) if self.curve_secret_key else None

    def problems(self):
        if self.curve_secret_key and not Path(self.curve_secret_key).is_file():
            yield "curve_secret_key", f"expected a certificate file (NAME.key_secret from `streamdet keys`), found {self.curve_secret_key[:80]!r}"
        elif self.curve_secret_key and not self.connect and not (self.curve_clients and Path(self.curve_clients).is_dir()):
            yield "curve_clients", "expected the folder of allowed clients' public certificates (a bound bus with a curve_secret_key admits only those)"
        elif self.curve_secret_key and self.connect and not (self.curve_server_key and Path(self.curve_server_key).is_file()):
            yield "curve_server_key", "expected the proxy's public certificate (NAME.key) to connect to it with CURVE"
        elif (self.curve_clients or self.curve_server_key) and not self.curve_secret_key:
            yield "curve_secret_key", "expected this end's certificate: curve_clients and curve_server_key need it"
        if problem := endpoint_problem(self.endpoint):
            yield "endpoint", problem


@dataclass
class RecordingConfig:
    """A FLAC clip (and a JSON sidecar) of every event, kept within an age and a size limit."""

    enabled: bool = False
    directory: str = field(default="clips", metadata=PATH)  # relative to the config file; under systemd, /var/lib/streamdet/clips
    pre_roll_s: float = field(default=2.0, metadata={"min": 0.0, "max": 60.0})
    post_roll_s: float = field(default=2.0, metadata={"min": 0.0, "max": 60.0})
    max_age_days: float = field(default=30.0, metadata={"above": 0.0, "max": 36500.0})
    max_total_mb: float = field(default=1000.0, metadata={"above": 0.0, "max": 1e9})
    # Stretches the detector did not call bird, recorded for the operator to check ("missed a bird?"
    # on the page): at most this many an hour, borderline scores first (streamdet/service/checks.py); 0: none.
    checks_per_hour: float = field(default=2.0, metadata={"min": 0.0, "max": 60.0})


@dataclass
class MetricsConfig:
    """Prometheus metrics over HTTP (needs the `metrics` extra); null: none."""

    address: str | None = None  # HOST:PORT, such as 127.0.0.1:9108

    def problems(self):
        if self.address is not None:
            try:
                host_port(self.address)
            except AddressError as exc:
                yield "address", str(exc)


@dataclass
class LogConfig:
    level: str = field(default="info", metadata={"choices": ("debug", "info", "warning", "error")})


@dataclass
class Config:
    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    model: ModelConfig = field(default_factory=ModelConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    log: LogConfig = field(default_factory=LogConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def problems(self):
        if not self.sources:
            yield "sources", "expected at least one source (a 'sources' list in the config, or --replay DIR)"
        names = [s.name for s in self.sources]
        for name in names:
            if names.count(name) > 1:
                yield "sources", f"expected unique source names, found {name!r} twice"
                break
        for source in self.sources:
            if self.recording.enabled and source.kind == "replay" and source.path and _overlap(Path(self.recording.directory), Path(source.path)):
                # Clips written into a replayed folder would be replayed (and, once, retention deleted the user's recordings there).
                yield "recording.directory", f"{self.recording.directory} overlaps the replayed folder {source.path} of source {source.name!r}: choose a directory outside it"
            if self.recording.enabled and source.ring_seconds < self.recording.pre_roll_s + self.recording.post_roll_s + 2:
                yield "recording.pre_roll_s", f"the ring of source {source.name!r} ({source.ring_seconds:g} s) must hold the pre-roll and post-roll with room to spare"
            elif self.recording.enabled and source.ring_seconds < clip_ring_seconds(self.recording, self.detector, source):
                # A clip is cut from the ring when its event ends: the ring must still hold the event's onset.
                yield "detector.max_event_s", f"the ring of source {source.name!r} ({source.ring_seconds:g} s) must hold a whole event's clip, {clip_ring_seconds(self.recording, self.detector, source):g} s; lower max_event_s or raise ring_seconds"


def clip_ring_seconds(recording: RecordingConfig, detector: DetectorConfig, source: SourceConfig) -> float:
    """The ring a source needs so that the clip of an event of max_event_s still finds its onset:
    pre-roll, event and post-roll with 2 s to spare, and for a replay a quarter more, which the
    reader takes ahead in its reads."""
    need = recording.pre_roll_s + detector.max_event_s + recording.post_roll_s + 2
    return need * 4 / 3 if source.kind == "replay" else need


def _overlap(a: Path, b: Path) -> bool:
    """Whether one folder is the other or holds it (links resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def load_config(path: Path | str | None) -> Config:
    """The config at `path`, or the defaults, not yet checked: overrides come first, then `check_config`."""
    if path is None:
        return Config(sources=[])
    data = load_yaml(path)
    data.pop("mqtt", None)  # the MQTT bridge's section (streamdet.subscribers.mqtt reads it); the daemon's file may hold it
    config = in_file(path, lambda: build(Config, data))
    rebase_paths(config, path)
    return config


def check_config(config: Config, path: Path | str | None = None) -> Config:
    in_file(path, lambda: check(config))
    return config
