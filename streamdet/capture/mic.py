"""Live capture from an input device through PortAudio (sounddevice), supervised.

The audio callback only copies: it downmixes into a preallocated block, writes the ring buffer
(overwriting the oldest samples if the processing loop is behind, which the reader counts), and
notes PortAudio's overflow flags in a preallocated array.  No allocation of buffers, no logging,
no locks, no model work.  Resampling to the model's rate happens in the processing thread.

A supervisor thread opens the stream, watches it, and when the device errors, stops delivering
audio or disappears, reports `source_down`, retries with backoff, and reports `source_up`.
"""
from __future__ import annotations

import logging
import queue
import time

import numpy as np

from streamdet.capture.markers import Finished, Gap, SourceDown, SourceUp
from streamdet.capture.ringbuffer import RingBuffer
from streamdet.capture.source import SourceThread
from streamdet.config import SourceConfig
from streamdet.errors import one_line

log = logging.getLogger(__name__)

FIRST_AUDIO_TIMEOUT_S = 10.0  # PortAudio's first callback can come seconds late
STALL_BLOCKS = 25  # this many block periods without a callback means the device stopped
BACKOFF_S = (1.0, 30.0)
OVERFLOW_SLOTS = 256


class MicError(Exception):
    pass


def import_sounddevice():
    """sounddevice, imported only when a microphone is used: replay works without PortAudio."""
    try:
        import sounddevice
    except OSError:
        raise MicError("microphone capture needs the PortAudio library, which is not installed (Debian/Ubuntu: apt-get install libportaudio2)") from None
    return sounddevice


def input_devices(sd) -> list[dict]:
    apis = sd.query_hostapis()
    return [
        {"index": i, "name": d["name"], "channels": d["max_input_channels"], "default_rate": d["default_samplerate"], "api": apis[d["hostapi"]]["name"]}
        for i, d in enumerate(sd.query_devices())
        if d["max_input_channels"] > 0
    ]


def resolve_input(sd, spec: str | None) -> dict:
    """The input device named by index, by (part of) its name, or the default one."""
    devices = input_devices(sd)
    listing = ", ".join(f"{d['index']} '{d['name']}'" for d in devices) or "none"
    if not devices:
        raise MicError("no input device found (PortAudio lists none)")
    if spec is None or spec == "":
        default = sd.default.device[0]
        chosen = next((d for d in devices if d["index"] == default), devices[0])
        return chosen
    if str(spec).isdigit():
        chosen = next((d for d in devices if d["index"] == int(spec)), None)
        if chosen is None:
            raise MicError(f"microphone {spec}: no input device with that index (inputs: {listing})")
        return chosen
    exact = [d for d in devices if d["name"].lower() == str(spec).lower()]
    partial = [d for d in devices if str(spec).lower() in d["name"].lower()]
    matches = exact or partial
    if not matches:
        raise MicError(f"microphone '{spec}': no such input device (inputs: {listing})")
    if len(matches) > 1:
        raise MicError(f"microphone '{spec}': matches {len(matches)} inputs ({', '.join(repr(d['name']) for d in matches)}); name one exactly or by index")
    return matches[0]


class MicSource(SourceThread):
    """The audio callback only copies into the ring; the supervising thread (`_run`) opens the
    device, watches it, and reopens it when it goes away."""

    kind = "mic"

    def __init__(self, config: SourceConfig, sample_rate: int):
        super().__init__(config.name)
        self.sd = import_sounddevice()
        self.device = resolve_input(self.sd, config.device)
        self.channels = max(1, min(config.channels, self.device["channels"]))
        self.rate = config.sample_rate or self._pick_rate(sample_rate)
        self.block = config.block_frames
        self.latency = config.latency
        self.ring = RingBuffer(int(config.ring_seconds * self.rate))
        self.state = "starting"
        self.stream_start_wall: float | None = None
        self.overflows = 0
        self.outages = 0
        self._mono = np.zeros(self.block, dtype=np.float32)
        self._overflow_pos = np.zeros(OVERFLOW_SLOTS, dtype=np.int64)
        self._overflow_count = 0
        self._overflow_seen = 0  # consumer side
        self._last_callback = 0.0
        self._first_pos = -1  # the current stream's first sample in the ring: where a reconnect's gap and source_up go
        self._down_at: float | None = None  # consumer side: when the audio stopped, for the gap's length
        self._events: queue.SimpleQueue = queue.SimpleQueue()  # supervisor -> consumer

    def _pick_rate(self, model_rate: int) -> int:
        """The model's rate when the device takes it (no resampling), else the device's own."""
        try:
            self.sd.check_input_settings(device=self.device["index"], samplerate=model_rate, channels=1, dtype="float32")
            return model_rate
        except Exception:
            return int(self.device["default_rate"])

    # -- the real-time path -------------------------------------------------------------------
    def _callback(self, indata, frames, time_info, status) -> None:
        if self._first_pos < 0:
            self._first_pos = self.ring.write_pos
        if status.input_overflow:
            self._overflow_pos[self._overflow_count % OVERFLOW_SLOTS] = self.ring.write_pos
            self._overflow_count += 1
        if self.channels == 1 or frames > len(self._mono):
            self.ring.write(indata[:, 0])
        else:
            np.mean(indata, axis=1, out=self._mono[:frames])
            self.ring.write(self._mono[:frames])
        if self.stream_start_wall is None:
            self.stream_start_wall = time.time() - frames / self.rate
        self._last_callback = time.monotonic()

    # -- supervision --------------------------------------------------------------------------
    def _open(self):
        self._first_pos = -1
        stream = self.sd.InputStream(
            device=self.device["index"], samplerate=self.rate, channels=self.channels, dtype="float32",
            blocksize=self.block, latency=self.latency if self.latency is not None else "low", callback=self._callback,
        )
        stream.start()
        return stream

    def _run(self) -> None:
        backoff = BACKOFF_S[0]
        while not self._stop.is_set():
            try:
                stream = self._open()
            except Exception as exc:
                if self.state != "down":
                    self._down(f"cannot open '{self.device['name']}': {one_line(exc)}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_S[1])
                continue
            backoff = BACKOFF_S[0]
            reason = self._watch(stream, time.monotonic())
            try:
                stream.close(ignore_errors=True)
            except Exception:  # a vanished device may fail even to close
                pass
            if self._stop.is_set():
                break
            self._down(reason)
            self._stop.wait(backoff)
        self._events.put(("finished", None))

    def _watch(self, stream, opened: float) -> str:
        """Return why the stream stopped being usable (or '' when asked to stop)."""
        period = self.block / self.rate
        while not self._stop.wait(0.1):
            now = time.monotonic()
            if self._last_callback >= opened:
                if self.state != "up":
                    self._up()
                if now - self._last_callback > max(STALL_BLOCKS * period, 1.0):
                    return f"no audio from '{self.device['name']}' for {now - self._last_callback:.1f} s"
            elif now - opened > FIRST_AUDIO_TIMEOUT_S:
                return f"no audio from '{self.device['name']}' within {FIRST_AUDIO_TIMEOUT_S:.0f} s of opening it"
            if not stream.active:
                return f"'{self.device['name']}' stopped (device error or disconnected)"
        return ""

    def _down(self, reason: str) -> None:
        self.state = "down"
        self.outages += 1
        log.warning("%s: source down: %s; retrying", self.name, reason)
        # Audio stopped with the last callback, not when the stall was noticed; the stream is closed,
        # so the ring's end is where it stopped.
        self._events.put(("down", (self._last_callback or time.monotonic(), reason, self.ring.write_pos)))

    def _up(self) -> None:
        self.state = "up"
        self._events.put(("up", (self._last_callback - self.block / self.rate, self._first_pos)))
        log.info("%s: capturing from '%s' at %d Hz, %d channel(s), blocks of %d", self.name, self.device["name"], self.rate, self.channels, self.block)

    def describe(self) -> dict:
        return {
            "device": self.device["name"], "rate": self.rate, "channels": self.channels, "state": self.state,
            "input_overflows": self._overflow_count, "outages": self.outages,
            "stream_start_wall": None if self.stream_start_wall is None else round(self.stream_start_wall, 4),
        }

    # -- consumer side ------------------------------------------------------------------------
    def poll(self) -> None:
        """Turn what the callback and the supervisor noted into markers, in stream order (consumer thread)."""
        new = []
        while self._overflow_seen < self._overflow_count:
            new.append(Gap(int(self._overflow_pos[self._overflow_seen % OVERFLOW_SLOTS]), None, "input_overflow"))
            self._overflow_seen += 1
        while True:
            try:
                kind, value = self._events.get_nowait()
            except queue.Empty:
                break
            if kind == "down":
                self._down_at = value[0]
                new.append(SourceDown(value[2], value[1]))
            elif kind == "up":
                started, pos = value  # the new stream's audio began about a block before its first callback
                pos = pos if pos >= 0 else self.ring.write_pos
                if self._down_at is not None:
                    new.append(Gap(pos, int((started - self._down_at) * self.rate), "source_down"))
                    self._down_at = None
                new.append(SourceUp(pos))
            elif kind == "finished":
                new.append(Finished(self.ring.write_pos))
        if new:
            merged = sorted(list(self.markers) + new, key=lambda m: m.pos)
            self.markers.clear()
            self.markers.extend(merged)
