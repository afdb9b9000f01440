"""`python -m train crossval`: cross-validation on the training data, grouped by recording, for
choosing a configuration without touching evaluation data.

Each fold's model is trained and calibrated exactly as `fit` does it (its own held-out part of the
training folds), then scores the clips of its fold.  Out-of-fold clip scores are pooled, and
reported per block: ROC AUC, pAUC, the share of no-bird clips called bird at the fold model's
threshold (false alarms) and of bird clips found (recall).  `leave_out` trains without one block at
a time and scores that block: what a model does at a site it never heard."""
from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple

import numpy as np

from train.cache import FeatureCache, default_cache_dir
from train.calibrate import calibrate, window_decisions
from train.clips import alarm_runs, clip_aggregate, reference_clip_score, window_times
from train.config import TrainConfig
from train.datasets import Item, read_dataset
from train.learn import calibration_decisions, train_on
from train.metrics import block_balanced_auc, partial_auc, roc_auc
from train.progress import progress_bar
from train.splits import k_folds, regroup
from train.strong import StrongLabels, segment_report


class Scored(NamedTuple):
    decision: float  # the clip's aggregate decision
    called: bool  # at the fold model's calibrated threshold
    alarms: int  # runs of windows at or above it
    hours: float  # the clip's windows, in hours of stream
    windows: np.ndarray  # every window's decision
    threshold: float  # the fold model's calibrated threshold and scale
    scale: float


def _train_and_score(config: TrainConfig, train: list[Item], test: list[Item], cache: FeatureCache, progress) -> dict[Item, Scored]:
    """A Scored for each of `test`, from a model trained and calibrated on `train`.  Decisions of the folds' models are pooled as they are (as cross_val_predict does);
    each fold's own threshold, estimated from its small held-out part, only decides `called`."""
    detector, base, _, val_items = train_on(config, train, cache, progress)
    # With calibration.folds these are nested: the fold's own calibration folds, inside its training part.
    scoring, _ = calibrate(config, base, calibration_decisions(config, detector, base, train, val_items, cache, progress))
    how, t, scale = config.calibration.clip_aggregate, scoring["threshold"], scoring.get("scale", 1.0)
    hop = config.features.hop_seconds / 3600
    return {i: Scored(clip_aggregate(d, how), clip_aggregate(d, how) >= t, alarm_runs(d, t), len(d) * hop, d, t, scale) for i, d in window_decisions(detector, test, cache, config.features, base, progress, "scoring the fold").items()}


def _items(config: TrainConfig, cache: FeatureCache, progress) -> list[Item]:
    items = regroup([item for data in config.data for item in read_dataset(data)], config.training.group_runs)
    cache.ensure([i.path for i in items], progress)
    return [i for i in items if cache.entry(i.path) is not None]


def block_report(scored: dict[Item, Scored], cache: FeatureCache, config: TrainConfig) -> dict:
    """Per block and pooled over all of them ("all": one score scale, as a daemon decides): ROC AUC
    and pAUC, and at the calibrated threshold the share of bird clips found, of no-bird clips
    called bird, and false alarms per hour of no-bird audio."""
    blocks = defaultdict(list)
    for item in scored:
        blocks[item.dataset].append(item)
    out = {}
    for name, members in {"all": list(scored), **dict(sorted(blocks.items()))}.items():
        labels = np.array([i.label for i in members])
        d = np.array([scored[i].decision for i in members])
        called = np.array([scored[i].called for i in members])
        nobird_hours = sum(scored[i].hours for i in members if i.label == 0)
        reference = np.array([reference_clip_score(cache.frames(i.path), config.features) for i in members])
        out[name] = {
            "clips": len(members), "bird": int(labels.sum()),
            "model_auc": roc_auc(labels, d), "model_pauc": partial_auc(labels, d),
            "reference_auc": roc_auc(labels, reference),
            "nobird_called_bird": float(called[labels == 0].mean()) if (labels == 0).any() else float("nan"),
            "bird_found": float(called[labels == 1].mean()) if (labels == 1).any() else float("nan"),
            "false_alarms_per_hour": sum(scored[i].alarms for i in members if i.label == 0) / nobird_hours if nobird_hours else float("nan"),
        }
        if name == "all":
            out[name]["balanced_auc"] = block_balanced_auc(labels, d, [i.dataset for i in members])
        segments = segment_figures(members, scored, cache, config)
        if segments:
            out[name]["segments"] = segments
    return out


def segment_figures(members: list[Item], scored: dict[Item, Scored], cache: FeatureCache, config: TrainConfig, strong: StrongLabels | None = None) -> dict | None:
    """The segment figures (train.strong) of the members with strong labels, or None."""
    strong, p = strong or StrongLabels(), config.features
    clips = [(s, scored[i].windows, window_times(cache.frames(i.path), p), scored[i].threshold, scored[i].scale) for i in members if (s := strong.of(i.path)) is not None]
    return segment_report(clips, p.window_seconds)


def crossval(config: TrainConfig, folds: int = 4, seed: int = 0, cache_dir=None) -> dict:
    cache = FeatureCache(cache_dir or config.cache_dir or default_cache_dir(), config.features)
    scored = {}
    with progress_bar() as progress:
        items = _items(config, cache, progress)
        task = progress.add_task("folds", total=folds, info="")
        for fold in k_folds(items, folds, seed):
            in_fold = set(fold)
            scored.update(_train_and_score(config, [i for i in items if i not in in_fold], fold, cache, progress))
            progress.update(task, advance=1)
    return {"folds": folds, "seed": seed, "clips": len(scored), "blocks": block_report(scored, cache, config), "scores": clip_rows(scored), "strong_windows": strong_windows(scored, cache, config)}


def strong_windows(scored: dict[Item, Scored], cache: FeatureCache, config: TrainConfig) -> list[dict]:
    """The out-of-fold window decisions of the clips with strong labels, with their starts and their
    fold's threshold and scale: what the event settings are chosen on (train.strong.choose_events)."""
    strong = StrongLabels()
    return [{"file": str(i.path), "decisions": [round(float(d), 5) for d in s.windows], "starts": window_times(cache.frames(i.path), config.features).tolist(),
             "threshold": s.threshold, "scale": s.scale, "window_s": config.features.window_seconds} for i, s in scored.items() if strong.of(i.path) is not None]


def clip_rows(scored: dict[Item, Scored]) -> list[dict]:
    """Every clip's out-of-fold score, for looking at what a model gets wrong."""
    return [{"file": str(i.path), "block": i.dataset, "group": i.group, "label": i.label, "score": round(s.decision, 4), "called_bird": bool(s.called)} for i, s in scored.items()]


def leave_out(config: TrainConfig, blocks: list[str] | None = None, cache_dir=None) -> dict:
    """For each block (every block by default): train on all the others, score it alone."""
    cache = FeatureCache(cache_dir or config.cache_dir or default_cache_dir(), config.features)
    out = {}
    with progress_bar() as progress:
        items = _items(config, cache, progress)
        names = blocks or sorted({i.dataset for i in items})
        task = progress.add_task("leave one block out", total=len(names), info="")
        for name in names:
            test = [i for i in items if i.dataset == name]
            if not test:
                raise ValueError(f"--leave-out {name}: no such block (blocks: {', '.join(sorted({i.dataset for i in items}))})")
            scored = _train_and_score(config, [i for i in items if i.dataset != name], test, cache, progress)
            out[name] = {**block_report(scored, cache, config)[name], "scores": clip_rows(scored)}
            progress.update(task, advance=1, info=name)
    return {"blocks": out}
