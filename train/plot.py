"""Evaluation plots with matplotlib, an optional extra (`pip install 'streamdet[plot]'`): the ROC
curves with their AUCs, and per block how the clip scores of bird and no-bird clips fall about
the threshold. The curves are also written as CSV, which needs nothing."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from streamdet.detect.scoring import SILENT_DECISION

INSTALL = "pip install 'streamdet[plot]' (in this checkout: .venv/bin/pip install -e '.[plot]')"


class PlotUnavailable(Exception):
    pass


def write_roc_csv(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray, float]]) -> Path:
    """One row per point: curve, false-positive rate, true-positive rate (and the curve's AUC)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["curve", "fpr", "tpr", "auc"])
        for name, (fpr, tpr, auc) in curves.items():
            for x, y in zip(fpr.tolist(), tpr.tolist()):
                writer.writerow([name, f"{x:.6f}", f"{y:.6f}", f"{auc:.6f}"])
    return path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(f"plots need matplotlib, which is not installed: {INSTALL}; the curves are in roc.csv") from None
    return plt


def roc_plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray, float]], title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5), dpi=100)
    for name, (fpr, tpr, auc) in curves.items():
        ax.plot(fpr, tpr, drawstyle="steps-post", linewidth=2, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="chance (AUC 0.5)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate (no-bird clips called bird)", ylabel="true-positive rate (bird clips found)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def score_histograms(path: Path, blocks: dict[str, tuple[np.ndarray, np.ndarray, float]], threshold: float) -> Path:
    """Per block (labels, clip decisions, AUC): the two classes' decisions, and the threshold."""
    plt = _pyplot()
    n = len(blocks)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), dpi=100, squeeze=False)
    for ax, (name, (labels, scores, auc)) in zip(axes.flat, blocks.items()):
        heard = scores > SILENT_DECISION  # digital silence is never a bird, and far off any scale
        labels, scores, silent = labels[heard], scores[heard], int((~heard).sum())
        bins = np.histogram_bin_edges(np.r_[scores, threshold], bins=30)
        ax.hist(scores[labels == 0], bins=bins, alpha=0.6, label=f"no bird ({int((labels == 0).sum())})")
        ax.hist(scores[labels == 1], bins=bins, alpha=0.6, label=f"bird ({int((labels == 1).sum())})")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label="threshold")
        ax.set(title=f"{name}: AUC {auc:.3f}" + (f" ({silent} silent clips not shown)" if silent else ""), xlabel="clip decision (higher: more bird-like)", ylabel="clips")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def kshot_plot(path: Path, results: dict, pull: str) -> Path:
    """Per held-out block, against the number of reviewed clips: ROC AUC on the block's other clips
    (base dashed, adapted solid, a band of one standard deviation over the draws) and the share of
    its no-bird clips called bird at each model's threshold."""
    plt = _pyplot()
    fig, (auc_ax, fp_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (block, r) in enumerate(sorted(results.items())):
        curve = r["curves"].get(pull, {})
        if not curve:
            continue
        ks = [int(k) for k in curve]
        colour = f"C{i}"
        for ax, metric in ((auc_ax, "auc"), (fp_ax, "nobird_called_bird")):
            base = np.array([curve[str(k)][f"base_{metric}"][0] for k in ks])
            mean, sd = (np.array([curve[str(k)][f"adapted_{metric}"][j] for k in ks]) for j in (0, 1))
            ax.plot(ks, base, "--", color=colour, alpha=0.7)
            ax.plot(ks, mean, "o-", color=colour, label=f"{block} ({r['clips']} clips)")
            ax.fill_between(ks, mean - sd, mean + sd, color=colour, alpha=0.15)
    for ax, label in ((auc_ax, "ROC AUC on the block's other clips"), (fp_ax, "no-bird clips called bird")):
        ax.set_xscale("log")
        ax.set_xlabel("reviewed clips of the block (a fifth of them bird)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fp_ax.axhline(0.05, color="grey", lw=0.8)
    auc_ax.legend(fontsize=8)
    fig.suptitle(f"Adapting to a block held out of training: adapted (solid) against the base model (dashed); pull {pull}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
