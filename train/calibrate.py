"""From held-out window losses to the threshold and scale stored in the artifact.

Everything works on bird-ness, s = loss when high loss means bird and s = -loss otherwise, so
a window is called bird when its decision reaches t. The stored threshold and scale are in decision
units: s itself, or with the energy term the combined decision (docs/artifact.md)."""
from __future__ import annotations

import numpy as np
import torch
from rich.progress import Progress

from streamdet.detect.model import ScoringNet
from streamdet.detect.modes import MODES
from streamdet.detect.scoring import ENERGY_BAND_HZ, SILENT_DECISION, Scorer
from train.cache import FeatureCache
from train.clips import alarm_runs, clip_aggregate, silence_of, windows_of
from train.config import TrainConfig
from train.datasets import Item
from train.metrics import precision_recall_f1, roc_auc
from train.progress import tracked


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


def scoring_base(config: TrainConfig, detector: ScoringNet, train_items: list[Item], cache: FeatureCache, progress: Progress | None = None) -> dict:
    """Polarity and, when asked for, the energy term with its centre and spreads, measured on the
    training windows of the normal class so that its two parts weigh as `energy.weight` says."""
    polarity = MODES[config.mode].polarity
    base = {"mode": config.mode, "polarity": polarity}
    if not config.energy.weight:
        return base
    normal = [i for i in train_items if i.label == MODES[config.mode].normal_label]
    probe = Scorer(base, config.features, context_windows=config.energy.context_windows)
    s, e = [], []
    with torch.no_grad():
        for item in tracked(normal, progress, "energy term"):
            frames = cache.frames(item.path)
            if frames is None:
                continue
            windows = windows_of(frames, config.features)
            sounding = ~silence_of(frames, config.features)  # digital silence is scored 0, not measured
            probe.reset()
            s.append(probe.decide(detector(windows).numpy())[0][sounding])
            e.append(probe.energy_terms(windows.numpy(), ~sounding)[sounding])
    s, e = np.concatenate(s), np.concatenate(e)
    base["energy"] = {
        "weight": config.energy.weight, "context_windows": config.energy.context_windows, "band_hz": list(ENERGY_BAND_HZ),
        "loss_centre": float(np.median(s)), "loss_spread": float(max(np.std(s), 1e-9)), "energy_spread": float(max(np.std(e), 1e-9)),
    }
    return base


def window_decisions(detector: ScoringNet, items: list[Item], cache: FeatureCache, params, scoring: dict, progress: Progress | None = None, what: str = "scoring held-out clips") -> dict[Item, np.ndarray]:
    """Decision values (higher: more bird-like) of every window of every clip, each clip a segment."""
    scorer = Scorer(scoring, params)
    out = {}
    with torch.no_grad():
        for item in tracked(items, progress, what):
            frames = cache.frames(item.path)
            if frames is not None:
                windows = windows_of(frames, params)
                scorer.reset()
                out[item] = scorer.decide(detector(windows).numpy(), windows.numpy(), silence_of(frames, params))[0]
    return out


def fpr_level(nobird_clips: np.ndarray, fpr: float) -> float:
    """The lowest level at most `fpr` of these clip scores reach: the allowed-th highest, or just above all."""
    ordered, allowed = np.sort(nobird_clips), int(np.floor(fpr * len(nobird_clips)))
    return float(ordered[len(ordered) - allowed]) if allowed else float(ordered[-1]) + 1e-6 * max(1.0, abs(float(ordered[-1])))


SMALL_BLOCKS = "(blocks under the minimum, pooled)"


def block_levels(nobird_by_block: dict[str, list[float]], fpr: float) -> dict[str, float]:
    """Each block's level that at most `fpr` of its no-bird clips reach.  A block needs at least
    2/fpr no-bird clips (an allowance of two) for a level of its own: with fewer, its level is its
    single highest clip, and one odd recording would set every station's threshold (the dev
    `other` block's 30 clips, a cafe and a bus among them, did).  Smaller blocks are pooled into
    one, which gets a level of its own when it is big enough, and else counts with all of them."""
    least = int(np.ceil(2 / fpr - 1e-9))
    big = {b: v for b, v in nobird_by_block.items() if len(v) >= least}
    small = [x for b, v in nobird_by_block.items() if len(v) < least for x in v]
    levels = {b: fpr_level(np.array(v), fpr) for b, v in big.items()}
    if len(small) >= least or (small and not levels):
        levels[SMALL_BLOCKS] = fpr_level(np.array(small), fpr)
    elif small:  # too few even together: they join the pool of every block's clips
        levels[SMALL_BLOCKS] = fpr_level(np.array(small + [x for v in big.values() for x in v]), fpr)
    return levels


def _by_block(decisions: dict[Item, np.ndarray], aggregate: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for item, d in decisions.items():
        if item.label == 0:
            out.setdefault(item.dataset, []).append(clip_aggregate(d, aggregate))
    return out


def calibrate(config: TrainConfig, base: dict, decisions: dict[Item, np.ndarray]) -> tuple[dict, dict]:
    """Threshold and scale on held-out decision values; returns (scoring metadata, held-out metrics).

    A clip is called bird when its aggregate (the max of its windows, by default) reaches the
    threshold, and the daemon raises an event when a window does: `clip_fpr` sets the threshold at
    that level, on held-out no-bird clips.  The scale is the spread of held-out clips' aggregates,
    so that calibrated scores stay informative (not 0 or 1) across the clips actually seen."""
    c = config.calibration
    normal_label = MODES[config.mode].normal_label
    normal = np.concatenate([d[d > SILENT_DECISION] for i, d in decisions.items() if i.label == normal_label] or [np.zeros(0)])
    nobird_clips = np.array([clip_aggregate(d, c.clip_aggregate) for i, d in decisions.items() if i.label == 0])
    if not len(normal) or (c.strategy == "clip_fpr" and not len(nobird_clips)):
        raise ValueError("calibration needs held-out clips of the normal class (and of no-bird clips); add data or raise training.val_fraction")
    labels = np.array([i.label for i in decisions])
    clip_d = np.array([clip_aggregate(d, c.clip_aggregate) for d in decisions.values()])
    levels = {}
    if c.strategy == "clip_fpr" and c.per_block:
        levels = block_levels(_by_block(decisions, c.clip_aggregate), c.clip_fpr)
        t = max(levels.values())
    elif c.strategy == "clip_fpr":
        t = fpr_level(nobird_clips, c.clip_fpr)
    else:
        t = threshold_for(c.strategy, normal, normal_label == 1, clip_d, labels, c.percentile, c.gamma_quantile)
    # Window scores keep the scale of normal windows' spread, which the daemon's hysteresis
    # (on_score, off_score) is set in; clip scores (predict) get the spread of held-out clips'
    # aggregates, so that they stay apart instead of piling up at 0 and 1.
    scale = spread(normal)
    sounding = clip_d[clip_d > SILENT_DECISION / 2]
    clip_scale = spread(sounding) if len(sounding) > 3 else scale
    nobird_hours = sum(len(d) for i, d in decisions.items() if i.label == 0) * config.features.hop_seconds / 3600
    if c.false_alarms_per_hour is not None and nobird_hours > 0:
        # Raise the threshold past no-bird windows' values until the alarm rate is low enough.
        values = np.unique(np.concatenate([d for i, d in decisions.items() if i.label == 0]))
        for candidate in values[values >= t]:
            if sum(alarm_runs(d, candidate) for i, d in decisions.items() if i.label == 0) / nobird_hours <= c.false_alarms_per_hour:
                t = float(candidate)
                break
        else:
            t = float(values[-1]) + 1e-6
    alarms = sum(alarm_runs(d, t) for i, d in decisions.items() if i.label == 0)
    scoring = {**base, "threshold": t, "scale": scale, "clip_scale": clip_scale, "strategy": c.strategy, "clip_fpr": c.clip_fpr, "per_block": c.per_block, "calibration_folds": c.folds,
               "percentile": c.percentile, "gamma_quantile": c.gamma_quantile, "clip_aggregate": c.clip_aggregate}
    auc = roc_auc(labels, clip_d) if len(set(labels)) > 1 else float("nan")
    metrics = {
        "val_clips": len(labels), "val_clip_auc": None if np.isnan(auc) else round(auc, 4),
        "val_nobird_clips_called_bird": round(float(np.mean(nobird_clips >= t)), 4) if len(nobird_clips) else None,
        "val_nobird_hours": round(nobird_hours, 4),
        # Which block set the threshold, and how far the others' levels lie below it.
        **({"val_block_levels": {b: round(v, 4) for b, v in levels.items()}} if levels else {}),
        "val_false_alarms_per_hour": round(alarms / nobird_hours, 2) if nobird_hours else None,
        **{f"val_{k}": round(v, 4) for k, v in precision_recall_f1(labels, clip_d >= t).items() if not np.isnan(v)},
    }
    return scoring, metrics
