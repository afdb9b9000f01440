"""`python -m train adapt`: a decision-trained model fitted to one site's reviewed clips.

What moves is what a new recorder changes most and what a few dozen clips can pin down: the
decision head on the encoders' pooled features, the per-band weights of the reconstruction
contrast and the bias (docs/adapting.md has the figures).  The VAEs themselves stay as trained, so
band errors still explain each event, and a window's contrast and pooled features are computed
once: fine-tuning is then seconds, not minutes.  It is held near the base model by a penalty
toward the base weights (L2-SP), and the threshold is calibrated anew on the site's clips, from
decisions of models that did not see them (out-of-fold), as `fit` calibrates.

A clip is bird when any of its windows is: each clip's logit is the largest of its windows'
(multiple-instance learning), weighed so that both labels count the same."""
from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from streamdet.detect.artifact import Model
from streamdet.detect.features import FeatureParams, LogMel
from streamdet.detect.model import DecisionNet, rebuild_eager
from train.cache import FeatureCache
from train.calibrate import fpr_level
from train.clips import silence_of, windows_of
from train.datasets import Item
from train.metrics import roc_auc

# Fewer reviews than these of either label, and the k-shot curves (docs/adapting.md) say the
# adapted model is not better than the base one on the site's other clips: refused.
MIN_BIRD, MIN_NOBIRD = 5, 10
STEPS, LEARNING_RATE, PULL = 1000, 0.01, 0.01  # full-batch Adam; PULL weighs the L2-SP penalty toward the base (chosen by kshot: docs/adapting.md)
# 300 steps left a head far from its base short of converging (with a base trained at ELBO weight
# 0.01, which scored a site's squeak above its birds); 1000 measured the same as 300 on the kshot
# blocks (docs/adapting.md).
CLIP_FPR = 0.05  # at most this share of the site's no-bird clips reach the adapted threshold (--nobird-called)
FOLDS = 5


class AdaptError(ValueError):
    """Why a model cannot be adapted, in one line."""


@dataclass
class SiteWindows:
    """What the fixed parts of the network make of each clip's windows: the reconstruction
    contrast per band [n, M] and the encoders' pooled features [n, P], with the clip each window
    belongs to and which windows are digital silence (never a bird)."""
    contrast: torch.Tensor
    pooled: torch.Tensor
    clip: torch.Tensor  # [n] index into `labels`
    silent: torch.Tensor  # [n] bool
    labels: torch.Tensor  # [clips] 0/1


def decision_net(model: Model) -> DecisionNet:
    """The artifact's network, eager, in the form it was saved in."""
    arch = model.meta["model"]
    if arch.get("objective") != "decision":
        raise AdaptError(f"{model.path}: adapting needs a decision-trained model (model.objective decision); this one was trained to {arch.get('objective', 'reconstruct')}")
    if (model.meta["scoring"].get("energy") or {}).get("weight", 0.0):
        raise AdaptError(f"{model.path}: adapting a model whose decision adds the band energy is not supported (scoring.energy.weight > 0)")
    p = model.features
    return rebuild_eager(model.module, arch, LogMel(p), p.window_frames, p.n_mels)


def check_share(nobird_called: float) -> None:
    if not 0.0 < nobird_called < 1.0:
        raise AdaptError(f"--nobird-called: a share of the site's no-bird clips, between 0 and 1 (0.05 is 5%), found {nobird_called}")


def check_counts(items: list[Item]) -> None:
    birds, nobirds = sum(i.label == 1 for i in items), sum(i.label == 0 for i in items)
    if birds < MIN_BIRD or nobirds < MIN_NOBIRD:
        raise AdaptError(f"too few reviewed clips to do better than the base model: {birds} bird and {nobirds} no-bird; it needs at least {MIN_BIRD} bird and {MIN_NOBIRD} no-bird")


@torch.no_grad()
def site_windows(net: DecisionNet, params: FeatureParams, items: list[Item], cache: FeatureCache) -> tuple[SiteWindows, list[Item]]:
    """Every usable clip's windows through the fixed parts; the clips used (unreadable or too
    short ones left out)."""
    parts, used = {"contrast": [], "pooled": [], "clip": [], "silent": []}, []
    for item in items:
        frames = cache.frames(item.path)
        windows = windows_of(frames, params) if frames is not None else None
        if windows is None or not len(windows):
            continue
        contrast, pooled = fixed_parts(net, windows)
        parts["contrast"].append(contrast)
        parts["pooled"].append(pooled)
        parts["clip"].append(torch.full((len(windows),), len(used)))
        parts["silent"].append(torch.from_numpy(np.asarray(silence_of(frames, params), dtype=bool)[: len(windows)]))
        used.append(item)
    if not used:
        raise AdaptError("none of the clips could be read")
    return SiteWindows(*(torch.cat(parts[k]) for k in ("contrast", "pooled", "clip", "silent")), torch.tensor([float(i.label) for i in used])), used


def fixed_parts(net: DecisionNet, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The contrast per band and the pooled encoder features DecisionNet._parts computes."""
    b = windows.shape[0]
    contrast = torch.zeros(b, net.n_mels)
    pooled = []
    for i, vae in enumerate(net.vaes):
        x = ((windows - net.mean[i]) / net.std[i]).reshape(b, -1)
        h = vae.encode_map(x)
        mu, _ = vae.latent_of(h)
        contrast += net.signs[i] * (vae.decode(mu) - x).pow(2).reshape(b, net.window_frames, net.n_mels).mean(dim=1)
        seen = net.head_stages[i](h)
        pooled.append(torch.cat([seen.amax(dim=(2, 3)), seen.mean(dim=(2, 3))], dim=1))
    return contrast, torch.cat(pooled, dim=1)


class Head(torch.nn.Module):
    """The tunable part of a DecisionNet: a window's loss from its fixed parts, as _parts makes it."""

    def __init__(self, net: DecisionNet):
        super().__init__()
        self.band_weight = torch.nn.Parameter(net.band_weight.detach().clone())
        self.bias = torch.nn.Parameter(net.bias.detach().clone())
        self.head = copy.deepcopy(net.head)
        self.head_gain = net.head_gain

    def forward(self, contrast: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return (torch.nn.functional.softplus(self.band_weight) * contrast).mean(dim=1) + (self.bias + self.head(pooled)[:, 0]) * self.head_gain

    def into(self, net: DecisionNet) -> DecisionNet:
        out = copy.deepcopy(net)
        out.band_weight.data.copy_(self.band_weight.data)
        out.bias.data.copy_(self.bias.data)
        out.head.load_state_dict(self.head.state_dict())
        return out


def clip_decisions(head: Head, site: SiteWindows) -> torch.Tensor:
    """Each clip's decision: its largest window loss, silent windows left out (as the daemon's
    scorer and `evaluate` aggregate a clip with `max`)."""
    losses = head(site.contrast, site.pooled).masked_fill(site.silent, float("-inf"))
    out = torch.full((len(site.labels),), float("-inf"))
    return out.scatter_reduce(0, site.clip, losses, reduce="amax")


def subsite(site: SiteWindows, clips) -> SiteWindows:
    """The windows of the clips `clips` (indices into site.labels), renumbered in that order."""
    clips = torch.as_tensor(clips, dtype=torch.long)
    number = torch.full((len(site.labels),), -1, dtype=torch.long)
    number[clips] = torch.arange(len(clips))
    keep = number[site.clip] >= 0
    return SiteWindows(site.contrast[keep], site.pooled[keep], number[site.clip[keep]], site.silent[keep], site.labels[clips])


def tune(net: DecisionNet, site: SiteWindows, seed: int = 0, pull: float | None = None) -> Head:
    """The head fitted to every clip of `site`, pulled toward the base (by PULL unless given)."""
    pull = PULL if pull is None else pull
    torch.manual_seed(seed)
    head, base = Head(net), [p.detach().clone() for p in Head(net).parameters()]
    y = site.labels
    weight = torch.where(y > 0.5, 0.5 / y.sum().clamp_min(1), 0.5 / (1 - y).sum().clamp_min(1))
    optimiser = torch.optim.Adam(head.parameters(), lr=LEARNING_RATE)
    for _ in range(STEPS):
        optimiser.zero_grad()
        logits = clip_decisions(head, site).clamp_min(-50.0)  # a wholly silent clip has no logit
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
        loss = loss + pull * sum(((p - p0) ** 2).sum() for p, p0 in zip(head.parameters(), base)) / len(base)
        loss.backward()
        optimiser.step()
    return head


def out_of_fold(net: DecisionNet, site: SiteWindows, seed: int = 0, pull: float | None = None) -> torch.Tensor:
    """Every clip's decision from a head tuned without it (folds stratified by label): what the
    threshold is set on."""
    rng = np.random.default_rng(seed)
    labels = site.labels.numpy()
    fold_of = np.zeros(len(labels), dtype=int)
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        fold_of[members] = np.arange(len(members)) % FOLDS
    out = torch.zeros(len(labels))
    for fold in range(FOLDS):
        held = np.flatnonzero(fold_of == fold)
        if len(held):
            head = tune(net, subsite(site, np.flatnonzero(fold_of != fold)), seed, pull)
            with torch.no_grad():
                out[held] = clip_decisions(head, subsite(site, held))
    return out


def adapted_head(net: DecisionNet, site: SiteWindows, seed: int = 0, pull: float | None = None, nobird_called: float = CLIP_FPR) -> tuple[Head, float, np.ndarray]:
    """(the head tuned on every clip of `site`, its threshold from out-of-fold decisions, those
    decisions): at most `nobird_called` of the site's no-bird clips reach it."""
    oof = out_of_fold(net, site, seed, pull).numpy()
    return tune(net, site, seed, pull), fpr_level(oof[site.labels.numpy() == 0], nobird_called), oof


def site_figures(labels: np.ndarray, decisions: np.ndarray, threshold: float) -> dict:
    birds, nobirds = labels == 1, labels == 0
    return {"clips": int(len(labels)), "bird": int(birds.sum()), "auc": round(float(roc_auc(labels, decisions)), 4) if birds.any() and nobirds.any() else None,
            "birds_found": round(float(np.mean(decisions[birds] >= threshold)), 4) if birds.any() else None,
            "nobird_called_bird": round(float(np.mean(decisions[nobirds] >= threshold)), 4) if nobirds.any() else None}


def adapt(model: Model, items: list[Item], cache: FeatureCache, seed: int = 0, progress=None, nobird_called: float = CLIP_FPR) -> tuple[DecisionNet, dict]:
    """The adapted network and what its artifact says about it: the new threshold (at most
    `nobird_called` of the site's no-bird clips reach it) and the site's figures (out of fold,
    against the base model on the same clips)."""
    check_share(nobird_called)
    net = decision_net(model)
    check_counts(items)
    task = progress.add_task("adapting to the site", total=2, info="reading the clips") if progress else None
    site, used = site_windows(net, model.features, items, cache)
    check_counts(used)
    if progress:
        progress.update(task, advance=1, info=f"{len(used)} clips: tuning, out of fold and on all")
    with torch.no_grad():
        base = clip_decisions(Head(net), site).numpy()
    head, threshold, oof = adapted_head(net, site, seed, nobird_called=nobird_called)
    if progress:
        progress.update(task, advance=1, info="done")
    labels = site.labels.numpy().astype(int)
    figures = {"base": site_figures(labels, base, float(model.meta["scoring"]["threshold"])), "adapted_out_of_fold": site_figures(labels, oof, threshold)}
    return head.into(net), {"threshold": threshold, "nobird_called": nobird_called, "figures": figures, "clips": [str(i.path) for i in used]}


def adapted_meta(model: Model, result: dict, items: list[Item], source: str) -> dict:
    meta = copy.deepcopy(model.meta)
    meta.pop("format", None)
    meta.pop("format_version", None)
    meta["scoring"]["threshold"] = result["threshold"]
    base = meta.get("provenance", {})
    meta["provenance"] = {
        **{k: base[k] for k in ("data", "config", "torch") if k in base},
        "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": base.get("code_version"),
        "adapted_from": {"path": str(model.path), "sha256": model.sha256, "trained_at": base.get("trained_at")},
        "site": {"reviews": source, "bird": sum(i.label == 1 for i in items), "no_bird": sum(i.label == 0 for i in items),
                 "clips_sha256": hashlib.sha256("\n".join(sorted(result["clips"])).encode()).hexdigest()[:16], "figures": result["figures"],
                 "nobird_called_at_most": result["nobird_called"]},
    }
    return meta


def read_reviews(clips_dir: Path) -> list[Item]:
    """The reviewed clips of a station's recording directory (`streamdet web` stores a review in
    each clip's sidecar): bird 1, not a bird 0; clips not reviewed are left out."""
    from streamdet.service.recorder import CLIP_NAME, read_sidecar, review_of

    if not clips_dir.is_dir():
        raise AdaptError(f"--reviews {clips_dir}: not a folder")
    items = []
    for sidecar in sorted(clips_dir.glob("*/*.json")):
        clip = sidecar.with_suffix(".flac")
        label = review_of(read_sidecar(sidecar)) if CLIP_NAME.fullmatch(clip.name) and clip.is_file() else None
        if label is not None:
            items.append(Item(clip, int(label == "bird"), sidecar.parent.name, clip.stem))
    return items
