"""`python -m train fit`: windows from labelled clips, a VAE on the normal class, a threshold, an artifact."""
from __future__ import annotations

import logging
import math
import platform
import random
import subprocess
from collections import defaultdict
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import streamdet
from streamdet import artifact
from streamdet.audio import AudioError, load_resampled
from streamdet.features import FeatureParams, LogMel, offline_windows
from streamdet.model import VAE, Detector, architecture, vae_loss

from .config import TrainConfig
from .datasets import Item, read_dataset
from .metrics import roc_auc

log = logging.getLogger("train.fit")

POLARITY = {"nobird": "high_loss_is_bird", "bird": "low_loss_is_bird"}


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))


def clip_windows(items: list[Item], params: FeatureParams, progress: Progress) -> dict[Item, torch.Tensor]:
    """Log-mel windows of every clip, through the daemon's own decoding and front end."""
    frontend = LogMel(params)
    out = {}
    task = progress.add_task("features", total=len(items), info="")
    for item in items:
        try:
            _, windows = offline_windows(load_resampled(item.path, params.sample_rate), params, frontend)
        except AudioError as exc:
            log.warning("skipped %s: %s", item.path, exc)
            windows = None
        if windows is not None and len(windows):
            out[item] = windows
        elif windows is not None:
            log.warning("skipped %s: shorter than one window (%.2f s)", item.path, params.window_seconds)
        progress.update(task, advance=1, info=item.path.name[:40])
    return out


def split_by_file(items: list[Item], val_fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """Stratified by (dataset, label): each group gives about `val_fraction` of its files to validation."""
    groups = defaultdict(list)
    for item in sorted(items, key=lambda i: str(i.path)):
        groups[(item.dataset, item.label)].append(item)
    rng = random.Random(seed)
    train, val = [], []
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        n_val = min(len(members) - 1, max(1, round(val_fraction * len(members)))) if len(members) > 1 else 0
        val += members[:n_val]
        train += members[n_val:]
    return train, val


def fit_vae(windows: torch.Tensor, val_windows: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, config: TrainConfig, device: torch.device, progress: Progress) -> tuple[VAE, list[dict]]:
    t = config.training
    n_inputs = windows.shape[1] * windows.shape[2]
    vae = VAE(n_inputs, config.model.hidden, config.model.latent).to(device)
    optimiser = torch.optim.Adam(vae.parameters(), lr=t.learning_rate)
    x = ((windows - mean) / std).reshape(len(windows), -1).to(device)
    xv = ((val_windows - mean) / std).reshape(len(val_windows), -1).to(device) if len(val_windows) else None
    generator = torch.Generator(device="cpu").manual_seed(t.seed)
    history = []
    task = progress.add_task("training", total=t.epochs, info="")
    for epoch in range(t.epochs):
        vae.train()
        order = torch.randperm(len(x), generator=generator).to(device)
        total = 0.0
        for i in range(0, len(x), t.batch_size):
            batch = x[order[i : i + t.batch_size]]
            loss = vae_loss(batch, *vae(batch), beta=t.beta)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        record = {"epoch": epoch + 1, "train_loss": total / len(x)}
        if xv is not None:
            vae.eval()
            with torch.no_grad():
                record["val_loss"] = vae_loss(xv, *vae(xv), beta=t.beta).item()
        history.append(record)
        progress.update(task, advance=1, info=" ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
    return vae.eval().cpu(), history


def fit(config: TrainConfig, output: Path | None = None) -> tuple[Path, dict]:
    torch.manual_seed(config.training.seed)
    params = config.features
    device = artifact.resolve_device(config.training.device)
    items = [item for data in config.data for item in read_dataset(data)]
    train_items, val_items = split_by_file(items, config.training.val_fraction, config.training.seed)
    normal_label = int(config.normal == "bird")
    with progress_bar() as progress:
        windows = clip_windows(items, params, progress)
        normal_train = [windows[i] for i in train_items if i in windows and i.label == normal_label]
        normal_val = [windows[i] for i in val_items if i in windows and i.label == normal_label]
        if not normal_train:
            raise ValueError(f"no usable {config.normal} clips to train on")
        x = torch.cat(normal_train)
        xv = torch.cat(normal_val) if normal_val else x[:0]
        mean, std = x.mean(dim=(0, 1)), x.std(dim=(0, 1)).clamp_min(1e-3)
        vae, history = fit_vae(x, xv, mean, std, config, device, progress)
    detector = Detector(LogMel(params), [vae], [1.0], mean, std, params.window_frames).eval()
    polarity = POLARITY[config.normal]
    # Calibrate on held-out normal windows (training windows when there are none held out).
    reference = xv if len(xv) else x
    with torch.no_grad():
        ref_losses = detector(reference).numpy()
    threshold, scale = calibrate(ref_losses, polarity, config.calibration.percentile)
    metrics = evaluate_clips(detector, {i: windows[i] for i in val_items if i in windows}, polarity)
    metrics.update({"train_clips": sum(i in windows for i in train_items), "val_clips": sum(i in windows for i in val_items), "normal_train_windows": len(x), "final": history[-1]})
    meta = {
        "features": params.to_dict(),
        "normalisation": {"mean": mean.tolist(), "std": std.tolist()},
        "model": architecture(detector, config.model.hidden, config.model.latent),
        "scoring": {"mode": config.normal, "polarity": polarity, "threshold": threshold, "scale": scale, "strategy": config.calibration.strategy, "percentile": config.calibration.percentile},
        "provenance": {
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "code_version": code_version(),
            "data": data_summary(items, windows, val_items, params),
            "config": asdict(config),
            "metrics": metrics,
            "torch": torch.__version__,
            "host": platform.node(),
            "device": str(device),
        },
    }
    path = artifact.save(detector, meta, output or Path(config.output))
    return path, metrics


def calibrate(normal_losses: np.ndarray, polarity: str, percentile: float) -> tuple[float, float]:
    """Threshold at `percentile` of the normal class's losses, on its tail towards birds;
    the scale is their robust spread, so a score of 0.73 means one spread past the threshold."""
    tail = percentile if polarity == "high_loss_is_bird" else 100.0 - percentile
    threshold = float(np.percentile(normal_losses, tail))
    q25, q75 = np.percentile(normal_losses, [25, 75])
    scale = float(max((q75 - q25) / 1.349, 1e-6))
    return threshold, scale


def evaluate_clips(detector: Detector, windows: dict[Item, torch.Tensor], polarity: str) -> dict:
    """Clip-level ROC AUC (clip score: the most bird-like window) on labelled held-out clips."""
    if not windows:
        return {}
    sign = 1.0 if polarity == "high_loss_is_bird" else -1.0
    labels, scores = [], []
    with torch.no_grad():
        for item, w in windows.items():
            labels.append(item.label)
            scores.append(float((sign * detector(w)).max()))
    auc = roc_auc(np.array(labels), np.array(scores))
    return {"val_clip_auc": None if math.isnan(auc) else round(auc, 4)}


def data_summary(items: list[Item], windows: dict, val_items: list[Item], params: FeatureParams) -> dict:
    by_dataset = defaultdict(lambda: {"bird": 0, "nobird": 0})
    for item in items:
        by_dataset[item.dataset]["bird" if item.label else "nobird"] += 1
    return {
        "clips": len(items),
        "used": len(windows),
        "by_dataset": dict(by_dataset),
        "val_items": sorted(i.itemid for i in val_items),
        "windows": sum(len(w) for w in windows.values()),
    }


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"streamdet {streamdet.__version__}" + (f" ({commit})" if commit else "")
