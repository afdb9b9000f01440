"""The message bus: ZeroMQ multipart messages [topic, JSON body] (bodies: streamdet.bus.messages).

Topics: `loss.<source>` (every window), `event.<source>` (event start/end), `status` (periodic
and final).  Every JSON body has `v` (schema version), `type`, `ts` (wall-clock Unix seconds).
The README documents every field.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from typing import Callable, Iterator

import zmq

from streamdet.bus import messages

log = logging.getLogger(__name__)

MAX_SUBSCRIPTION_BYTES = 4096  # a topic prefix longer than this is no subscription but an attack
MAX_MESSAGE_BYTES = 1 << 20  # a status message is a few KB; a peer sending more is cut off


class BusError(Exception):
    pass


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=_json_default, allow_nan=False).encode()


class Publisher:
    """An XPUB socket: a PUB that also sees subscriptions, so it can wait for subscribers.

    With `wait_when_full`, a subscriber that cannot keep up slows the publisher down instead of
    losing messages (XPUB_NODROP, with a modest high-water mark so that the wait starts early);
    replays use this.  A blocked send gives up only past `give_up_at` (the shutdown deadline, set
    when a stop is requested), and calls `while_blocked` meanwhile (the daemon pings its watchdog).
    Live sources never wait: when a subscriber's queue is full, the message goes to the others, and
    `overflows` counts it. That subscriber then misses messages until it has caught up: libzmq
    neither says which subscriber it is nor counts what it missed (each subscriber sees its own
    losses as jumps in `seq`)."""

    def __init__(self, endpoint: str, send_hwm: int = 1000, wait_when_full: bool = False, context: zmq.Context | None = None, connect: bool = False, curve=None):
        """Bind `endpoint`, or with `connect` connect to it (a `streamdet proxy` frontend); with
        `curve` (streamdet.bus.security.Curve) encrypted and authenticated."""
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.XPUB)
        if curve is not None:
            from streamdet.bus.security import SecurityError, secure_client, secure_server

            try:
                secure_client(self.socket, curve) if connect else secure_server(self.socket, curve)
            except SecurityError as exc:
                self.socket.close(0)
                raise BusError(f"bus: {exc}") from None
        self.socket.setsockopt(zmq.SNDHWM, send_hwm)
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # pass every subscription up, duplicates included
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_SUBSCRIPTION_BYTES)  # a peer's subscriptions are input too
        # Always NODROP: a send that would drop for a full subscriber fails, so it is seen.
        self.socket.setsockopt(zmq.XPUB_NODROP, 1)
        self.wait_when_full = wait_when_full
        self.send_hwm = send_hwm
        self.subscriptions = 0
        self.sent = 0
        self.dropped = 0  # messages given up at the shutdown deadline (waiting publisher)
        self.overflows = 0  # times a subscriber's queue was found full (live publisher)
        self.give_up_at = math.inf
        self.while_blocked: Callable[[], object] = lambda: None
        # A socket is used by one thread at a time: the daemon's loop, or the watchdog's final
        # status while a model call is stuck in another thread.
        self.lock = threading.RLock()
        # Closed (the watchdog's give_up closes it from its thread while the processing loop, no
        # longer stuck now that the model runs in a thread of its own, may still publish): a send
        # after it is dropped and counted, never an error on a closed socket.
        self.closed = False
        try:
            self.socket.connect(endpoint) if connect else self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close(0)
            raise BusError(f"bus.endpoint: cannot {'connect to' if connect else 'bind'} {endpoint} ({zmq.strerror(exc.errno)})") from None
        self.endpoint = endpoint if connect else self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def poll_subscriptions(self) -> int:
        """Drain subscription notices; returns the number of live subscriptions."""
        with self.lock:
            return self.subscriptions if self.closed else self._poll_subscriptions()

    def _poll_subscriptions(self) -> int:
        while True:
            try:
                notice = self.socket.recv(zmq.NOBLOCK)
            except zmq.Again:
                return self.subscriptions
            if notice[:1] == b"\x01":
                self.subscriptions += 1
            elif notice[:1] == b"\x00":
                self.subscriptions = max(0, self.subscriptions - 1)

    def wait_for_subscribers(self, count: int, timeout_s: float = 0.0, stop: Callable[[], bool] = lambda: False) -> bool:
        deadline = time.monotonic() + timeout_s if timeout_s > 0 else math.inf
        while self.poll_subscriptions() < count:
            if stop() or time.monotonic() > deadline:
                return False
            self.socket.poll(50, zmq.POLLIN)
        return True

    def send(self, topic: str, payload: dict) -> bool:
        frames = [topic.encode(), encode(payload)]
        with self.lock:
            if self.closed:
                self.dropped += 1
                return False
            return self._send(frames)

    def _send(self, frames: list) -> bool:
        if not self.wait_when_full:
            try:
                self.socket.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                # A subscriber's queue is full: send to the others (lossy, once), and count it.
                self.overflows += 1
                self.socket.setsockopt(zmq.XPUB_NODROP, 0)
                try:
                    self.socket.send_multipart(frames, zmq.NOBLOCK)
                finally:
                    self.socket.setsockopt(zmq.XPUB_NODROP, 1)
            self.sent += 1
            return True
        while True:
            try:
                self.socket.send_multipart(frames, zmq.NOBLOCK)
                self.sent += 1
                return True
            except zmq.Again:
                if time.monotonic() >= self.give_up_at:
                    self.dropped += 1
                    return False
                self.while_blocked()
                self._poll_subscriptions()
                self.socket.poll(20, zmq.POLLOUT)

    def close(self, deadline_s: float = 1.0, wait: bool = False) -> bool:
        """Close, giving queued messages until `deadline_s` to reach their subscribers.  With
        `wait` (the daemon's exit: no other socket is open) wait for that here, and return False
        if the time ran out with messages possibly still queued (at most `send_hwm` each)."""
        with self.lock:
            started = time.monotonic()
            if not self.closed:
                self.socket.setsockopt(zmq.LINGER, max(0, int(deadline_s * 1000)))
                self.socket.close()
            self.closed = True
        if not wait:
            return True
        from streamdet.bus.security import stop_authenticators

        stop_authenticators()  # its socket would hold the context open; connected peers need it no more
        self.context.term()  # returns once every queued message is out, or LINGER ran out
        if zmq.Context._instance is self.context:
            zmq.Context._instance = None  # a later Context.instance() makes a fresh one
        return time.monotonic() - started < deadline_s * 0.95


class Subscriber:
    """A SUB socket that yields decoded (topic, payload) pairs."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",), context: zmq.Context | None = None, rcv_hwm: int = 1_000_000, curve=None):
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.SUB)
        if curve is not None:
            from streamdet.bus.security import secure_client

            secure_client(self.socket, curve)
        self.socket.setsockopt(zmq.RCVHWM, rcv_hwm)
        self.socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        self.socket.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self.socket.setsockopt_string(zmq.SUBSCRIBE, topic)
        self.socket.connect(endpoint)
        self.unreadable = 0
        self.first_unreadable: str | None = None

    def receive(self, timeout_s: float | None = None) -> tuple[str, dict] | None:
        """The next message a subscriber can use, or None after `timeout_s` without one.  Any other
        (wrong frames, not UTF-8, not JSON, too deep, a field of the wrong type) is counted in
        `unreadable`, the first one logged with its reason, and skipped."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            got = self.receive_any(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if got is None or not isinstance(got[1], messages.UnreadableMessage):
                return got
            self.unreadable += 1
            if self.first_unreadable is None:
                self.first_unreadable = str(got[1])
                log.warning("skipped a message it cannot read (%s); more are counted, not logged", got[1])

    def receive_any(self, timeout_s: float | None = None) -> tuple[str, dict | messages.UnreadableMessage] | None:
        """The next message, as (topic, body) or ("", UnreadableMessage saying why it cannot be
        used), or None after `timeout_s` without one."""
        if not self.socket.poll(-1 if timeout_s is None else int(timeout_s * 1000), zmq.POLLIN):
            return None
        try:
            return messages.read(self.socket.recv_multipart())
        except messages.UnreadableMessage as exc:
            return "", exc

    def messages(self, idle_timeout_s: float | None = None) -> Iterator[tuple[str, dict]]:
        """Messages until `idle_timeout_s` passes with none (forever if None)."""
        while True:
            got = self.receive(idle_timeout_s)
            if got is None:
                return
            yield got

    def close(self) -> None:
        self.socket.close()
