"""`python -m train evaluate` and `predict`: clip scores from a model, and the energy reference beside it."""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from streamdet.detect.artifact import Model
from train.cache import FeatureCache
from train.clips import clip_aggregate, reference_clip_score, silence_of, window_times, windows_of
from train.datasets import Item
from train.metrics import roc_curve, summary
from train.plot import PlotUnavailable, roc_plot, score_histograms, write_roc_csv
from train.strong import StrongLabels, segment_report


def model_window_decisions(model: Model, items: list[Item], cache: FeatureCache, progress=None) -> dict[Item, np.ndarray]:
    """Each clip's window decision values (each clip a segment of its own, as in the daemon)."""
    scorer = model.scorer()
    out = {}
    task = progress.add_task("scoring", total=len(items), info="") if progress else None
    for item in items:
        frames = cache.frames(item.path)
        windows = windows_of(frames, model.features) if frames is not None else None
        if windows is not None and len(windows):
            scorer.reset()
            out[item], _ = scorer.decide(model.losses(windows), windows.numpy() if scorer.energy else None, silence_of(frames, model.features))
        if progress:
            progress.update(task, advance=1, info=item.path.name[:40])
    return out


def model_clip_decisions(model: Model, items: list[Item], cache: FeatureCache, progress=None) -> dict[Item, float]:
    """Each clip's decision value under the model's clip aggregate: ranks clips without the float
    saturation of the calibrated score; the clip is called bird when it reaches the threshold."""
    how = model.meta["scoring"].get("clip_aggregate", "max")
    return {item: clip_aggregate(d, how) for item, d in model_window_decisions(model, items, cache, progress).items()}


def evaluate(model: Model, items: list[Item], cache: FeatureCache, out_dir: Path | None = None, progress=None) -> dict:
    started = time.perf_counter()
    windows = model_window_decisions(model, items, cache, progress)
    how = model.meta["scoring"].get("clip_aggregate", "max")
    scores = {item: clip_aggregate(d, how) for item, d in windows.items()}
    scoring_seconds = time.perf_counter() - started
    threshold = float(model.meta["scoring"]["threshold"])
    reference = {i: r for i in items if (f := cache.frames(i.path)) is not None and (r := reference_clip_score(f, model.features)) is not None}
    used = [i for i in items if i in scores and i in reference]
    blocks = _members(used)
    results = {"model": str(model.path), "mode": model.meta["scoring"]["mode"], "clips_scored": len(used), "clips_unusable": sorted(str(i.path) for i in items if i not in used), "blocks": {}}
    for name, members in blocks.items():
        labels = np.array([i.label for i in members])
        results["blocks"][name] = {
            "model": summary(labels, np.array([scores[i] for i in members]), threshold),
            # The reference has no calibrated threshold; its P/R/F1 are at 6 dB above the median.
            "reference": summary(labels, np.array([reference[i] for i in members]), 6.0),
        }
        strong, scale = StrongLabels(), float(model.meta["scoring"].get("scale", 1.0))
        clips = [(s, windows[i], window_times(cache.frames(i.path), model.features), threshold, scale) for i in members if (s := strong.of(i.path)) is not None]
        if clips:  # when, not only whether: 1-s segments against strong labels (train.strong)
            results["blocks"][name]["segments"] = segment_report(clips, model.features.window_seconds)
    audio_hours = sum(cache.entry(i.path)["seconds"] for i in used) / 3600
    results["scoring_audio_hours_per_minute"] = round(audio_hours / max(scoring_seconds / 60, 1e-9), 1)
    scorer = model.scorer()
    results["clips"] = [{"file": str(i.path), "dataset": i.dataset, "label": i.label, "decision": round(scores[i], 6), "score": round(float(scorer.score(np.array([scores[i]]))[0]), 6), "reference_db": round(reference[i], 3)} for i in used]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        results.update(_plots(out_dir, used, scores, reference, results, threshold))
        (out_dir / "evaluation.json").write_text(json.dumps(results, indent=1))
    return results


def _plots(out_dir: Path, used: list[Item], scores: dict, reference: dict, results: dict, threshold: float) -> dict:
    """roc.csv always; roc.png and scores.png when matplotlib is there, else a note saying how."""
    labels = np.array([i.label for i in used])
    everything = results["blocks"]["all"]
    curves = {"model": (*roc_curve(labels, [scores[i] for i in used]), everything["model"]["auc"]),
              "energy reference": (*roc_curve(labels, [reference[i] for i in used]), everything["reference"]["auc"])}
    out = {"roc_csv": str(write_roc_csv(out_dir / "roc.csv", curves))}
    try:
        out["roc_png"] = str(roc_plot(out_dir / "roc.png", curves, f"ROC, {len(used)} clips: model AUC {everything['model']['auc']:.3f}"))
        blocks = {name: (np.array([i.label for i in members]), np.array([scores[i] for i in members]), results["blocks"][name]["model"]["auc"])
                  for name, members in _members(used).items()}
        out["scores_png"] = str(score_histograms(out_dir / "scores.png", blocks, threshold))
    except PlotUnavailable as exc:
        out["plots"] = str(exc)
    return out


def _members(used: list[Item]) -> dict[str, list[Item]]:
    blocks = defaultdict(list)
    for item in used:
        blocks[item.dataset].append(item)
    return {"all": used, **dict(sorted(blocks.items()))} if len(blocks) > 1 else {"all": used}


def _score_part(job) -> dict[str, float]:
    """A worker process: one torch thread, its own model, its part of the clips (by path)."""
    import torch

    from streamdet.detect.artifact import load

    model_path, device, cache_dir, paths = job
    torch.set_num_threads(1)
    model = load(model_path, device)
    items = [Item(Path(p), -1, "", p) for p in paths]
    return {str(i.path): d for i, d in model_clip_decisions(model, items, FeatureCache(cache_dir, model.features)).items()}


def parallel_clip_decisions(model: Model, items: list[Item], cache: FeatureCache, workers: int, model_path, device: str, progress=None) -> dict[Item, float]:
    """`model_clip_decisions` in `workers` processes, each on an interleaved part of the clips."""
    import multiprocessing

    jobs = [(model_path, device, str(cache.root), [str(i.path) for i in items[w::workers]]) for w in range(workers)]
    task = progress.add_task(f"scoring in {workers} processes", total=workers, info="") if progress else None
    by_path: dict[str, float] = {}
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        for part in pool.imap_unordered(_score_part, jobs):
            by_path.update(part)
            if progress:
                progress.update(task, advance=1)
    return {i: by_path[str(i.path)] for i in items if str(i.path) in by_path}


def predict(model: Model, items: list[Item], cache: FeatureCache, out_csv: Path, progress=None, workers: int = 1, model_path=None, device: str = "cpu") -> set[Item]:
    """One row per file, `itemid,hasbird` with hasbird the clip score in [0, 1] (the BAD submission
    format), written with all the digits it has, so that clips ranked apart are never tied (at 1.0,
    say); returns the items that could be scored."""
    if workers > 1:
        decisions = parallel_clip_decisions(model, items, cache, workers, model_path, device, progress)
    else:
        decisions = model_clip_decisions(model, items, cache, progress)
    scorer = model.scorer()
    scorer.scale = float(model.meta["scoring"].get("clip_scale", scorer.scale))  # a clip's score, on clips' spread
    scores = {i: float(scorer.score(np.array([d]))[0]) for i, d in decisions.items()}
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w") as f:
        f.write("itemid,hasbird\n")
        for item in items:
            # A clip too short or undecodable still gets a row: the challenge expects every item.
            f.write(f"{item.itemid},{scores.get(item, 0.0)!r}\n")
    return set(scores)
