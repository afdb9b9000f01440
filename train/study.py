"""`python -m train study`: the table of docs/decision-training.md, reproduced in one command.

Every row is a recipe, cross-validated the same way: 4 folds grouped by recording, each fold's
model trained and calibrated on its own training part (calibration.folds 0: on its held-out tenth),
its clips' out-of-fold scores pooled per block and over all blocks.  The rows are the recipe of the
config, the VAEs trained alone to reconstruct their class (the anomaly-detection method, the previous
bundled recipe), and one lever of the config's recipe changed per row (LEVERS).

A daemon decides with one threshold, so the choosing figure is the ROC AUC pooled over all blocks,
among the rows whose every block holding both classes reaches FLOOR_AUC and which keep the daemon's
speed (a row named "measured only" does not); rows within TIE_AUC of the best are told apart by
how many no-bird clips they call bird at their threshold, on average over the blocks.  The chosen row is then
scored leaving each block out.  Only after choosing is every row trained on all development data
and measured once on the evaluation clips: that column is reported, never used.  Each row's
results are kept in `OUT/variants/` under a hash of its configuration, so an interrupted study
resumes."""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import multiprocessing
from pathlib import Path

import numpy as np

from streamdet.typedconfig import apply_overrides
from train.config import DataConfig, TrainConfig
from train.metrics import roc_auc

FLOOR_AUC = 0.6  # every two-class block must rank clearly better than chance
# Pooled AUCs this close are one seed's spread apart: among them the recipe whose no-bird clips are
# called bird least, in the mean over blocks (every kind of station counts the same), is chosen.
TIE_AUC = 0.02
# The VAEs trained alone, each on its own class (the previous bundled recipe).
RECONSTRUCT = {"training.objective": "reconstruct", "training.epochs": "20", "select.call_db": "3.0", "model.top_bands": "8", "augment.level_db": "0", "augment.lowpass": "0", "training.pretrain_epochs": "0", "training.clip_bags": "0"}
SPEECH = "+data.espeak"  # a lever's key: add this many clips of synthetic speech (no bird) to the data
NO_SPEECH = "-data.espeak"  # ... or leave them out
# The discriminative reference (train/reference.py), trained as its filer trained it: 16/32/64
# channels, a level offset as its only augmentation, no synthetic mixes, 8 epochs.
REFERENCE = {"training.objective": "reference", "model.channels": "16", "augment.lowpass": "0", "augment.bird_mixes": "0", "training.epochs": "8", NO_SPEECH: ""}
# One lever of the decision-trained recipe per row: (what the table calls it, the keys it sets).
LEVERS = [
    ("ELBO weight 0.01", {"training.elbo_weight": "0.01"}),
    ("16 channels (measured only: 2.5x the model's compute)", {"model.channels": "16"}),
    ("bird windows: likely calls only", {"select.call_db": "3.0"}),
    # NIPS4Bplus's strong labels: a NIPS4B bird clip's bird windows are its annotated calls only
    # (bundled: this config), its windows between calls teaching the background VAE as well, or
    # every window labelled by its clip (the lean model bundled before).
    ("NIPS4B annotated calls, and the quiet between them as background", {"select.strong": "calls_and_quiet"}),
    ("every window by its clip's label (the lean model bundled before)", {"select.strong": "none"}),
    ("clips as bags of 8 windows", {"training.clip_bags": "8"}),
    ("VAEs pretrained alone, 10 epochs", {"training.pretrain_epochs": "10"}),
    ("no band-limit augmentation", {"augment.lowpass": "0"}),
    # A cut at 4-5 kHz removes most of the 2-8 kHz where birds call; ESC-50's audio ends at 8 kHz.
    ("band limits at 8-11 kHz only", {"augment.lowpass_hz": "[8000, 11000]"}),
    ("discriminative CNN reference (not a VAE: measured only)", REFERENCE),
    # The encoder of the reference's shape closes most of the gap to it, at half the model's speed
    # (1,200 windows/s against 2,300 in one run; the budget is 2,000): measured, not yet shipped.
    ("encoders of the reference's shape (pooled; measured only: half the model's speed)", {"model.encoder": "pooled"}),
    ("pooled encoders and 300 clips of synthetic speech (measured only: half the model's speed)", {"model.encoder": "pooled", SPEECH: "300"}),
    ("300 clips of synthetic speech", {SPEECH: "300"}),
    # The pooled encoder's widths (8/16/32/32) in the lean order: the lean first stage's 4 channels
    # were where NIPS4B's faint birds fell below ESC-50's everyday sounds.
    ("encoders of the pooled widths in the lean order (wide)", {"model.encoder": "wide"}),
    # The kept-back ESC-50 clips are new clips of the 50 classes the model heard (the dev set has
    # clips 1-24 of each class), where grouping by class measures classes never heard: the same
    # recipe and the reference with ESC-50's groups cut into its own folds of 8 clips.
    ("ESC-50 split by its own folds, new clips of heard classes (measured only: another grouping)", {"training.group_runs": "[esc50:8]"}),
    ("the reference, ESC-50 split by its own folds (measured only: not a VAE)", {**REFERENCE, "training.group_runs": "[esc50:8]"}),
    # Heard classes are where the reference gains and the VAEs do not: does the ELBO's pull hold them back?
    ("ELBO weight 0.01, ESC-50 split by its own folds (measured only: another grouping)", {"training.elbo_weight": "0.01", "training.group_runs": "[esc50:8]"}),
    # 0.01 lifted ESC-50 by class and cost NIPS4B: the weight between them (measured: NIPS4B fell too).
    ("ELBO weight 0.03", {"training.elbo_weight": "0.03"}),
    ("ELBO weight 0.03, ESC-50 split by its own folds (measured only: another grouping)", {"training.elbo_weight": "0.03", "training.group_runs": "[esc50:8]"}),
    # Freer encoders with more channels to learn heard sounds with (measured: no better).
    ("wide encoders, ELBO weight 0.01", {"model.encoder": "wide", "training.elbo_weight": "0.01"}),
    ("wide encoders, ELBO weight 0.01, ESC-50 split by its own folds (measured only: another grouping)", {"model.encoder": "wide", "training.elbo_weight": "0.01", "training.group_runs": "[esc50:8]"}),
    # The head's logit enters the loss at 1/64 of its size (spread over the bands, then averaged);
    # at full weight (measured: the same figures) training has it at the contrast's scale from the start.
    ("head at full weight", {"model.head_gain": "1.0"}),
    ("head at full weight, ESC-50 split by its own folds (measured only: another grouping)", {"model.head_gain": "1.0", "training.group_runs": "[esc50:8]"}),
    # The held-out loss jumps by a tenth between the last epochs at a constant rate, and the best
    # epoch on a tenth of the data picks among them: a rate falling to 0 (measured: NIPS4B fell).
    ("rate falling along a cosine", {"training.lr_schedule": "cosine"}),
    ("rate falling along a cosine, ESC-50 split by its own folds (measured only: another grouping)", {"training.lr_schedule": "cosine", "training.group_runs": "[esc50:8]"}),
    # The reference's features serve the decision alone; the head's read the VAEs' latent maps, which the
    # ELBO shapes too: a 3x3 convolution of 64 channels of the head's own (measured: NIPS4B's segments
    # better in every run, no more birds found at the threshold).
    ("head with a convolution of its own", {"model.head_channels": "64"}),
    ("head with a convolution of its own, ESC-50 split by its own folds (measured only: another grouping)", {"model.head_channels": "64", "training.group_runs": "[esc50:8]"}),
    # The recipe bundled before the lean encoders: strided encoders, no synthetic speech, one threshold over all blocks pooled.
    ("strided encoders, no synthetic speech, pooled calibration (bundled before)", {"model.encoder": "strided", NO_SPEECH: "", "calibration.per_block": "false", "select.strong": "none"}),
]


def variant(config: TrainConfig, keys: dict[str, str]) -> TrainConfig:
    out = copy.deepcopy(config)
    apply_overrides(out, [f"{k}={v}" for k, v in keys.items() if k not in (SPEECH, NO_SPEECH)])
    if SPEECH in keys and not any(d.kind == "espeak" for d in out.data):
        out.data.append(DataConfig(kind="espeak", clips=int(keys[SPEECH])))
    if NO_SPEECH in keys:
        out.data = [d for d in out.data if d.kind != "espeak"]
    return out


def rows_of(config: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """(row name, its recipe): the config's recipe, the VAEs trained alone, then each lever."""
    rows = [("this config", config), ("VAEs trained alone (reconstruct)", variant(config, RECONSTRUCT))]
    if config.training.objective == "decision":
        rows += [(name, changed) for name, keys in LEVERS if (changed := variant(config, keys)) != config]
    return rows


def _key(c: TrainConfig, what: str) -> str:
    return hashlib.sha256(json.dumps([what, dataclasses.asdict(c)], sort_keys=True, default=str).encode()).hexdigest()[:12]


def _run(job) -> dict:
    """One cross-validation, leave-out or eval measurement, in a worker with one torch thread."""
    import torch

    torch.set_num_threads(1)
    what, name, config, folds, eval_spec, out = job
    if what != "eval":  # cross-validation calibrates each fold on its held-out part: K times cheaper
        config = variant(config, {"calibration.folds": "0"})
    path = Path(out) / "variants" / f"{_slug(name)}.{what}.{_key(config, what)}.json"
    if path.exists():
        return json.loads(path.read_text())
    if what == "crossval":
        from train.crossval import crossval

        result = crossval(config, folds=folds, seed=0)
    elif what == "leave_out":
        from train.crossval import leave_out

        result = leave_out(config)
    else:
        result = _eval(config, name, eval_spec, Path(out))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"variant": name, **result}, indent=1, default=float))
    return json.loads(path.read_text())


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _eval(config: TrainConfig, name: str, eval_spec, out: Path) -> dict:
    from streamdet.detect.artifact import load
    from train.cache import FeatureCache, default_cache_dir
    from train.datasets import read_labels
    from train.evaluate import evaluate
    from train.fit import fit
    from train.progress import progress_bar

    data, labels, split = eval_spec
    path, metrics = fit(config, out / f"{_slug(name)}.pt")
    model = load(path, "cpu")
    items = read_labels(Path(labels), Path(data), split)
    cache = FeatureCache(config.cache_dir or default_cache_dir(), model.features)
    with progress_bar() as progress:
        cache.ensure([i.path for i in items], progress)
        result = evaluate(model, items, cache, out / _slug(name), progress)
    return {"eval": result["blocks"], "fit": {k: v for k, v in metrics.items() if k != "models"}, "model": str(path)}


def two_class_blocks(cv: dict) -> dict[str, dict]:
    return {name: b for name, b in cv["blocks"].items() if name != "all" and 0 < b["bird"] < b["clips"]}


MEASURED_ONLY = "measured only"  # in a row's name: outside the daemon's speed budget, never chosen


def choosing_figure(cv: dict, name: str = "", blocks: set[str] | None = None) -> float:
    """The pooled ROC AUC over the clips of `blocks` (those every row has: a row that adds data,
    such as synthetic speech, is compared on the same clips as the others), or -inf where a block
    holding both classes falls below FLOOR_AUC (or the row is there to be measured only)."""
    if MEASURED_ONLY in name or any(not b["model_auc"] >= FLOOR_AUC for b in two_class_blocks(cv).values()):
        return float("-inf")
    if blocks is None or blocks >= set(cv["blocks"]) - {"all"}:
        return float(cv["blocks"]["all"]["model_auc"])
    rows = [r for r in cv["scores"] if r["block"] in blocks]
    return roc_auc(np.array([r["label"] for r in rows]), np.array([r["score"] for r in rows]))


def common_blocks(cvs: list[dict]) -> set[str]:
    return set.intersection(*(set(cv["blocks"]) - {"all"} for cv in cvs))


def mean_called_bird(cv: dict) -> float:
    """The share of no-bird clips called bird at the calibrated threshold, averaged over blocks."""
    shares = [b["nobird_called_bird"] for name, b in cv["blocks"].items() if name != "all" and b["bird"] < b["clips"]]
    return float(np.mean(shares)) if shares else 0.0


def choose(figures: list[float], cvs: list[dict]) -> int:
    """The best pooled AUC, or among those within TIE_AUC of it the fewest no-bird clips called bird."""
    best = max(figures)
    tied = [i for i, f in enumerate(figures) if f > float("-inf") and f >= best - TIE_AUC]
    return min(tied, key=lambda i: (mean_called_bird(cvs[i]), -figures[i]))


def study(config: TrainConfig, eval_data: Path | None, eval_labels: Path | None, eval_split: str | None, out_dir: Path, folds: int = 4, jobs: int = 2) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = multiprocessing.get_context("spawn").Pool(jobs)

    def run_all(rows, what):
        return pool.map(_run, [(what, name, c, folds, (str(eval_data), str(eval_labels), eval_split), str(out_dir)) for name, c in rows], chunksize=1)

    rows = rows_of(config)
    cvs = run_all(rows, "crossval")
    common = common_blocks(cvs)
    figures = [choosing_figure(cv, name, common) for (name, _), cv in zip(rows, cvs)]
    chosen = rows[choose(figures, cvs)]
    loso = run_all([chosen], "leave_out")[0]
    # The reference is never written as an artifact, so it is not measured on the evaluation clips.
    measured = [(n, c) for n, c in rows if c.training.objective != "reference"]
    ev_of = dict(zip([n for n, _ in measured], run_all(measured, "eval"))) if eval_data and eval_labels else {}
    ev = [ev_of.get(n) for n, _ in rows]
    pool.close()
    result = {
        "chosen": chosen[0],
        "floor_auc": FLOOR_AUC,
        "rows": [{"variant": name, "crossval": cv["blocks"], "choosing_auc": figure, "pooled_common": choosing_figure(cv, "", common) if figure > float("-inf") or MEASURED_ONLY in name else figure,
                  "eval": e["eval"] if e else None} for (name, _), cv, figure, e in zip(rows, cvs, figures, ev)],
        "common_blocks": sorted(common),
        "leave_one_block_out": loso["blocks"],
    }
    (out_dir / "study.json").write_text(json.dumps(result, indent=1, default=float))
    (out_dir / "study.md").write_text(markdown(result))
    return result


def _f(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.3f}"


def _pct(x) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{100 * x:.0f}%"


def markdown(result: dict) -> str:
    rows = result["rows"]
    blocks = [b for b in rows[0]["crossval"] if b != "all" and 0 < rows[0]["crossval"][b]["bird"] < rows[0]["crossval"][b]["clips"]]
    nobird_blocks = [b for b in rows[0]["crossval"] if b != "all" and rows[0]["crossval"][b]["bird"] < rows[0]["crossval"][b]["clips"]]
    eval_blocks = [b for b in (rows[0]["eval"] or {}) if b != "all"]
    strong = [b for b in blocks if rows[0]["crossval"][b].get("segments")]  # blocks with strong labels (NIPS4B)
    head = ["recipe", "CV pooled AUC (blocks every row has)", "CV pooled AUC, blocks balanced"] + [f"CV {b}" for b in blocks] + [f"{b} segment AUC / event F1" for b in strong]
    head += ["birds found (pooled)", "no-bird called bird: " + " / ".join(nobird_blocks), "false alarms per hour (pooled)", "eval AUC"] + [f"eval {b}" for b in eval_blocks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cv, e = r["crossval"], r["eval"]
        mark = "**" if r["variant"] == result["chosen"] else ""
        cells = [r["variant"], _f(r.get("pooled_common", cv["all"]["model_auc"])), _f(cv["all"].get("balanced_auc"))] + [_f(cv[b]["model_auc"]) if b in cv else "-" for b in blocks]
        cells += [f"{_f(seg['auc'])} / {_f(seg['events']['f1'])}" if (seg := cv.get(b, {}).get("segments")) else "-" for b in strong]
        cells += [_pct(cv["all"]["bird_found"]), " / ".join(_pct(cv[b]["nobird_called_bird"]) if b in cv else "-" for b in nobird_blocks), f"{cv['all'].get('false_alarms_per_hour', float('nan')):.0f}"]
        cells += [_f(e["all"]["model"]["auc"])] + [_f(e[b]["model"]["auc"]) for b in eval_blocks] if e else ["-"] * (1 + len(eval_blocks))
        lines.append("| " + " | ".join(f"{mark}{c}{mark}" for c in cells) + " |")
    ref = rows[0]["crossval"]
    cells = ["energy reference (2-8 kHz)", _f(ref["all"]["reference_auc"]), "-"] + [_f(ref[b]["reference_auc"]) for b in blocks] + ["-"] * len(strong) + ["-", "-", "-"]
    e = rows[0]["eval"]
    cells += [_f(e["all"]["reference"]["auc"])] + [_f(e[b]["reference"]["auc"]) for b in eval_blocks] if e else ["-"] * (1 + len(eval_blocks))
    lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Chosen: the highest pooled AUC among recipes with every two-class block at {result['floor_auc']:g} or more; within {TIE_AUC:g} of it, the fewest no-bird clips called bird (mean over blocks).", "",
              f"Leave one block out ({result['chosen']}: trained without the block, scored on it at the threshold calibrated without it):", "",
              "| block | clips | bird | ROC AUC | no-bird called bird | birds found | false alarms per hour | energy reference AUC |", "|---|---|---|---|---|---|---|---|"]
    for name, b in result["leave_one_block_out"].items():
        lines.append(f"| {name} | {b['clips']} | {b['bird']} | {_f(b['model_auc'])} | {_pct(b['nobird_called_bird'])} | {_pct(b['bird_found'])} | {b.get('false_alarms_per_hour', float('nan')):.0f} | {_f(b['reference_auc'])} |")
    return "\n".join(lines) + "\n"
