"""train/: dataset readers, split, calibration, metrics, and real (tiny) training runs."""
import subprocess
import sys

import numpy as np
import pytest

from audiogen import clip, write
from conftest import REPO, TINY_TRAIN_YAML, make_bad_dataset
from streamdet import artifact
from train.config import DataConfig, load_train_config
from train.datasets import DatasetError, Item, read_bad, read_dataset, read_manifest
from train.calibrate import spread, threshold_for
from train.fit import split_by_file
from train.metrics import roc_auc


@pytest.fixture
def bad_layout(tmp_path):
    (tmp_path / "wav").mkdir()
    for name in ("a1", "b2", "c3.wav"):
        write(tmp_path / "wav" / (name if name.endswith(".wav") else f"{name}.wav"), clip(1.0, 22050), 22050)
    return tmp_path


def test_bad_csv_with_and_without_datasetid_and_wav_suffix(bad_layout):
    (bad_layout / "l1.csv").write_text("itemid,datasetid,hasbird\na1,ff1010bird,1\nb2,ff1010bird,0\n")
    (bad_layout / "l2.csv").write_text("itemid,hasbird\nc3.wav,1\na1.wav,0\n")
    one = read_bad(bad_layout / "wav", bad_layout / "l1.csv")
    two = read_bad(bad_layout / "wav", bad_layout / "l2.csv", name="warblrb10k")
    assert [(i.itemid, i.label, i.dataset) for i in one] == [("a1", 1, "ff1010bird"), ("b2", 0, "ff1010bird")]
    assert [(i.itemid, i.label, i.dataset) for i in two] == [("c3", 1, "warblrb10k"), ("a1", 0, "warblrb10k")]


@pytest.mark.parametrize(
    "rows,expected",
    [
        ("a1,1\nzz,0\n", "line 3: no audio file for 'zz'"),
        ("a1,1\nb2,yes\n", "line 3: hasbird for 'b2' must be 0 or 1, found 'yes'"),
        ("a1,1\na1,0\n", "line 3: duplicate itemid 'a1' (first on line 2)"),
        ("a1,1\n,0\n", "line 3: empty itemid"),
    ],
)
def test_bad_rows_stop_the_run_naming_file_and_line(bad_layout, rows, expected):
    (bad_layout / "l.csv").write_text("itemid,hasbird\n" + rows)
    with pytest.raises(DatasetError) as err:
        read_bad(bad_layout / "wav", bad_layout / "l.csv")
    assert str(err.value).startswith(str(bad_layout / "l.csv")) and expected in str(err.value)
    items = read_bad(bad_layout / "wav", bad_layout / "l.csv", skip_bad_rows=True)
    assert [i.itemid for i in items] == ["a1"]


def test_missing_columns_are_named(bad_layout):
    (bad_layout / "l.csv").write_text("id,label\na1,1\n")
    with pytest.raises(DatasetError, match="missing column.s. itemid, hasbird"):
        read_bad(bad_layout / "wav", bad_layout / "l.csv")


def test_manifest_reader_filters_split_unknown_and_confidence(tmp_path):
    for name in ("dev/bird/maad24h__x.wav", "dev/nobird/bad_y.wav", "dev/bird/z.wav", "eval/bird/e.wav", "dev/unknown/u.wav"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        write(tmp_path / name, clip(1.0, 16000), 16000)
    (tmp_path / "MANIFEST.tsv").write_text(
        "file\tsplit\tlabel\tlabel_confidence\n"
        "dev/bird/maad24h__x.wav\tdev\tbird\tmedium\n"
        "dev/nobird/bad_y.wav\tdev\tnobird\thigh\n"
        "dev/bird/z.wav\tdev\tbird\tlow\n"
        "eval/bird/e.wav\teval\tbird\thigh\n"
        "dev/unknown/u.wav\tdev\tunknown\tlow\n"
    )
    items = read_manifest(tmp_path / "MANIFEST.tsv", "dev", "medium")
    assert [(i.itemid, i.label, i.dataset) for i in items] == [("maad24h__x", 1, "maad24h"), ("bad_y", 0, "bad")]
    assert len(read_dataset(DataConfig(kind="manifest", labels=str(tmp_path / "MANIFEST.tsv"), split="dev", min_confidence="low"))) == 3


def test_split_is_by_file_stratified_and_repeatable(tmp_path):
    items = [Item(tmp_path / f"{d}{l}{i}.wav", l, d, f"{d}{l}{i}") for d in ("ff", "wb") for l in (0, 1) for i in range(8)]
    train, val = split_by_file(items, 0.25, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == len(items)
    for d in ("ff", "wb"):
        for l in (0, 1):
            assert sum(1 for i in val if i.dataset == d and i.label == l) == 2
    assert split_by_file(items, 0.25, seed=3) == (train, val)
    assert split_by_file(items, 0.25, seed=4) != (train, val)


def test_calibration_strategies():
    rng = np.random.default_rng(0)
    normal = rng.gamma(4.0, 0.5, 5000)  # background bird-ness, a gamma like DCASE assumes
    t = threshold_for("percentile", normal, False, None, None, 95, 0.95)
    assert t == pytest.approx(np.percentile(normal, 95))
    assert threshold_for("percentile", -normal, True, None, None, 95, 0.95) == pytest.approx(np.percentile(-normal, 5))
    # The gamma fit recovers the true 95% quantile of gamma(4, 0.5), 3.88, within sampling error.
    assert threshold_for("gamma", normal, False, None, None, 95, 0.95) == pytest.approx(3.88, abs=0.1)
    # best F1 on labelled clips: separable clips give a threshold that separates them.
    clip_s, labels = np.array([0.1, 0.2, 0.3, 0.8, 0.9]), np.array([0, 0, 0, 1, 1])
    assert threshold_for("f1", normal, False, clip_s, labels, 95, 0.95) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="both classes"):
        threshold_for("f1", normal, False, clip_s, np.zeros(5), 95, 0.95)
    assert spread(rng.standard_normal(100000)) == pytest.approx(1.0, abs=0.02)


def test_roc_auc_matches_pairwise_counting():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.standard_normal(200) + labels, 1)  # rounded: ties happen
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert roc_auc(labels, scores) == pytest.approx(brute)
    assert np.isnan(roc_auc(np.ones(3), np.arange(3)))


def test_tiny_training_exports_an_artifact_with_full_metadata(tiny_model):
    model = artifact.load(tiny_model, "cpu")
    meta = model.meta
    assert meta["scoring"]["mode"] == "nobird" and meta["scoring"]["polarity"] == "high_loss_is_bird"
    provenance = meta["provenance"]
    assert provenance["data"]["clips"] == 30 and provenance["metrics"]["val_clips"] > 0
    assert provenance["metrics"]["val_clip_auc"] >= 0.9  # chirps in noise are easy; chance is 0.5
    assert provenance["config"]["training"]["epochs"] == 30 and provenance["code_version"].startswith("streamdet")


def test_train_cli_reports_config_and_data_errors_in_one_line(tmp_path):
    (tmp_path / "t.yaml").write_text("mode: birds\n")
    result = subprocess.run([sys.executable, "-m", "train", "fit", "--config", str(tmp_path / "t.yaml")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "mode: expected one of 'nobird', 'bird', 'contrast', found 'birds'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    (tmp_path / "t.yaml").write_text("data: [{kind: bad, audio_dir: wav, labels: missing.csv}]\n")
    result = subprocess.run([sys.executable, "-m", "train", "fit", "--config", str(tmp_path / "t.yaml")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "missing.csv: cannot read" in result.stderr
