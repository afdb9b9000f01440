import json

import numpy as np
import pytest
import torch

from streamdet.detect import artifact
from streamdet.detect.features import FeatureParams, LogMel, offline_windows
from streamdet.detect.model import INFERENCE_FORM, DecisionNet, MaxPool2, PooledPhaseConv, ReconstructNet, architecture, inference_form, make_vae, phase_conv, rebuild_eager, subpixel

P = FeatureParams()


def make_detector(signs=(1.0,), kind="mlp", log_errors=False, peak_frames=0, top_bands=0):
    torch.manual_seed(0)
    vaes = [make_vae(kind, P.window_frames, P.n_mels, hidden=32, latent=4, channels=4) for _ in signs]
    k = len(signs)
    return ReconstructNet(LogMel(P), vaes, list(signs), torch.full((k, P.n_mels), -60.0), torch.full((k, P.n_mels), 12.0), P.window_frames, log_errors, peak_frames, top_bands).eval()


def make_meta(detector, **scoring):
    kind = "conv" if type(detector.vaes[0]).__name__ == "ConvVAE" else "mlp"
    return {
        "features": P.to_dict(),
        "normalisation": {"mean": detector.mean.reshape(len(detector.vaes), -1).tolist(), "std": detector.std.reshape(len(detector.vaes), -1).tolist()},
        "model": architecture(detector, kind, 32, 4, 4),
        "scoring": {"mode": "nobird", "polarity": "high_loss_is_bird", "threshold": 1.5, "scale": 0.25, **scoring},
        "provenance": {"trained_at": "2026-11-25T00:00:00+00:00", "code_version": "test", "data": {"clips": 0}},
    }


def windows_of_noise(seconds=3.0):
    rng = np.random.default_rng(0)
    return offline_windows((rng.standard_normal(int(seconds * P.sample_rate)) * 0.05).astype(np.float32), P)[1]


class MadeBeforeErrors(torch.nn.Module):
    """An artifact's module as every one was scripted before `errors()`: features, forward and
    band_errors only, the loss taken from the k highest bands by its own forward."""

    def __init__(self, net: ReconstructNet, top_bands: int):
        super().__init__()
        self.net, self.top_bands = net, top_bands

    @torch.jit.export
    def features(self, samples: torch.Tensor) -> torch.Tensor:
        return self.net.features(samples)

    @torch.jit.export
    def band_errors(self, windows: torch.Tensor) -> torch.Tensor:
        return self.net.band_errors(windows)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.band_errors(windows).topk(self.top_bands, dim=1).values.mean(dim=1)


@pytest.mark.parametrize("channels_in,channels_out,bias", [(8, 1, True), (16, 8, True), (4, 3, False)])
def test_a_subpixel_convolution_is_the_transposed_one(channels_in, channels_out, bias):
    torch.manual_seed(1)
    up = torch.nn.ConvTranspose2d(channels_in, channels_out, 4, stride=2, padding=1, bias=bias)
    x = torch.randn(3, channels_in, 7, 9)
    with torch.no_grad():
        assert torch.allclose(subpixel(up)(x), up(x), atol=1e-5)
    with pytest.raises(ValueError, match="4x4, stride-2, padding-1"):
        subpixel(torch.nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1))


@pytest.mark.parametrize("channels,bias,height,width", [(4, True, 56, 64), (8, False, 6, 10), (2, True, 2, 2)])
def test_a_phase_convolution_is_the_convolution_then_the_pooling(channels, bias, height, width):
    """Scripted too (the artifact's form): every output phase, the edges' zero padding and the
    bias land where the full-resolution convolution puts them."""
    torch.manual_seed(2)
    conv = torch.nn.Conv2d(1, channels, 3, padding=1, bias=bias)
    x = torch.randn(5, 1, height, width) * 3
    phases = torch.jit.script(phase_conv(conv))
    with torch.no_grad():
        assert torch.allclose(phases(x), MaxPool2()(conv(x)), atol=1e-5)
    assert phases.state_dict().keys() == conv.state_dict().keys()
    with pytest.raises(ValueError, match="from one channel"):
        phase_conv(torch.nn.Conv2d(2, 4, 3, padding=1))


@pytest.mark.parametrize("encoder", ["strided", "pooled", "lean", "wide"])
def test_a_decision_net_is_saved_in_its_inference_form_and_scores_as_trained(tmp_path, encoder):
    """Batch-norm folded, transposed convolutions as sub-pixel ones: the file says so, scores as
    the trained network does, and rebuilds eagerly (with its encoder's shape); the trained network
    itself is not changed."""
    torch.manual_seed(0)
    vaes = [make_vae("conv", P.window_frames, P.n_mels, 0, 4, 4, norm=True, encoder=encoder) for _ in range(2)]
    net = DecisionNet(LogMel(P), vaes, torch.full((2, P.n_mels), -60.0), torch.full((2, P.n_mels), 12.0), P.window_frames, 8)
    net.train()
    with torch.no_grad():  # batch-norm statistics far from their defaults, so folding them matters
        for _ in range(3):
            net.errors(windows_of_noise() * 1.5 + 20)
    net.eval()
    fast = inference_form(net)
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.ConvTranspose2d)) for m in fast.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # a copy was changed
    # Only the lean and wide encoders pool their first convolution before the activation.
    assert any(isinstance(m, PooledPhaseConv) for m in fast.modules()) == (encoder in ("lean", "wide"))
    meta = make_meta(net)
    meta["model"] = architecture(net, "conv", 0, 4, 4)
    path = artifact.save(net, meta, tmp_path / "d.pt")
    model = artifact.load(path, "cpu", optimise=True)
    assert model.meta["model"]["form"] == INFERENCE_FORM
    assert model.meta["model"].get("encoder", "strided") == encoder
    w = windows_of_noise()
    with torch.no_grad():
        expected_losses, expected_bands = net.errors(w)
        eager = rebuild_eager(artifact.load(path, "cpu").module, model.meta["model"], LogMel(P), P.window_frames, P.n_mels)
        assert torch.allclose(eager.errors(w)[0], expected_losses, atol=1e-4)
    losses, bands = model.errors(w)
    assert np.allclose(losses, expected_losses.numpy(), atol=1e-4) and np.allclose(bands, expected_bands.numpy(), atol=1e-4)


def test_a_decision_nets_head_gain_travels_in_its_artifact(tmp_path):
    """The head's weight in the loss is part of the architecture: an artifact without it (every
    one before `head_gain`) rebuilds at 1/n_mels, one with it at its own, and both score as trained."""
    w = windows_of_noise()
    losses = {}
    for gain in (None, 1.0):
        torch.manual_seed(1)  # the same weights for both gains
        vaes = [make_vae("conv", P.window_frames, P.n_mels, 0, 4, 4, norm=True, encoder="lean") for _ in range(2)]
        net = DecisionNet(LogMel(P), vaes, torch.full((2, P.n_mels), -60.0), torch.full((2, P.n_mels), 12.0), P.window_frames, 8, gain)
        with torch.no_grad():
            net.head[-1].bias.fill_(5.0)  # a head whose logit moves the loss, so the gain shows
        net.eval()
        meta = make_meta(net)
        meta["model"] = architecture(net, "conv", 0, 4, 4)
        assert meta["model"].get("head_gain") == gain
        path = artifact.save(net, meta, tmp_path / f"g{gain}.pt")
        with torch.no_grad():
            losses[gain] = net.errors(w)[0]
            saved = artifact.load(path, "cpu")
            eager = rebuild_eager(saved.module, saved.meta["model"], LogMel(P), P.window_frames, P.n_mels)
            assert eager.head_gain == (1.0 / P.n_mels if gain is None else gain)
            assert torch.allclose(eager.errors(w)[0], losses[gain], atol=1e-4)
        assert np.allclose(artifact.load(path, "cpu", optimise=True).errors(w)[0], losses[gain].numpy(), atol=1e-4)
    # The head's output is at least its last bias (5) less what the GELU layer below it can take away;
    # at full weight it moves the loss by (1 - 1/n_mels) of it.
    assert (losses[1.0] - losses[None]).abs().min() > 1.0


def test_a_decision_nets_own_head_convolution_travels_in_its_artifact(tmp_path):
    """model.head_channels: the head's own convolution (with a batch-norm that is not the identity)
    is part of the architecture, and the artifact scores as trained: scripted, rebuilt eagerly,
    and in the inference form the daemon runs (batch-norm folded into it)."""
    w = windows_of_noise()
    torch.manual_seed(2)
    vaes = [make_vae("conv", P.window_frames, P.n_mels, 0, 4, 4, norm=True, encoder="lean") for _ in range(2)]
    net = DecisionNet(LogMel(P), vaes, torch.full((2, P.n_mels), -60.0), torch.full((2, P.n_mels), 12.0), P.window_frames, 8, 1.0, head_channels=6)
    with torch.no_grad():
        for stage in net.head_stages:
            stage[1].running_mean.uniform_(-1.0, 1.0)
            stage[1].running_var.uniform_(0.5, 2.0)
    net.eval()
    meta = make_meta(net)
    meta["model"] = architecture(net, "conv", 0, 4, 4)
    assert meta["model"]["head_channels"] == 6 and net.head[0].in_features == 2 * 2 * 6
    path = artifact.save(net, meta, tmp_path / "own.pt")
    with torch.no_grad():
        losses = net.errors(w)[0]
        saved = artifact.load(path, "cpu")
        eager = rebuild_eager(saved.module, saved.meta["model"], LogMel(P), P.window_frames, P.n_mels)
        assert torch.allclose(eager.errors(w)[0], losses, atol=1e-4)
        without = DecisionNet(LogMel(P), vaes, net.mean.reshape(2, -1), net.std.reshape(2, -1), P.window_frames, 8, 1.0)
        assert "head_channels" not in architecture(without, "conv", 0, 4, 4)
    assert np.allclose(artifact.load(path, "cpu", optimise=True).errors(w)[0], losses.numpy(), atol=1e-4)


def test_bench_forms_times_every_candidate_against_the_artifact_as_saved(tmp_path):
    from rich.console import Console

    from streamdet.benchforms import run_forms

    torch.manual_seed(0)
    vaes = [make_vae("conv", P.window_frames, P.n_mels, 0, 4, 4, norm=True) for _ in range(2)]
    net = DecisionNet(LogMel(P), vaes, torch.full((2, P.n_mels), -60.0), torch.full((2, P.n_mels), 12.0), P.window_frames, 8).eval()
    meta = make_meta(net)
    meta["model"] = architecture(net, "conv", 0, 4, 4)
    model = artifact.load(artifact.save(net, meta, tmp_path / "d.pt"), "cpu")
    console = Console(record=True, width=200)
    got = run_forms(model, windows_of_noise(), batch=4, rounds=1, console=console)
    forms = got["forms"]
    assert {"as saved (scripted)", "inference form, scripted", "inference form, bfloat16 autocast (eager)", "inference form, int8 dynamic linear layers (eager)"} <= set(forms)
    assert forms["as saved (scripted)"]["max_abs_loss_diff"] == 0 and forms["as saved (scripted)"]["ratio"] == 1.0
    assert forms["inference form, scripted"]["max_abs_loss_diff"] < 1e-4 and forms["inference form, scripted"]["flipped"] == 0
    assert all(r["median"] > 0 for r in forms.values()) and "decisions flipped" in console.export_text()


def test_a_saved_module_that_scores_unlike_the_trained_one_is_not_written(tmp_path, monkeypatch):
    def broken(net):
        net = real(net)
        with torch.no_grad():
            net.vaes[0].decoder[0].bias.add_(1.0)  # the first sub-pixel convolution
        return net

    real = artifact.inference_form
    monkeypatch.setattr(artifact, "inference_form", broken)
    net = make_detector((1.0, -1.0), "conv")
    with pytest.raises(artifact.ArtifactError, match="scores windows differently from the trained one"):
        artifact.save(net, make_meta(net), tmp_path / "m.pt")
    assert not list(tmp_path.iterdir())


def test_an_artifact_made_before_errors_existed_is_scored_by_its_own_forward(tmp_path):
    net = make_detector((1.0, -1.0), "conv", top_bands=8)
    path = artifact.save(MadeBeforeErrors(net, 8), make_meta(net), tmp_path / "old.pt")
    model = artifact.load(path, "cpu", optimise=True)
    assert not hasattr(model.module, "errors")
    w = windows_of_noise()
    losses, bands = model.errors(w)
    with torch.no_grad():
        assert np.allclose(losses, net(w).numpy(), atol=1e-5) and np.allclose(bands, net.band_errors(w).numpy(), atol=1e-5)
    assert not np.allclose(losses, bands.mean(axis=1), atol=1e-3)  # the loss is its forward's, not a mean taken here


def test_the_bundled_artifact_scores_in_one_pass_as_its_forward_does():
    model = artifact.load(None, "cpu", optimise=True)
    assert hasattr(model.module, "errors")
    w = windows_of_noise()
    losses, bands = model.errors(w)
    assert np.allclose(losses, model.losses(w), atol=1e-5) and bands.shape == (len(w), P.n_mels)


@pytest.mark.parametrize("kind,log_errors,peak_frames,top_bands", [("conv", False, 0, 0), ("conv", True, 0, 0), ("mlp", True, 0, 0), ("mlp", False, 5, 0), ("conv", False, 0, 8), ("mlp", False, 0, 3)])
def test_every_vae_kind_scripts_saves_and_rebuilds_eagerly(tmp_path, kind, log_errors, peak_frames, top_bands):
    detector = make_detector((1.0, -1.0), kind, log_errors, peak_frames, top_bands)
    path = artifact.save(detector, make_meta(detector), tmp_path / "m.pt")
    model = artifact.load(path, "cpu", optimise=True)
    w = windows_of_noise()
    with torch.no_grad():
        expected = detector(w)
        saved = artifact.load(path, "cpu").module  # as saved: the optimised copy is frozen, without a state dict
        eager = rebuild_eager(saved, model.meta["model"], LogMel(P), P.window_frames, P.n_mels)(w)
    assert torch.allclose(torch.from_numpy(model.losses(w)), expected, atol=1e-4)
    assert torch.allclose(eager, expected, atol=1e-5)
    losses, bands = model.errors(w)
    assert np.allclose(losses, expected.numpy(), atol=1e-4)  # the daemon's loss is forward's
    # The contract: the loss is the mean of the bands, or of the top_bands highest of them.
    chosen = bands if not top_bands else -np.sort(-bands, axis=1)[:, :top_bands]
    assert np.allclose(chosen.mean(axis=1), losses, atol=1e-5)
    if top_bands:  # the same VAEs over all bands: the k highest bands' mean is never lower
        whole = make_detector((1.0, -1.0), kind, log_errors, peak_frames, 0)
        with torch.no_grad():
            assert (expected >= whole(w) - 1e-6).all() and (expected > whole(w) + 1e-3).any()
    if peak_frames:  # the same VAEs, averaged over the whole window: the peak stretch is never lower
        whole = make_detector((1.0, -1.0), kind, log_errors, 0)
        with torch.no_grad():
            assert (expected >= whole(w) - 1e-6).all() and (expected > whole(w) + 1e-3).any()


@pytest.mark.parametrize("signs", [(1.0,), (1.0, -1.0)])
def test_round_trip_keeps_outputs_and_metadata(tmp_path, signs):
    detector = make_detector(signs)
    meta = make_meta(detector)
    path = artifact.save(detector, meta, tmp_path / "m.pt")
    model = artifact.load(path, "cpu")
    w = windows_of_noise()
    with torch.no_grad():
        expected = detector(w).numpy()
    np.testing.assert_allclose(model.losses(w), expected, rtol=1e-5, atol=1e-6)
    losses, bands = model.errors(w)
    assert bands.shape == (len(w), P.n_mels)
    np.testing.assert_allclose(losses, expected, rtol=1e-5, atol=1e-6)
    for key in ("features", "normalisation", "model", "scoring", "provenance"):
        assert model.meta[key] == meta[key]
    assert model.meta["format"] == artifact.FORMAT and model.meta["format_version"] == artifact.FORMAT_VERSION
    assert model.features == P
    # The front end travels inside the artifact and equals streamdet's own.
    x = torch.from_numpy((np.random.default_rng(1).standard_normal(P.window_samples) * 0.1).astype(np.float32))
    assert torch.allclose(model.frontend(x), LogMel(P)(x), atol=1e-4)


def rewrite_meta(src, dst, change):
    extra = {artifact.META_NAME: ""}
    module = torch.jit.load(str(src), _extra_files=extra)
    meta = json.loads(extra[artifact.META_NAME])
    text = change(meta)  # a change may return the text itself, for what json.dumps cannot write
    torch.jit.save(module, str(dst), _extra_files={artifact.META_NAME: text if isinstance(text, str) else json.dumps(meta)})
    return dst


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda m: m["scoring"].update(polarity="up"), "scoring.polarity: expected one of high_loss_is_bird, low_loss_is_bird, found 'up'"),
        (lambda m: m.update(format_version=99), "format_version: expected 1"),
        (lambda m: m.update(format="something-else"), "format: expected 'streamdet-model'"),
        (lambda m: m["scoring"].update(threshold=float("nan")), "scoring.threshold: expected a finite number"),
        (lambda m: m["scoring"].update(scale=0), "scoring.scale: expected a positive number"),
        (lambda m: m["features"].update(kind="cqt"), "features.kind: expected one of 'logmel_db', 'pcen'"),
        (lambda m: m["features"].update(n_mels=40), "normalisation.mean: expected 1 row(s) (one per VAE) of 40 numbers"),
        (lambda m: m["features"].update(unknown_param=3), "features: unknown feature parameter"),
        (lambda m: m.pop("provenance"), "provenance: expected an object"),
        (lambda m: m["scoring"].update(energy={"weight": 0.5}), "scoring.energy.loss_centre: expected a finite number"),
        (lambda m: m["scoring"].update(energy={"weight": 0.5, "loss_centre": 0, "loss_spread": 1, "energy_spread": 1, "band_hz": [2000, 8000], "context_windows": 0.5}), "scoring.energy.context_windows: expected a whole number of windows"),
        (lambda m: m["features"].update(sample_rate=1_000_000_000), "features.sample_rate: expected one of 8000"),
        (lambda m: m["features"].update(sample_rate=22051), "features.sample_rate: expected one of 8000"),
        (lambda m: m["model"].update(top_bands=65), "model.top_bands: expected a whole number from 0 (all bands) to n_mels (64), found 65"),
        (lambda m: m["model"].update(top_bands="8"), "model.top_bands: expected a whole number from 0 (all bands) to n_mels (64), found 8"),
        (lambda m: m["model"].update(form="../int4"), "model.form: expected 'fused_subpixel' or none"),
        (lambda m: m["model"].update(form=["fused_subpixel"]), "model.form: expected 'fused_subpixel' or none"),
        (lambda m: json.dumps(m)[:-1] + ', "deep": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
    ],
)
def test_metadata_the_daemon_cannot_honour_is_refused(tmp_path, change, expected):
    good = artifact.save(make_detector(), make_meta(make_detector()), tmp_path / "good.pt")
    bad = rewrite_meta(good, tmp_path / "bad.pt", change)
    with pytest.raises(artifact.ArtifactError) as err:
        artifact.load(bad, "cpu")
    assert str(err.value).startswith(f"model {bad}: ") and expected in str(err.value)


class FailsOnOneWindow(torch.nn.Module):
    """Passes the load's shape checks (batches of 2 and 4), fails on the single window a live source gives."""

    def __init__(self, net: ReconstructNet):
        super().__init__()
        self.net = net

    @torch.jit.export
    def features(self, samples: torch.Tensor) -> torch.Tensor:
        return self.net.features(samples)

    @torch.jit.export
    def band_errors(self, windows: torch.Tensor) -> torch.Tensor:
        if windows.shape[0] == 1:
            raise RuntimeError("one window")
        return self.net.band_errors(windows)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.band_errors(windows).mean(dim=1)


def test_a_model_that_fails_on_a_single_window_is_refused_at_load_in_one_line(tmp_path):
    net = make_detector()
    path = tmp_path / "m.pt"
    torch.jit.save(torch.jit.script(FailsOnOneWindow(net)), str(path), _extra_files={artifact.META_NAME: json.dumps({"format": artifact.FORMAT, "format_version": artifact.FORMAT_VERSION, **make_meta(net)})})
    with pytest.raises(artifact.ArtifactError) as err:
        artifact.load(path, "cpu", optimise=True)
    assert str(err.value).startswith(f"model {path}: the model fails on one or two windows") and "\n" not in str(err.value)


def test_a_model_with_nan_weights_is_refused_at_load(tmp_path):
    detector = make_detector()
    path = artifact.save(detector, make_meta(detector), tmp_path / "m.pt")
    with torch.no_grad():
        detector.vaes[0].decoder[-1].bias.fill_(float("nan"))
    scripted = torch.jit.script(detector)
    torch.jit.save(scripted, str(tmp_path / "nan.pt"), _extra_files={artifact.META_NAME: json.dumps({"format": artifact.FORMAT, "format_version": artifact.FORMAT_VERSION, **make_meta(detector)})})
    with pytest.raises(artifact.ArtifactError, match="non-finite losses"):
        artifact.load(tmp_path / "nan.pt", "cpu")
    artifact.load(path, "cpu")  # the same model before its weights went bad loads


def test_metadata_that_disagrees_with_the_module_is_refused(tmp_path):
    good = artifact.save(make_detector(), make_meta(make_detector()), tmp_path / "good.pt")

    def claim_other_window(m):
        m["features"]["window_frames"] = 30
        m["features"]["hop_frames"] = 10

    bad = rewrite_meta(good, tmp_path / "bad.pt", claim_other_window)
    with pytest.raises(artifact.ArtifactError, match="rejects windows of 30x64"):
        artifact.load(bad, "cpu")


def test_files_that_are_not_artifacts_are_refused(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(artifact.ArtifactError, match="not a TorchScript archive"):
        artifact.load(tmp_path / "junk.pt", "cpu")
    torch.jit.save(torch.jit.script(make_detector()), str(tmp_path / "bare.pt"))
    with pytest.raises(artifact.ArtifactError, match="no streamdet.json metadata"):
        artifact.load(tmp_path / "bare.pt", "cpu")
    with pytest.raises(artifact.ArtifactError, match="no such file"):
        artifact.load(tmp_path / "missing.pt", "cpu")


def test_the_bundled_model_loads_and_describes_itself():
    model = artifact.load(None, "cpu")
    d = model.describe()
    assert d["mode"] in artifact.MODES and d["trained_at"] and d["sha256"]
    assert model.meta["provenance"]["data"]["clips"] > 0
