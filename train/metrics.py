"""Detection metrics, in numpy alone."""
from __future__ import annotations

import numpy as np


def weighted_roc_auc(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """ROC AUC with each clip weighing `weights`: the weighted share of (bird, no-bird) pairs the
    scores order correctly, ties counted half; NaN without both classes."""
    labels = np.asarray(labels).astype(bool)
    scores, weights = np.asarray(scores, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    w_pos, w_neg = weights[labels].sum(), weights[~labels].sum()
    if not labels.any() or labels.all() or w_pos <= 0 or w_neg <= 0:
        return float("nan")
    values, group = np.unique(scores, return_inverse=True)
    neg = np.bincount(group, weights * ~labels, minlength=len(values))
    pos = np.bincount(group, weights * labels, minlength=len(values))
    below = np.cumsum(neg) - neg  # no-bird weight strictly below each score
    return float((pos * (below + neg / 2)).sum() / (w_pos * w_neg))


def block_balanced_auc(labels: np.ndarray, scores: np.ndarray, blocks: list[str]) -> float:
    """Pooled ROC AUC over the blocks holding both classes, each block's birds and no-birds
    weighing the same in all (1/count each): one score scale as in the plain pooled figure, but a
    block whose audio is mostly bird gains nothing by scoring its whole recorder high."""
    labels, blocks = np.asarray(labels).astype(int), np.asarray(blocks)
    weights = np.zeros(len(labels))
    for block in np.unique(blocks):
        for label in (0, 1):
            members = (blocks == block) & (labels == label)
            if members.any() and ((blocks == block) & (labels != label)).any():
                weights[members] = 1.0 / members.sum()
    return weighted_roc_auc(labels, scores, weights)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half); NaN without both classes."""
    return weighted_roc_auc(labels, scores, np.ones(len(np.asarray(labels))))


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates), from (0, 0) to (1, 1), one point per distinct score."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(y)[last_of_tie]
    fp = np.cumsum(~y)[last_of_tie]
    return np.r_[0.0, fp / max(1, (~labels).sum())], np.r_[0.0, tp / max(1, labels.sum())]


def partial_auc(labels: np.ndarray, scores: np.ndarray, max_fpr: float = 0.1) -> float:
    """The partial ROC AUC for FPR <= max_fpr, McClish-standardised as DCASE reports it (and as
    `sklearn.metrics.roc_auc_score(..., max_fpr=...)` computes it): 0.5 is chance, 1.0 is perfect."""
    labels = np.asarray(labels).astype(bool)
    if labels.all() or not labels.any():
        return float("nan")
    fpr, tpr = roc_curve(labels, scores)
    stop = np.searchsorted(fpr, max_fpr, side="right")
    x, y = fpr[:stop], tpr[:stop]
    if stop < len(fpr):  # close the area exactly at max_fpr on the segment that crosses it
        x0, x1, y0, y1 = fpr[stop - 1], fpr[stop], tpr[stop - 1], tpr[stop]
        x, y = np.r_[x, max_fpr], np.r_[y, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)]
    area = float(np.trapezoid(y, x))
    least, most = 0.5 * max_fpr**2, max_fpr  # the chance diagonal's area, and a perfect detector's
    return 0.5 * (1 + (area - least) / (most - least))


def precision_recall_f1(labels: np.ndarray, predicted: np.ndarray) -> dict:
    labels, predicted = np.asarray(labels).astype(bool), np.asarray(predicted).astype(bool)
    tp, fp, fn = int((labels & predicted).sum()), int((~labels & predicted).sum()), int((labels & ~predicted).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def summary(labels, scores, threshold: float) -> dict:
    """Everything reported per block: counts, ROC AUC, pAUC (FPR <= 0.1), P/R/F1 at `threshold`."""
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    return {
        "clips": int(len(labels)),
        "bird": int(labels.sum()),
        "auc": roc_auc(labels, scores),
        "pauc_0.1": partial_auc(labels, scores),
        **precision_recall_f1(labels, scores >= threshold),
    }
