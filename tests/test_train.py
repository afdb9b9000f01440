"""train/: dataset readers, split, calibration, metrics, and real (tiny) training runs."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO

from streamdet.detect import artifact
from train.calibrate import calibrate, spread, threshold_for
from train.config import DataConfig, TrainConfig
from train.datasets import DatasetError, Item, read_bad, read_dataset, read_manifest
from train.metrics import block_balanced_auc, roc_auc, weighted_roc_auc
from train.splits import k_folds, split_by_group

from audiogen import clip, write

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)


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
        ("a1,1\na1,0\n", "line 3: duplicate itemid 'a1' (the same clip as line 2)"),
        ("a1,1\na1.wav,0\n", "line 3: duplicate itemid 'a1.wav' (the same clip as line 2)"),
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


def test_rows_longer_than_the_header_and_non_utf8_tables_are_named(bad_layout):
    (bad_layout / "l.csv").write_text("itemid,hasbird\na1,1\nb2,0,extra\n")
    with pytest.raises(DatasetError, match=r"l.csv line 3: 1 more field\(s\) than the header's 2"):
        read_bad(bad_layout / "wav", bad_layout / "l.csv")
    (bad_layout / "l.csv").write_bytes(b"itemid,hasbird\na1,1\n\xff\xfe,0\n")
    with pytest.raises(DatasetError, match=r"l.csv: not UTF-8 text"):
        read_bad(bad_layout / "wav", bad_layout / "l.csv")


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


def test_split_without_groups_is_by_file_stratified_and_repeatable(tmp_path):
    items = [Item(tmp_path / f"{d}{label}{i}.wav", label, d, f"{d}{label}{i}") for d in ("ff", "wb") for label in (0, 1) for i in range(8)]
    train, val = split_by_group(items, 0.25, seed=3)
    assert not set(train) & set(val) and len(train) + len(val) == len(items)
    for d in ("ff", "wb"):
        for label in (0, 1):
            assert sum(1 for i in val if i.dataset == d and i.label == label) == 2
    assert split_by_group(items, 0.25, seed=3) == (train, val)
    assert split_by_group(items, 0.25, seed=4) != (train, val)


def test_splits_and_folds_keep_each_recording_on_one_side(tmp_path):
    # 12 recordings of 1-9 clips each, in two blocks and both labels: a group never straddles.
    items = [
        Item(tmp_path / f"r{g}_{c}.wav", g % 2, "nips4b" if g < 6 else "esc50", f"r{g}_{c}", f"rec{g}")
        for g in range(12) for c in range(1 + g % 9)
    ]
    def sides(parts):
        return {i.group: {k for k, part in enumerate(parts) if i in part} for i in items}
    assert all(len(s) == 1 for s in sides(split_by_group(items, 0.25, seed=1)).values())
    folds = k_folds(items, 3, seed=1)
    assert sorted(str(i.path) for f in folds for i in f) == sorted(str(i.path) for i in items)
    assert all(len(s) == 1 for s in sides(folds).values())
    for fold in folds:  # every fold sees both blocks and both labels
        assert {(i.dataset, i.label) for i in fold} == {(b, label) for b in ("nips4b", "esc50") for label in (0, 1)}


def test_group_runs_cut_one_block_s_groups_into_runs_of_consecutive_files(tmp_path):
    """training.group_runs "esc50:8": each ESC-50 class becomes its own folds of 8 clips (a class
    is then on both sides of a split, a run never is); other blocks and the items' order stay."""
    from train.splits import regroup

    items = [Item(tmp_path / f"{cls}-{c:02d}.flac", 0, "esc50", f"{cls}-{c:02d}", f"class_{cls}") for cls in ("Dog", "Rain") for c in range(24, 0, -1)]
    items += [Item(tmp_path / f"n{c}.wav", 1, "nips4b", f"n{c}", "rec") for c in range(5)]
    out = regroup(items, ["esc50:8"])
    assert [i.path for i in out] == [i.path for i in items] and out[-5:] == items[-5:]
    groups = {i.path.name: i.group for i in out}
    assert groups["Dog-01.flac"] == groups["Dog-08.flac"] == "class_Dog#0" and groups["Dog-09.flac"] == "class_Dog#1"
    assert len({g for g in groups.values() if g.startswith("class_")}) == 6
    sides = {}
    for k, fold in enumerate(k_folds(out, 3, seed=0)):
        for i in fold:
            sides.setdefault(i.group, set()).add(k)
    assert all(len(s) == 1 for s in sides.values()) and len(sides["class_Dog#0"] | sides["class_Dog#1"] | sides["class_Dog#2"]) > 1
    assert regroup(items, []) == items
    (tmp_path / "t.yaml").write_text("training: {group_runs: ['esc50:0']}\n")
    from streamdet.typedconfig import ConfigError
    from train.config import load_train_config

    with pytest.raises(ConfigError, match="training.group_runs: expected BLOCK:N"):
        load_train_config(tmp_path / "t.yaml")


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


def test_a_threshold_per_block_holds_the_false_alarm_rate_in_every_block_not_only_pooled():
    """Many easy no-bird clips (synthetic speech) and a few hard ones (a field recorder): pooled,
    the 5% allowance is spent on the hard block; per block, each keeps to it."""
    rng = np.random.default_rng(0)
    items = [Item(REPO / f"easy{i}.wav", 0, "synthetic", f"e{i}") for i in range(400)] + [Item(REPO / f"hard{i}.wav", 0, "field", f"h{i}") for i in range(40)]
    items += [Item(REPO / f"bird{i}.wav", 1, "field", f"b{i}") for i in range(40)]
    level = {"synthetic": -3.0, "field": 0.0}
    decisions = {i: rng.normal(2.0 if i.label else level[i.dataset], 1.0, 10) for i in items}
    called = {}
    for per_block in (False, True):
        config = TrainConfig()
        config.mode, config.calibration.per_block = "contrast", per_block
        scoring, metrics = calibrate(config, {}, decisions)
        t = scoring["threshold"]
        if per_block:  # the artifact says which block set it
            assert max(metrics["val_block_levels"], key=metrics["val_block_levels"].get) == "field" and metrics["val_block_levels"]["field"] == pytest.approx(t, abs=1e-4)
        called[per_block] = {b: np.mean([decisions[i].max() >= t for i in items if i.label == 0 and i.dataset == b]) for b in level}
    assert called[False]["field"] > 0.2  # pooled: the hard block's clips called bird far beyond 5%
    assert all(share <= 0.05 for share in called[True].values())


def test_a_block_too_small_for_two_allowed_clips_is_pooled_with_the_other_small_ones():
    """With 5% allowed, a block needs 40 no-bird clips of its own: 30 clips would allow one, so
    its level would be its highest clip, and one odd recording would set the threshold."""
    from train.calibrate import SMALL_BLOCKS, block_levels

    rng = np.random.default_rng(1)
    big = list(rng.normal(0.0, 1.0, 400))
    odd = list(rng.normal(0.0, 1.0, 29)) + [9.0]  # one clip far above the rest
    levels = block_levels({"big": big, "odd": odd, "tiny": list(rng.normal(0.0, 1.0, 14))}, 0.05)
    assert set(levels) == {"big", SMALL_BLOCKS} and levels[SMALL_BLOCKS] < 9.0  # 44 clips together: two allowed
    assert levels["big"] == pytest.approx(np.sort(big)[-20])
    alone = block_levels({"odd": odd}, 0.05)  # nothing to pool with: still a level
    assert alone == {SMALL_BLOCKS: pytest.approx(9.0 * (1 + 1e-6))}
    few = block_levels({"big": big, "tiny": [5.0, 6.0]}, 0.05)  # too few even together: they count with everything
    assert few[SMALL_BLOCKS] == pytest.approx(np.sort(big + [5.0, 6.0])[-20])


def test_roc_auc_matches_pairwise_counting():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.standard_normal(200) + labels, 1)  # rounded: ties happen
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert roc_auc(labels, scores) == pytest.approx(brute)
    assert np.isnan(roc_auc(np.ones(3), np.arange(3)))


def test_weighted_and_block_balanced_auc():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 200)
    scores = np.round(rng.standard_normal(200) + labels, 1)
    assert weighted_roc_auc(labels, scores, np.ones(200)) == pytest.approx(roc_auc(labels, scores))
    doubled = np.r_[labels, labels[:50]], np.r_[scores, scores[:50]]  # weight 2 is the clip counted twice
    assert weighted_roc_auc(labels, scores, np.r_[np.full(50, 2.0), np.ones(150)]) == pytest.approx(roc_auc(*doubled))
    # A recorder prior: block "a" is mostly bird and scored high as a whole, "b" mostly not and low,
    # each ranked at chance inside. Pooled the prior looks like skill; balanced it is chance.
    labels = np.r_[np.ones(80), np.zeros(20), np.ones(10), np.zeros(90)]
    scores = np.r_[rng.normal(5, 1, 100), rng.normal(0, 1, 100)]
    blocks = ["a"] * 100 + ["b"] * 100
    assert roc_auc(labels, scores) > 0.75
    assert block_balanced_auc(labels, scores, blocks) == pytest.approx(0.5, abs=0.1)
    # Clips of a block holding one class only do not count; ranking inside each block does.
    perfect = np.r_[np.full(80, 9.0), np.full(20, 1.0), np.full(10, 8.0), np.full(90, 0.0)]
    assert block_balanced_auc(np.r_[labels, 0], np.r_[perfect, 99.0], blocks + ["speech"]) == pytest.approx(1.0)


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
    (tmp_path / "t.yaml").write_text("data: [{kind: bad, audio_dir: wav, labels: missing.csv}]\nmodel: {top_bands: 65}\n")
    result = subprocess.run([sys.executable, "-m", "train", "fit", "--config", str(tmp_path / "t.yaml")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "model.top_bands: expected at most features.n_mels (64), found 65" in result.stderr
    (tmp_path / "t.yaml").write_text("data: [{kind: bad, audio_dir: wav, labels: missing.csv}]\n")
    result = subprocess.run([sys.executable, "-m", "train", "fit", "--config", str(tmp_path / "t.yaml")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2 and "missing.csv: cannot read" in result.stderr


def test_pauc_is_mcclish_standardised_as_dcase_reports_it():
    """Checked against an independent computation: the ROC curve traced by brute force over every
    threshold, integrated numerically on a fine grid, then standardised (McClish 1989)."""
    from train.metrics import partial_auc

    rng = np.random.default_rng(5)
    for trial in range(5):
        labels = rng.integers(0, 2, 300)
        scores = np.round(rng.standard_normal(300) + 0.8 * labels, 1)  # ties happen
        thresholds = np.r_[np.inf, np.unique(scores)[::-1]]
        fpr = np.array([(scores[labels == 0] >= t).mean() for t in thresholds])
        tpr = np.array([(scores[labels == 1] >= t).mean() for t in thresholds])
        grid = np.linspace(0, 0.1, 200001)
        area = np.trapezoid(np.interp(grid, fpr, tpr), grid)
        expected = 0.5 * (1 + (area - 0.005) / (0.1 - 0.005))
        assert partial_auc(labels, scores, 0.1) == pytest.approx(expected, abs=1e-4)
    labels = np.r_[np.zeros(50), np.ones(50)]
    assert partial_auc(labels, np.arange(100.0)) == pytest.approx(1.0)  # perfect
    assert partial_auc(labels, -np.arange(100.0)) == pytest.approx(0.5 * (1 - 0.005 / 0.095))  # worst: below chance
    assert partial_auc(labels, np.zeros(100)) == pytest.approx(0.5)  # one tie everywhere: the diagonal, chance


def test_the_feature_cache_cuts_a_torn_tail_instead_of_misreading_later_files(tmp_path):
    from streamdet.detect.features import FeatureParams
    from train.cache import FeatureCache

    for i in range(3):
        write(tmp_path / f"a{i}.wav", clip(2.0, 22050, seed=i), 22050)
    params = FeatureParams()
    cache = FeatureCache(tmp_path / "cache", params)
    cache.ensure([tmp_path / "a0.wav"])
    first = np.array(cache.frames(tmp_path / "a0.wav"))
    with open(cache._frames_path, "ab") as f:  # what SIGKILL mid-write leaves: part of a frame, unindexed
        f.write(b"\x00" * (4 * params.n_mels * 7 + 5))
    again = FeatureCache(tmp_path / "cache", params)
    again.ensure([tmp_path / "a1.wav", tmp_path / "a2.wav"])
    fresh = FeatureCache(tmp_path / "fresh", params)
    fresh.ensure([tmp_path / "a1.wav", tmp_path / "a2.wav"])
    for name in ("a1.wav", "a2.wav"):
        np.testing.assert_array_equal(again.frames(tmp_path / name), fresh.frames(tmp_path / name))
    np.testing.assert_array_equal(again.frames(tmp_path / "a0.wav"), first)


@pytest.mark.parametrize("layout", ["distributed", "archive_folder", "root_is_archive_folder", "root_is_wav"])
def test_bad_presets_find_their_csv_and_clips_in_the_layouts_found_in_the_wild(tmp_path, layout):
    clips = {
        "distributed": tmp_path / "ff" / "wav",
        "archive_folder": tmp_path / "ff" / "ff1010bird_wav" / "wav",
        "root_is_archive_folder": tmp_path / "ff" / "ff1010bird_wav" / "wav",
        "root_is_wav": tmp_path / "ff" / "ff1010bird_wav" / "wav",
    }[layout]
    root = {"root_is_archive_folder": clips.parent, "root_is_wav": clips}.get(layout, tmp_path / "ff")
    clips.mkdir(parents=True)
    write(clips / "101089.wav", clip(1.0, 44100), 44100)
    (tmp_path / "ff" / "ff1010bird_metadata_2018.csv").write_text("itemid,datasetid,hasbird\n101089,ff1010bird,1\n")
    items = read_dataset(DataConfig(kind="ff1010bird", root=str(root)))
    assert [(i.itemid, i.path) for i in items] == [("101089", clips / "101089.wav")]


def test_a_bad_preset_that_finds_nothing_says_where_it_looked(tmp_path):
    with pytest.raises(DatasetError, match="no warblrb10k_public_metadata_2018.csv in"):
        read_dataset(DataConfig(kind="warblrb10k", root=str(tmp_path)))
    (tmp_path / "warblrb10k_public_metadata_2018.csv").write_text("itemid,datasetid,hasbird\n")
    with pytest.raises(DatasetError, match=r"no folder of .wav clips under .*looked in"):
        read_dataset(DataConfig(kind="warblrb10k", root=str(tmp_path)))


def test_unlabelled_folders_give_distinct_item_ids_for_same_named_files(tmp_path):
    from train.datasets import unlabelled

    for sub in ("site1", "site2"):
        (tmp_path / sub).mkdir()
        write(tmp_path / sub / "0001.wav", clip(1.0, 22050), 22050)
    write(tmp_path / "only.wav", clip(1.0, 22050), 22050)
    assert sorted(i.itemid for i in unlabelled(tmp_path)) == ["only", "site1/0001", "site2/0001"]


@pytest.mark.parametrize("kind", ["logmel_db", "bgnorm"])
def test_training_windows_are_the_windows_the_daemon_scores(tmp_path, kind):
    """What a VAE learns from the cache is what evaluation and the daemon compute (streaming
    equals offline is tested in test_features): the same frames, floors, and short-clip repeats."""
    from streamdet.detect.features import FeatureParams
    from train.cache import FeatureCache
    from train.clips import windows_of
    from train.windows import WindowSet

    params = FeatureParams(kind=kind, bg_seconds=2.0)
    items = []
    for i, seconds in enumerate((0.6, 3.3, 7.0)):
        path = write(tmp_path / f"c{i}.wav", clip(seconds, 22050, [(0.2, 0.3)], seed=i), 22050)
        items.append(Item(path, 0, "x", f"c{i}"))
    cache = FeatureCache(tmp_path / "cache", params)
    cache.ensure([i.path for i in items])
    got = WindowSet.of(cache, params, items)
    expected = torch.cat([windows_of(cache.frames(i.path), params) for i in items])
    assert len(got) == len(expected)
    assert torch.allclose(got.batch(np.arange(len(got))), expected, atol=1e-4)


def test_call_selection_keeps_the_windows_of_the_call_and_ambience_the_rest(tmp_path):
    """A bird clip's training windows are its likely calls (call_db above its median window);
    its ambience (quiet_db) is the rest, never the call."""
    from streamdet.detect.features import FeatureParams
    from train.cache import FeatureCache
    from train.windows import WindowSet

    params = FeatureParams()
    path = write(tmp_path / "bird.wav", clip(10.0, 22050, [(6.0, 1.0)], seed=3), 22050)
    cache = FeatureCache(tmp_path / "cache", params)
    cache.ensure([path])
    items = [Item(path, 1, "x", "bird")]
    calls = WindowSet.of(cache, params, items, call_db=3.0)
    ambience = WindowSet.of(cache, params, items, quiet_db=1.0)
    to_s = params.hop_length / params.sample_rate
    call_starts = calls.rows[:, 1] * to_s
    assert len(calls) and all(5.0 <= s <= 7.0 for s in call_starts), call_starts  # windows overlapping 6-7 s
    assert len(ambience) > 10 and not any(5.5 <= s <= 6.5 for s in ambience.rows[:, 1] * to_s)
    assert len(WindowSet.of(cache, params, items, call_db=3.0, max_per_clip=2)) == min(2, len(calls))


def test_strong_labels_choose_a_bird_clips_call_windows_and_its_quiet_ones(tmp_path):
    """select.strong: of a NIPS4B clip with strong labels, the bird VAE learns the windows a bird
    vocalisation overlaps by more than 50 ms, the background VAE (calls_and_quiet) those nothing
    overlaps (an Unknown vocalisation may be a bird: neither); a clip without them is unchanged."""
    from streamdet.detect.features import FeatureParams
    from train.cache import FeatureCache
    from train.strong import window_choosers
    from train.windows import WindowSet

    params = FeatureParams()
    folder = tmp_path / "nips4b"
    folder.mkdir()
    labelled = write(folder / "nips4b_birds_trainfile001.flac", clip(10.0, 22050, [(6.0, 1.0)], seed=3), 22050)
    other = write(folder / "nips4b_birds_trainfile002.flac", clip(5.0, 22050, seed=4), 22050)
    (tmp_path / "nips4bplus").mkdir()
    (tmp_path / "nips4bplus" / "events.csv").write_text("file_number,start_s,duration_s,end_s,label,taxon,call_type\n"
                                                         "1,6.0,1.0,7.0,Sp_song,bird,song\n1,2.0,0.5,2.5,Unknown,Unknown,Unknown\n")
    (tmp_path / "nips4bplus" / "file_summary.csv").write_text("file_number,has_annotation_file,annotation_file_empty,file_duration_s\n1,True,False,10.0\n")
    cache = FeatureCache(tmp_path / "cache", params)
    cache.ensure([labelled, other])
    items = [Item(labelled, 1, "x", "one"), Item(other, 1, "x", "two")]
    calls, quiet = window_choosers(params.window_seconds)
    to_s = params.hop_length / params.sample_rate
    everything = WindowSet.of(cache, params, items)
    bird = WindowSet.of(cache, params, items, chooser=calls)
    starts = {item.itemid: bird.rows[bird.rows[:, 0] == cache.entry(item.path)["offset"], 1] * to_s for item in items}
    assert len(starts["one"]) and all(5.0 < s < 6.95 for s in starts["one"]), starts["one"]
    assert len(starts["two"]) == int((everything.rows[:, 0] == cache.entry(other)["offset"]).sum())  # no strong labels: all of it
    background = WindowSet.of(cache, params, items, chooser=quiet)
    assert set(background.rows[:, 0]) == {cache.entry(labelled)["offset"]}
    begins = background.rows[:, 1] * to_s
    assert len(begins) > 5 and not any(1.0 < s < 2.5 or 5.0 < s < 7.0 for s in begins), begins


def test_mixing_adds_powers_and_draws_only_what_it_needs():
    from train.windows import WindowSet, mix_windows

    frames = np.concatenate([np.full((10, 4), -20.0, np.float32), np.full((10, 4), -40.0, np.float32)])
    birds = WindowSet(frames, np.array([[0, 0, 10]]), window_frames=5)
    backgrounds = WindowSet(frames, np.array([[10, 0, 10]]), floors=np.full((1, 4), -45.0, np.float32), window_frames=5)
    rng = np.random.default_rng(0)
    mixed = mix_windows(birds, backgrounds, (-20.0, -20.0), 3, rng)  # the bird brought down to the background's level
    assert mixed.shape == (3, 5, 4)
    # Two uncorrelated sounds at -40 dB make -36.99 dB, shown against the background's floor (-45 dB).
    np.testing.assert_allclose(mixed, 10 * np.log10(2 * 10 ** (-40 / 10)) + 45.0, atol=1e-4)
    loud = mix_windows(birds, backgrounds, (0.0, 0.0), 1, rng)
    np.testing.assert_allclose(loud, 10 * np.log10(10 ** (-2.0) + 10 ** (-4.0)) + 45.0, atol=1e-4)


def test_synthetic_speech_is_made_once_in_many_voices_as_recorders_give_it(tmp_path, monkeypatch):
    """Data kind espeak: no-bird clips of espeak-ng speech, grouped by voice, at several sample
    rates and levels; made once per (clips, seed), read back after; without espeak-ng one line."""
    import shutil

    import soundfile as sf

    if not shutil.which("espeak-ng"):
        pytest.skip("espeak-ng is not installed (./bootstrap.sh installs it)")
    config = DataConfig(kind="espeak", clips=12, seed=3, root=str(tmp_path))
    items = read_dataset(config)
    assert len(items) == 12 and all(i.label == 0 and i.dataset == "espeak" and i.path.is_file() for i in items)
    assert len({i.group for i in items}) >= 6 and len({sf.info(str(i.path)).samplerate for i in items}) >= 2
    assert all(0.3 < sf.info(str(i.path)).duration < 15 for i in items)
    made = {i.path: i.path.stat().st_mtime_ns for i in items}
    assert [i.path for i in read_dataset(config)] == list(made) and all(p.stat().st_mtime_ns == t for p, t in made.items())
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="espeak-ng is not installed"):
        read_dataset(DataConfig(kind="espeak", clips=2, seed=4, root=str(tmp_path)))


def test_band_limits_are_drawn_from_lowpass_hz(tmp_path):
    """Each chosen window loses every band above its cut and keeps every band below it; the cut
    lies in augment.lowpass_hz; a range that is not one is refused naming the field."""
    import dataclasses

    from streamdet.detect.features import mel_band_edges
    from streamdet.typedconfig import ConfigError
    from train.config import load_train_config
    from train.decide import Augmenter

    config = TrainConfig()
    config.features = dataclasses.replace(config.features, kind="bgnorm", f_max=10000.0)
    config.augment.lowpass, config.augment.level_db = 1.0, 0.0
    centres = mel_band_edges(config.features)[:, 1]
    x = torch.ones(400, config.features.window_frames, config.features.n_mels)
    lowest_cut = {}
    for name, hz in (("narrow", [8000.0, 9500.0]), ("default", [4000.0, 11000.0])):
        config.augment.lowpass_hz = hz
        emptied = (Augmenter(config, torch.Generator().manual_seed(0))(x) == 0).all(dim=1).numpy()  # [windows, bands]
        assert (emptied == (emptied.cumsum(axis=1) > 0)).all()  # a cut empties every band above it
        cuts = np.array([centres[row].min() if row.any() else np.inf for row in emptied])
        assert (cuts > hz[0]).all() and np.isfinite(cuts).mean() > 0.5
        lowest_cut[name] = cuts.min()
    assert lowest_cut["narrow"] > 8000.0 > lowest_cut["default"]
    (tmp_path / "t.yaml").write_text("augment: {lowpass_hz: [6000, 5000]}\n")
    with pytest.raises(ConfigError, match=r"augment.lowpass_hz: expected \[low, high\]"):
        load_train_config(tmp_path / "t.yaml")
