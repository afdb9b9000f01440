"""`python -m train study`: the README's table, reproduced in one command.

Stage 1 cross-validates (grouped by recording, per block) the contrast detector over both front ends
and both VAE kinds; the winner is the one with the best mean AUC over the blocks that hold both
classes.  Stage 2 varies the winner: the seed's two single-VAE readings (nobird, bird), the
energy term switched (on if the config has it off, off if on), and the loss over all bands or the top 8.  The final choice (again by cross-validation alone) is then scored leaving each
block out.  Only after choosing is every variant trained on all development data and measured once
on the evaluation clips: that column is reported, never used.  Each variant's results are kept in
`OUT/variants/` under a hash of its configuration, so an interrupted study resumes."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
from pathlib import Path

import numpy as np

from .config import TrainConfig

FRONT_ENDS = ("logmel_db", "bgnorm")
MODEL_KINDS = ("mlp", "conv")


def variant(config: TrainConfig, mode: str, kind: str, front_end: str, energy: float, top_bands: int | None = None) -> TrainConfig:
    mixes = config.augment.bird_mixes if mode != "nobird" else 0
    top = config.model.top_bands if top_bands is None else top_bands
    return dataclasses.replace(
        config, mode=mode,
        model=dataclasses.replace(config.model, kind=kind, top_bands=top),
        features=dataclasses.replace(config.features, kind=front_end),
        energy=dataclasses.replace(config.energy, weight=energy),
        augment=dataclasses.replace(config.augment, bird_mixes=mixes),
    )


def name_of(c: TrainConfig) -> str:
    return f"{c.mode}-{c.model.kind}-{c.features.kind}-energy{c.energy.weight:g}" + (f"-top{c.model.top_bands}" if c.model.top_bands else "")


def _key(c: TrainConfig, what: str) -> str:
    return hashlib.sha256(json.dumps([what, dataclasses.asdict(c)], sort_keys=True, default=str).encode()).hexdigest()[:12]


def _run(job) -> dict:
    """One cross-validation, leave-out or eval measurement, in a worker with one torch thread."""
    import torch

    torch.set_num_threads(1)
    what, config, folds, eval_spec, out = job
    path = Path(out) / "variants" / f"{name_of(config)}.{what}.{_key(config, what)}.json"
    if path.exists():
        return json.loads(path.read_text())
    if what == "crossval":
        from .crossval import crossval

        result = crossval(config, folds=folds, seed=0)
    elif what == "leave_out":
        from .crossval import leave_out

        result = leave_out(config)
    else:
        result = _eval(config, eval_spec, Path(out))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"variant": name_of(config), **result}, indent=1, default=float))
    return json.loads(path.read_text())


def _eval(config: TrainConfig, eval_spec, out: Path) -> dict:
    from streamdet.artifact import load

    from .cache import FeatureCache, default_cache_dir
    from .datasets import read_labels
    from .evaluate import evaluate
    from .fit import fit
    from .progress import progress_bar

    data, labels, split = eval_spec
    path, metrics = fit(config, out / f"{name_of(config)}.pt")
    model = load(path, "cpu")
    items = read_labels(Path(labels), Path(data), split)
    cache = FeatureCache(config.cache_dir or default_cache_dir(), model.features)
    with progress_bar() as progress:
        cache.ensure([i.path for i in items], progress)
        result = evaluate(model, items, cache, out / name_of(config), progress)
    return {"eval": result["blocks"], "fit": {k: v for k, v in metrics.items() if k != "models"}, "model": str(path)}


def both_class_mean(cv: dict) -> float:
    """The choosing figure: the mean ROC AUC over the blocks that hold both classes."""
    aucs = [b["model_auc"] for name, b in cv["blocks"].items() if name != "all" and 0 < b["bird"] < b["clips"]]
    return float(np.mean(aucs))


def study(config: TrainConfig, eval_data: Path | None, eval_labels: Path | None, eval_split: str | None, out_dir: Path, folds: int = 4, jobs: int = 2) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = multiprocessing.get_context("spawn").Pool(jobs)

    def run_all(configs, what):
        return pool.map(_run, [(what, c, folds, (str(eval_data), str(eval_labels), eval_split), str(out_dir)) for c in configs], chunksize=1)

    energy = config.energy.weight
    stage1 = [variant(config, "contrast", k, f, energy) for f in FRONT_ENDS for k in MODEL_KINDS]
    cv1 = run_all(stage1, "crossval")
    best = stage1[int(np.argmax([both_class_mean(r) for r in cv1]))]
    stage2 = [variant(config, m, best.model.kind, best.features.kind, energy) for m in ("nobird", "bird")]
    stage2.append(variant(config, "contrast", best.model.kind, best.features.kind, 0.0 if energy else 0.5))  # the energy term on/off
    stage2.append(variant(config, "contrast", best.model.kind, best.features.kind, energy, 0 if config.model.top_bands else 8))  # all bands or the top 8
    cv2 = run_all(stage2, "crossval")
    rows = list(zip(stage1 + stage2, cv1 + cv2))
    chosen = max(rows, key=lambda r: both_class_mean(r[1]))[0]
    loso = run_all([chosen], "leave_out")[0]
    ev = run_all([c for c, _ in rows], "eval") if eval_data and eval_labels else [None] * len(rows)
    pool.close()
    result = {
        "chosen": name_of(chosen),
        "rows": [
            {"variant": name_of(c), "mode": c.mode, "model": c.model.kind, "front_end": c.features.kind, "energy": c.energy.weight, "top_bands": c.model.top_bands,
             "crossval": cv["blocks"], "choosing_auc": both_class_mean(cv), "eval": e["eval"] if e else None}
            for (c, cv), e in zip(rows, ev)
        ],
        "leave_one_block_out": loso["blocks"],
    }
    (out_dir / "study.json").write_text(json.dumps(result, indent=1, default=float))
    (out_dir / "study.md").write_text(markdown(result))
    return result


def _f(x) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.3f}"


def markdown(result: dict) -> str:
    rows = result["rows"]
    cv_blocks = [b for b in ("nips4b", "esc50", "other", "maad24h") if b in rows[0]["crossval"]]
    eval_blocks = [b for b in (rows[0]["eval"] or {}) if b != "all"]
    head = ["mode", "VAE", "front end", "energy", "loss over", "CV mean AUC"] + [f"CV {b}" for b in cv_blocks] + ["CV no-bird called bird (esc50 / speech)", "eval AUC", "eval pAUC"] + [f"eval {b}" for b in eval_blocks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cv, e = r["crossval"], r["eval"]
        mark = "**" if r["variant"] == result["chosen"] else ""
        cells = [r["mode"], r["model"], r["front_end"], f"{r['energy']:g}", f"top {r['top_bands']} bands" if r.get("top_bands") else "all bands", _f(r["choosing_auc"])] + [_f(cv[b]["model_auc"]) for b in cv_blocks]
        cells.append(" / ".join(_f(cv.get(b, {}).get("nobird_called_bird")) for b in ("esc50", "speech")))
        cells += [_f(e["all"]["model"]["auc"]), _f(e["all"]["model"]["pauc_0.1"])] + [_f(e[b]["model"]["auc"]) for b in eval_blocks] if e else ["-"] * (2 + len(eval_blocks))
        lines.append("| " + " | ".join(f"{mark}{c}{mark}" for c in cells) + " |")
    ref = rows[0]["crossval"]
    cells = ["energy reference", "-", "log-mel dB", "-", "-", "-"] + [_f(ref[b]["reference_auc"]) for b in cv_blocks] + ["-"]
    e = rows[0]["eval"]
    cells += [_f(e["all"]["reference"]["auc"]), _f(e["all"]["reference"]["pauc_0.1"])] + [_f(e[b]["reference"]["auc"]) for b in eval_blocks] if e else ["-"] * (2 + len(eval_blocks))
    lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Leave one block out ({result['chosen']}: trained without the block, scored on it):", "",
              "| block | clips | bird | ROC AUC | pAUC | no-bird called bird | birds found | energy reference AUC |", "|---|---|---|---|---|---|---|---|"]
    for name, b in result["leave_one_block_out"].items():
        lines.append(f"| {name} | {b['clips']} | {b['bird']} | {_f(b['model_auc'])} | {_f(b['model_pauc'])} | {_f(b['nobird_called_bird'])} | {_f(b['bird_found'])} | {_f(b['reference_auc'])} |")
    return "\n".join(lines) + "\n"
