"""From held-out window losses to the threshold and scale stored in the artifact.

Everything works on bird-ness, s = loss when high loss means bird and s = -loss otherwise, so
a window is called bird when s >= t; the stored threshold is back in loss units."""
from __future__ import annotations

import numpy as np
import torch

from .metrics import precision_recall_f1


def gamma_quantile(samples: np.ndarray, q: float) -> float:
    """The q-quantile of a gamma distribution fitted to positive samples by the method of moments."""
    mean, var = float(np.mean(samples)), float(np.var(samples))
    shape, scale = mean * mean / max(var, 1e-12), max(var, 1e-12) / max(mean, 1e-12)
    lo, hi = 0.0, max(float(np.max(samples)), mean) * 10 + 1.0
    k = torch.tensor(shape, dtype=torch.float64)
    for _ in range(200):  # bisection on the regularised lower incomplete gamma function
        mid = (lo + hi) / 2
        if torch.special.gammainc(k, torch.tensor(mid / scale, dtype=torch.float64)).item() < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def threshold_for(strategy: str, normal_s: np.ndarray, normal_is_bird: bool, clip_s: np.ndarray, clip_labels: np.ndarray, percentile: float, gamma_q: float) -> float:
    """The bird-ness threshold t.  `normal_s` are the normal class's held-out window bird-nesses;
    `clip_s`/`clip_labels` are held-out clips' aggregated bird-ness and labels (for f1)."""
    if strategy == "percentile":
        return float(np.percentile(normal_s, 100.0 - percentile if normal_is_bird else percentile))
    if strategy == "gamma":
        # Fit where the normal class's tail points at the other class, shifted to be positive.
        if normal_is_bird:
            top = float(np.max(normal_s)) + 1e-6
            return top - gamma_quantile(top - normal_s, gamma_q)
        low = float(np.min(normal_s)) - 1e-6
        return low + gamma_quantile(normal_s - low, gamma_q)
    if strategy == "f1":
        if clip_labels.min() == clip_labels.max():
            raise ValueError("calibration strategy f1 needs held-out clips of both classes")
        candidates = np.unique(clip_s)
        f1 = [precision_recall_f1(clip_labels, clip_s >= t)["f1"] for t in candidates]
        return float(candidates[int(np.argmax(f1))])
    raise ValueError(f"unknown calibration strategy {strategy!r}")


def spread(values: np.ndarray) -> float:
    """A robust standard deviation (interquartile range / 1.349)."""
    q25, q75 = np.percentile(values, [25, 75])
    return float(max((q75 - q25) / 1.349, 1e-6))
