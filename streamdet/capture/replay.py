"""Replay a directory of audio files as one stream, paced like a microphone or as fast as possible."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np

from streamdet.capture.audio import AudioError, FileDecoder, list_audio_candidates
from streamdet.capture.markers import Finished, Notice, SegmentEnd, SegmentStart, Skipped
from streamdet.capture.ringbuffer import RingBuffer
from streamdet.capture.source import SourceThread
from streamdet.config import SourceConfig, pace_speed
from streamdet.errors import one_line

log = logging.getLogger(__name__)

# Samples beyond this (120 dB above full scale) are not audio but damage (a float WAV of garbage):
# like NaN, they would overflow the front end, so a file is played up to the first of them.
MAX_SAMPLE = 1e6

# At most one 16-bit LSB: a file this quiet throughout is digital silence, not a recording.
SILENCE_PEAK = 1.0 / 32768
RESCAN_SECONDS = 2.0
MAX_RESCAN_SECONDS = 60.0


class ReplaySource(SourceThread):
    kind = "replay"

    def __init__(self, config: SourceConfig, sample_rate: int, ring: RingBuffer):
        super().__init__(config.name)
        self.directory = Path(config.path)
        self.speed = pace_speed(config.pace)
        self.loop = config.loop
        self.sample_rate = sample_rate
        self.ring = ring
        self.block = max(1, int(config.block_seconds * sample_rate))
        self.failed: str | None = None  # why the replay thread died, if it did: an error, never a finish
        self._t0 = 0.0
        self._pos0 = 0
        self._folder_problem: str | None = None  # the last one reported (said once per change)

    @property
    def rate(self) -> int:
        return self.sample_rate  # files are resampled to the model's rate as they are decoded

    def describe(self) -> dict:
        return {"path": str(self.directory), "pace": "max" if math.isinf(self.speed) else f"{self.speed:g}x", "loop": self.loop, "failed": self.failed}

    def start(self) -> None:
        self._t0, self._pos0 = time.monotonic(), self.ring.write_pos
        super().start()  # markers are appended in order by the replay thread itself: nothing to poll

    def _run(self) -> None:
        idle = RESCAN_SECONDS
        try:
            while not self._stop.is_set():
                played = self._one_pass()
                if not self.loop:
                    break
                # Nothing to play (the folder gone or empty): look again later and later, up to a minute.
                idle = RESCAN_SECONDS if played else min(2 * idle, MAX_RESCAN_SECONDS)
                if not played:
                    self._stop.wait(idle)
        except Exception as exc:  # a bug must still end the stream properly, and be seen
            log.exception("replay source %s failed", self.name)
            self.failed = one_line(exc, with_type=True)
            self.markers.append(Skipped(self.ring.write_pos, self.current_file or str(self.directory), f"replay failed: {self.failed}; the files after it were not played"))
        finally:
            self.current_file = None
            self.markers.append(Finished(self.ring.write_pos))

    def _one_pass(self) -> int:
        """Play every file once, in sorted order; returns how many produced audio."""
        if not self.directory.is_dir():
            self._say_once("directory missing")
            return 0
        vanished: list[str] = []
        files = list_audio_candidates(self.directory, vanished)
        for folder in vanished:  # an archiver rotating day folders: skip what went, play the rest
            self.markers.append(Skipped(self.ring.write_pos, folder, "folder vanished while it was listed; skipped"))
        self._say_once("no files in directory" if not files else None)
        played = 0
        for path in files:
            if self._stop.is_set():
                break
            played += self._play(path)
        return played

    def _say_once(self, problem: str | None) -> None:
        """Report the folder's problem when it appears or changes, not on every rescan."""
        if problem is not None and problem != self._folder_problem:
            self.markers.append(Skipped(self.ring.write_pos, str(self.directory), problem))
        self._folder_problem = problem

    def _play(self, path: Path) -> int:
        shown = str(path.relative_to(self.directory))
        self.current_file = shown
        try:
            decoder = FileDecoder(path, self.sample_rate)
        except (AudioError, OSError) as exc:
            self.markers.append(Skipped(self.ring.write_pos, shown, str(exc)))
            return 0
        info = {"duration_s": round(decoder.info.duration, 3), "sample_rate": decoder.info.samplerate, "channels": decoder.info.channels, "format": decoder.info.format}
        self._started, self._silent = False, 0
        decoded = 0
        try:
            for block in decoder.blocks():
                if self._stop.is_set():
                    break
                bad = ~(np.abs(block) <= MAX_SAMPLE)  # NaN, infinite, or absurd
                cut = int(np.argmax(bad)) if bad.any() else len(block)
                self._push(block[:cut], shown, info)
                decoded += cut
                if cut < len(block):
                    self._end(f"contains NaN, infinite or absurd (beyond +-{MAX_SAMPLE:g} of full scale) samples from {decoded / self.sample_rate:.2f} s; the rest of the file was skipped", shown)
                    return int(self._started)
        except AudioError as exc:
            self._end(str(exc), shown)
            return int(self._started)
        if not self._started:
            if not self._stop.is_set():
                self.markers.append(Skipped(self.ring.write_pos, shown, "digital silence throughout"))
            return 0
        self.markers.append(SegmentEnd(self.ring.write_pos))
        truncated = decoder.truncation()
        if truncated and not self._stop.is_set():
            self.markers.append(Notice(self.ring.write_pos, shown, truncated))
        return 1

    def _push(self, samples: np.ndarray, shown: str, info: dict) -> None:
        """Write a file's samples, holding back leading digital silence until the file proves to be more."""
        if not len(samples):
            return
        if not self._started:
            if np.abs(samples).max() <= SILENCE_PEAK:
                self._silent += len(samples)
                return
            self.markers.append(SegmentStart(self.ring.write_pos, shown, info))
            self._started = True
            if self._silent:
                self._write(np.zeros(self._silent, dtype=np.float32))
        self._write(samples)

    def _end(self, reason: str, shown: str) -> None:
        """A file that went bad part of the way: played up to there (a notice), or skipped if
        nothing of it had been played, never both."""
        if self._started:
            self.markers.append(SegmentEnd(self.ring.write_pos))
            self.markers.append(Notice(self.ring.write_pos, shown, f"played up to here: {reason}"))
        else:
            self.markers.append(Skipped(self.ring.write_pos, shown, reason))

    def _write(self, samples: np.ndarray) -> None:
        if math.isinf(self.speed):
            self.ring.write(samples, wait=True, stop=self._stop.is_set)
            return
        for i in range(0, len(samples), self.block):
            chunk = samples[i : i + self.block]
            # A block is released when its last sample would have been heard, like a sound card would.
            due = self._t0 + (self.ring.write_pos + len(chunk) - self._pos0) / (self.sample_rate * self.speed)
            delay = due - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            self.ring.write(chunk, wait=True, stop=self._stop.is_set)
