"""The daemon: sources, channels and the bus put together, with status, and a clean end."""
from __future__ import annotations

import gc
import logging
import os
import secrets
import signal
import socket
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict
from typing import NamedTuple

from streamdet.bus import messages
from streamdet.bus.sockets import Publisher
from streamdet.capture.replay import ReplaySource
from streamdet.capture.ringbuffer import RingBuffer
from streamdet.config import Config, SourceConfig
from streamdet.detect.artifact import Model
from streamdet.errors import one_line
from streamdet.service.pipeline import Channel, SourceStats, source_status
from streamdet.service.reload import reload_daemon
from streamdet.service.systemd import Notifier
from streamdet.service.watchdog import ModelFailure, Watchdog

log = logging.getLogger(__name__)

IDLE_SLEEP_S = 0.002
MAX_QUIET_S = 0.5  # the longest a live daemon sleeps between checks (a SIGHUP waits at most this)
STOP_GRACE_S = 10.0
DRAIN_S = 10.0  # after the last message, how long queued messages may take to reach their subscribers
EXIT_SOURCE_FAILED = 1  # a source's thread died: the stream did not finish
EXIT_UNDELIVERED = 3  # the run ended, but not every message reached every subscriber
EXIT_MODEL_FAILED = 4  # the model raised, hung, or held up a stop: systemd restarts the daemon
STOP_DEADLINE_S = STOP_GRACE_S + DRAIN_S + 5.0  # after SIGTERM the process is gone by then, whatever the model does


def debug_stall() -> tuple[float, float] | None:
    """STREAMDET_DEBUG_STALL=EVERY:FOR makes the processing loop stop for FOR seconds every EVERY
    seconds: a deliberately slow consumer, to see gaps counted and reported (tests, field checks)."""
    value = os.environ.get("STREAMDET_DEBUG_STALL")
    if not value:
        return None
    every, _, duration = value.partition(":")
    return float(every), float(duration)


def make_source(config: SourceConfig, sample_rate: int):
    """(source, its ring buffer); a microphone's ring runs at the device's rate."""
    if config.kind == "mic":
        from streamdet.capture.mic import MicSource  # sounddevice and PortAudio only when a microphone is used

        source = MicSource(config, sample_rate)
        return source, source.ring
    ring = RingBuffer(int(config.ring_seconds * sample_rate))
    return ReplaySource(config, sample_rate, ring), ring


class DaemonStats(NamedTuple):
    dropped_messages: int
    subscriber_overflows: int
    reloads: dict
    model: dict
    sources: dict[str, SourceStats]


class StartError(Exception):
    """The daemon cannot start: one line for the person who started it."""


class Daemon:
    @classmethod
    def from_config(cls, config: Config, name: str | None = None, reload=None, optimise: bool = True) -> Daemon:
        """Model, bus and sources from a checked config: the one wiring of `run`, `bench` and `soak`."""
        return build(cls, config, name, reload, optimise)

    def __init__(self, config: Config, model: Model, publisher: Publisher, name: str | None = None, reload=None, notifier: Notifier | None = None):
        """`reload`, if given, returns a fresh (config, model) or raises with a one-line reason (SIGHUP)."""
        self.config, self.model, self.publisher = config, model, publisher
        self.name = name or socket.gethostname()
        self.run_id = secrets.token_hex(4)
        self.notifier = notifier or Notifier()
        publisher.while_blocked = self.notifier.watchdog  # a slow subscriber is not a stalled daemon
        self.reload_fn = reload
        self.channels = []
        # Model calls in one thread of their own, overlapped with framing and publishing in this one.
        self.scoring = ThreadPoolExecutor(1, thread_name_prefix="model")
        for source_config in config.sources:
            source, ring = make_source(source_config, model.features.sample_rate)
            self.channels.append(Channel(source, ring, model, config.detector, publisher, config.model.batch_windows, self.run_id, config.recording, config.bus.spectrogram, self.scoring))
        self._stop = threading.Event()
        self._reload_requested = threading.Event()
        self.started_at = time.monotonic()
        self.reloads = {"done": 0, "rejected": 0, "last": None}
        self.watchdog: Watchdog | None = None

    def watch(self, watchdog: Watchdog) -> None:
        """Time every model call (this model's and every reloaded one's) against `watchdog`."""
        self.watchdog = self.model.watchdog = watchdog

    def request_stop(self) -> None:
        """From a signal handler: stop, and let no blocked send hold the exit past the grace period."""
        if not self._stop.is_set():
            self.publisher.give_up_at = time.monotonic() + STOP_GRACE_S
            if self.watchdog is not None:
                self.watchdog.stop_requested()
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    def run(self) -> str:
        """Run until every source is finished or a stop is requested; returns the final state."""
        bus = self.config.bus
        if bus.wait_subscribers:
            log.info("waiting for %d subscriber(s) on %s", bus.wait_subscribers, self.publisher.endpoint)
            waiting = lambda: self.notifier.watchdog() or self._stop.is_set()  # noqa: E731 - the watchdog must not fire while we wait
            if not self.publisher.wait_for_subscribers(bus.wait_subscribers, bus.wait_timeout_s, waiting) and not self._stop.is_set():
                log.warning("only %d of %d subscriber(s) after %g s; starting anyway", self.publisher.subscriptions, bus.wait_subscribers, bus.wait_timeout_s)
        settle_heap()
        for channel in self.channels:
            channel.started_at = time.monotonic()
            channel.source.start()
        self._wait_for_sources()
        log.info("running: %s; model %s on %s", ", ".join(f"{c.name} ({c.source.kind})" for c in self.channels), self.model.path, self.model.device)
        self.notifier.ready(f"{len(self.channels)} source(s), model {self.model.describe()['sha256']}")
        self._publish_status("running")
        next_status = time.monotonic() + self.config.bus.status_interval_s
        stall = debug_stall()
        try:
            state = self._loop(next_status, stall)
            self.notifier.stopping()
            if state == "stopped":
                self._drain()
        except ModelFailure as exc:
            log.error("%s; stopping (exit status %d)", exc, EXIT_MODEL_FAILED)
            state = "failed"
            self.notifier.stopping()
            for channel in self.channels:
                channel.source.stop()
        self.scoring.shutdown(wait=False)
        for channel in self.channels:
            channel.finish_clips()
        self._publish_status(state)
        log.info("%s after %.1f s: %s", state, time.monotonic() - self.started_at, ", ".join(f"{c.name}: {c.seq} windows, {c.events} events" for c in self.channels))
        return state

    def _loop(self, next_status: float, stall) -> str:
        """The processing loop, until every source has finished ("finished") or a stop ("stopped")."""
        next_stall = time.monotonic() + stall[0] if stall else float("inf")
        while not self._stop.is_set():
            self.notifier.watchdog()  # from this loop itself: if it stalls, systemd restarts the daemon
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                reload_daemon(self)
                settle_heap()  # the old model's objects are gone, the new one's settle
                next_status = 0.0
            if time.monotonic() >= next_stall:
                log.warning("debug: the processing loop stalls for %g s (STREAMDET_DEBUG_STALL)", stall[1])
                time.sleep(stall[1])
                next_stall = time.monotonic() + stall[0]
            did = False
            for channel in self.channels:
                did |= channel.pump()
            now = time.monotonic()
            if now >= next_status or any(c.report_pending for c in self.channels):
                self._publish_status("running")
                next_status = now + self.config.bus.status_interval_s
            if all(c.finished for c in self.channels):
                return "finished"
            if not did:
                idle(self.channels, self._stop, next_status)
        return "stopped"

    def _wait_for_sources(self, timeout_s: float = 15.0) -> None:
        """A microphone counts as open once its first attempt is over (up, or reported down)."""
        deadline = time.monotonic() + timeout_s
        while any(getattr(c.source, "state", "up") == "starting" for c in self.channels) and time.monotonic() < deadline and not self._stop.is_set():
            self.notifier.watchdog()
            time.sleep(0.05)

    def _drain(self) -> None:
        """Stop the sources, then score and publish what they had already delivered."""
        for channel in self.channels:
            channel.source.stop()
        deadline = time.monotonic() + STOP_GRACE_S
        for channel in self.channels:
            channel.source.join(max(0.0, deadline - time.monotonic()))
        while time.monotonic() < deadline:
            if not any([c.pump() for c in self.channels]):
                if all(c.batches.future is None for c in self.channels):
                    return
                idle(self.channels, self._stop)

    def snapshot(self) -> DaemonStats:
        """The daemon's counters, read at once (also from the metrics thread)."""
        return DaemonStats(self.publisher.dropped, self.publisher.overflows, dict(self.reloads), self.model.describe(), {c.name: c.stats() for c in self.channels})

    def _publish_status(self, state: str) -> None:
        for channel in self.channels:
            channel.report_pending = False
        self.publisher.poll_subscriptions()
        d = self.snapshot()
        body = messages.status(
            self.run_id, self.name, state, time.monotonic() - self.started_at, self.config.bus.status_interval_s,
            model=d.model, detector=asdict(self.config.detector), reloads=d.reloads,
            dropped_messages=d.dropped_messages, subscriber_overflows=d.subscriber_overflows, sources={c.name: source_status(c, d.sources[c.name]) for c in self.channels},
        )
        self.publisher.send("status", body)


def settle_heap() -> None:
    """Collect what start-up left, then freeze the survivors out of the garbage collector's sight.

    torch, numpy and the model leave some 175,000 objects that live as long as the daemon; every
    full collection scanned them all, 20-60 ms in the processing loop (one live window in sixty
    came out late by that much: docs/measurements.md).  Frozen, they are never scanned again, and
    a full collection sees only what was made since.  Reference counting still frees them."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def idle(channels: list[Channel], stop: threading.Event, wake_by: float = 0.0) -> None:
    """Nothing to do: wait for a model call to finish; or, when every source is live and its
    next window is not due yet, until shortly before it is (or `wake_by`, or a stop), instead
    of waking every few milliseconds; else a moment for audio to arrive."""
    in_flight = [c.batches.future for c in channels if c.batches.future is not None]
    if in_flight:
        wait(in_flight, IDLE_SLEEP_S, FIRST_COMPLETED)
        return
    quiet = min(min(c.quiet_until for c in channels), wake_by) - time.monotonic()
    if quiet > IDLE_SLEEP_S:
        stop.wait(min(quiet, MAX_QUIET_S))
    else:
        time.sleep(IDLE_SLEEP_S)


def build(cls, config: Config, name: str | None, reload, optimise: bool) -> Daemon:
    """A replay-only daemon waits for slow subscribers (no message lost); a live one never blocks.
    Every start-up problem is a StartError of one line."""
    from streamdet.bus.sockets import BusError
    from streamdet.capture.mic import MicError
    from streamdet.detect.artifact import ArtifactError, load
    from streamdet.service.metrics import MetricsError, require, serve

    if config.metrics.address:
        try:
            require()  # before the model loads: a missing extra is one line, at once
        except MetricsError as exc:
            raise StartError(str(exc)) from None
    if config.model.threads:
        import torch

        torch.set_num_threads(config.model.threads)
    try:
        model = load(config.model.path, config.model.device, optimise=optimise)
    except ArtifactError as exc:
        raise StartError(str(exc)) from None
    replay_only = all(s.kind == "replay" for s in config.sources)
    try:
        publisher = Publisher(config.bus.endpoint, config.bus.send_hwm, wait_when_full=replay_only, connect=config.bus.connect, curve=config.bus.curve())
    except BusError as exc:
        raise StartError(str(exc)) from None
    try:
        daemon = cls(config, model, publisher, name=name, reload=reload)
        if config.metrics.address:
            daemon.metrics_server = serve(daemon.snapshot, config.metrics.address)
        return daemon
    except (MicError, MetricsError) as exc:
        publisher.close()
        raise StartError(str(exc)) from None


def serve(daemon: Daemon, reload_now: bool = False) -> int:
    """Run `daemon` in this (main) thread under the signals a service gets, deliver what is queued,
    and return the exit status: 0, or what was lost (a failed source, undelivered messages)."""
    publisher = daemon.publisher
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: daemon.request_stop())
    signal.signal(signal.SIGHUP, lambda *_: daemon.request_reload())
    if reload_now:  # a SIGHUP that came while the daemon was being built
        daemon.request_reload()
    watchdog = Watchdog(lambda reason: give_up(daemon, reason), STOP_DEADLINE_S)
    daemon.watch(watchdog)
    try:
        state = daemon.run()
    finally:
        # Queued messages get the rest of the grace period to reach their subscribers.
        delivered = publisher.close(DRAIN_S, wait=True) or not publisher.wait_when_full  # live subscribers lose what they cannot take
        watchdog.close()
    if state == "failed":
        return EXIT_MODEL_FAILED
    failed = [f"{c.name}: {c.source.failed}" for c in daemon.channels if getattr(c.source, "failed", None)]
    if failed:  # a source that died did not finish: systemd's Restart=on-failure must see it
        log.error("source(s) failed, the stream is incomplete: %s", "; ".join(failed))
        return EXIT_SOURCE_FAILED
    lost = []
    if publisher.dropped:
        lost.append(f"{publisher.dropped} message(s) given up at the shutdown deadline")
    if not delivered:
        lost.append(f"up to {publisher.send_hwm} queued message(s) per subscriber not delivered within {DRAIN_S:g} s")
    if lost:
        log.error("a subscriber did not receive everything: %s", "; ".join(lost))
        return EXIT_UNDELIVERED
    return 0


def give_up(daemon: Daemon, reason: str) -> None:
    """From the watchdog's thread, while the processing loop is stuck in a model call: say why,
    publish a final status if the bus takes it at once, and end the process, so that systemd's
    Restart=on-failure starts a fresh one.  The stuck loop does not touch the bus meanwhile."""
    log.error("%s; exiting with status %d", reason, EXIT_MODEL_FAILED)
    try:
        daemon.publisher.give_up_at = time.monotonic() + 1.0
        daemon._publish_status("failed")
        # Wait (boundedly, in case another socket holds the context) for the status to go out.
        closing = threading.Thread(target=daemon.publisher.close, args=(1.0, True), daemon=True)
        closing.start()
        closing.join(2.0)
    except Exception as exc:  # noqa: BLE001 - exiting regardless
        log.error("no final status: %s", one_line(exc, 120))
    finally:
        logging.shutdown()
        os._exit(EXIT_MODEL_FAILED)
