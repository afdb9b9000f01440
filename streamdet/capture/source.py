"""What the daemon needs of a source, and the thread lifecycle both sources share."""
from __future__ import annotations

import threading
from collections import deque
from typing import Protocol

from streamdet.capture.ringbuffer import RingBuffer


class Source(Protocol):
    """Writes samples into `ring` (at `rate`) from its own thread and says what they are in
    `markers` (see streamdet.capture.markers); everything else runs in the consumer's thread."""

    name: str
    kind: str  # "replay" or "mic"
    rate: int
    ring: RingBuffer
    markers: deque
    current_file: str | None

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def join(self, timeout: float | None = None) -> None: ...
    def poll(self) -> None:
        """Consumer side: turn what the source noted into markers."""
    def describe(self) -> dict:
        """The source's own fields of a status message."""


class SourceThread:
    """One named daemon thread running `_run` until `stop()`; a subclass sets `kind` and `ring`."""

    kind = "source"

    def __init__(self, name: str):
        self.name = name
        self.markers: deque = deque()
        self.current_file: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{self.kind}-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def poll(self) -> None:
        pass

    def _run(self) -> None:
        raise NotImplementedError
