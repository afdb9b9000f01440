"""Deadlines the processing loop cannot keep by itself: a model call that runs far past its budget,
and a stop that a running model call holds up.

A model artifact is code.  While a TorchScript call runs, the loop does not come back to Python,
so neither its own checks nor the SIGTERM handler can run; a thread watches instead.  It learns of
SIGTERM and SIGINT from Python's wakeup file descriptor, which the C-level handler writes to at
once, whatever the main thread is doing."""
from __future__ import annotations

import select
import signal
import socket
import threading
import time
from contextlib import contextmanager
from typing import Callable

MIN_CALL_BUDGET_S = 10.0  # whatever the probe says: a first call of a new batch shape may be slow
PROBE_FACTOR = 100.0  # a call may take this many times what the load-time probe predicts


class ModelFailure(Exception):
    """The model raised, or could not be called: one line for the log and the final status."""


def call_budget(seconds_per_window: float, windows: int) -> float:
    return MIN_CALL_BUDGET_S + PROBE_FACTOR * seconds_per_window * max(1, windows)


class Watchdog:
    """Calls `give_up(reason)` from its own thread when a timed call outlives its budget, or when
    the process is still running `stop_deadline_s` after SIGTERM or SIGINT arrived."""

    def __init__(self, give_up: Callable[[str], None], stop_deadline_s: float, poll_s: float = 0.25):
        self.give_up, self.stop_deadline_s, self.poll_s = give_up, stop_deadline_s, poll_s
        # Per thread (the model's calls and the front end's run in two): thread -> (what, started, budget).
        self._calls: dict[int, tuple[str, float, float]] = {}
        self._stop_at: float | None = None
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
        self._thread.start()

    @contextmanager
    def timed(self, what: str, budget_s: float):
        thread = threading.get_ident()
        self._calls[thread] = (what, time.monotonic(), budget_s)
        try:
            yield
        finally:
            self._calls.pop(thread, None)

    def stop_requested(self) -> None:
        """A stop asked for by other means than a signal (the deadline starts now)."""
        if self._stop_at is None:
            self._stop_at = time.monotonic() + self.stop_deadline_s

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2 * self.poll_s + 1)
        signal.set_wakeup_fd(self._previous_fd)
        self._read.close()
        self._write.close()

    def _watch(self) -> None:
        while not self._closed.is_set():
            if select.select([self._read], [], [], self.poll_s)[0]:
                try:
                    signals = self._read.recv(256)
                except OSError:
                    signals = b""
                if any(s in (signal.SIGTERM, signal.SIGINT) for s in signals):
                    self.stop_requested()
            now, calls = time.monotonic(), tuple(self._calls.values())  # one copy, made under the GIL
            late = [c for c in calls if now - c[1] > c[2]]
            if late:
                call = late[0]
                self.give_up(f"{call[0]} has run {now - call[1]:.1f} s, past its budget of {call[2]:.1f} s (a model that hangs or spins)")
                return
            call = max(calls, key=lambda c: now - c[1], default=None)
            if self._stop_at is not None and now > self._stop_at:
                what = f" ({call[0]} running for {now - call[1]:.1f} s)" if call else ""
                self.give_up(f"still running {self.stop_deadline_s:g} s after the stop was asked for{what}")
                return
