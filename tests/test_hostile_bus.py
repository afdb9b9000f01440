"""Every subscriber tool against hostile bus messages, over real ZeroMQ sockets on loopback: each
crafted message (and a batch of random frames) is skipped and counted, and the tool goes on with
the good messages around it.  And `export` never writes outside --out, whatever a message names."""
import io
import json
import random
import threading
import time

import pytest
import zmq
from rich.console import Console
from test_mqtt import Watcher, broker  # noqa: F401 - the real broker fixture

from streamdet.bus import messages
from streamdet.subscribers.export import export, from_bus, read_jsonl
from streamdet.subscribers.listen import listen
from streamdet.subscribers.mqtt import MqttConfig, run_bridge


def good_status(state: str, daemon: str = "d") -> dict:
    source = {"kind": "replay", "windows": 3, "audio_s": 1.5, "rtf": 10.0, "dropped_samples": 0, "gaps": 0, "files_played": 1, "files_skipped": 0,
              "current_file": "a.wav", "events": 1, "latency_ms": {"p50": 1.0, "p99": 2.0}, "reports": [], "finished": state == "finished", "state": "up"}
    return messages.status("r", daemon, state, 1.0, 1.0, {"sha256": "0123456789abcdef", "threshold": 0.1}, {"on_score": 0.5}, {}, 0, 0, {"s": source})


def good_loss(seq: int) -> dict:
    return messages.loss("r", "s", seq, seq * 0.5, seq * 0.5 + 1, 0.25, 0.75, file="a.wav", offset=seq * 0.5)


def good_end(event_id: int, file: str = "a.wav") -> dict:
    transition = {"state": "end", "event_id": event_id, "onset": 1.0, "offset": 2.0, "duration": 1.0, "peak_score": 0.9, "windows": 3, "band_hz": [2000.0, 4000.0]}
    return messages.event("r", "s", transition, file=file, file_onset=1.0)


def frames(topic: str, body) -> list[bytes]:
    return [topic.encode(), json.dumps(body).encode()]


def crafted() -> list[list[bytes]]:
    """The messages that took down listen, export and mqtt, each alone on the wire."""
    end = good_end(7)
    status = good_status("running")
    return [
        [b"loss.s"],  # one frame
        [b"loss.s", json.dumps(good_loss(0)).encode(), b"extra"],  # three frames
        [b"\xff\xfeloss", json.dumps(good_loss(0)).encode()],  # a topic that is not UTF-8
        [b"loss.s", b"not json at all"],
        [b"loss.s", b"\xff\xfe\x00"],  # a body that is not UTF-8
        [b"loss.s", b"[" * 200000],  # deep enough to break a recursive parser
        [b"loss.s", (b"[" * 100) + (b"]" * 100)],  # valid JSON, absurdly deep, and a list
        [b"loss.s", b"[1, 2, 3]"],  # a JSON list, not an object
        frames("loss.s", {**good_loss(0), "score": "abc"}),
        [b"loss.s", json.dumps(good_loss(0)).replace('"score": 0.75', '"score": NaN').encode()],
        frames("event.s", {k: v for k, v in end.items() if k != "onset"}),  # an end without onset
        frames("event.s", {**end, "band_hz": "ab"}),
        frames("status", {**status, "model": "x"}),
        frames("status", {**status, "daemon": 123}),
        frames("status", {**status, "sources": {"s": "up"}}),
        frames("status", {**status, "sources": {"s": {"latency_ms": {"p99": "slow"}}}}),
        frames("loss.s", {**good_loss(0), "v": 99}),
        frames("loss.s", {**good_loss(0), "seq": True}),
        # What broke the web page: a `ts` no clock gives, and spectrogram frames unlike their sizes.
        frames("event.s", {**end, "ts": "yesterday"}),
        frames("event.s", {**end, "ts": 1e20}),
        frames("event.s", {**end, "ts": -1e18}),
        frames("spec.s", {**good_spec(), "n_frames": 0}),
        frames("spec.s", {**good_spec(), "n_frames": 10**9}),
        frames("spec.s", {**good_spec(), "frames": "*" * len(good_spec()["frames"])}),
        frames("spec.s", {**good_spec(), "frames": good_spec()["frames"] * 400}),  # a megabyte where 2 KB were said
        frames("event.s", {**end, "continues": "the last one"}),
    ]


def good_spec() -> dict:
    import numpy as np

    return messages.spec("r", "s", 3, 1.5, 0.02, np.linspace(0, 1, 25 * 64).reshape(25, 64), (500.0, 10000.0))


def random_junk(n: int, seed: int = 0) -> list[list[bytes]]:
    """Frames of random bytes and random JSON that is never a schema-v1 message."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            out.append([bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40))) for _ in range(rng.choice((1, 2, 2, 3, 5)))])
        elif kind == 1:
            junk = {rng.choice(["type", "source", "seq", "x"]): rng.choice([None, 1.5, "loss", [1], {"a": {}}, True]) for _ in range(4)}
            out.append(frames("loss.s", junk))  # no "v": never a message of this schema
        else:
            out.append([b"status", json.dumps(rng.choice([None, 3, "status", [good_status("running")]])).encode()])
    return out


HOSTILE = crafted() + random_junk(40)


class Publisher:
    """An XPUB socket on loopback that sends a script of frames once `subscribers` have joined."""

    def __init__(self, endpoint: str):
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.LINGER, 2000)
        self.socket.bind(endpoint)

    def wait_for(self, subscribers: int, timeout_s: float = 20.0) -> None:
        deadline, seen = time.monotonic() + timeout_s, 0
        while seen < subscribers and time.monotonic() < deadline:
            if self.socket.poll(100):
                seen += self.socket.recv()[:1] == b"\x01"
        assert seen >= subscribers, "the subscriber never subscribed"

    def send_all(self, script: list[list[bytes]]) -> None:
        for message in script:
            self.socket.send_multipart(message)
            time.sleep(0.002)

    def close(self):
        self.socket.close()
        self.context.term()


def script() -> list[list[bytes]]:
    """Good messages with every hostile one between them, and a final status at the end."""
    out = [frames("status", good_status("running"))]
    for i, bad in enumerate(HOSTILE):
        out += [bad, frames("loss.s", good_loss(i))]
    return out + [frames("event.s", good_end(1)), frames("status", good_status("finished"))]


def served(endpoint: str, subscriber):
    """What `subscriber()` returns when the script is published to it (it must subscribe once)."""
    publisher = Publisher(endpoint)
    result = []
    thread = threading.Thread(target=lambda: result.append(subscriber()))
    thread.start()
    try:
        publisher.wait_for(1)
        publisher.send_all(script())
        thread.join(30)
    finally:
        publisher.close()
    assert not thread.is_alive() and result, "the subscriber did not come back"
    return result[0]


@pytest.mark.parametrize("width", [80, 160])
def test_listen_skips_and_counts_every_hostile_message(endpoint, width):
    console = Console(file=io.StringIO(), width=width, force_terminal=True)
    view = served(endpoint, lambda: listen(endpoint, until_finished=True, timeout_s=20, console=console))
    assert view.skipped == len(HOSTILE)
    assert view.sources["s"].received == len(HOSTILE) and view.sources["s"].missed == 0
    assert view.sources["s"].events == 1 and view.all_final()


def test_export_from_the_bus_skips_hostile_messages_and_writes_the_tables(endpoint, tmp_path):
    r = served(endpoint, lambda: export(from_bus(endpoint, timeout_s=20), tmp_path / "out"))
    assert r["unreadable"] == len(HOSTILE) and r["detections"] == 1
    assert (tmp_path / "out" / "a.wav.streamdet.selections.txt").read_text().count("\n") == 2  # header and the one detection


def test_export_writes_only_under_out(tmp_path):
    """File names from messages that would leave --out get no tables (their detections stay in the
    CSV, and the summary says so); nothing is written anywhere else."""
    root = tmp_path / "a" / "b"
    out = root / "out"
    outside = tmp_path / "outside.wav"
    names = ["../../escaped/x.wav", str(outside), "sub/../../y.wav", "..", "./.", "C:\\evil.wav", "sub/fine.wav"]
    records = [{"topic": "event.s", "message": good_end(i, name)} for i, name in enumerate(names)]
    recording = tmp_path / "run.jsonl"
    recording.write_text("".join(json.dumps(r) + "\n" for r in records))
    before = {p for p in tmp_path.rglob("*")}
    result = export(read_jsonl(recording), out)
    written = {p for p in tmp_path.rglob("*")} - before
    assert all(out in p.parents or p == out for p in written if p.is_file()), sorted(map(str, written))
    assert (out / "sub" / "fine.wav.streamdet.selections.txt").is_file()
    assert len(result["refused"]) == len(names) - 1 and result["detections"] == len(names)
    assert (out / "streamdet.detections.csv").read_text().count("\n") == len(names) + 1


def test_export_counts_bad_lines_of_a_recording_and_goes_on(tmp_path):
    lines = [json.dumps({"topic": "event.s", "message": good_end(1)}), "not json", "[" * 5000, json.dumps({"topic": 5, "message": {}}),
             json.dumps({"topic": "event.s", "message": {**good_end(2), "peak_score": "high"}}), json.dumps({"topic": "event.s", "message": good_end(3)})]
    recording = tmp_path / "run.jsonl"
    recording.write_text("\n".join(lines) + "\n")
    result = export(read_jsonl(recording), tmp_path / "out")
    assert result["detections"] == 2 and result["unreadable"] == 4
    assert "line 2" in result["first_unreadable"]


def test_the_mqtt_bridge_survives_hostile_messages(broker, endpoint):  # noqa: F811 - the fixture
    publisher = Publisher(endpoint)
    watcher = Watcher(broker.port)
    stop = threading.Event()
    failure = []

    def run():
        try:
            run_bridge(MqttConfig(endpoint=endpoint, broker=f"mqtt://127.0.0.1:{broker.port}", state_interval_s=0.2), stop)
        except BaseException as exc:  # noqa: BLE001 - what the test looks for
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        publisher.wait_for(1)
        hostile = crafted() + [frames("status", {**good_status("running"), "daemon": 123})] * 2 + random_junk(20, seed=1)
        publisher.send_all(hostile + [frames("status", good_status("running", daemon="after")), frames("event.s", good_end(1))])
        assert watcher.wait_for(lambda topic, payload, retained: topic.startswith("homeassistant/") and "after" in topic, timeout=20), "no discovery for the daemon after the hostile messages"
        assert thread.is_alive() and not failure
    finally:
        stop.set()
        thread.join(20)
        watcher.close()
        publisher.close()
    assert not failure, failure
