"""A clip as training, evaluation and prediction all see it: its windows, its silence, its score."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from streamdet.detect.features import FeatureParams, silent_windows, window_starts, windows_from_frames
from streamdet.detect.scoring import band_energy_db


def windows_of(frames: np.ndarray, params: FeatureParams) -> torch.Tensor:
    """Every window of a clip's cached log-mel dB frames, as the model sees them (one segment)."""
    return windows_from_frames(frames, params)[1]


def window_times(frames: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Each window's start in seconds from the clip's start, in the order windows_of gives them."""
    return np.asarray(window_starts(len(frames), params, final=True), dtype=np.float64) * params.hop_length / params.sample_rate


def silence_of(frames_db: np.ndarray, params: FeatureParams) -> np.ndarray:
    """Which windows of a clip are digital silence, as the daemon decides it."""
    return silent_windows(frames_db, window_starts(len(frames_db), params, final=True), params)


def clip_aggregate(window_scores: np.ndarray, how: str) -> float:
    """'max', or 'topK' (the mean of the K highest window scores)."""
    if how == "max":
        return float(window_scores.max())
    k = int(how[3:])
    return float(np.sort(window_scores)[-k:].mean())


def alarm_runs(decisions: np.ndarray, threshold: float) -> int:
    """How many runs of consecutive windows reach `threshold`: the false alarms a no-bird clip raises."""
    above = np.asarray(decisions) >= threshold
    return int(above[0] + np.count_nonzero(above[1:] & ~above[:-1])) if len(above) else 0


def reference_clip_score(frames: np.ndarray, params: FeatureParams) -> float | None:
    """The plain detector every VAE must beat: the highest 1-s window's 2-8 kHz energy, in dB,
    above the clip's median window."""
    windows = windows_from_frames(frames, replace(params, kind="logmel_db"))[1].numpy()
    if not len(windows):
        return None
    energy = band_energy_db(windows, params)
    return float(energy.max() - np.median(energy))
