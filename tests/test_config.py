import re
import subprocess

import pytest
from helpers import REPO, streamdet_command

from streamdet.config import check_config, load_config
from streamdet.typedconfig import ConfigError


def load_text(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return check_config(load_config(path), path)


def test_a_good_config_loads_into_typed_objects(tmp_path):
    c = load_text(tmp_path, "sources:\n  - {kind: replay, name: yard, path: /tmp, pace: 4x}\ndetector: {on_score: 0.6, off_score: 0.4}\nbus: {endpoint: 'tcp://127.0.0.1:6000'}\n")
    assert c.sources[0].name == "yard" and c.sources[0].pace == "4x"
    assert c.detector.on_score == 0.6 and isinstance(c.detector.on_score, float)
    assert c.bus.endpoint == "tcp://127.0.0.1:6000"


@pytest.mark.parametrize(
    "text,key,expected",
    [
        ("detector: {on_scor: 0.5}\n", "detector.on_scor", "unknown key"),
        ("bus: {wait_subscribers: two}\n", "bus.wait_subscribers", "expected an integer"),
        ("sources:\n  - {path: /tmp, block_seconds: -1}\n", "sources[0].block_seconds", "expected more than 0"),
        ("detector: {on_score: 0.3, off_score: 0.4}\nsources: [{path: /tmp}]\n", "detector.off_score", "at most on_score"),
        ("sources:\n  - {path: /tmp, pace: fast}\n", "sources[0].pace", "'realtime', 'max' or a positive speed factor"),
        ("sources:\n  - {path: /tmp, name: 'a b'}\n", "sources[0].name", "letters, digits"),
        ("sources:\n  - {kind: radio, path: /tmp}\n", "sources[0].kind", "expected one of 'replay'"),
        ("sources: [{path: /tmp}, {path: /tmp}]\n", "sources", "unique source names"),
        ("model: {device: gpu}\nsources: [{path: /tmp}]\n", "model.device", "'auto', 'cpu'"),
        ("- just\n- a list\n", "config", "mapping"),
        ("detector: {on_score: [\n", "config", "not valid YAML"),
        ("sources:\n  - {path: /tmp, ring_seconds: 1000000}\n", "sources[0].ring_seconds", "expected at most 3600"),
        ("model: {threads: 100000}\nsources: [{path: /tmp}]\n", "model.threads", "expected at most 1024"),
        ("bus: {wait_subscribers: 18446744073709551616}\nsources: [{path: /tmp}]\n", "bus.wait_subscribers", "expected at most 100000"),
        ("bus: {send_hwm: 1000000000000}\nsources: [{path: /tmp}]\n", "bus.send_hwm", "expected at most"),
        ("bus: {endpoint: 'tcp://127.0.0.1:99999'}\nsources: [{path: /tmp}]\n", "bus.endpoint", "a TCP port from 1 to 65535"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "config", "nested more than 20 levels"),
        ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n", "config", "aliases (*name) are not allowed"),
        ("detector: {on_score: '" + "x" * 100000 + "'}\n", "detector.on_score", "found str 'xxxxxxxxxxxx..."),
        ("model: {batch_windows: " + "9" * 5000 + "}\n", "config", "a number too long to be a setting"),
        ("model: {batch_windows: 0x" + "f" * 5000 + "}\nsources: [{path: /tmp}]\n", "model.batch_windows", "expected at most 4096, found a number of 20000 bits"),
        ("detector: {on_score: 0.6}\nsources: [{path: /tmp}]\ndetector: {off_score: 0.1}\n", "config", "line 3: the key 'detector' appears twice"),
        ("detector: {on_score: 0.6, on_score: 0.7}\n", "config", "the key 'on_score' appears twice"),
        ("bus: {status_interval_s: 5e-1000}\nsources: [{path: /tmp}]\n", "bus.status_interval_s", "expected more than 0"),
        ("sources: [{name: garden, path: /tmp/arch/garden}]\nrecording: {enabled: true, directory: /tmp/arch}\n", "recording.directory", "overlaps the replayed folder /tmp/arch/garden of source 'garden'"),
        ("sources: [{name: garden, path: /tmp/arch}]\nrecording: {enabled: true, directory: /tmp/arch/clips}\n", "recording.directory", "overlaps the replayed folder"),
    ],
)
def test_bad_values_name_the_key_and_what_was_expected(tmp_path, text, key, expected):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, text)
    message = str(err.value)
    assert message.startswith(f"config {tmp_path / 'c.yaml'}: ")
    assert key in message and expected in message
    assert "\n" not in message


def test_numbers_are_read_as_people_write_them(tmp_path):
    c = load_text(tmp_path, "bus: {status_interval_s: 5e-1}\ndetector: {merge_gap_s: 1E0, min_event_s: +2.5e-1}\nsources: [{path: /tmp}]\n")
    assert c.bus.status_interval_s == 0.5 and c.detector.merge_gap_s == 1.0 and c.detector.min_event_s == 0.25


def test_a_non_utf8_config_is_named_with_its_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"log:\n  level: info  # caf\xe9\n")
    with pytest.raises(ConfigError, match=r"c.yaml: not UTF-8 text \(byte b'\\xe9' on line 2\)"):
        check_config(load_config(path), path)


def test_bad_values_are_quoted_as_a_short_prefix(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, "detector: {on_score: '" + "x" * 100000 + "'}\n")
    assert len(str(err.value)) < 200


def test_daemon_exits_nonzero_with_one_line_before_starting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - {path: /tmp, ring_seconds: -5}\n")
    result = subprocess.run(streamdet_command("run", "--config", str(bad)), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "sources[0].ring_seconds" in lines[0] and "expected more than 0" in lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--replay", "/nonexistent/dir"], "replay directory /nonexistent/dir does not exist"),
        (["--replay", ".", "--model", "/nonexistent/model.pt"], "model /nonexistent/model.pt: no such file"),
        (["--replay", ".", "--set", "detector.nope=1"], "--set detector.nope: unknown key"),
        (["--replay", ".", "--set", "model.batch_windows=" + "7" * 5000], "--set model.batch_windows: a number too long to be a setting"),
        (["--replay", ".", "--pace", "slow"], "sources[0].pace: expected 'realtime', 'max' or a positive speed factor such as '4x', found 'slow'"),
        ([], "expected at least one source"),
    ],
)
def test_command_line_errors_are_one_line(args, expected):
    result = subprocess.run(streamdet_command("run", *args), capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr


def test_command_line_flags_override_the_file(tmp_path):
    from streamdet.cli import build_config, build_parser

    path = tmp_path / "c.yaml"
    path.write_text("sources:\n  - {kind: replay, name: yard, path: /tmp, pace: realtime}\nbus: {endpoint: 'tcp://127.0.0.1:6000'}\n")
    args = build_parser().parse_args(["run", "--config", str(path), "--pace", "max", "--endpoint", "tcp://127.0.0.1:7000", "--set", "detector.min_event_s=2"])
    config = build_config(args)
    assert config.sources[0].pace == "max" and config.sources[0].name == "yard"
    assert config.bus.endpoint == "tcp://127.0.0.1:7000"
    assert config.detector.min_event_s == 2.0


def test_the_shipped_configs_are_valid():
    from train.config import load_train_config

    daemon = check_config(load_config(REPO / "configs" / "daemon.yaml"))
    assert daemon.sources[0].path == str(REPO / "streamdet" / "assets" / "demo")
    train = load_train_config(REPO / "configs" / "train.yaml")
    assert train.output == str(REPO / "runs" / "default.pt")


def test_set_reaches_frozen_sections_and_checks_them():
    from streamdet.typedconfig import set_path
    from train.config import TrainConfig

    config = TrainConfig()
    set_path(config, "features.kind", "pcen")
    assert config.features.kind == "pcen" and config.features.n_mels == 64
    with pytest.raises(ConfigError, match="features.n_mels: expected an integer"):
        set_path(config, "features.n_mels", "many")


def test_every_path_in_a_config_is_relative_to_the_config_file(tmp_path, monkeypatch):
    """CURVE key files too: the station example's `curve_secret_key: north.key_secret` is found
    beside the config whatever the working folder (under systemd it is /var/lib/streamdet)."""
    from streamdet.bus.security import make_keys
    from streamdet.subscribers.mqtt import load_mqtt_config

    etc = tmp_path / "etc"
    (etc / "clients").mkdir(parents=True)
    (etc / "replay").mkdir()
    make_keys(etc, "north")
    make_keys(etc / "clients", "laptop")
    (etc / "c.yaml").write_text(
        "sources: [{path: replay}]\nmodel: {path: m.pt}\nrecording: {directory: clips}\n"
        "bus: {curve_secret_key: north.key_secret, curve_clients: clients}\nmqtt: {password_file: pw, tls_ca: ca.pem}\n"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    c = load_config(etc / "c.yaml")
    assert c.bus.curve_secret_key == str(etc / "north.key_secret") and c.bus.curve_clients == str(etc / "clients")
    assert (c.sources[0].path, c.model.path, c.recording.directory) == (str(etc / "replay"), str(etc / "m.pt"), str(etc / "clips"))
    bridge = load_mqtt_config(etc / "c.yaml")  # the bridge reads its own section of the same file
    assert (bridge.password_file, bridge.tls_ca) == (str(etc / "pw"), str(etc / "ca.pem"))
    assert list(c.bus.problems()) == []


def test_the_example_config_names_every_key_the_daemon_and_the_bridge_read():
    """configs/daemon.yaml says `--set` works for any key in it: so every key must be in it."""
    from dataclasses import fields, is_dataclass

    from streamdet.config import Config, SourceConfig
    from streamdet.subscribers.mqtt import MqttConfig

    text = (REPO / "configs" / "daemon.yaml").read_text()
    sections = {**{f.name: f.default_factory() for f in fields(Config) if f.name != "sources"}, "sources": SourceConfig(), "mqtt": MqttConfig()}
    missing = [f"{name}.{f.name}" for name, obj in sections.items() if is_dataclass(obj) for f in fields(obj) if not re.search(rf"^[ #-]*{f.name}:", text, re.M)]
    assert not missing, f"not in configs/daemon.yaml: {missing}"


def _relative_paths(cls, data_for_lists: dict) -> dict:
    """A mapping for `cls` in which every path field, nested ones too, is a relative name."""
    import typing
    from dataclasses import fields, is_dataclass

    out = {}
    for f in fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        item = typing.get_args(hint)[0] if typing.get_origin(hint) is list else None
        if f.metadata.get("path"):
            out[f.name] = f"rel/{f.name}"
        elif is_dataclass(hint):
            out[f.name] = _relative_paths(hint, data_for_lists)
        elif item is not None and is_dataclass(item):
            out[f.name] = [{**data_for_lists.get(f.name, {}), **_relative_paths(item, data_for_lists)}]
    return out


def _path_fields(obj, where=""):
    from dataclasses import fields, is_dataclass

    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.metadata.get("path"):
            yield f"{where}{f.name}", value
        elif is_dataclass(value):
            yield from _path_fields(value, f"{where}{f.name}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if is_dataclass(item):
                    yield from _path_fields(item, f"{where}{f.name}[{i}].")


def test_every_path_field_of_every_config_is_relative_to_its_file(tmp_path, monkeypatch):
    """One walk over the dataclasses: a path field added later is covered without being listed."""
    import yaml

    from streamdet.config import Config
    from streamdet.subscribers.mqtt import MqttConfig, load_mqtt_config
    from train.config import TrainConfig, load_train_config

    etc = tmp_path / "etc"
    etc.mkdir()
    monkeypatch.chdir(tmp_path)
    daemon = {**_relative_paths(Config, {}), "mqtt": _relative_paths(MqttConfig, {})}
    (etc / "daemon.yaml").write_text(yaml.safe_dump(daemon))
    (etc / "train.yaml").write_text(yaml.safe_dump(_relative_paths(TrainConfig, {"data": {"kind": "bad"}})))
    loaded = {"daemon": load_config(etc / "daemon.yaml"), "mqtt": load_mqtt_config(etc / "daemon.yaml"), "train": load_train_config(etc / "train.yaml")}
    found = {name: dict(_path_fields(config)) for name, config in loaded.items()}
    assert all(found.values()) and len(found["daemon"]) >= 6 and len(found["train"]) >= 5, found
    for name, paths in found.items():
        for key, value in paths.items():
            assert value == str(etc / "rel" / key.rsplit(".", 1)[-1]), (name, key, value)
