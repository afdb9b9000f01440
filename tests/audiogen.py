"""Synthetic audio for tests: background noise, and bird-like chirp trains at known times."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio


def noise(seconds: float, sr: int, level_db: float = -30.0, seed: int = 0) -> np.ndarray:
    """Brownish background (energy falling with frequency, like wind and distant traffic)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    white = rng.standard_normal(n)
    brown = np.cumsum(white)
    brown -= np.convolve(brown, np.ones(256) / 256, mode="same")  # remove the drift
    x = brown / (np.std(brown) + 1e-9) + 0.3 * white
    return (x / np.sqrt(np.mean(x**2)) * 10 ** (level_db / 20)).astype(np.float32)


def chirps(x: np.ndarray, sr: int, start: float, duration: float, level_db: float = -14.0, seed: int = 1) -> np.ndarray:
    """Add a train of short rising whistles (2.5-5.5 kHz, 120 ms each, every 200 ms) to `x`."""
    rng = np.random.default_rng(seed)
    y = x.copy()
    amp = 10 ** (level_db / 20) * np.sqrt(2)
    t0 = start
    while t0 + 0.12 <= start + duration + 1e-9:
        n = int(0.12 * sr)
        t = np.arange(n) / sr
        f0, f1 = rng.uniform(2500, 3500), rng.uniform(4500, 5500)
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * 0.12))
        i = int(t0 * sr)
        if i >= len(y):
            break
        y[i : i + n] += (amp * np.hanning(n) * np.sin(phase)).astype(np.float32)[: len(y) - i]
        t0 += 0.2
    return y


BASE_RATE = 22050


def clip(seconds: float, sr: int, calls: list[tuple[float, float]] = (), seed: int = 0, level_db: float = -30.0) -> np.ndarray:
    """Background plus chirp trains, made at 22.05 kHz and resampled, so it sounds the same at any rate."""
    x = noise(seconds, BASE_RATE, level_db=level_db, seed=seed)
    for i, (start, duration) in enumerate(calls):
        x = chirps(x, BASE_RATE, start, duration, seed=seed * 100 + i)
    if sr != BASE_RATE:
        x = torchaudio.functional.resample(torch.from_numpy(x), BASE_RATE, sr).numpy()
    return x


def write(path: Path, x: np.ndarray, sr: int, channels: int = 1, subtype: str | None = None) -> Path:
    data = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(str(path), data, sr, subtype=subtype)
    return path
