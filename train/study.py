"""`python -m train study`: every mode and front end, cross-validated on the training data and
measured on evaluation data, in one table (the README's).  Nothing here is chosen on eval."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from streamdet.artifact import load

from .cache import FeatureCache
from .config import TrainConfig
from .crossval import crossval
from .datasets import read_labels
from .evaluate import evaluate
from .fit import default_cache_dir, fit, progress_bar

VARIANTS = [
    (mode, kind, weight)
    for kind, weights in (("logmel_db", (0.0, 0.5)), ("pcen", (0.0,)))
    for weight in weights
    for mode in ("nobird", "bird", "contrast")
]


def variant(config: TrainConfig, mode: str, kind: str, weight: float) -> TrainConfig:
    """The config with this mode, front end and energy weight; PCEN gets no mixing (it mixes dB windows)."""
    mixes = config.augment.bird_mixes if kind == "logmel_db" else 0
    return dataclasses.replace(
        config, mode=mode, features=dataclasses.replace(config.features, kind=kind),
        energy=dataclasses.replace(config.energy, weight=weight), augment=dataclasses.replace(config.augment, bird_mixes=mixes),
    )


def study(config: TrainConfig, eval_data: Path, eval_labels: Path, eval_split: str | None, out_dir: Path, folds: int = 4) -> list[dict]:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    eval_items = read_labels(eval_labels, eval_data, eval_split)
    for mode, kind, weight in VARIANTS:
        c = variant(config, mode, kind, weight)
        name = f"{mode}-{kind}-energy{weight:g}"
        cv = crossval(c, folds=folds, seed=0)
        path, fit_metrics = fit(c, out_dir / f"{name}.pt")
        model = load(path, "cpu")
        cache = FeatureCache(c.cache_dir or default_cache_dir(), model.features)
        with progress_bar() as progress:
            cache.ensure([i.path for i in eval_items], progress)
            ev = evaluate(model, eval_items, cache, out_dir / name, progress)
        rows.append({"variant": name, "mode": mode, "front_end": kind, "energy_weight": weight, "bird_mixes": c.augment.bird_mixes if mode != "nobird" else 0, "crossval": cv["blocks"], "eval": ev["blocks"], "train_audio_hours_per_minute": fit_metrics["train_audio_hours_per_minute"]})
        (out_dir / "study.json").write_text(json.dumps(rows, indent=1))
    (out_dir / "study.md").write_text(markdown(rows))
    return rows


def markdown(rows: list[dict]) -> str:
    blocks = [b for b in rows[0]["eval"] if b != "all"]
    head = ["mode", "front end", "energy term", "mixes", "dev CV AUC", "eval AUC", "eval pAUC<=0.1", "eval F1"] + [f"eval {b}" for b in blocks]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        e = r["eval"]
        cells = [r["mode"], r["front_end"], f"{r['energy_weight']:g}", str(r["bird_mixes"]), f"{r['crossval']['all']['model_auc']:.3f}", f"{e['all']['model']['auc']:.3f}", f"{e['all']['model']['pauc_0.1']:.3f}", f"{e['all']['model']['f1']:.3f}"]
        cells += [f"{e[b]['model']['auc']:.3f}" for b in blocks]
        lines.append("| " + " | ".join(cells) + " |")
    ref, cv_ref = rows[0]["eval"], rows[0]["crossval"]["all"]["reference_auc"]
    cells = ["energy reference", "log-mel dB", "-", "-", f"{cv_ref:.3f}", f"{ref['all']['reference']['auc']:.3f}", f"{ref['all']['reference']['pauc_0.1']:.3f}", f"{ref['all']['reference']['f1']:.3f}"]
    cells += [f"{ref[b]['reference']['auc']:.3f}" for b in blocks]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
