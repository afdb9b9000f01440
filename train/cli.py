"""`python -m train fit | ...`"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from rich.console import Console

from streamdet.detect.artifact import ArtifactError
from streamdet.detect.modes import MODES
from streamdet.typedconfig import ConfigError
from train.cache import default_cache_dir
from train.checkpoint import CheckpointError
from train.datasets import DatasetError

MAX_GROUPS_SHOWN = 8  # kshot prints birds found per group for a block of classes (ESC-50), not of hundreds of recordings


def threads_arg(parser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: 1 on the CPU, measured 6-10x faster than torch's default on 2 cores)")


def add_training(sub) -> None:
    """fit, crossval and study."""
    fit = sub.add_parser("fit", help="train a model on labelled clips and export the artifact")
    fit.add_argument("--config", type=Path, required=True)
    fit.add_argument("--out", type=Path, help="artifact path (default: the config's output)")
    fit.add_argument("--epochs", type=int, help="override training.epochs")
    fit.add_argument("--device", help="override training.device (auto, cpu, cuda)")
    fit.add_argument("--mode", choices=tuple(MODES), help="override mode")
    fit.add_argument("--resume", action="store_true", help="continue from the checkpoint next to the output")
    fit.add_argument("--cache", type=Path, help="feature cache folder (default: the config's cache_dir, else ~/.cache/streamdet/features)")
    fit.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key, e.g. --set model.kind=conv")
    threads_arg(fit)
    fit.set_defaults(handler=cmd_fit)

    cv = sub.add_parser("crossval", help="k-fold cross-validation on the training data (choose a configuration without eval data)")
    cv.add_argument("--config", type=Path, required=True)
    cv.add_argument("--folds", type=int, default=4)
    cv.add_argument("--seed", type=int, default=0, help="how clips are dealt into folds")
    cv.add_argument("--mode", choices=tuple(MODES), help="override mode")
    cv.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key, e.g. --set features.kind=pcen")
    cv.add_argument("--json", type=Path, help="also write the result here")
    cv.add_argument("--cache", type=Path)
    cv.add_argument("--leave-out", nargs="*", metavar="BLOCK", help="instead of folds: train without each BLOCK (every block if none named) and score it")
    threads_arg(cv)
    cv.set_defaults(handler=cmd_crossval)

    evs = sub.add_parser("events", help="choose the daemon's event settings on a crossval's out-of-fold scores of clips with strong labels (event F1 per 1-s segment)")
    evs.add_argument("--crossval", type=Path, required=True, help="the JSON of `crossval --json` or a study's variants/*.crossval.*.json")
    evs.add_argument("--top", type=int, default=10)
    threads_arg(evs)
    evs.set_defaults(handler=cmd_events)

    st = sub.add_parser("study", help="all modes and front ends: cross-validated on the training data, measured on eval data (the README table)")
    st.add_argument("--config", type=Path, required=True)
    st.add_argument("--eval-data", type=Path, help="folder of the evaluation clips (measured once, after choosing)")
    st.add_argument("--eval-labels", type=Path)
    st.add_argument("--eval-split", help="e.g. eval, for MANIFEST.tsv")
    st.add_argument("--out", type=Path, default=Path("runs/study"))
    st.add_argument("--folds", type=int, default=4)
    st.add_argument("--jobs", type=int, default=2, help="variants trained at once, one process and one torch thread each")
    st.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    threads_arg(st)
    st.set_defaults(handler=cmd_study, mode=None)


def add_scoring(sub) -> None:
    """evaluate and predict: an artifact on labelled or unlabelled clips."""
    ev = sub.add_parser("evaluate", help="score labelled clips: ROC AUC, pAUC, P/R/F1 per dataset, beside the energy reference")
    ev.add_argument("--model", type=Path, help="artifact (default: the bundled model)")
    ev.add_argument("--data", type=Path, required=True, help="folder the labels' file names are relative to")
    ev.add_argument("--labels", type=Path, required=True, help="BAD CSV (itemid,hasbird) or a file,label table such as MANIFEST.tsv")
    ev.add_argument("--split", help="only rows of this split (MANIFEST.tsv), e.g. eval")
    ev.add_argument("--skip-bad-rows", action="store_true", help="drop rows that name no usable clip, with a warning, instead of stopping")
    ev.add_argument("--out", type=Path, default=Path("runs/evaluation"), help="folder for evaluation.json, roc.csv, and with the plot extra roc.png and scores.png")
    ev.add_argument("--cache", type=Path, default=default_cache_dir(), help="feature cache folder")
    ev.add_argument("--device", default="auto")
    threads_arg(ev)
    ev.set_defaults(handler=cmd_evaluate)

    pr = sub.add_parser("predict", help="score unlabelled clips into a BAD challenge submission CSV (itemid,hasbird)")
    pr.add_argument("--model", type=Path, help="artifact (default: the bundled model)")
    pr.add_argument("--data", type=Path, required=True, help="folder of audio files, e.g. Chernobyl")
    pr.add_argument("--out", type=Path, required=True, help="CSV to write")
    pr.add_argument("--cache", type=Path, default=default_cache_dir())
    pr.add_argument("--device", default="auto")
    pr.add_argument("--shard", metavar="K/N", help="only the K-th of N equal parts of the files (1-based), e.g. a batch scheduler's array task")
    pr.add_argument("--workers", type=int, default=1, help="score in this many processes, one torch thread each (default 1)")
    threads_arg(pr)
    pr.set_defaults(handler=cmd_predict)

    ad = sub.add_parser("adapt", help="fit a model to a site's reviewed clips: a new artifact with the site's threshold")
    ad.add_argument("--model", type=Path, help="the base artifact (default: the bundled model)")
    ad.add_argument("--data", type=Path, help="folder the labels' file names are relative to")
    ad.add_argument("--labels", type=Path, help="BAD CSV (itemid,hasbird) or a file,label table, as evaluate reads them")
    ad.add_argument("--reviews", type=Path, metavar="CLIPS_DIR", help="or: the daemon's recording directory, whose clips were reviewed on the web page")
    ad.add_argument("--out", type=Path, required=True, help="the adapted artifact to write (the daemon loads it on SIGHUP)")
    ad.add_argument("--cache", type=Path, default=default_cache_dir())
    ad.add_argument("--seed", type=int, default=0)
    ad.add_argument("--nobird-called", type=float, metavar="SHARE",
                    help="the threshold lets at most this share of the site's no-bird reviews through, out of fold (default 0.05); more finds more birds")
    threads_arg(ad)
    ad.set_defaults(handler=cmd_adapt)

    ks = sub.add_parser("kshot", help="how many reviews a site needs: per block, a model trained without it adapted on k of its clips, scored on the rest")
    ks.add_argument("--config", type=Path, required=True)
    ks.add_argument("--blocks", nargs="+", required=True, help="development blocks to hold out in turn, e.g. nips4b esc50 other maad24h")
    ks.add_argument("--k", type=int, nargs="+", default=[10, 25, 50, 100], help="reviewed clips per draw (a fifth of them bird)")
    ks.add_argument("--draws", type=int, default=5)
    ks.add_argument("--out", type=Path, required=True, help="JSON of the curves (blocks already in it are kept)")
    ks.add_argument("--cache", type=Path)
    ks.add_argument("--pull", type=float, nargs="+", help="pulls toward the base model to measure (default: train.adapt.PULL)")
    threads_arg(ks)
    ks.set_defaults(handler=cmd_kshot)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description="Train and export streamdet models.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_training(sub)
    add_scoring(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%Y-%m-%dT%H:%M:%S", stream=sys.stderr)
    set_threads(args.threads, getattr(args, "device", None))
    try:
        return args.handler(args)
    except (ConfigError, DatasetError, ArtifactError, CheckpointError, ValueError) as exc:
        print(f"train: error: {exc}", file=sys.stderr)
        return 2


def cmd_adapt(args) -> int:
    from streamdet.detect import artifact
    from train.adapt import CLIP_FPR, adapt, adapted_meta, check_share, read_reviews
    from train.cache import FeatureCache
    from train.datasets import read_labels
    from train.progress import progress_bar

    if (args.reviews is None) == (args.labels is None) or (args.labels is not None and args.data is None):
        raise ValueError("adapt: give either --data DIR --labels LABELS, or --reviews CLIPS_DIR")
    share = CLIP_FPR if args.nobird_called is None else args.nobird_called
    check_share(share)  # before the model and the clips are read
    model = artifact.load(args.model, "cpu")
    items = read_reviews(args.reviews) if args.reviews else read_labels(args.labels, args.data, None, False)
    cache = FeatureCache(args.cache, model.features)
    with progress_bar() as progress:
        cache.ensure([i.path for i in items], progress)
        net, result = adapt(model, items, cache, args.seed, progress, share)
    meta = adapted_meta(model, result, items, str(args.reviews or args.labels))
    path = artifact.save(net, meta, args.out)
    f = result["figures"]
    console = Console()
    for name, g in (("base model", f["base"]), ("adapted (out of fold)", f["adapted_out_of_fold"])):
        auc = "n/a" if g["auc"] is None else f"{g['auc']:.3f}"
        console.print(f"{name:>22}: ROC AUC {auc}, birds found {g['birds_found']:.0%}, no-bird clips called bird {g['nobird_called_bird']:.0%} ({g['clips']} clips, {g['bird']} bird)")
    console.print(f"wrote {path}: load it with `--model {path}` or `model.path` and SIGHUP")
    return 0


def cmd_kshot(args) -> int:
    from train.adapt import PULL
    from train.config import load_train_config
    from train.kshot import kshot

    results = kshot(load_train_config(args.config), args.blocks, args.k, args.draws, args.out, args.cache, pulls=tuple(args.pull or (PULL,)))
    for block, r in results.items():
        for (pull, curve) in r["curves"].items():
            for k, c in curve.items():
                print(f"{block} ({r['clips']} clips, {r['bird']} bird), pull {pull}, k={k}: ROC AUC base {c['base_auc'][0]:.3f} adapted {c['adapted_auc'][0]:.3f} (sd {c['adapted_auc'][1]:.3f}); "
                  f"birds found {c['base_birds_found'][0]:.0%} -> {c['adapted_birds_found'][0]:.0%}; no-bird called bird {c['base_nobird_called_bird'][0]:.0%} -> {c['adapted_nobird_called_bird'][0]:.0%}")
                groups = c.get("birds_found_by_group") or {}
                if 1 < len(groups) <= MAX_GROUPS_SHOWN:
                    print("    birds found per group: " + ", ".join(f"{g} {b:.0%} -> {a:.0%}" for g, (b, a) in groups.items()))
    from train.plot import PlotUnavailable, kshot_plot

    try:
        for pull in args.pull or (PULL,):
            print(f"wrote {kshot_plot(args.out.with_name(f'{args.out.stem}-pull-{pull}.png'), results, str(float(pull)))}")
    except PlotUnavailable as exc:
        print(f"no plot: {exc}")
    print(f"wrote {args.out}")
    return 0


def set_threads(threads: int | None, device: str | None) -> None:
    """One torch thread on the CPU unless told otherwise (as the daemon does, `model.threads`)."""
    import torch

    if threads is not None and threads < 1:
        raise SystemExit("train: error: --threads: expected a positive integer")
    if threads is None and (device or "auto").startswith("cuda"):
        return
    torch.set_num_threads(threads or 1)
    try:
        torch.set_num_interop_threads(threads or 1)
    except RuntimeError:  # settable once per process (a second command in the same process, as in tests)
        pass


def segment_line(block: str, seg: dict) -> str:
    """One line of segment figures (train.strong) for a block with strong labels."""
    w, e = seg["windows"], seg["events"]
    return (f"{block}: {seg['segments']} 1-s segments of {seg['clips']} clips with strong labels ({seg['bird_segments']} bird): segment AUC {seg['auc']:.3f}; "
            f"windows at the threshold P {w['precision']:.2f} R {w['recall']:.2f} F1 {w['f1']:.2f}; events P {e['precision']:.2f} R {e['recall']:.2f} F1 {e['f1']:.2f}")


def cmd_evaluate(args) -> int:
    from rich.table import Table

    from streamdet.detect.artifact import load
    from train.cache import FeatureCache
    from train.datasets import read_labels
    from train.evaluate import evaluate
    from train.progress import progress_bar

    model = load(args.model, args.device)
    items = read_labels(args.labels, args.data, args.split, args.skip_bad_rows)
    cache = FeatureCache(args.cache, model.features)
    with progress_bar() as progress:
        cache.ensure([i.path for i in items], progress)
        results = evaluate(model, items, cache, args.out, progress)
    table = Table(title=f"{model.path.name} ({results['mode']}) on {args.labels.name}{' ' + args.split if args.split else ''}: {results['clips_scored']} clips")
    for col in ("block", "scorer", "clips", "bird", "ROC AUC", "pAUC<=0.1", "precision", "recall", "F1"):
        table.add_column(col, justify="left" if col in ("block", "scorer") else "right")
    for block, by in results["blocks"].items():
        for scorer in ("model", "reference"):
            m = by[scorer]
            table.add_row(block, scorer, str(m["clips"]), str(m["bird"]), *(f"{m[k]:.3f}" for k in ("auc", "pauc_0.1", "precision", "recall", "f1")))
    console = Console()
    console.print(table)
    for block, by in results["blocks"].items():
        if block != "all" and (seg := by.get("segments")):
            console.print(segment_line(block, seg))
    from rich.markup import escape

    plots = f"{results['roc_png']} and {results['scores_png']}" if "roc_png" in results else f"no plots ({results['plots']})"
    console.print(escape(f"wrote {args.out / 'evaluation.json'}, {results['roc_csv']} and {plots}"))
    for path in results["clips_unusable"]:
        print(f"train: warning: {path}: not scored ({cache.error(Path(path)) or 'shorter than one FFT frame'})", file=sys.stderr)
    if results["clips_unusable"]:
        console.print(f"{len(results['clips_unusable'])} clip(s) could not be scored (listed above)")
    return 0


def cmd_predict(args) -> int:
    from streamdet.detect.artifact import load
    from train.cache import FeatureCache
    from train.datasets import unlabelled
    from train.evaluate import predict
    from train.progress import progress_bar

    model = load(args.model, args.device)
    items = shard(unlabelled(args.data), args.shard)
    if args.workers < 1:
        raise ConfigError(f"--workers: expected 1 or more, found {args.workers}")
    cache = FeatureCache(args.cache, model.features)
    with progress_bar() as progress:
        cache.ensure([i.path for i in items], progress)
        scored = predict(model, items, cache, args.out, progress, workers=args.workers, model_path=args.model, device=args.device)
    for item in items:
        if item not in scored:
            print(f"train: warning: {item.path}: not scored ({cache.error(item.path) or 'shorter than one FFT frame'}); hasbird 0", file=sys.stderr)
    Console().print(f"wrote {args.out}: {len(items)} rows ({len(items) - len(scored)} unscorable, given 0)")
    return 0


def shard(items: list, spec: str | None) -> list:
    """The K-th of N interleaved parts of `items` (in their sorted order): every item in exactly one
    part, the parts within one item of each other in size."""
    if spec is None:
        return items
    k, sep, n = spec.partition("/")
    if not (sep and k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise ConfigError(f"--shard: expected K/N with 1 <= K <= N, such as 3/16, found {spec[:20]!r}")
    return items[int(k) - 1 :: int(n)]


def load_config_with_overrides(args):
    from streamdet.typedconfig import apply_overrides, check, in_file
    from train.config import load_train_config

    config = load_train_config(args.config)
    if getattr(args, "epochs", None) is not None:
        config.training.epochs = args.epochs
    if getattr(args, "device", None) is not None:
        config.training.device = args.device
    if args.mode is not None:
        config.mode = args.mode
    apply_overrides(config, getattr(args, "set", []))
    in_file(args.config, lambda: check(config))
    return config


def cmd_fit(args) -> int:
    from train import distributed
    from train.fit import fit

    config = load_config_with_overrides(args)
    config.training.device = distributed.init_from_env(config.training.device)
    out = Path(args.out or config.output)
    try:
        path, metrics = fit(config, out, resume=args.resume, cache_dir=args.cache)
    except KeyboardInterrupt:
        ckpt = out.with_suffix(".ckpt")
        saved = f"the last finished epoch is saved in {ckpt}; continue with the same command and --resume" if ckpt.exists() else "no epoch had finished; nothing to resume"
        print(f"train: interrupted: {saved}", file=sys.stderr)
        return 130
    finally:
        distributed.finish()
    if path is None:
        return 0  # not rank 0: that one reports
    summary = {k: v for k, v in metrics.items() if k != "models"}
    Console().print(f"[bold]wrote {path}[/]  {json.dumps(summary)}")
    return 0


def cmd_crossval(args) -> int:
    from rich.table import Table

    from train.crossval import crossval, leave_out

    config = load_config_with_overrides(args)
    if args.leave_out is not None:
        result = leave_out(config, args.leave_out or None, args.cache)
        title = f"leave one block out, mode {config.mode}, model {config.model.kind}, front end {config.features.kind}"
    else:
        result = crossval(config, args.folds, args.seed, args.cache)
        title = f"{args.folds}-fold cross-validation grouped by recording, mode {config.mode}, model {config.model.kind}, front end {config.features.kind}, folds seed {args.seed}"
    table = Table(title=title)
    for col in ("block", "clips", "bird", "model ROC AUC", "pAUC<=0.1", "no-bird called bird", "bird found", "false alarms per hour", "energy reference ROC AUC"):
        table.add_column(col, justify="left" if col == "block" else "right")
    for block, r in result["blocks"].items():
        table.add_row("all (pooled)" if block == "all" else block, str(r["clips"]), str(r["bird"]), *(f"{r[k]:.3f}" for k in ("model_auc", "model_pauc", "nobird_called_bird", "bird_found")), f"{r['false_alarms_per_hour']:.1f}", f"{r['reference_auc']:.3f}")
    console = Console()
    console.print(table)
    if "balanced_auc" in result["blocks"].get("all", {}):
        console.print(f"pooled ROC AUC with every two-class block at the same bird share: {result['blocks']['all']['balanced_auc']:.3f}")
    for block, r in result["blocks"].items():
        if block != "all" and r.get("segments"):
            console.print(segment_line(block, r["segments"]))
    if args.json:
        args.json.write_text(json.dumps({"config": str(args.config), "mode": config.mode, "front_end": config.features.kind, **result}, indent=1))
    return 0


def cmd_events(args) -> int:
    from rich.table import Table

    from streamdet.errors import one_line
    from train.strong import choose_events

    try:
        rows = json.loads(args.crossval.read_text()).get("strong_windows") or []
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--crossval {args.crossval}: not a crossval result ({one_line(exc, 80)})") from None
    if not rows:
        raise ConfigError(f"--crossval {args.crossval}: holds no window scores of clips with strong labels (made by this version's crossval, with NIPS4Bplus beside NIPS4B)")
    table = Table(title=f"event settings on {len(rows)} clips with strong labels, best event F1 first")
    for col in ("on_score", "off_score", "merge_gap_s", "min_event_s", "precision", "recall", "F1", "no-bird segments in an event"):
        table.add_column(col, justify="right")
    for r in choose_events(rows, rows[0]["window_s"])[: args.top]:
        table.add_row(*(f"{r[k]:g}" for k in ("on_score", "off_score", "merge_gap_s", "min_event_s")), *(f"{r[k]:.3f}" for k in ("precision", "recall", "f1", "nobird_called")))
    Console().print(table)
    return 0


def cmd_study(args) -> int:
    from train.study import study

    config = load_config_with_overrides(args)
    study(config, args.eval_data, args.eval_labels, args.eval_split, args.out, args.folds, args.jobs)
    Console().print((args.out / "study.md").read_text())
    return 0
