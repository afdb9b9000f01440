"""`python -m train fit`: VAE(s) on cached windows, early stopping, calibration, one artifact."""
from __future__ import annotations

import logging
import platform
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import torch

from streamdet.detect import artifact
from streamdet.detect.model import architecture
from train import distributed
from train.cache import FeatureCache, default_cache_dir
from train.calibrate import calibrate, scoring_base
from train.checkpoint import Checkpoint
from train.config import TrainConfig
from train.datasets import read_dataset
from train.learn import calibration_decisions, train_detector
from train.progress import progress_bar
from train.provenance import code_version, data_summary
from train.splits import regroup, split_by_group

log = logging.getLogger("train.fit")



def fit(config: TrainConfig, output: Path | None = None, resume: bool = False, cache_dir: Path | None = None) -> tuple[Path | None, dict]:
    """Train, calibrate and write the artifact: its path and metrics; (None, {}) on a torchrun rank other
    than 0, which trains its share and leaves calibrating and writing to rank 0."""
    if config.training.objective == "reference":
        raise ValueError("training.objective: the reference is measured by crossval and study, never written as an artifact")
    torch.manual_seed(config.training.seed)
    params = config.features
    output = Path(output or config.output)
    items = regroup([item for data in config.data for item in read_dataset(data)], config.training.group_runs)
    train_items, val_items = split_by_group(items, config.training.val_fraction, config.training.seed)
    output.parent.mkdir(parents=True, exist_ok=True)  # here, not after an hour of training
    cache = FeatureCache(cache_dir or config.cache_dir or default_cache_dir(), params)
    checkpoint = Checkpoint(output.with_suffix(".ckpt"), config, resume, items)
    started = time.perf_counter()
    with progress_bar() as progress:
        cache.ensure([i.path for i in items], progress)
        unusable = [i for i in items if cache.entry(i.path) is None]
        for item in unusable:
            log.warning("skipped %s: %s", item.path, cache.error(item.path) or "no audio")
        detector, info = train_detector(config, train_items, val_items, cache, progress, checkpoint)
        if not distributed.is_main():
            return None, {}  # rank 0 calibrates and writes the artifact
        base = scoring_base(config, detector, train_items, cache, progress)
        usable = [i for i in items if i not in unusable]
        scoring, metrics = calibrate(config, base, calibration_decisions(config, detector, base, usable, val_items, cache, progress))
    train_seconds = sum(v["seconds"] for v in info.values())
    audio_hours = {role: v["windows"] * params.hop_seconds / 3600 for role, v in info.items()}
    metrics.update({
        "train_clips": sum(cache.entry(i.path) is not None for i in train_items),
        "models": {role: {k: v for k, v in i.items() if k != "history"} for role, i in info.items()},
        "train_seconds": round(train_seconds, 2),
        "train_audio_hours_per_minute": round(sum(audio_hours[r] * info[r]["epochs"] for r in info) / max(train_seconds / 60, 1e-9), 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
    })
    meta = {
        "features": params.to_dict(),
        "normalisation": {"mean": detector.mean.reshape(len(detector.vaes), -1).tolist(), "std": detector.std.reshape(len(detector.vaes), -1).tolist()},
        "model": architecture(detector, config.model.kind, config.model.hidden, config.model.latent, config.model.channels),
        "scoring": scoring,
        "provenance": {
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(),
            "data": data_summary(items, val_items, unusable),
            "config": asdict(config),
            "metrics": metrics,
            "history": {role: i["history"] for role, i in info.items()},
            "torch": torch.__version__,
            "host": platform.node(),
            "device": str(artifact.resolve_device(config.training.device)),
        },
    }
    path = artifact.save(detector, meta, output)
    checkpoint.path.unlink(missing_ok=True)
    return path, metrics
