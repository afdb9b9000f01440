"""A clip as training, evaluation and prediction all see it: its windows, its silence, its score."""
from __future__ import annotations

import numpy as np
import torch

from streamdet.features import FeatureParams, silent_windows, window_starts, windows_from_frames


def windows_of(frames: np.ndarray, params: FeatureParams) -> torch.Tensor:
    """Every window of a clip's cached log-mel dB frames, as the model sees them (one segment)."""
    return windows_from_frames(frames, params)[1]


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
