"""`python -m train crossval`: k-fold cross-validation by file on the training data, for choosing
a configuration without touching evaluation data.  Out-of-fold clip scores are pooled."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .cache import FeatureCache
from .config import TrainConfig
from .datasets import read_dataset
from .evaluate import clip_aggregate, reference_clip_score
from .fit import Checkpoint, default_cache_dir, k_folds, progress_bar, scoring_base, split_by_file, train_detector, window_decisions
from .metrics import roc_auc


def crossval(config: TrainConfig, folds: int = 4, seed: int = 0, cache_dir=None) -> dict:
    items = [item for data in config.data for item in read_dataset(data)]
    cache = FeatureCache(cache_dir or config.cache_dir or default_cache_dir(), config.features)
    out_of_fold = {}
    with progress_bar() as progress:
        cache.ensure([i.path for i in items], progress)
        items = [i for i in items if cache.entry(i.path) is not None]
        task = progress.add_task("folds", total=folds, info="")
        for fold in k_folds(items, folds, seed):
            rest = [i for i in items if i not in set(fold)]
            train_items, val_items = split_by_file(rest, config.training.val_fraction, config.training.seed)
            detector, _ = train_detector(config, train_items, val_items, cache, progress, Checkpoint(None, config, False))
            base = scoring_base(config, detector, train_items, cache)
            for item, d in window_decisions(detector, fold, cache, config.features, base).items():
                out_of_fold[item] = clip_aggregate(d, config.calibration.clip_aggregate)
            progress.update(task, advance=1)
    reference = {i: reference_clip_score(cache.frames(i.path), config.features) for i in out_of_fold}
    blocks = defaultdict(list)
    for item in out_of_fold:
        blocks[item.dataset].append(item)
    result = {"folds": folds, "seed": seed, "clips": len(out_of_fold), "blocks": {}}
    for name, members in {"all": list(out_of_fold), **dict(sorted(blocks.items()))}.items():
        labels = np.array([i.label for i in members])
        result["blocks"][name] = {
            "clips": len(members), "bird": int(labels.sum()),
            "model_auc": roc_auc(labels, np.array([out_of_fold[i] for i in members])),
            "reference_auc": roc_auc(labels, np.array([reference[i] for i in members])),
        }
    return result
