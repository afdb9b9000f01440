"""Decoding audio files into mono float32 blocks, and resampling them as a stream.

Everything that turns a file on disk into model-rate samples goes through here, for the
daemon and for training alike, so the two can never disagree about what a file sounds like.
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torchaudio.transforms import Resample

from streamdet.errors import one_line

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".w64", ".caf", ".au"})


class AudioError(Exception):
    """A file that cannot be used as audio; the message names the reason, not the file."""


def list_audio_candidates(directory: Path, vanished: list[str] | None = None) -> list[Path]:
    """Every regular, non-hidden file below `directory`, in sorted order.

    Non-audio files are returned too, so that the caller can report them rather than
    silently ignoring something the user put there.  A folder that cannot be listed (one an
    archiver removed while the walk went on) is skipped and its path added to `vanished`."""
    def skipped(exc: OSError) -> None:
        if vanished is not None:
            vanished.append(str(exc.filename))

    found = []
    for root, folders, files in os.walk(directory, onerror=skipped):
        folders[:] = [f for f in folders if not f.startswith(".")]  # hidden folders are not descended
        here = Path(root)
        # Not only regular files: a FIFO, a device or a dangling or looping symlink is there too, and is
        # reported as what it is instead of being passed over in silence (a symlinked folder as well).
        found += [here / f for f in files if not f.startswith(".")]
        found += [here / f for f in folders if (here / f).is_symlink()]
    return sorted(found)


def sf_name(path: Path):
    """The name to give libsndfile: bytes, so that a file name that is not UTF-8 still opens."""
    return os.fsencode(path)


def probe(path: Path) -> sf._SoundFileInfo:
    if path.suffix.lower() not in AUDIO_SUFFIXES:
        raise AudioError(f"not an audio file (suffix {path.suffix or 'none'!r}; expected one of {', '.join(sorted(AUDIO_SUFFIXES))})")
    try:
        if not path.is_file():
            if not path.exists() and not path.is_symlink():
                raise AudioError("no longer there (deleted or moved after the folder was listed)")
            raise AudioError("not a regular file (a FIFO, a device, or a dangling or looping symlink)")
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise AudioError(f"cannot read: {(exc.strerror or str(exc)).lower()}") from None
    if path.stat().st_size == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        info = sf.info(sf_name(path))
    except Exception as exc:  # libsndfile reports every decoding problem as a RuntimeError or LibsndfileError
        raise AudioError(f"cannot decode: {one_line(exc, limit=None).replace(repr(str(path)), 'it')}") from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError("empty: no samples")
    return info


def read_mono_blocks(path: Path, block_frames: int) -> Iterator[np.ndarray]:
    """Yield mono float32 blocks at the file's own rate, downmixing by averaging channels."""
    try:
        with sf.SoundFile(sf_name(path)) as f:
            while True:
                block = f.read(block_frames, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    return
                mono = block[:, 0] if block.shape[1] == 1 else block.mean(axis=1, dtype=np.float32)
                yield np.ascontiguousarray(mono)
    except Exception as exc:
        raise AudioError(f"decoding failed: {one_line(exc, limit=None)}") from None


class StreamingResampler:
    """Band-limited resampling of a stream, block by block, equal to resampling the whole signal at once.

    It applies torchaudio's windowed-sinc kernel itself: the kernel of output block k reads input
    samples [k*orig - width, (k+1)*orig + width), so the last `orig + width` input samples are held
    back until more arrive or the stream is flushed."""

    MAX_TERMS = 2000  # the kernel has orig/gcd phases: 640 at most between the usual rates

    def __init__(self, orig_rate: int, new_rate: int):
        self.orig_rate, self.new_rate = int(orig_rate), int(new_rate)
        self.passthrough = self.orig_rate == self.new_rate
        if self.passthrough:
            return
        # An odd rate (44,056 Hz) makes the exact ratio's terms, and the kernel, enormous (8 GB):
        # such audio is read as if at the nearest multiple of 50 Hz, a pitch and speed error of at
        # most 25 Hz / rate (0.06% at 44 kHz), inaudible to a detector, in bounded memory.
        g = math.gcd(self.orig_rate, self.new_rate)
        if max(self.orig_rate, self.new_rate) // g > self.MAX_TERMS:
            self.orig_rate = max(50, round(self.orig_rate / 50) * 50)
            self.passthrough = self.orig_rate == self.new_rate
            if self.passthrough:
                return
        g = math.gcd(self.orig_rate, self.new_rate)
        self._orig, self._new = self.orig_rate // g, self.new_rate // g
        self._kernel, self._width = _sinc_kernel(self.orig_rate, self.new_rate)
        self.reset()

    def reset(self) -> None:
        if self.passthrough:
            return
        # The pending buffer starts `width` zeros before sample 0, exactly as torchaudio pads.
        self._pending = torch.zeros(self._width)
        self._blocks_done = 0
        self._inputs_seen = 0

    def process(self, samples: np.ndarray) -> np.ndarray:
        if self.passthrough:
            return samples
        self._inputs_seen += len(samples)
        self._pending = torch.cat([self._pending, torch.from_numpy(samples)])
        ready_blocks = (len(self._pending) - 2 * self._width) // self._orig
        return self._emit(ready_blocks)

    def flush(self) -> np.ndarray:
        if self.passthrough:
            return np.zeros(0, dtype=np.float32)
        self._pending = F.pad(self._pending, (0, self._width + self._orig))
        ready_blocks = (len(self._pending) - 2 * self._width) // self._orig
        out = self._emit(ready_blocks)
        total = math.ceil(self._new * self._inputs_seen / self._orig)
        keep = total - (self._blocks_done * self._new - len(out))
        out = out[: max(keep, 0)]
        self.reset()
        return out

    def _emit(self, blocks: int) -> np.ndarray:
        if blocks <= 0:
            return np.zeros(0, dtype=np.float32)
        span = blocks * self._orig + 2 * self._width
        out = F.conv1d(self._pending[None, None, :span], self._kernel, stride=self._orig)
        self._pending = self._pending[blocks * self._orig :]
        self._blocks_done += blocks
        return out[0].transpose(0, 1).reshape(-1)[: blocks * self._new].numpy()


@functools.lru_cache(maxsize=32)
def _sinc_kernel(orig_rate: int, new_rate: int) -> tuple[torch.Tensor, int]:
    """torchaudio's kernel for a rate pair, built once: a folder of files at a few rates reuses it
    (rebuilding it took a tenth of the decode thread's time)."""
    resample = Resample(orig_rate, new_rate)
    return resample.kernel.to(torch.float32), resample.width


class FileDecoder:
    """One file as mono float32 blocks at `sample_rate`, with what it promised and what it held."""

    _SAMPLE_BYTES = {"PCM_S8": 1, "PCM_U8": 1, "PCM_16": 2, "PCM_24": 3, "PCM_32": 4, "FLOAT": 4, "DOUBLE": 8}

    def __init__(self, path: Path, sample_rate: int, block_seconds: float = 8.0):
        self.path = Path(path)
        self.info = probe(self.path)
        self.sample_rate = sample_rate
        self.block_frames = max(1, int(block_seconds * self.info.samplerate))
        self.frames_read = 0
        self.declared_frames = self._wav_data_frames() or self.info.frames

    def blocks(self) -> Iterator[np.ndarray]:
        resampler = StreamingResampler(self.info.samplerate, self.sample_rate)
        for block in read_mono_blocks(self.path, self.block_frames):
            self.frames_read += len(block)
            out = resampler.process(block)
            if len(out):
                yield out
        tail = resampler.flush()
        if len(tail):
            yield tail

    def truncation(self) -> str | None:
        """After `blocks()` ran out: a description of missing audio, or None if the file was whole."""
        missing = self.declared_frames - self.frames_read
        if self.info.format in ("MP3", "OGG"):
            # Lossy headers only estimate the length (encoder delay, padding, VBR): report gross losses only.
            if missing <= max(self.info.samplerate // 2, self.declared_frames // 4):
                return None
        elif missing <= self.info.samplerate // 100:
            return None
        rate = self.info.samplerate
        return f"truncated: the header promises {self.declared_frames / rate:.2f} s, only {self.frames_read / rate:.2f} s could be read"

    def _wav_data_frames(self) -> int | None:
        """libsndfile quietly shortens a truncated WAV to what is there; its header still tells the truth."""
        width = self._SAMPLE_BYTES.get(self.info.subtype)
        if self.info.format not in ("WAV", "WAVEX") or not width:
            return None
        with open(self.path, "rb") as f:
            head = f.read(12)
            if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            while len(chunk := f.read(8)) == 8:
                size = int.from_bytes(chunk[4:], "little")
                if chunk[:4] == b"data":
                    return None if size in (0, 0xFFFFFFFF) else size // (width * self.info.channels)
                f.seek(size + (size & 1), 1)
        return None


def load_resampled(path: Path, sample_rate: int, notices: list | None = None) -> np.ndarray:
    """The whole file as one mono float32 array at `sample_rate` (for training and tests); a
    truncated file gives what it holds, and says so in `notices` when given."""
    decoder = FileDecoder(Path(path), sample_rate)
    blocks = list(decoder.blocks())
    if notices is not None and (truncated := decoder.truncation()):
        notices.append(truncated)
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
