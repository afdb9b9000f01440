"""`python -m train fit | ...`"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from rich.console import Console

from streamdet.artifact import ArtifactError
from streamdet.typedconfig import ConfigError

from .datasets import DatasetError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train and export streamdet models.")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit", help="train a model on labelled clips and export the artifact")
    fit.add_argument("--config", type=Path, required=True)
    fit.add_argument("--out", type=Path, help="artifact path (default: the config's output)")
    fit.add_argument("--epochs", type=int, help="override training.epochs")
    fit.add_argument("--device", help="override training.device (auto, cpu, cuda)")
    fit.set_defaults(handler=cmd_fit)

    ev = sub.add_parser("evaluate", help="score labelled clips: ROC AUC, pAUC, P/R/F1 per dataset, beside the energy reference")
    ev.add_argument("--model", type=Path, help="artifact (default: the bundled model)")
    ev.add_argument("--data", type=Path, required=True, help="folder the labels' file names are relative to")
    ev.add_argument("--labels", type=Path, required=True, help="BAD CSV (itemid,hasbird) or a file,label table such as MANIFEST.tsv")
    ev.add_argument("--split", help="only rows of this split (MANIFEST.tsv), e.g. eval")
    ev.add_argument("--out", type=Path, default=Path("runs/evaluation"), help="folder for evaluation.json and roc.png")
    ev.add_argument("--cache", type=Path, default=default_cache(), help="feature cache folder")
    ev.add_argument("--device", default="auto")
    ev.set_defaults(handler=cmd_evaluate)

    pr = sub.add_parser("predict", help="score unlabelled clips into a BAD challenge submission CSV (itemid,hasbird)")
    pr.add_argument("--model", type=Path, help="artifact (default: the bundled model)")
    pr.add_argument("--data", type=Path, required=True, help="folder of audio files, e.g. Chernobyl")
    pr.add_argument("--out", type=Path, required=True, help="CSV to write")
    pr.add_argument("--cache", type=Path, default=default_cache())
    pr.add_argument("--device", default="auto")
    pr.set_defaults(handler=cmd_predict)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr)
    try:
        return args.handler(args)
    except (ConfigError, DatasetError, ArtifactError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamdet" / "features"


def cmd_evaluate(args) -> int:
    from rich.table import Table

    from streamdet.artifact import load

    from .cache import FeatureCache
    from .datasets import read_labels
    from .evaluate import evaluate
    from .fit import progress_bar

    model = load(args.model, args.device)
    items = read_labels(args.labels, args.data, args.split)
    cache = FeatureCache(args.cache, model.features)
    with progress_bar() as progress:
        cache.ensure([i.path for i in items], progress)
        results = evaluate(model, items, cache, args.out, progress)
    table = Table(title=f"{model.path.name} ({results['mode']}) on {args.labels.name}{' ' + args.split if args.split else ''}: {results['clips_scored']} clips")
    for col in ("block", "scorer", "clips", "bird", "ROC AUC", "pAUC<=0.1", "precision", "recall", "F1"):
        table.add_column(col, justify="left" if col in ("block", "scorer") else "right")
    for block, by in results["blocks"].items():
        for scorer, m in by.items():
            table.add_row(block, scorer, str(m["clips"]), str(m["bird"]), *(f"{m[k]:.3f}" for k in ("auc", "pauc_0.1", "precision", "recall", "f1")))
    console = Console()
    console.print(table)
    console.print(f"wrote {args.out / 'evaluation.json'} and {results['roc_png']} ({results['roc_legend']})")
    if results["clips_unusable"]:
        console.print(f"{len(results['clips_unusable'])} clip(s) could not be scored (undecodable or shorter than a window): {', '.join(Path(p).name for p in results['clips_unusable'][:5])}")
    return 0


def cmd_predict(args) -> int:
    from streamdet.artifact import load

    from .cache import FeatureCache
    from .datasets import unlabelled
    from .evaluate import predict
    from .fit import progress_bar

    model = load(args.model, args.device)
    items = unlabelled(args.data)
    cache = FeatureCache(args.cache, model.features)
    with progress_bar() as progress:
        cache.ensure([i.path for i in items], progress)
        scored = predict(model, items, cache, args.out, progress)
    Console().print(f"wrote {args.out}: {len(items)} rows ({len(items) - scored} unscorable, given 0)")
    return 0


def cmd_fit(args) -> int:
    from .config import load_train_config
    from .fit import fit

    config = load_train_config(args.config)
    if args.epochs is not None:
        config.training.epochs = args.epochs
    if args.device is not None:
        config.training.device = args.device
    path, metrics = fit(config, args.out)
    Console().print(f"[bold]wrote {path}[/]  {json.dumps(metrics)}")
    return 0
