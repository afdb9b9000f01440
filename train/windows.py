"""Training windows as positions in the memory-mapped cache, gathered per batch."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from streamdet.detect.features import FeatureParams, background_floors, window_index, window_starts
from streamdet.detect.scoring import band_energy_db
from train.cache import FeatureCache
from train.datasets import Item


class WindowSet:
    """Window i is `rows[i]` = (first frame of its clip in the cache, its start in the clip, the
    clip's frame count): 24 bytes, whatever the window length, expanded into frame indices per
    batch (cyclically in a clip shorter than a window, as the daemon does).  `floors[i]` is its
    per-band background floor (bgnorm; zeros otherwise), subtracted when a batch is gathered;
    `extra` holds windows made in memory (augmentation), already as the model sees them."""

    def __init__(self, frames: np.ndarray, rows: np.ndarray, floors: np.ndarray | None = None, extra: np.ndarray | None = None, window_frames: int = 49):
        self.frames, self.rows, self.window_frames = frames, rows.reshape(-1, 3), window_frames
        self.floors = floors if floors is not None else np.zeros((len(self.rows), frames.shape[1]), np.float32)
        self.extra = extra if extra is not None else np.zeros((0, window_frames, frames.shape[1]), np.float32)

    def __len__(self) -> int:
        return len(self.rows) + len(self.extra)

    def with_extra(self, extra: np.ndarray) -> "WindowSet":
        return WindowSet(self.frames, self.rows, self.floors, extra, self.window_frames)

    def joined(self, other: "WindowSet") -> "WindowSet":
        """Both sets' cached windows (over the same frames), without extras."""
        return WindowSet(self.frames, np.concatenate([self.rows, other.rows]), np.concatenate([self.floors, other.floors]), None, self.window_frames)

    def frame_index(self, index: np.ndarray) -> np.ndarray:
        """[len(index), window_frames] cache frame indices of cached windows `index`."""
        base, start, n = self.rows[index].T
        return base[:, None] + (start[:, None] + np.arange(self.window_frames)) % n[:, None]

    def raw(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(frames as cached [n, W, M], floors [n, M]) of cached windows `index`, in that order."""
        index = np.asarray(index)
        order = np.argsort(index, kind="stable")  # sorted reads are kinder to the page cache
        frames = np.empty((len(index), self.window_frames, self.frames.shape[1]), np.float32)
        frames[order] = self.frames[self.frame_index(index[order])]
        return frames, self.floors[index]

    def batch(self, index: np.ndarray) -> torch.Tensor:
        index = np.sort(np.asarray(index))
        cached = index[index < len(self.rows)]
        frames, floors = self.raw(cached)
        out = frames - floors[:, None, :]
        if len(cached) < len(index):
            out = np.concatenate([out, self.extra[index[len(cached) :] - len(self.rows)]])
        return torch.from_numpy(out)

    def band_stats(self, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-band mean and standard deviation over every frame of every window, in chunks."""
        total, total_sq, count = 0.0, 0.0, 0
        for a in range(0, len(self), chunk):
            x = self.batch(np.arange(a, min(a + chunk, len(self)))).double()
            total = total + x.sum(dim=(0, 1))
            total_sq = total_sq + (x * x).sum(dim=(0, 1))
            count += x.shape[0] * x.shape[1]
        mean = total / count
        std = torch.sqrt(torch.clamp(total_sq / count - mean * mean, min=1e-6))
        return mean.float(), std.float()

    @classmethod
    def of(cls, cache: FeatureCache, params: FeatureParams, items: list[Item], call_db: float | None = None, max_per_clip: int = 0, quiet_db: float | None = None,
           chooser: Callable[[Item, np.ndarray], np.ndarray | None] | None = None) -> "WindowSet":
        """Every window of `items`; with `call_db`, only those whose 2-8 kHz energy is at least
        `call_db` dB above their clip's median window (the likely calls of a bird clip), or with
        `quiet_db` only those at most that far above it (its ambience); with `chooser(item,
        window starts in s)`, only the windows of its mask (None: the clip as the rest decide);
        with `max_per_clip`, at most that many per clip, evenly spread over it."""
        db = cache.memmap()
        rows, floors = [], []
        for item in items:
            entry = cache.entry(item.path)
            if entry is None:
                continue
            n = entry["n_frames"]
            starts = window_starts(n, params, final=True)
            keep = np.arange(len(starts))
            if (call_db is not None or quiet_db is not None) and len(starts) > 1:
                energy = band_energy_db(np.asarray(db[entry["offset"] + window_index(starts, n, params)]), params)
                above = energy - np.median(energy)
                keep = np.nonzero(above >= call_db if call_db is not None else above <= quiet_db)[0]
            if chooser is not None and (mask := chooser(item, np.asarray(starts, dtype=np.float64) * params.hop_length / params.sample_rate)) is not None:
                keep = keep[mask[keep]]
            if max_per_clip and len(keep) > max_per_clip:
                keep = keep[np.linspace(0, len(keep) - 1, max_per_clip).round().astype(int)]
            rows.append(np.stack([np.full(len(keep), entry["offset"]), np.asarray(starts)[keep], np.full(len(keep), n)], axis=1).astype(np.int64))
            if params.kind == "bgnorm":
                frames = torch.from_numpy(np.array(db[entry["offset"] : entry["offset"] + n]))
                floors.append(background_floors(frames, 0, n, [starts[k] for k in keep], params).numpy())
        rows = np.concatenate(rows) if rows else np.zeros((0, 3), np.int64)
        floor = np.concatenate(floors).astype(np.float32) if floors else None
        return cls(cache.model_memmap(params), rows, floor, None, params.window_frames)


def mix_windows(birds: WindowSet, backgrounds: WindowSet, gain_db: tuple[float, float], count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` windows, each a random bird window added at a random gain to a random background
    window, as the model sees them; powers add, as they do for sounds that do not correlate.  Only
    the windows drawn are read from the cache, so memory grows with `count`, not with the data.
    With bgnorm the mix is shown against its background's floor (a call barely moves a low percentile)."""
    b, _ = birds.raw(rng.integers(len(birds.rows), size=count))
    n, floors = backgrounds.raw(rng.integers(len(backgrounds.rows), size=count))
    g = rng.uniform(gain_db[0], gain_db[1], size=(count, 1, 1))
    mixed = 10 * np.log10(10 ** (n / 10) + 10 ** ((b + g) / 10))
    return (mixed - floors[:, None, :]).astype(np.float32)
