"""Training windows as rows of frame indices into the memory-mapped cache, gathered per batch."""
from __future__ import annotations

import numpy as np
import torch

from streamdet.features import FeatureParams, window_index, window_starts
from streamdet.scoring import band_energy_db

from .cache import FeatureCache
from .datasets import Item

class WindowSet:
    """`rows[i]` holds the frame indices of window i; `extra` holds windows made in memory (augmentation)."""

    def __init__(self, frames: np.ndarray, rows: np.ndarray, extra: np.ndarray | None = None):
        self.frames, self.rows = frames, rows
        self.extra = extra if extra is not None else np.zeros((0, rows.shape[1] if rows.ndim == 2 else 1, frames.shape[1]), np.float32)

    def __len__(self) -> int:
        return len(self.rows) + len(self.extra)

    def batch(self, index: np.ndarray) -> torch.Tensor:
        index = np.sort(np.asarray(index))  # sorted reads are kinder to the page cache
        cached = index[index < len(self.rows)]
        out = np.asarray(self.frames[self.rows[cached]], dtype=np.float32)
        if len(cached) < len(index):
            out = np.concatenate([out, self.extra[index[len(cached) :] - len(self.rows)]])
        return torch.from_numpy(out)

    def all(self) -> torch.Tensor:
        return self.batch(np.arange(len(self)))

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
    def of(cls, cache: FeatureCache, params: FeatureParams, items: list[Item], call_db: float | None = None) -> "WindowSet":
        """Every window of `items`; with `call_db`, only those whose 2-8 kHz energy is at least
        `call_db` dB above their clip's median window (the likely calls of a bird clip)."""
        db = cache.memmap()
        rows = []
        for item in items:
            entry = cache.entry(item.path)
            if entry is None:
                continue
            n = entry["n_frames"]
            clip_rows = entry["offset"] + window_index(window_starts(n, params, final=True), n, params)
            if call_db is not None and len(clip_rows) > 1:
                energy = band_energy_db(np.asarray(db[clip_rows]), params)
                clip_rows = clip_rows[energy >= np.median(energy) + call_db]
            rows.append(clip_rows)
        rows = np.concatenate(rows) if rows else np.zeros((0, params.window_frames), np.int64)
        return cls(cache.model_memmap(params), rows)


def mix_windows(birds_db: np.ndarray, backgrounds_db: np.ndarray, gain_db: tuple[float, float], count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` windows, each a random bird window added at a random gain to a random background
    window; powers add, as they do for sounds that do not correlate."""
    b = birds_db[rng.integers(len(birds_db), size=count)]
    n = backgrounds_db[rng.integers(len(backgrounds_db), size=count)]
    g = rng.uniform(gain_db[0], gain_db[1], size=(count, 1, 1))
    return (10 * np.log10(10 ** (n / 10) + 10 ** ((b + g) / 10))).astype(np.float32)
