"""`python -m train fit`: VAE(s) on cached windows, early stopping, calibration, one artifact."""
from __future__ import annotations

import logging
import platform
import subprocess
import time
from collections import defaultdict
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

import streamdet
from streamdet import artifact
from streamdet.features import LogMel
from streamdet.model import Detector, architecture, make_vae, vae_loss
from streamdet.modes import MODES
from streamdet.scoring import ENERGY_BAND_HZ, SILENT_DECISION, Scorer

from . import distributed
from .cache import FeatureCache
from .calibrate import spread, threshold_for
from .checkpoint import Checkpoint
from .clips import alarm_runs, clip_aggregate, silence_of, windows_of
from .config import TrainConfig
from .datasets import Item, read_dataset
from .metrics import precision_recall_f1, roc_auc
from .splits import k_folds, split_by_group
from .windows import WindowSet, mix_windows

log = logging.getLogger("train.fit")



def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"))


def new_vae(config: TrainConfig) -> torch.nn.Module:
    m, p = config.model, config.features
    return make_vae(m.kind, p.window_frames, p.n_mels, m.hidden, m.latent, m.channels)


def fit_vae(name: str, train: WindowSet, val: WindowSet, mean, std, config: TrainConfig, device: torch.device, progress: Progress, checkpoint: Checkpoint, outliers: WindowSet | None = None) -> tuple[torch.nn.Module, dict]:
    """Train one VAE; stop when the held-out reconstruction error has not improved for `patience`
    epochs.  With `outliers` (and training.outlier_weight), each step also shows it a batch of
    them and penalises reconstructing them better than the margin (outlier exposure)."""
    if name in checkpoint.state["done"]:
        done = checkpoint.state["done"][name]
        vae = new_vae(config)
        vae.load_state_dict(done["best"])
        return vae.eval(), done["info"]
    t = config.training
    current = checkpoint.state.get("current")
    resuming = bool(current and current["name"] == name)
    if not resuming:
        checkpoint.restore_rng()  # between two VAEs: the next one starts from the saved random state
    vae = new_vae(config).to(device)
    optimiser = torch.optim.Adam(vae.parameters(), lr=t.learning_rate)
    generator = torch.Generator().manual_seed(t.seed)
    mean, std = mean.to(device), std.to(device)
    run = {"epoch": 0, "best_val": float("inf"), "best": None, "stale": 0, "history": []}
    if resuming:
        vae.load_state_dict(current["vae"])
        optimiser.load_state_dict(current["optimiser"])
        generator.set_state(current["generator"])
        run = current["run"]
        checkpoint.restore_rng()
    task = progress.add_task(f"training {name}", total=t.epochs, completed=run["epoch"], info="")
    started = time.perf_counter()
    pinned = device.type == "cuda"
    model = distributed.wrap(vae)

    def prepare(x):
        # Pinned host memory and an asynchronous copy: the GPU is not kept waiting on the host.
        x = (x.pin_memory() if pinned else x).to(device, non_blocking=pinned)
        return ((x - mean) / std).reshape(len(x), -1)

    while run["epoch"] < t.epochs and run["stale"] < t.patience:
        vae.train()
        order = torch.randperm(len(train), generator=generator).numpy()
        total = torch.zeros((), device=device)  # summed on the device: no host sync per step
        exposed = outliers is not None and len(outliers) > 0 and t.outlier_weight > 0
        other = torch.randint(len(outliers), (len(order),), generator=generator).numpy() if exposed else None
        for a in range(0, len(order), t.batch_size):
            x = prepare(train.batch(distributed.shard(order[a : a + t.batch_size])))
            loss = vae_loss(x, *model(x), beta=t.beta)
            if exposed:
                o = prepare(outliers.batch(distributed.shard(other[a : a + t.batch_size])))
                recon, _, _ = model(o)
                loss = loss + t.outlier_weight * torch.relu(t.outlier_margin - (recon - o).pow(2).mean(dim=1)).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.detach() * len(x)
        total = distributed.all_mean(total).item() * distributed.size()
        val_error = _reconstruction_error(vae, val if len(val) else train, prepare, t.batch_size)
        run["epoch"] += 1
        run["history"].append({"epoch": run["epoch"], "train_loss": round(total / len(train), 5), "val_error": round(val_error, 5)})
        if val_error < run["best_val"] - 1e-6:
            run["best_val"], run["stale"] = val_error, 0
            run["best"] = {k: v.detach().cpu().clone() for k, v in vae.state_dict().items()}
        else:
            run["stale"] += 1
        checkpoint.state["current"] = {"name": name, "vae": vae.state_dict(), "optimiser": optimiser.state_dict(), "generator": generator.get_state(), "run": run}
        checkpoint.save()
        progress.update(task, completed=run["epoch"], info=f"train {total / len(train):.4f} held-out {val_error:.4f} best {run['best_val']:.4f}")
    seconds = time.perf_counter() - started
    info = {"epochs": run["epoch"], "stopped_early": run["epoch"] < t.epochs, "best_val_error": round(run["best_val"], 5), "windows": len(train), "seconds": round(seconds, 2), "history": run["history"]}
    best = new_vae(config)
    best.load_state_dict(run["best"])
    checkpoint.state["done"][name] = {"best": run["best"], "info": info}
    checkpoint.state["current"] = None
    checkpoint.save()
    return best.eval(), info


def _reconstruction_error(vae: torch.nn.Module, windows: WindowSet, prepare, batch_size: int) -> float:
    vae.eval()
    total = None
    with torch.no_grad():
        for a in range(0, len(windows), batch_size * 8):
            x = prepare(windows.batch(np.arange(a, min(a + batch_size * 8, len(windows)))))
            error = (vae.reconstruct(x) - x).pow(2).mean(dim=1).sum()
            total = error if total is None else total + error
    return float(total) / len(windows)


def train_detector(config: TrainConfig, train_items: list[Item], val_items: list[Item], cache: FeatureCache, progress: Progress, checkpoint: Checkpoint) -> tuple[Detector, dict]:
    """The Detector for `config.mode`, trained on `train_items`, stopped early on `val_items`."""
    params, device = config.features, artifact.resolve_device(config.training.device)
    roles = MODES[config.mode].roles

    def windows(items, label):
        chosen = [i for i in items if i.label == label]
        return WindowSet.of(cache, params, chosen, config.select.call_db if label == 1 else None, config.training.max_windows_per_clip)

    sets = {"background": (windows(train_items, 0), windows(val_items, 0)), "bird": (windows(train_items, 1), windows(val_items, 1))}
    quiet = config.select.background_quiet_db
    if quiet is not None and "background" in roles:
        def ambience(items):
            return WindowSet.of(cache, params, [i for i in items if i.label == 1], None, config.training.max_windows_per_clip, quiet_db=quiet)

        sets["background"] = tuple(s.joined(ambience(items)) for s, items in zip(sets["background"], (train_items, val_items)))
    for role in roles:
        if not len(sets[role][0]):
            raise ValueError(f"no {role} windows to train on (mode {config.mode})")
    if "bird" in roles and config.augment.bird_mixes:
        bird, background = sets["bird"][0], sets["background"][0]
        if not len(background):
            raise ValueError("augment.bird_mixes needs background clips to mix bird calls into")
        rng = np.random.default_rng(config.training.seed)
        mixed = mix_windows(bird, background, tuple(config.augment.gain_db), config.augment.bird_mixes, rng)
        sets["bird"] = (bird.with_extra(mixed), sets["bird"][1])
    # Each VAE is normalised by its own training windows (measured better than one shared normalisation).
    vaes, means, stds, info = [], [], [], {}
    for role in roles:
        mean, std = sets[role][0].band_stats()
        other = sets["bird" if role == "background" else "background"][0] if config.mode == "contrast" else None
        vae, info[role] = fit_vae(role, *sets[role], mean, std.clamp_min(1e-3), config, device, progress, checkpoint, other)
        vaes.append(vae)
        means.append(mean)
        stds.append(std.clamp_min(1e-3))
    signs = [1.0, -1.0] if config.mode == "contrast" else [1.0]
    return Detector(LogMel(params), vaes, signs, torch.stack(means), torch.stack(stds), params.window_frames, config.model.log_errors, config.model.peak_frames).eval(), info


def scoring_base(config: TrainConfig, detector: Detector, train_items: list[Item], cache: FeatureCache, progress: Progress | None = None) -> dict:
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
        for item in _tracked(normal, progress, "energy term"):
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


def _tracked(items: list, progress: Progress | None, what: str):
    """`items`, advancing a progress bar for `what` as they are used."""
    task = progress.add_task(what, total=len(items), info="") if progress else None
    for item in items:
        yield item
        if progress:
            progress.update(task, advance=1)


def window_decisions(detector: Detector, items: list[Item], cache: FeatureCache, params, scoring: dict, progress: Progress | None = None, what: str = "scoring held-out clips") -> dict[Item, np.ndarray]:
    """Decision values (higher: more bird-like) of every window of every clip, each clip a segment."""
    scorer = Scorer(scoring, params)
    out = {}
    with torch.no_grad():
        for item in _tracked(items, progress, what):
            frames = cache.frames(item.path)
            if frames is not None:
                windows = windows_of(frames, params)
                scorer.reset()
                out[item] = scorer.decide(detector(windows).numpy(), windows.numpy(), silence_of(frames, params))[0]
    return out


def train_on(config: TrainConfig, items: list[Item], cache: FeatureCache, progress: Progress | None) -> tuple[Detector, dict, list[Item], list[Item]]:
    """A detector trained on `items` as `fit` trains it (not checkpointed): (detector, its scoring
    base, the items it learnt from, its held-out part)."""
    fit_items, val_items = split_by_group(items, config.training.val_fraction, config.training.seed)
    detector, _ = train_detector(config, fit_items, val_items, cache, progress, Checkpoint(None, config, False))
    return detector, scoring_base(config, detector, fit_items, cache, progress), fit_items, val_items


def calibration_decisions(config: TrainConfig, detector: Detector, base: dict, items: list[Item], val_items: list[Item], cache: FeatureCache, progress: Progress | None) -> dict[Item, np.ndarray]:
    """What the threshold is set on: the held-out part's decisions, or with calibration.folds the
    out-of-fold decisions over all of `items`."""
    if config.calibration.folds > 1:
        return out_of_fold_decisions(config, items, cache, progress)
    return window_decisions(detector, val_items, cache, config.features, base, progress, "calibrating on held-out clips")


def out_of_fold_decisions(config: TrainConfig, items: list[Item], cache: FeatureCache, progress: Progress | None) -> dict[Item, np.ndarray]:
    """Window decisions of every clip from a model that never heard its recording: K models on
    grouped folds (calibration.folds), each trained as `fit` trains.  Their decisions are pooled as
    they are: with the energy term off a decision is the loss itself, on one scale for all of them."""
    decisions = {}
    task = progress.add_task("calibration folds", total=config.calibration.folds, info="") if progress else None
    for fold in k_folds(items, config.calibration.folds, config.training.seed):
        in_fold = set(fold)
        detector, base, _, _ = train_on(config, [i for i in items if i not in in_fold], cache, progress)
        decisions.update(window_decisions(detector, fold, cache, config.features, base, progress, "scoring a calibration fold"))
        if progress:
            progress.update(task, advance=1)
    return decisions


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
    if c.strategy == "clip_fpr":
        # At most clip_fpr of them reach it: the threshold is the allowed-th highest, or just above all.
        ordered, allowed = np.sort(nobird_clips), int(np.floor(c.clip_fpr * len(nobird_clips)))
        t = float(ordered[len(ordered) - allowed]) if allowed else float(ordered[-1]) + 1e-6 * max(1.0, abs(float(ordered[-1])))
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
    scoring = {**base, "threshold": t, "scale": scale, "clip_scale": clip_scale, "strategy": c.strategy, "clip_fpr": c.clip_fpr, "calibration_folds": c.folds, "percentile": c.percentile, "gamma_quantile": c.gamma_quantile, "clip_aggregate": c.clip_aggregate}
    auc = roc_auc(labels, clip_d) if len(set(labels)) > 1 else float("nan")
    metrics = {
        "val_clips": len(labels), "val_clip_auc": None if np.isnan(auc) else round(auc, 4),
        "val_nobird_clips_called_bird": round(float(np.mean(nobird_clips >= t)), 4) if len(nobird_clips) else None,
        "val_nobird_hours": round(nobird_hours, 4),
        "val_false_alarms_per_hour": round(alarms / nobird_hours, 2) if nobird_hours else None,
        **{f"val_{k}": round(v, 4) for k, v in precision_recall_f1(labels, clip_d >= t).items() if not np.isnan(v)},
    }
    return scoring, metrics


def fit(config: TrainConfig, output: Path | None = None, resume: bool = False, cache_dir: Path | None = None) -> tuple[Path, dict]:
    torch.manual_seed(config.training.seed)
    params = config.features
    output = Path(output or config.output)
    items = [item for data in config.data for item in read_dataset(data)]
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


def data_summary(items: list[Item], val_items: list[Item], unusable: list[Item]) -> dict:
    by_dataset = defaultdict(lambda: {"bird": 0, "nobird": 0})
    for item in items:
        by_dataset[item.dataset]["bird" if item.label else "nobird"] += 1
    return {"clips": len(items), "unusable": len(unusable), "by_dataset": dict(by_dataset), "val_items": sorted(i.itemid for i in val_items)}


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamdet" / "features"


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"streamdet {streamdet.__version__}" + (f" ({commit})" if commit else "")
