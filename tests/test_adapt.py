"""`python -m train adapt`: the bundled model fitted to a site's reviews (from the clips' sidecars, as
the web page stores them), measured on the site's other clips; too few reviews refused in one line."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import REPO, two_site_manifest

from streamdet.detect import artifact
from streamdet.detect.features import windows_from_frames

from audiogen import clip, noise, write

pytestmark = pytest.mark.slow  # starts processes (see the README's contributing notes)
RATE = 22050


def squeak(seed: int) -> np.ndarray:
    """A site's own nuisance the bundled model takes for a bird: a machine's squeak, a 100-ms sweep
    up 1.5 kHz from 4-5 kHz every 0.4 s."""
    x = noise(5.0, RATE, seed=seed)
    t = np.arange(len(x)) / RATE
    into = t % 0.4
    f = 4000 + 1000 * np.random.default_rng(seed).random() + 15000 * into
    return (x + 0.05 * (into < 0.1) * np.sin(2 * np.pi * np.cumsum(f) / RATE)).astype(np.float32)


def site_clip(kind: str, seed: int) -> np.ndarray:
    return {"bird": lambda: clip(5.0, RATE, [(1.0, 1.5)], seed=seed), "squeak": lambda: squeak(seed), "quiet": lambda: noise(5.0, RATE, seed=seed)}[kind]()


def reviewed_station(root, counts: dict[str, int]):
    """A recording directory as the daemon and the page leave it: clips named by the recorder, each
    sidecar with its review (a squeak and a quiet stretch are both 'not a bird')."""
    folder = root / "clips" / "yard"
    folder.mkdir(parents=True)
    n = 0
    for kind, count in counts.items():
        for i in range(count):
            n += 1
            name = f"yard_20261201T{n // 60:02d}{n % 60:02d}00_0a0b0c0d_e{n}"
            write(folder / f"{name}.flac", site_clip(kind, 1000 * n + i), RATE)
            label = "bird" if kind == "bird" else "not_bird"
            (folder / f"{name}.json").write_text(json.dumps({"writer": "streamdet", "source": "yard", "run_id": "0a0b0c0d", "event_id": n, "review": {"label": label}}))
    (folder / "yard_20261201T235900_0a0b0c0d_e999.json").write_text(json.dumps({"writer": "streamdet", "source": "yard"}))  # not reviewed: left out
    return root / "clips"


def called(model, kind: str, seeds) -> int:
    out = 0
    for seed in seeds:
        frames = model.frontend(torch.from_numpy(site_clip(kind, seed)))
        windows = windows_from_frames(frames.numpy(), model.features)[1]
        out += float(model.losses(windows).max()) >= model.meta["scoring"]["threshold"]
    return out


def adapt(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "train", "adapt", *args], capture_output=True, text=True, cwd=REPO, timeout=600)


def test_fifty_reviews_teach_the_bundled_model_a_site_nuisance_and_keep_its_birds(tmp_path):
    clips = reviewed_station(tmp_path, {"bird": 10, "squeak": 20, "quiet": 20})
    out = tmp_path / "site.pt"
    result = adapt("--reviews", str(clips), "--out", str(out), "--cache", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "adapted (out of fold)" in result.stdout and str(out) in result.stdout
    base, site = artifact.load(None, "cpu"), artifact.load(out, "cpu")  # the daemon's own checks
    p = site.meta["provenance"]
    assert p["adapted_from"]["sha256"] == base.sha256 and (p["site"]["bird"], p["site"]["no_bird"]) == (10, 40)
    assert p["site"]["nobird_called_at_most"] == 0.05
    # The site's other clips, never reviewed: the squeak is no longer a bird, the birds still are.
    fresh = range(50_000, 50_012)
    assert called(base, "squeak", fresh) >= 10
    assert called(site, "squeak", fresh) <= 1 and called(site, "bird", fresh) >= 9 and called(site, "quiet", fresh) == 0


def test_too_few_reviews_of_either_label_are_refused_in_one_line_naming_what_it_needs(tmp_path, capsys):
    clips = reviewed_station(tmp_path, {"bird": 3, "quiet": 12})
    result = adapt("--reviews", str(clips), "--out", str(tmp_path / "site.pt"), "--cache", str(tmp_path / "cache"))
    assert result.returncode == 2 and not (tmp_path / "site.pt").exists()
    line = result.stderr.strip().splitlines()[-1]
    assert "too few reviewed clips" in line and "3 bird and 12 no-bird" in line and "at least 5 bird" in line
    result = adapt("--reviews", str(tmp_path / "missing"), "--out", str(tmp_path / "site.pt"))
    assert result.returncode == 2 and "missing: not a folder" in result.stderr

    from train.cli import main

    for share in ("0", "1.5", "-0.1", "nan"):  # refused before any clip or model is read: the folder is not even looked at
        assert main(["adapt", "--reviews", str(tmp_path / "missing"), "--out", str(tmp_path / "site.pt"), "--nobird-called", share]) == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert line == f"train: error: --nobird-called: a share of the site's no-bird clips, between 0 and 1 (0.05 is 5%), found {float(share)}"


def test_the_share_of_no_bird_clips_let_through_sets_the_adapted_threshold(monkeypatch):
    """--nobird-called: a station that would rather find more birds lets more of its no-bird
    clips through; the threshold comes down, and holds that share of the out-of-fold decisions."""
    from train.adapt import SiteWindows, adapted_head, decision_net

    monkeypatch.setattr("train.adapt.STEPS", 100)  # the threshold's rule is under test, not how far the head converges

    net = decision_net(artifact.load(None, "cpu"))
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([1.0] * 20 + [0.0] * 40)
    clip_of = torch.arange(60).repeat_interleave(3)  # three windows a clip
    pooled = torch.randn(180, net.head[0].in_features, generator=g) + 0.8 * labels[clip_of, None]
    site = SiteWindows(torch.randn(180, net.n_mels, generator=g).abs(), pooled, clip_of, torch.zeros(180, dtype=torch.bool), labels)
    levels = {}
    for share in (0.05, 0.3):
        _, levels[share], oof = adapted_head(net, site, nobird_called=share)
        nobird = oof[labels.numpy() == 0]
        assert np.mean(nobird >= levels[share]) <= share and np.mean(nobird >= levels[share]) > share - 1 / 40  # as many as allowed
    assert levels[0.3] < levels[0.05]


def test_kshot_holds_each_block_out_of_training_and_adapts_on_k_of_its_clips(tmp_path):
    """The curve a site's reviews are planned by: a base model trained without the block (kept, so
    a second pull toward the base is measured without training again), adapted on k clips of it,
    both scored on its other clips."""
    from train.config import load_train_config
    from train.kshot import kshot

    config = load_train_config(two_site_manifest(tmp_path, epochs=2))
    config.training.objective, config.model.kind, config.model.channels = "decision", "conv", 4
    out = tmp_path / "kshot.json"
    result = kshot(config, ["siteA"], [6], 1, out, pulls=(1.0,))
    base = tmp_path / "kshot.base-siteA.pt"
    assert base.exists() and json.loads(out.read_text()) == result
    curve = result["siteA"]["curves"]["1.0"]["6"]
    assert result["siteA"]["clips"] == 16 and len(curve["draws"]) == 1
    for run in curve["draws"]:  # 6 reviewed, the other 10 scored by both models
        assert run["base"]["clips"] == run["adapted"]["clips"] == 10 and 0.0 <= run["adapted"]["auc"] <= 1.0
        # Which birds were found, per recording (an ESC-50 class in the real block): the counts add
        # up to the draw's birds found, by each model.
        by_group = run["found_by_group"]
        assert set(by_group) <= {f"siteA_r{r}" for r in (1, 3, 5, 7)} and sum(n for n, _, _ in by_group.values()) == run["adapted"]["bird"]
        for who, column in (("base", 1), ("adapted", 2)):
            assert sum(g[column] for g in by_group.values()) == round(run[who]["birds_found"] * run[who]["bird"])
    assert set(curve["birds_found_by_group"]) == set(curve["draws"][0]["found_by_group"])
    kept = base.stat().st_mtime_ns
    again = kshot(config, ["siteA"], [6], 1, out, pulls=(1.0, 10.0))
    assert base.stat().st_mtime_ns == kept and set(again["siteA"]["curves"]) == {"1.0", "10.0"}
    with pytest.raises(ValueError, match="decision-trained convolutional"):
        config.training.objective = "reconstruct"
        kshot(config, ["siteA"], [6], 1, tmp_path / "other.json")
