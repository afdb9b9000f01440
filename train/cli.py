"""`python -m train fit | ...`"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console

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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr)
    try:
        return args.handler(args)
    except (ConfigError, DatasetError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2


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
