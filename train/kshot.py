"""`python -m train kshot`: how many reviews a new site needs, measured the way a site is met.

For each development block in turn, a base model is trained on every other block (as `fit`
trains, its threshold from its held-out part): the block is a recorder it never heard.  Then, for
k = 10, 25, 50, 100 reviewed clips of that block (a fifth of them bird, as a station's reviews
might run, more in a block with few no-bird clips; several random draws), the model is adapted (train/adapt.py) and both it and the base
model score the block's *other* clips: ROC AUC, birds found and no-bird clips called bird at each
one's threshold.  A block without birds (speech) cannot be adapted on alone and is not drawn."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from train.adapt import PULL, Head, adapted_head, clip_decisions, site_figures, site_windows, subsite
from train.cache import FeatureCache, default_cache_dir
from train.calibrate import calibrate
from train.config import TrainConfig
from train.crossval import _items
from train.learn import train_on
from train.progress import progress_bar

BIRD_SHARE = 0.2


def base_model(config: TrainConfig, items, block: str, cache: FeatureCache, progress):
    """A detector trained without `block` (nor synthetic speech, when the block is speech), and its
    threshold calibrated on its own held-out part."""
    c = copy.deepcopy(config)
    c.calibration.folds = 0
    others = [i for i in items if i.dataset != block and not (block == "speech" and i.dataset == "espeak")]
    detector, base, _, val_items = train_on(c, others, cache, progress)
    from train.calibrate import window_decisions

    scoring, _ = calibrate(c, base, window_decisions(detector, val_items, cache, c.features, base, progress, "calibrating the base model"))
    return detector.eval(), float(scoring["threshold"])


def draw(labels: np.ndarray, k: int, rng: np.random.Generator, keep: int = 5) -> np.ndarray | None:
    """k clips, a fifth of them bird (more when the block has too few no-bird clips), leaving at
    least `keep` of each label to score; None when the block is too small for k."""
    birds, nobirds = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    n_nobird = min(k - max(1, round(BIRD_SHARE * k)), len(nobirds) - keep)
    n_bird = k - n_nobird
    if n_nobird < 1 or n_bird > len(birds) - keep:
        return None
    return np.concatenate([rng.choice(birds, n_bird, replace=False), rng.choice(nobirds, n_nobird, replace=False)])


def block_curve(net, threshold: float, site, ks: list[int], draws: int, seed: int, pull: float, groups: np.ndarray) -> dict:
    labels = site.labels.numpy().astype(int)
    with torch.no_grad():
        base_all = clip_decisions(Head(net), site).numpy()
    out = {}
    for k in ks:
        runs = []
        for d in range(draws):
            chosen = draw(labels, k, np.random.default_rng(seed + 1000 * k + d))
            if chosen is None:
                break
            rest = np.setdiff1d(np.arange(len(labels)), chosen)
            head, adapted_threshold, _ = adapted_head(net, subsite(site, chosen), seed + d, pull)
            with torch.no_grad():
                adapted = clip_decisions(head, subsite(site, rest)).numpy()
            runs.append({"base": site_figures(labels[rest], base_all[rest], threshold), "adapted": site_figures(labels[rest], adapted, adapted_threshold),
                         "found_by_group": found_by_group(groups[rest], labels[rest], base_all[rest] >= threshold, adapted >= adapted_threshold)})
        if runs:
            out[str(k)] = {"draws": runs, **{f"{who}_{m}": summary([r[who][m] for r in runs]) for who in ("base", "adapted") for m in ("auc", "birds_found", "nobird_called_bird")},
                           "birds_found_by_group": pooled_by_group([r["found_by_group"] for r in runs])}
    return out


def found_by_group(groups: np.ndarray, labels: np.ndarray, base_called: np.ndarray, adapted_called: np.ndarray) -> dict:
    """Per group of bird clips (an ESC-50 class, a recording): [clips, found by the base model, by
    the adapted one]. Which birds a site's reviews teach, and which they do not."""
    return {str(g): [int(m.sum()), int(base_called[m].sum()), int(adapted_called[m].sum())] for g in np.unique(groups[labels == 1]) for m in [(groups == g) & (labels == 1)]}


def pooled_by_group(runs: list[dict]) -> dict:
    """Every draw's counts per group added up: {group: [share found by the base, by the adapted model]}."""
    total: dict[str, np.ndarray] = {}
    for run in runs:
        for g, counts in run.items():
            total[g] = total.get(g, np.zeros(3, dtype=int)) + counts
    return {g: [round(c[1] / c[0], 4), round(c[2] / c[0], 4)] for g, c in sorted(total.items())}


def summary(values: list) -> list[float] | None:
    values = [v for v in values if v is not None]
    return [round(float(np.mean(values)), 4), round(float(np.std(values)), 4)] if values else None


def kshot(config: TrainConfig, blocks: list[str], ks: list[int], draws: int, out: Path, cache_dir=None, seed: int = 0, pulls: tuple[float, ...] = (PULL,)) -> dict:
    """Per block and per pull toward the base (train.adapt.PULL), the curves; the base models are
    kept beside `out`, so that other settings are measured without training them again."""
    if config.training.objective != "decision" or config.model.kind != "conv":
        raise ValueError("kshot: adapting needs a decision-trained convolutional model (training.objective decision, model.kind conv)")
    cache = FeatureCache(cache_dir or config.cache_dir or default_cache_dir(), config.features)
    results = json.loads(out.read_text()) if out.exists() else {}  # blocks already measured are kept (a long run can be resumed)
    with progress_bar() as progress:
        items = _items(config, cache, progress)
        task = progress.add_task("blocks", total=len(blocks), info="")
        for block in blocks:
            members = [i for i in items if i.dataset == block]
            if not members:
                raise ValueError(f"kshot: no block {block!r} (blocks: {', '.join(sorted({i.dataset for i in items}))})")
            net, threshold = kept_base(config, items, block, cache, progress, out.with_name(f"{out.stem}.base-{block}.pt"))
            site, used = site_windows(net, config.features, members, cache)
            entry = results.setdefault(block, {"clips": len(used), "bird": int(site.labels.sum()), "curves": {}})
            for pull in pulls:
                if str(pull) not in entry["curves"]:
                    entry["curves"][str(pull)] = block_curve(net, threshold, site, ks, draws, seed, pull, np.array([i.group for i in used]))
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_text(json.dumps(results, indent=1))
            progress.update(task, advance=1, info=block)
    return results


def kept_base(config: TrainConfig, items, block: str, cache: FeatureCache, progress, path: Path):
    """The base model without `block`, trained once and kept at `path`."""
    from train.decide import new_detector

    if path.exists():
        saved = torch.load(path, weights_only=True)
        m = config.features.n_mels
        net = new_detector(config, [torch.zeros(m)] * 2, [torch.ones(m)] * 2)
        net.load_state_dict(saved["state"])
        return net.eval(), float(saved["threshold"])
    net, threshold = base_model(config, items, block, cache, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": net.state_dict(), "threshold": threshold}, path)
    return net, threshold
