"""A mode's scoring network from clips: the windows each VAE learns (with augmentation), trained; and the
out-of-fold decisions calibration folds are set on."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from rich.progress import Progress

from streamdet.detect import artifact
from streamdet.detect.features import LogMel
from streamdet.detect.model import ReconstructNet, ScoringNet
from streamdet.detect.modes import MODES
from train.cache import FeatureCache
from train.calibrate import scoring_base, window_decisions
from train.checkpoint import Checkpoint
from train.config import TrainConfig
from train.datasets import Item
from train.decide import fit_decision
from train.loop import fit_vae
from train.splits import k_folds, split_by_group
from train.strong import window_choosers
from train.windows import WindowSet, mix_windows


def train_detector(config: TrainConfig, train_items: list[Item], val_items: list[Item], cache: FeatureCache, progress: Progress, checkpoint: Checkpoint) -> tuple[torch.nn.Module, dict]:
    """The scoring network for `config.mode`, trained on `train_items`, stopped early on `val_items`."""
    params, device = config.features, artifact.resolve_device(config.training.device)
    roles = MODES[config.mode].roles

    strong = config.select.strong
    calls, quiet_of = window_choosers(params.window_seconds) if strong != "none" else (None, None)

    def windows(items, label):
        chosen = [i for i in items if i.label == label]
        return WindowSet.of(cache, params, chosen, config.select.call_db if label == 1 else None, config.training.max_windows_per_clip, chooser=calls if label == 1 else None)

    sets = {"background": (windows(train_items, 0), windows(val_items, 0)), "bird": (windows(train_items, 1), windows(val_items, 1))}

    def also_background(**choice):
        """Windows of bird clips (the recorders' ambience between calls) added to the background VAE's."""
        sets["background"] = tuple(s.joined(WindowSet.of(cache, params, [i for i in items if i.label == 1], None, config.training.max_windows_per_clip, **choice))
                                   for s, items in zip(sets["background"], (train_items, val_items)))

    if "background" in roles:
        if strong == "calls_and_quiet":  # the quiet between annotated calls, labelled by hand
            also_background(chooser=quiet_of)
        if config.select.background_quiet_db is not None:  # the quiet by energy
            also_background(quiet_db=config.select.background_quiet_db)
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
    stats = {}
    for role in roles:
        mean, std = sets[role][0].band_stats()
        stats[role] = (mean, std.clamp_min(1e-3))
    if config.training.objective in ("decision", "reference"):
        vaes, info = None, {}
        if config.training.pretrain_epochs:
            t = config.training
            alone = replace(config, training=replace(t, epochs=t.pretrain_epochs, patience=t.pretrain_epochs))
            vaes = []
            for role in roles:
                vae, info[f"pretrain_{role}"] = fit_vae(role, *sets[role], *stats[role], alone, device, progress, checkpoint)
                vaes.append(vae)
        detector, info["decision"] = fit_decision(config, sets, stats, device, progress, vaes)
        return detector, info
    vaes, means, stds, info = [], [], [], {}
    for role in roles:
        mean, std = stats[role]
        other = sets["bird" if role == "background" else "background"][0] if config.mode == "contrast" else None
        vae, info[role] = fit_vae(role, *sets[role], mean, std, config, device, progress, checkpoint, other)
        vaes.append(vae)
        means.append(mean)
        stds.append(std)
    signs = [1.0, -1.0] if config.mode == "contrast" else [1.0]
    return ReconstructNet(LogMel(params), vaes, signs, torch.stack(means), torch.stack(stds), params.window_frames, config.model.log_errors, config.model.peak_frames, config.model.top_bands).eval(), info


def train_on(config: TrainConfig, items: list[Item], cache: FeatureCache, progress: Progress | None) -> tuple[ScoringNet, dict, list[Item], list[Item]]:
    """A detector trained on `items` as `fit` trains it (not checkpointed): (detector, its scoring
    base, the items it learnt from, its held-out part)."""
    fit_items, val_items = split_by_group(items, config.training.val_fraction, config.training.seed)
    detector, _ = train_detector(config, fit_items, val_items, cache, progress, Checkpoint(None, config, False))
    return detector, scoring_base(config, detector, fit_items, cache, progress), fit_items, val_items


def calibration_decisions(config: TrainConfig, detector: ScoringNet, base: dict, items: list[Item], val_items: list[Item], cache: FeatureCache, progress: Progress | None) -> dict[Item, np.ndarray]:
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
