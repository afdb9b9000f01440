"""Our 1-s segment figures against sed_eval's own, on a cross-validation's out-of-fold windows.

train/strong.py counts the segment-based metrics of sed_eval (Mesaros et al. 2016) in numpy, so
that training and the tests need neither sed_eval nor its dependencies (dcase_util, librosa,
numba).  This checks the two agree, event for event:

    pip install sed_eval
    python -m train.sed_check runs/study/variants/<row>.crossval.<key>.json

It rebuilds the daemon's events from each clip's window decisions (as segment_report does),
gives them and the NIPS4Bplus vocalisations to sed_eval's SegmentBasedMetrics at a 1-s
resolution and prints both counts, and the segments' ROC AUC beside scikit-learn's.  Clips with
an `Unknown` vocalisation are left out here: segment_report leaves those segments out, which
sed_eval cannot."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from streamdet.config import DetectorConfig
from streamdet.detect.scoring import calibrated_score
from train.metrics import roc_auc
from train.strong import SEGMENT_S, StrongLabels, event_segments, event_spans, window_segment_scores


def main(path: str) -> int:
    import sed_eval  # only this check needs it
    from dcase_util.containers import MetaDataContainer

    rows, strong, detector = json.loads(Path(path).read_text())["strong_windows"], StrongLabels(), DetectorConfig()
    metrics = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=["bird"], time_resolution=SEGMENT_S)
    tp = fp = fn = clips = 0
    truths, ranked = [], []
    for r in rows:
        labels = strong.of(Path(r["file"]))
        if labels is None or labels.unknown:
            continue
        clips += 1
        starts, d = np.asarray(r["starts"]), np.asarray(r["decisions"])
        scores = calibrated_score(d, r["threshold"], r["scale"])
        truth = labels.segments() == 1
        called = event_segments(scores, starts, len(truth), r["window_s"], detector)
        truths.append(truth)
        ranked.append(window_segment_scores(d, starts, len(truth), r["window_s"]))
        tp, fp, fn = tp + int((truth & called).sum()), fp + int((~truth & called).sum()), fn + int((truth & ~called).sum())
        # Both sides end where the clip's last counted segment does: NIPS4B's clips last 5.0039 s,
        # and segments() counts no last segment under 50 ms, where sed_eval would count a 4-ms one.
        end = len(truth) * SEGMENT_S
        ref = [{"event_label": "bird", "onset": a, "offset": min(b, end), "filename": r["file"]} for a, b in labels.birds if a < end]
        est = [{"event_label": "bird", "onset": a, "offset": min(b, end), "filename": r["file"]} for a, b in event_spans(scores, starts, r["window_s"], detector) if a < end]
        metrics.evaluate(reference_event_list=MetaDataContainer(ref), estimated_event_list=MetaDataContainer(est))
    theirs, counts = metrics.results_overall_metrics(), metrics.overall
    print(f"{clips} clips without Unknown vocalisations")
    print(f"ours:     TP {tp} FP {fp} FN {fn} F1 {2 * tp / max(1, 2 * tp + fp + fn):.4f}")
    print(f"sed_eval: TP {int(counts['Ntp'])} FP {int(counts['Nfp'])} FN {int(counts['Nfn'])} F1 {theirs['f_measure']['f_measure']:.4f}")
    from sklearn.metrics import roc_auc_score  # sed_eval brings scikit-learn

    y, x = np.concatenate(truths), np.concatenate(ranked)
    ours_auc, their_auc = roc_auc(y, x), roc_auc_score(y, x)
    print(f"segment ROC AUC: ours {ours_auc:.6f}, scikit-learn {their_auc:.6f}")
    return 0 if abs(ours_auc - their_auc) < 1e-9 and (tp, fp, fn) == (int(counts["Ntp"]), int(counts["Nfp"]), int(counts["Nfn"])) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
