"""The daemon's pieces on their own, in this process: reader, detector, channel, messages, the
subscriber's state, the systemd notifier, the microphone's downmix, reload's refusals."""
from __future__ import annotations

import json
import os
import re
import socket
from collections import deque
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import REPO

from streamdet.bus import messages
from streamdet.bus import sockets as bus
from streamdet.capture.markers import Finished, Gap, SegmentEnd, SegmentStart, Skipped
from streamdet.capture.ringbuffer import RingBuffer
from streamdet.config import Config, DetectorConfig, SourceConfig
from streamdet.detect.detector import BandExplainer, Detector
from streamdet.detect.features import FeatureParams, LogMel, mel_band_edges, offline_windows
from streamdet.detect.scoring import Scorer
from streamdet.service import pipeline
from streamdet.service.pipeline import Channel, source_status
from streamdet.service.reader import Done, End, Missing, Report, Start, StreamReader, Windows
from streamdet.service.systemd import Notifier
from streamdet.subscribers.streamview import StreamView

PARAMS = FeatureParams(sample_rate=8000, n_fft=200, hop_length=100, n_mels=16, f_min=100.0, f_max=3900.0, window_frames=9, hop_frames=5)
RATE = PARAMS.sample_rate


class FakeModel:
    """Loss = a window's mean log-mel level, per band error = its mean per band: loud is bird."""

    polarity = "high_loss_is_bird"
    device = torch.device("cpu")

    def __init__(self, params: FeatureParams = PARAMS, threshold: float = -22.0, nan: bool = False):
        self.features, self.threshold, self.nan = params, threshold, nan
        self.frontend = LogMel(params)
        self.calls = 0

    def scorer(self) -> Scorer:
        return Scorer({"polarity": self.polarity, "threshold": self.threshold, "scale": 2.0}, self.features)

    def errors(self, windows: torch.Tensor):
        self.calls += 1
        bands = windows.mean(dim=1).numpy().astype(np.float64)
        losses = bands.mean(axis=1)
        if self.nan:
            losses[:] = np.nan
        return losses, bands

    def describe(self) -> dict:
        return {"path": "fake", "sha256": "0" * 16}


class FakeSource:
    kind = "replay"

    def __init__(self, capacity: int = 10 * RATE):
        self.name, self.rate = "s", RATE
        self.ring = RingBuffer(capacity)
        self.markers: deque = deque()
        self.current_file = None

    def poll(self) -> None:
        pass

    def describe(self) -> dict:
        return {"path": "x", "pace": "max", "loop": False}

    def play(self, file: str, samples: np.ndarray) -> None:
        """As the replay source does: a marker, then the samples it announces."""
        pos = self.ring.write_pos
        self.markers.append(SegmentStart(pos, file))
        self.ring.write(samples.astype(np.float32))
        self.markers.append(SegmentEnd(self.ring.write_pos))


class FakePublisher:
    def __init__(self):
        self.sent: list[tuple[str, dict]] = []
        self.while_blocked = lambda: None

    def send(self, topic: str, body: dict) -> bool:
        self.sent.append((topic, body))
        return True


def tone_in_noise(seconds: float, calls=(), hz: float = 1000.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    x = 0.003 * rng.standard_normal(len(t))
    for a, b in calls:
        x += np.where((t >= a) & (t < b), 0.3 * np.sin(2 * np.pi * hz * t), 0.0)
    return x.astype(np.float32)


def drain(reader: StreamReader) -> list:
    ops = []
    while reader.poll() or reader.ops:
        ops += reader.take()
    return ops


def make_reader(source: FakeSource, read_chunk: int = 1000) -> StreamReader:
    reader = StreamReader(source, source.ring)
    reader.use(PARAMS, None, "cpu", read_chunk)
    return reader


# -- reader ------------------------------------------------------------------------------------
def test_reader_gives_segments_windows_and_reports_in_stream_order_as_offline():
    source = FakeSource()
    a, c = tone_in_noise(2.0, [(0.5, 1.0)]), tone_in_noise(0.05, seed=1)  # c: shorter than a window
    source.play("a.wav", a)
    source.markers.append(Skipped(source.ring.write_pos, "b.wav", "not an audio file"))
    source.play("c.wav", c)
    source.markers.append(Finished(source.ring.write_pos))
    ops = drain(make_reader(source, read_chunk=333))  # reads that cut frames and windows anywhere
    kinds = [type(op).__name__ for op in ops if not isinstance(op, Windows)]
    assert kinds == ["Start", "End", "Report", "Start", "End", "Done"]
    assert isinstance(ops[-1], Done) and ops[[isinstance(o, Report) for o in ops].index(True)].file == "b.wav"
    for file, samples in (("a.wav", a), ("c.wav", c)):
        got = [op for op in ops if isinstance(op, Windows) and op.segment.file == file]
        starts, windows = offline_windows(samples, PARAMS)
        assert sum((op.starts for op in got), []) == starts
        torch.testing.assert_close(torch.cat([op.windows for op in got]), windows, rtol=1e-4, atol=1e-3)
    assert [op.segment.file for op in ops if isinstance(op, (Start, End))] == ["a.wav", "a.wav", "c.wav", "c.wav"]


def test_reader_reports_a_lapped_ring_as_an_overrun_gap_where_it_happened():
    source = FakeSource(capacity=1000)
    reader = make_reader(source)
    source.ring.write(np.zeros(500, np.float32) + 0.01)
    reader.poll()
    source.ring.write(np.zeros(2500, np.float32) + 0.01)  # laps the reader by 1,500 samples
    reader.poll()
    gaps = [op for op in reader.take() if isinstance(op, Missing)]
    assert gaps == [Missing(500 / RATE, 1500, "overrun")] and reader.gaps == 1


def test_reader_stream_time_jumps_over_audio_a_device_never_delivered():
    source = FakeSource()
    reader = make_reader(source)
    source.ring.write(np.zeros(800, np.float32))
    source.markers.append(Gap(800, 4000, "source_down"))
    source.ring.write(np.zeros(800, np.float32))
    drain(reader)
    assert reader.stream_time(1600) == pytest.approx((1600 + 4000) / RATE)
    assert reader.ring_pos(reader.stream_time(1600)) == 1600


# -- detector ----------------------------------------------------------------------------------
def test_band_explainer_reports_the_bands_around_the_peak_of_the_hits_only():
    explainer = BandExplainer(PARAMS, 1.0)
    peak = np.zeros(PARAMS.n_mels)
    peak[5:8] = [1.0, 4.0, 2.5]
    explainer.add(0, peak, hit=True)
    explainer.add(0, np.eye(PARAMS.n_mels)[12] * 100, hit=False)  # not a hit: never counted
    t = [{"event_id": 0}]
    explainer.explain(t)
    edges = mel_band_edges(PARAMS)
    assert t[0]["band_hz"] == [round(float(edges[6, 0])), round(float(edges[7, 2]))]  # bands 6-7 reach half of 4
    other = [{"event_id": 1}]
    explainer.explain(other)
    assert "band_hz" not in other


def run_detector(detector: Detector, samples: np.ndarray) -> list[dict]:
    starts, windows = offline_windows(samples, PARAMS)
    losses, bands = detector.errors(windows)
    scored = detector.decide(windows, losses, bands, np.zeros(len(starts), bool))
    out = []
    for i, start in enumerate(starts):
        t = start * PARAMS.hop_length / RATE
        out += detector.step(t, t + PARAMS.window_seconds, float(scored.scores[i]), scored.band_errors[i])
    return out + detector.close()


def test_detector_finds_a_call_when_and_where_it_is():
    detector = Detector(FakeModel(), DetectorConfig(min_event_s=0.1, merge_gap_s=0.2))
    transitions = run_detector(detector, tone_in_noise(6.0, [(2.0, 3.5)], hz=1000.0))
    assert [t["state"] for t in transitions] == ["start", "end"]
    end = transitions[1]
    assert 1.5 <= end["onset"] <= 2.1 and 3.4 <= end["offset"] <= 4.2
    low, high = end["band_hz"]
    assert low <= 1000 <= high and high - low < 2000


def test_detector_scores_a_non_finite_loss_zero_and_counts_it():
    detector = Detector(FakeModel(nan=True), DetectorConfig())
    starts, windows = offline_windows(tone_in_noise(2.0, [(0.0, 2.0)]), PARAMS)
    scored = detector.decide(windows, *detector.errors(windows), np.zeros(len(starts), bool))
    assert scored.invalid == len(starts) and np.all(scored.losses == 0) and np.all(scored.scores < 1e-6) and scored.silent.all()


# -- channel and messages ----------------------------------------------------------------------
def run_channel(source: FakeSource, model: FakeModel, batch: int = 8, spectrogram: bool = False) -> tuple[Channel, list]:
    publisher = FakePublisher()
    channel = Channel(source, source.ring, model, DetectorConfig(min_event_s=0.1, merge_gap_s=0.2), publisher, batch, "run1", spectrogram=spectrogram)
    for _ in range(10000):
        channel.pump()
        if channel.finished:
            return channel, publisher.sent
    raise AssertionError("the channel never finished")


def test_a_channel_builds_its_scorer_once_and_its_stats_are_what_status_and_metrics_read():
    source = FakeSource()
    source.play("a.wav", tone_in_noise(2.0, [(0.5, 1.0)]))
    source.markers.append(Finished(source.ring.write_pos))
    model = FakeModel()
    built = []
    model.scorer = lambda: built.append(1) or FakeModel.scorer(model)
    channel, _ = run_channel(source, model)
    assert len(built) == 1  # one scorer (and one explainer) per model, not one per step of the start
    stats = channel.stats()
    status = source_status(channel)
    assert (status["windows"], status["events"], status["gaps"], status["files_played"]) == (stats.windows, stats.events, stats.gaps, stats.files_played)
    assert abs(status["rtf"] - stats.rtf) <= 0.05 * stats.rtf + 0.01  # one formula; a moment later
    assert stats.finished and not stats.up


def test_the_spectrogram_topic_carries_each_frame_of_a_segment_once_and_costs_nothing_when_off():
    import base64

    def play(spectrogram):
        source = FakeSource()
        source.play("a.wav", tone_in_noise(3.0, [(1.0, 1.0)]))
        source.play("b.wav", tone_in_noise(1.3, seed=3))
        source.markers.append(Finished(source.ring.write_pos))
        return run_channel(source, FakeModel(), spectrogram=spectrogram)[1]

    assert not [b for _, b in play(False) if b["type"] == "spec"]
    sent = play(True)
    specs = [(t, b) for t, b in sent if b["type"] == "spec"]
    losses = [b for _, b in sent if b["type"] == "loss"]
    assert len(specs) == len(losses) and all(t == "spec.s" for t, _ in specs)
    for topic, body in specs:
        assert messages.read([topic.encode(), bus.encode(body)])[1]["n_mels"] == PARAMS.n_mels
        assert len(base64.b64decode(body["frames"])) == body["n_frames"] * body["n_mels"]
    by_file = {}
    for (_, body), loss in zip(specs, losses):
        by_file.setdefault(loss["file"], []).append(body)
    for name, seconds in (("a.wav", 3.0), ("b.wav", 1.3)):  # every frame of each file once, in order, none twice
        frames = sum(b["n_frames"] for b in by_file[name])
        assert frames == 1 + (int(seconds * PARAMS.sample_rate) - PARAMS.n_fft) // PARAMS.hop_length, (name, frames)
        starts = [b["t"] for b in by_file[name]]
        assert starts == sorted(starts)


def test_metrics_are_collected_from_a_snapshot_alone():
    """The collector reads one DaemonStats per scrape: no daemon, channel, reader or ring needed."""
    from streamdet.service.daemon import DaemonStats
    from streamdet.service.metrics import DaemonCollector
    from streamdet.service.pipeline import SourceStats

    source = SourceStats(windows=7, events=2, gaps=1, dropped_samples=5, files_played=3, files_skipped=1, audio_s=30.0, wall_s=10.0,
                         up=True, finished=False, latency_buckets=[("0.1", 7), ("+Inf", 7)], latency_sum=0.3)
    snapshot = DaemonStats(4, 6, {"done": 1, "rejected": 2, "last": None}, {"path": "m.pt", "sha256": "ab"}, {"north": source})
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for family in DaemonCollector(lambda: snapshot).collect() for s in family.samples}
    assert got[("streamdet_windows_total", (("source", "north"),))] == 7 and got[("streamdet_realtime_factor", (("source", "north"),))] == 3.0
    assert got[("streamdet_source_up", (("source", "north"),))] == 1.0 and got[("streamdet_reloads_total", (("outcome", "rejected"),))] == 2
    assert got[("streamdet_dropped_messages_total", ())] == 4 and got[("streamdet_subscriber_overflows_total", ())] == 6


def test_a_view_of_some_sources_counts_every_message_and_shows_only_those():
    view = StreamView(sources=("a",))
    loss = {"v": 1, "type": "loss", "run_id": "r", "seq": 0, "anomaly": False, "score": 0.1}
    assert view.update("loss.b", {**loss, "source": "b"}) is False
    assert view.update("loss.a", {**loss, "source": "a"}) is True
    assert view.update("status", {"v": 1, "type": "status", "daemon": "d", "state": "running", "status_interval_s": 1.0, "sources": {}}) is True
    assert (view.received, view.messages, set(view.sources)) == (3, 2, {"a"})


def test_channel_publishes_every_window_in_order_with_schema_fields_only():
    source = FakeSource()
    source.play("a.wav", tone_in_noise(4.0, [(1.0, 2.0)]))
    source.markers.append(Gap(source.ring.write_pos, 800, "source_down"))
    source.play("b.wav", tone_in_noise(1.0, seed=2))
    source.markers.append(Finished(source.ring.write_pos))
    model = FakeModel()
    channel, sent = run_channel(source, model, batch=8)
    for topic, body in sent:
        assert set(body) <= set(messages.ENVELOPE) | set(messages.FIELDS[body["type"]]), body
        assert messages.read([topic.encode(), bus.encode(body)]) == (topic, json.loads(bus.encode(body)))  # what every subscriber accepts
        assert topic == messages.topic(body["type"], "s") and body["run_id"] == "run1"
    losses = [b for _, b in sent if b["type"] == "loss"]
    assert [b["seq"] for b in losses] == list(range(len(losses))) and channel.seq == len(losses)
    assert {b["file"] for b in losses} == {"a.wav", "b.wav"}
    gap = next(b for _, b in sent if b["type"] == "gap")
    assert gap["seq_next"] == sum(b["file"] == "a.wav" for b in losses) and gap["duration_s"] == 0.1
    ends = [b for _, b in sent if b["type"] == "event" and b["state"] == "end"]
    assert len(ends) == 1 and ends[0]["file"] == "a.wav" and 0.5 <= ends[0]["file_onset"] <= 1.1
    assert model.calls < len(losses) / 4  # windows batched into few model calls
    status = source_status(channel)
    assert set(status) <= set(messages.SOURCE_STATUS_FIELDS) | set(source.describe())
    assert status["files_played"] == 2 and status["events"] == 1 and status["finished"]


def test_a_channel_scoring_in_another_thread_publishes_exactly_what_one_thread_does():
    """The daemon's overlap: each batch's model call in the scoring thread (here slower than the
    framing) while this thread frames the next batch.  Same messages, same order: seq, times,
    losses, events, the gap, the skipped file, the end."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    class SlowModel(FakeModel):
        def errors(self, windows):
            before = self.channel.reader.samples_read
            self.threads.add(threading.get_ident())
            time.sleep(0.02)
            self.framed_meanwhile |= self.channel.reader.samples_read > before
            return super().errors(windows)

    def play(scoring):
        source = FakeSource(capacity=30 * RATE)
        source.play("a.wav", tone_in_noise(6.0, [(1.0, 2.0), (4.0, 1.0)]))
        source.markers.append(Gap(source.ring.write_pos, 800, "source_down"))
        source.markers.append(Skipped(source.ring.write_pos, "c.wav", "cannot decode"))
        source.play("b.wav", tone_in_noise(5.0, [(2.0, 1.0)], seed=2))
        source.markers.append(Finished(source.ring.write_pos))
        model = SlowModel()
        model.threads, model.framed_meanwhile = set(), False
        publisher = FakePublisher()
        channel = model.channel = Channel(source, source.ring, model, DetectorConfig(min_event_s=0.1, merge_gap_s=0.2), publisher, 4, "run1", scoring=scoring)
        for _ in range(100000):
            if not channel.pump() and channel.batches.future is not None:
                channel.batches.future.result()
            if channel.finished:
                return [(t, {k: v for k, v in b.items() if k != "ts"}) for t, b in publisher.sent], model
        raise AssertionError("the channel never finished")

    with ThreadPoolExecutor(1) as pool:
        overlapped, model = play(pool)
    alone, model_alone = play(None)
    assert model.threads and threading.get_ident() not in model.threads and model_alone.threads == {threading.get_ident()}
    assert model.framed_meanwhile  # the next batch was framed while the model ran
    assert overlapped == alone
    kinds = [b["type"] for _, b in alone]
    assert kinds.count("loss") > 20 and kinds.count("gap") == 1 and kinds.count("event") >= 2


def test_a_live_channel_says_when_its_next_window_can_be_due_and_a_replay_never_does():
    def play(kind):
        source = FakeSource()
        source.kind = kind
        source.play("a.wav", tone_in_noise(3.0))
        source.markers.append(Finished(source.ring.write_pos))
        return run_channel(source, FakeModel())[0]

    assert play("replay").quiet_until == 0.0  # a replay's next window may be waiting in the ring
    channel = play("mic")
    arrived = channel.ring.arrival_time(channel.ring.write_pos)
    assert channel.quiet_until == pytest.approx(arrived + PARAMS.hop_seconds - pipeline.LIVE_WAKE_EARLY_S)


def test_an_idle_daemon_with_live_sources_sleeps_until_a_window_is_due_and_wakes_on_stop(monkeypatch):
    """Instead of waking every IDLE_SLEEP_S: until shortly before the next live window, the next
    status, or at most MAX_QUIET_S; a replay source, or a model call in flight, keeps it polling."""
    import threading
    import time

    from streamdet.service import daemon as daemon_module
    from streamdet.service.daemon import idle

    stop = threading.Event()
    waits, sleeps = [], []
    monkeypatch.setattr(stop, "wait", lambda timeout: waits.append(timeout))
    monkeypatch.setattr(daemon_module.time, "sleep", lambda s: sleeps.append(s))

    def channel(quiet_in, future=None):
        return SimpleNamespace(quiet_until=0.0 if quiet_in is None else time.monotonic() + quiet_in, batches=SimpleNamespace(future=future))

    live = [channel(0.3), channel(0.35)]
    idle(live, stop, time.monotonic() + 10)
    assert len(waits) == 1 and 0.25 < waits[0] <= 0.3
    idle(live, stop, time.monotonic() + 0.1)  # the next status comes first
    assert 0.05 < waits[1] <= 0.1
    idle([channel(30.0)], stop, time.monotonic() + 60)
    assert waits[2] == daemon_module.MAX_QUIET_S
    idle([channel(0.3), channel(None)], stop, time.monotonic() + 10)  # a replay beside the microphone
    assert len(waits) == 3 and sleeps == [daemon_module.IDLE_SLEEP_S]
    busy = SimpleNamespace(done=lambda: False)
    monkeypatch.setattr(daemon_module, "wait", lambda futures, timeout, when: waits.append(("model", timeout)))
    idle([channel(0.3, future=busy)], stop, time.monotonic() + 10)  # a model call in flight: wait for it, briefly
    assert waits[3] == ("model", daemon_module.IDLE_SLEEP_S)
    real = threading.Event()  # and a stop ends the sleep at once
    threading.Timer(0.05, real.set).start()
    started = time.monotonic()
    idle([channel(0.45)], real, time.monotonic() + 10)
    assert time.monotonic() - started < 0.4


def test_a_loaded_model_has_run_the_daemons_calls_on_live_sized_batches(tmp_path, monkeypatch):
    """TorchScript optimises a method on a later call than its first: the load does those calls,
    so a live daemon's first windows do not wait for them."""
    from streamdet.detect import artifact

    seen = []
    real = artifact.Model.errors
    monkeypatch.setattr(artifact.Model, "errors", lambda self, windows: seen.append(len(windows)) or real(self, windows))
    artifact.load(None, "cpu", optimise=True)
    assert seen.count(1) >= 2 and seen.count(2) >= 2


def documented_schema() -> dict[str, set[str]]:
    """type -> the backticked names in the list of its section of docs/schema.md."""
    text = (REPO / "docs" / "schema.md").read_text()
    sections = {}
    for block in re.split(r"^## ", text, flags=re.M)[1:]:
        title, _, body = block.partition("\n")
        listed = "\n".join(line for line in body.splitlines() if line.lstrip().startswith("- "))
        for kind in re.findall(r"`(\w+)`", title):
            sections[kind] = set(re.findall(r"`(\w+)`", listed))
    return sections


def test_the_schema_page_and_the_code_name_the_same_fields():
    rows = documented_schema()
    assert set(rows) == set(messages.FIELDS)
    for kind, fields in messages.FIELDS.items():
        assert set(fields) <= rows[kind], (kind, set(fields) - rows[kind])
    for kind in ("loss", "event"):  # rows naming fields, and no values but an event's states
        assert rows[kind] <= set(messages.FIELDS[kind]) | {kind, "start", "end"}, (kind, rows[kind] - set(messages.FIELDS[kind]))
    assert set(messages.SOURCE_STATUS_FIELDS) <= rows["status"]


# -- the subscriber's state --------------------------------------------------------------------
def test_stream_view_counts_missed_windows_per_run_and_calls_a_silent_daemon_stale():
    now = [0.0]
    view = StreamView(clock=lambda: now[0])
    loss = {"v": 1, "type": "loss", "source": "s", "anomaly": False, "score": 0.1}
    for seq in (0, 1, 5, 6):
        view.update("loss.s", {**loss, "run_id": "r1", "seq": seq})
    assert view.sources["s"].missed == 3 and view.sources["s"].received == 4
    view.update("loss.s", {**loss, "run_id": "r2", "seq": 0})  # a restarted daemon numbers from 0
    assert view.sources["s"].missed == 3
    view.update("status", {"v": 1, "type": "status", "daemon": "d1", "state": "running", "status_interval_s": 1.0, "sources": {"s": {"state": "up"}}})
    now[0] = 2.9
    assert view.source_state("s") == "up" and not view.stale("d1")
    now[0] = 3.1
    assert view.stale("d1") and view.source_state("s") == "STALE"
    view.update("status", {"v": 1, "type": "status", "daemon": "d1", "state": "finished", "status_interval_s": 1.0, "sources": {"s": {}}})
    now[0] = 100.0
    assert not view.stale("d1") and view.source_state("s") == "finished" and view.all_final()
    view.update("x", {"v": 2, "type": "loss"})
    view.update("loss.s", {"v": 1, "type": "loss", "source": "s", "run_id": "r2", "seq": "one"})  # a field of the wrong type
    view.update("status", {"v": 1, "type": "status", "daemon": "d2", "sources": ["not", "a", "dict"]})
    assert view.unknown_versions == 1 and view.unreadable == 2


# -- systemd, microphone, reload ---------------------------------------------------------------
def test_notifier_speaks_to_an_abstract_socket_and_pings_the_watchdog_when_due():
    name = f"streamdet-test-{os.getpid()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(2)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid())})
        notifier.ready("1 source(s)")
        assert server.recv(256) == b"READY=1\nSTATUS=1 source(s)"
        notifier.watchdog()
        notifier.watchdog()  # the second is not due for 30 s
        notifier.stopping()
        assert [server.recv(256), server.recv(256)] == [b"WATCHDOG=1", b"STOPPING=1"]
        assert Notifier({"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000", "WATCHDOG_PID": "1"}).watchdog_interval is None  # another process's watchdog
    finally:
        server.close()


def test_microphone_callback_downmixes_channels_into_the_ring():
    from streamdet.capture.mic import OVERFLOW_SLOTS, MicSource

    mic = MicSource.__new__(MicSource)  # the callback alone: no PortAudio here
    mic.channels, mic.rate, mic.ring = 2, RATE, RingBuffer(1000)
    mic._mono = np.zeros(256, np.float32)
    mic._overflow_pos, mic._overflow_count = np.zeros(OVERFLOW_SLOTS, np.int64), 0
    mic.stream_start_wall, mic._last_callback, mic._first_pos = None, 0.0, -1
    block = np.stack([np.linspace(0, 1, 100), np.linspace(1, 3, 100)], axis=1).astype(np.float32)
    mic._callback(block, 100, None, SimpleNamespace(input_overflow=True))
    start, got = mic.ring.read(1000)
    np.testing.assert_allclose(got, block.mean(axis=1), rtol=1e-6)
    assert mic._overflow_count == 1 and mic.stream_start_wall is not None


def test_reload_refuses_a_model_at_another_sample_rate_and_keeps_the_running_one(tmp_path):
    from streamdet.service.daemon import Daemon
    from streamdet.service.reload import reload_daemon

    config = Config(sources=[SourceConfig(kind="replay", name="s", path=str(tmp_path))])
    other = FakeModel(FeatureParams(**{**PARAMS.to_dict(), "sample_rate": 16000, "f_max": 7000.0}))
    model = FakeModel()
    daemon = Daemon(config, model, FakePublisher(), name="d", reload=lambda: (config, other))
    reload_daemon(daemon)
    assert daemon.reloads["rejected"] == 1 and daemon.model is model
    assert "16000 Hz" in daemon.reloads["last"]["reason"] and "restart" in daemon.reloads["last"]["reason"]


def test_a_live_publisher_never_waits_for_a_full_subscriber_and_counts_its_overflows():
    import zmq

    from streamdet.bus.sockets import Publisher

    context = zmq.Context()
    publisher = Publisher("inproc://live", send_hwm=20, wait_when_full=False, context=context)
    stuck = context.socket(zmq.SUB)  # subscribes, then never reads
    stuck.setsockopt(zmq.RCVHWM, 5)
    stuck.setsockopt_string(zmq.SUBSCRIBE, "")
    stuck.connect("inproc://live")
    reader = context.socket(zmq.SUB)
    reader.setsockopt(zmq.RCVHWM, 0)  # keeps up: no limit on its queue
    reader.setsockopt_string(zmq.SUBSCRIBE, "")
    reader.connect("inproc://live")
    assert publisher.wait_for_subscribers(2, 5.0)
    total = 500
    for seq in range(total):
        assert publisher.send("loss.s", {"seq": seq})
    got = [reader.recv_multipart() for _ in range(total)]
    assert len(got) == total and reader.poll(100) == 0  # the reader lost nothing to the stuck one
    stuck_got = 0
    while stuck.poll(100):
        stuck.recv_multipart()
        stuck_got += 1
    assert 0 < stuck_got < total and publisher.overflows == 1 and publisher.dropped == 0
    for seq in range(total, 2 * total):  # it has caught up: a second overflow is a second one counted
        publisher.send("loss.s", {"seq": seq})
    assert len([reader.recv_multipart() for _ in range(total)]) == total
    assert publisher.overflows == 2
    for s in (stuck, reader, publisher.socket):
        s.close(0)
    context.term()


def test_a_publisher_closed_by_the_watchdog_drops_and_counts_what_the_loop_still_sends():
    """give_up closes the socket from the watchdog's thread; the processing loop, not stuck now
    that the model runs in a scoring thread, may publish once more: no error on a closed socket."""
    import threading

    import zmq

    from streamdet.bus.sockets import Publisher

    context = zmq.Context()
    publisher = Publisher("inproc://closing", context=context)
    closing = threading.Thread(target=publisher.close, args=(0.1,))
    closing.start()
    closing.join()
    assert publisher.send("loss.s", {"seq": 1}) is False and publisher.dropped == 1
    assert publisher.poll_subscriptions() == 0
    assert publisher.close(0.1) is True  # the daemon's own close after it: nothing to do twice
    context.term()


def test_status_carries_the_publishers_dropped_messages(tmp_path):
    from streamdet.service.daemon import Daemon

    publisher = FakePublisher()
    publisher.dropped, publisher.overflows, publisher.poll_subscriptions = 7, 3, lambda: 1
    daemon = Daemon(Config(sources=[SourceConfig(kind="replay", name="s", path=str(tmp_path))]), FakeModel(), publisher, name="d")
    daemon._publish_status("running")
    topic, body = publisher.sent[-1]
    assert topic == "status" and body["dropped_messages"] == 7 and body["subscriber_overflows"] == 3
    assert set(body) == set(messages.ENVELOPE) | set(messages.FIELDS["status"])


def test_a_file_deleted_after_listing_is_reported_as_gone(tmp_path):
    from streamdet.capture.audio import AudioError, probe

    path = tmp_path / "gone.wav"
    with pytest.raises(AudioError, match="no longer there"):
        probe(path)


def test_a_looping_replay_of_a_missing_folder_says_so_once_and_backs_off(tmp_path, monkeypatch):
    import time

    from streamdet.capture import replay

    monkeypatch.setattr(replay, "RESCAN_SECONDS", 0.05)
    folder = tmp_path / "not-yet"
    source = replay.ReplaySource(SourceConfig(kind="replay", path=str(folder), pace="max", loop=True), 22050, RingBuffer(22050 * 10))
    waits = []
    real_wait = source._stop.wait
    monkeypatch.setattr(source._stop, "wait", lambda t: (waits.append(t), real_wait(min(t, 0.05)))[1])
    source.start()
    try:
        time.sleep(1.0)
    finally:
        source.stop()
        source.join(5)
    reasons = [m.reason for m in source.markers if isinstance(m, Skipped)]
    assert reasons == ["directory missing"], reasons
    assert len(waits) > 5 and waits[-1] > waits[0] * 8  # 0.05, 0.1, 0.2, ... s


def test_the_daemon_freezes_its_start_up_heap_and_settles_it_again_after_a_reload(tmp_path):
    """Start-up's objects are frozen out of the garbage collector's sight before the sources start
    (full collections scanned all of them in the processing loop: late live windows); a reload
    unfreezes and collects, so cycles that died while frozen (an old model's) are freed, then
    freezes again."""
    import gc
    import weakref

    import zmq

    from streamdet.bus.sockets import Publisher
    from streamdet.service.daemon import Daemon

    class Node:
        pass

    cycle = Node()
    cycle.me = cycle
    dead, holder = weakref.ref(cycle), [cycle]
    del cycle

    class Model(FakeModel):
        path = "fake.pt"

    config = Config(sources=[SourceConfig(kind="replay", name="s", path=str(tmp_path))])
    seen = {}

    def reload():
        seen["frozen_before_reload"] = gc.get_freeze_count()
        holder.clear()  # now cyclic garbage, frozen: only a collection after an unfreeze frees it
        return config, Model()

    context = zmq.Context()
    daemon = Daemon(config, Model(), Publisher("inproc://settle", context=context), name="d", reload=reload)
    daemon.request_reload()
    try:
        assert daemon.run() == "finished" and daemon.reloads["done"] == 1
        assert seen["frozen_before_reload"] > 1000 and gc.get_freeze_count() > 1000
        assert dead() is None
    finally:
        gc.unfreeze()
        daemon.publisher.close()
        context.term()
