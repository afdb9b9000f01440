"""The message bus: ZeroMQ multipart messages [topic, JSON], schema version SCHEMA_VERSION.

Topics: `loss.<source>` (every window), `event.<source>` (event start/end), `status` (periodic
and final).  Every JSON body has `v` (schema version), `type`, `ts` (wall-clock Unix seconds).
The README documents every field.
"""
from __future__ import annotations

import json
import math
import time
from typing import Callable, Iterator

import zmq

SCHEMA_VERSION = 1


class BusError(Exception):
    pass


def message(kind: str, **fields) -> dict:
    return {"v": SCHEMA_VERSION, "type": kind, "ts": round(time.time(), 6), **fields}


def _json_default(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=_json_default, allow_nan=False).encode()


class Publisher:
    """An XPUB socket: a PUB that also sees subscriptions, so it can wait for subscribers.

    With `wait_when_full`, a subscriber that cannot keep up slows the publisher down instead of
    losing messages (XPUB_NODROP); replays use this, live sources do not."""

    def __init__(self, endpoint: str, send_hwm: int = 100_000, wait_when_full: bool = False, context: zmq.Context | None = None, connect: bool = False):
        """Bind `endpoint`, or with `connect` connect to it (a `streamdet proxy` frontend)."""
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.SNDHWM, send_hwm)
        self.socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # pass every subscription up, duplicates included
        self.socket.setsockopt(zmq.LINGER, 5000)
        if wait_when_full:
            self.socket.setsockopt(zmq.XPUB_NODROP, 1)
        self.wait_when_full = wait_when_full
        self.subscriptions = 0
        self.sent = 0
        try:
            self.socket.connect(endpoint) if connect else self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.socket.close(0)
            raise BusError(f"bus.endpoint: cannot {'connect to' if connect else 'bind'} {endpoint} ({zmq.strerror(exc.errno)})") from None
        self.endpoint = endpoint if connect else self.socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def poll_subscriptions(self) -> int:
        """Drain subscription notices; returns the number of live subscriptions."""
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

    def send(self, topic: str, payload: dict, stop: Callable[[], bool] = lambda: False) -> bool:
        frames = [topic.encode(), encode(payload)]
        if not self.wait_when_full:
            self.socket.send_multipart(frames)
            self.sent += 1
            return True
        while True:
            try:
                self.socket.send_multipart(frames, zmq.NOBLOCK)
                self.sent += 1
                return True
            except zmq.Again:
                if stop():
                    return False
                self.poll_subscriptions()
                time.sleep(0.001)

    def close(self) -> None:
        self.socket.close()


class Subscriber:
    """A SUB socket that yields decoded (topic, payload) pairs."""

    def __init__(self, endpoint: str, topics: tuple[str, ...] = ("",), context: zmq.Context | None = None, rcv_hwm: int = 1_000_000):
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.RCVHWM, rcv_hwm)
        self.socket.setsockopt(zmq.LINGER, 0)
        for topic in topics:
            self.socket.setsockopt_string(zmq.SUBSCRIBE, topic)
        self.socket.connect(endpoint)

    def receive(self, timeout_s: float | None = None) -> tuple[str, dict] | None:
        if timeout_s is not None and not self.socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            return None
        topic, body = self.socket.recv_multipart()
        return topic.decode(), json.loads(body)

    def messages(self, idle_timeout_s: float | None = None) -> Iterator[tuple[str, dict]]:
        """Messages until `idle_timeout_s` passes with none (forever if None)."""
        while True:
            got = self.receive(idle_timeout_s)
            if got is None:
                return
            yield got

    def close(self) -> None:
        self.socket.close()
