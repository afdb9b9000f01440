"""The model artifact: one TorchScript file that carries everything needed to use it.

The scripted network holds the feature front end and the normalisation; `streamdet.json`, an
extra file inside the same archive, describes them together with the threshold, its calibration,
the polarity and the provenance.  A file whose description the daemon cannot honour is refused.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import math
import mmap
import time
from pathlib import Path

import numpy as np
import torch

from streamdet.detect.features import FeatureParams
from streamdet.detect.model import INFERENCE_FORM, ConvVAE, inference_form
from streamdet.detect.modes import MODES, POLARITIES
from streamdet.detect.scoring import Scorer, energy_problems
from streamdet.errors import one_line
from streamdet.service.watchdog import ModelFailure, call_budget

log = logging.getLogger(__name__)

FORMAT = "streamdet-model"
FORMAT_VERSION = 1
META_NAME = "streamdet.json"
MODEL_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)  # the daemon resamples every source to one of these


class ArtifactError(Exception):
    pass


def bundled_model_path() -> Path:
    return Path(str(importlib.resources.files("streamdet") / "assets" / "default.pt"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ArtifactError(f"model.device: {name!r} was asked for, but torch sees no CUDA device (use 'auto' or 'cpu')")
    return device


def save(detector: torch.nn.Module, meta: dict, path: Path | str) -> Path:
    """Script `detector` in its inference form (convolutional VAEs: batch-norm folded, transposed
    convolutions as sub-pixel ones), embed `meta`, write one file, and prove it loads back and
    scores as the trained network does."""
    path = Path(path)
    trained = detector.cpu().eval()
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    if any(isinstance(v, ConvVAE) for v in getattr(trained, "vaes", [])):
        detector = inference_form(trained)
        meta["model"] = {**meta["model"], "form": INFERENCE_FORM}
    scripted = torch.jit.script(detector)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.jit.save(scripted, str(tmp), _extra_files={META_NAME: json.dumps(meta, indent=1, sort_keys=True)})
    _same_losses(load(tmp, "cpu"), trained, tmp)
    tmp.replace(path)
    return path


def _same_losses(model: "Model", trained: torch.nn.Module, where: Path) -> None:
    """The saved file must score dB-like windows as the trained network does (the inference form
    differs by float rounding only)."""
    p = model.features
    probe = torch.randn(8, p.window_frames, p.n_mels, generator=torch.Generator().manual_seed(1)) * 12 + 15
    with torch.no_grad():
        expected = trained(probe)
    found = torch.from_numpy(model.losses(probe))
    if not torch.allclose(found, expected, rtol=1e-4, atol=1e-4):
        where.unlink(missing_ok=True)
        raise ArtifactError(f"model {where}: the saved module scores windows differently from the trained one (largest difference {(found - expected).abs().max().item():.3g})")


class Model:
    """A loaded artifact, checked, on its device."""

    def __init__(self, path: Path, module: torch.jit.ScriptModule, meta: dict, device: torch.device):
        self.path, self.module, self.meta, self.device = path, module, meta, device
        self.features = FeatureParams.from_dict(meta["features"])
        self.sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.seconds_per_window = 0.0  # measured by the load-time probe: what a call's budget is made of
        self.watchdog = None  # a daemon's Watchdog times every call; an exception becomes one ModelFailure

    def _call(self, what: str, windows: int, call):
        """`call()` under the watchdog's budget for `windows` windows; any exception is a ModelFailure."""
        if self.watchdog is None:
            return call()
        try:
            with self.watchdog.timed(f"model {self.path.name}: {what}", call_budget(self.seconds_per_window, windows)):
                return call()
        except Exception as exc:
            raise ModelFailure(f"model {self.path}: {what} failed: {one_line(exc, 200)}") from None

    def scorer(self) -> Scorer:
        """A fresh scorer (it keeps per-segment state): loss -> decision -> calibrated score."""
        return Scorer(self.meta["scoring"], self.features)

    @property
    def polarity(self) -> str:
        return self.meta["scoring"]["polarity"]

    def frontend(self, samples: torch.Tensor) -> torch.Tensor:
        windows = len(samples) // max(1, self.features.hop_length * self.features.hop_frames)
        return self._call("features()", windows, lambda: self.module.features(samples.to(self.device)))

    def losses(self, windows: torch.Tensor) -> np.ndarray:
        def call():
            with torch.no_grad():
                return self.module(windows.to(self.device)).float().cpu().numpy()

        return self._call("forward()", len(windows), call)

    def errors(self, windows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(loss per window, error per window and mel band), as the module computes them: in one
        pass, or in two for an artifact made before its module had `errors()`."""
        def call():
            with torch.no_grad():
                x = windows.to(self.device)
                loss, bands = self.module.errors(x) if hasattr(self.module, "errors") else (self.module(x), self.module.band_errors(x))
            return loss.float().cpu().numpy(), bands.float().cpu().numpy()

        return self._call("band_errors()", len(windows), call)

    def describe(self) -> dict:
        p = self.meta.get("provenance", {})
        return {
            "path": str(self.path),
            "sha256": self.sha256[:16],
            "mode": self.meta["scoring"]["mode"],
            "polarity": self.polarity,
            "threshold": float(self.meta["scoring"]["threshold"]),
            "energy_weight": (self.meta["scoring"].get("energy") or {}).get("weight", 0.0),
            "trained_at": p.get("trained_at"),
            "code_version": p.get("code_version"),
            "device": str(self.device),
        }


def jit_memory_allowed() -> bool:
    """Whether this process may map memory both writable and executable: oneDNN, torch's CPU
    kernel library, compiles its kernels into such memory; systemd's MemoryDenyWriteExecute=yes
    (the kernel's PR_SET_MDWE, or a seccomp filter) refuses it."""
    try:
        mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()
        return True
    except OSError:
        return False


def use_native_kernels_without_jit_memory() -> None:
    """Where oneDNN cannot compile, use torch's own CPU kernels (as fast for these small models:
    docs/measurements.md) instead of failing on the first GELU or convolution."""
    if torch.backends.mkldnn.enabled and not jit_memory_allowed():
        torch.backends.mkldnn.enabled = False
        log.info("writable executable memory is refused (MemoryDenyWriteExecute): oneDNN off, torch's native CPU kernels on")


def load(path: Path | str | None, device: str | torch.device = "auto", optimise: bool = False) -> Model:
    """Load and check an artifact; `optimise` for a daemon that only scores with it."""
    use_native_kernels_without_jit_memory()
    path = bundled_model_path() if path is None else Path(path)
    where = f"model {path}"
    if not path.is_file():
        raise ArtifactError(f"{where}: no such file")
    device = resolve_device(device) if isinstance(device, str) else device
    extra = {META_NAME: ""}
    try:
        module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
    except Exception as exc:
        reason = one_line(exc, limit=None)
        raise ArtifactError(f"{where}: not a TorchScript archive ({reason if len(reason) <= 100 else reason[:100] + '...'})") from None
    if not extra[META_NAME]:
        raise ArtifactError(f"{where}: no {META_NAME} metadata inside; it was not exported by streamdet")
    try:
        meta = json.loads(extra[META_NAME])
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{where}: {META_NAME} is not valid JSON ({one_line(exc, 100)})") from None
    except RecursionError:
        raise ArtifactError(f"{where}: {META_NAME} is nested too deeply to be a model description") from None
    for problem in metadata_problems(meta):
        raise ArtifactError(f"{where}: {problem}")
    module.eval()
    model = Model(path, module, meta, device)
    _smoke_test(model, where)
    if optimise and meta["model"].get("kind") not in UNOPTIMISED_KINDS:
        model.module = _optimised(module, model)
    _warm_up(model, where)
    return model


def _warm_up(model: Model, where: str, calls: int = 3) -> None:
    """Call the daemon's methods with live-sized inputs a few times: TorchScript profiles a
    method's first calls and optimises it on a later one, which a live daemon's first windows
    would otherwise wait for (their latency, and its p99, would carry it)."""
    p = model.features
    windows = torch.randn(2, p.window_frames, p.n_mels, generator=torch.Generator().manual_seed(2)) * 10 - 50
    hop = torch.zeros(p.hop_length * p.hop_frames + p.n_fft)
    try:
        for _ in range(calls):
            model.frontend(hop)
            model.errors(windows[:1])
            model.errors(windows)
    except Exception as exc:
        raise ArtifactError(f"{where}: the model fails on one or two windows, as a live source gives them ({one_line(exc, 160)})") from None


# torch.jit.optimize_for_inference moves convolutions to oneDNN's layout, which made the
# convolutional VAEs slower and the MLP VAEs faster (docs/measurements.md).
UNOPTIMISED_KINDS = ("conv_vae",)


def _optimised(module, model: Model):
    """A frozen, inference-optimised copy (faster for MLP VAEs on small CPU batches), used only if
    it agrees with the module as saved; the file itself is never changed."""
    p = model.features
    probe = torch.randn(4, p.window_frames, p.n_mels, device=model.device) * 10 - 50
    try:
        methods = [m for m in ("errors", "band_errors", "features") if hasattr(module, m)]
        fast = torch.jit.optimize_for_inference(torch.jit.freeze(module, preserved_attrs=methods), other_methods=methods)
        with torch.no_grad():
            if torch.allclose(fast.band_errors(probe), module.band_errors(probe), rtol=1e-4, atol=1e-5):
                return fast
        log.warning("model %s: the optimised module disagrees with the saved one; using the saved one", model.path)
    except Exception as exc:  # an optimisation pass torch cannot do here is no reason to refuse the model
        log.warning("model %s: not optimised (%s)", model.path, one_line(exc, 120))
    return module


def metadata_problems(meta: dict):
    """Every reason the daemon cannot honour `meta`, as 'field: expected ..., found ...'."""
    if not isinstance(meta, dict):
        yield f"metadata: expected a JSON object, found {type(meta).__name__}"
        return
    if meta.get("format") != FORMAT:
        yield f"format: expected {FORMAT!r}, found {meta.get('format')!r}"
        return
    if meta.get("format_version") != FORMAT_VERSION:
        yield f"format_version: expected {FORMAT_VERSION} (this streamdet's), found {meta.get('format_version')!r}; re-export the model with this version of train/"
        return
    for section in ("features", "normalisation", "model", "scoring", "provenance"):
        if not isinstance(meta.get(section), dict):
            yield f"{section}: expected an object, found {meta.get(section)!r}"
            return
    try:
        params = FeatureParams.from_dict(meta["features"])
    except (TypeError, ValueError) as exc:
        yield f"features: {exc}"
        return
    for key, text in params.problems():
        yield f"features.{key}: {text}"
    if params.sample_rate not in MODEL_RATES:
        yield f"features.sample_rate: expected one of {', '.join(map(str, MODEL_RATES))} Hz, found {str(params.sample_rate)[:20]}"
        return
    if not 16 <= params.n_fft <= 16384 or params.n_mels > 512 or params.window_frames > 1000:
        yield f"features: expected n_fft 16-16384, n_mels at most 512 and window_frames at most 1000, found {params.n_fft}, {params.n_mels}, {params.window_frames}"
        return
    signs = meta["model"].get("signs")
    if not isinstance(signs, list) or not signs:
        yield f"model.signs: expected a list with one sign per VAE, found {signs!r}"
        return
    form = meta["model"].get("form")
    if form is not None and form != INFERENCE_FORM:
        yield f"model.form: expected {INFERENCE_FORM!r} or none (the form the network was trained in), found {str(form)[:30]!r}"
    top = meta["model"].get("top_bands", 0)
    if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= params.n_mels:
        yield f"model.top_bands: expected a whole number from 0 (all bands) to n_mels ({params.n_mels}), found {str(top)[:30]}"
    for key in ("mean", "std"):
        rows = meta["normalisation"].get(key)
        if not isinstance(rows, list) or len(rows) != len(signs) or any(not isinstance(r, list) or len(r) != params.n_mels for r in rows):
            yield f"normalisation.{key}: expected {len(signs)} row(s) (one per VAE) of {params.n_mels} numbers (one per mel band), found {_short(rows)}"
    s = meta["scoring"]
    if s.get("mode") not in MODES:
        yield f"scoring.mode: expected one of {', '.join(MODES)}, found {s.get('mode')!r}"
    if s.get("polarity") not in POLARITIES:
        yield f"scoring.polarity: expected one of {', '.join(POLARITIES)}, found {s.get('polarity')!r}"
    if not _finite(s.get("threshold")):
        yield f"scoring.threshold: expected a finite number, found {s.get('threshold')!r}"
    if not _finite(s.get("scale")) or s["scale"] <= 0:
        yield f"scoring.scale: expected a positive number, found {s.get('scale')!r}"
    if "clip_scale" in s and (not _finite(s["clip_scale"]) or s["clip_scale"] <= 0):
        yield f"scoring.clip_scale: expected a positive number, found {str(s['clip_scale'])[:30]}"
    yield from energy_problems(s.get("energy"))
    if s.get("energy") and params.kind == "pcen":
        yield f"scoring.energy: needs features.kind 'logmel_db' or 'bgnorm' (it measures dB band energy), found {params.kind!r}"


def _smoke_test(model: Model, where: str) -> None:
    """The scripted module must agree with its own description: frames and window shapes."""
    p = model.features
    try:
        frames = model.frontend(torch.zeros(p.window_samples))
        losses = model.losses(torch.zeros(2, p.window_frames, p.n_mels, device=model.device))
    except Exception as exc:
        raise ArtifactError(f"{where}: the model rejects windows of {p.window_frames}x{p.n_mels} described by its metadata ({one_line(exc, 160)})") from None
    if tuple(frames.shape) != (p.window_frames, p.n_mels):
        raise ArtifactError(f"{where}: features: metadata describes {p.window_frames}x{p.n_mels} frames per window, the embedded front end gives {tuple(frames.shape)}")
    if losses.shape != (2,):
        raise ArtifactError(f"{where}: forward: expected one loss per window, found shape {losses.shape}")
    probe = torch.randn(4, p.window_frames, p.n_mels, generator=torch.Generator().manual_seed(0)) * 10 - 50  # dB-like windows
    started = time.perf_counter()
    probe_losses = model.losses(probe)
    model.seconds_per_window = (time.perf_counter() - started) / len(probe)
    if not np.isfinite(losses).all() or not np.isfinite(probe_losses).all():
        raise ArtifactError(f"{where}: the model gives non-finite losses (NaN or infinite weights?); it cannot score anything")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 50 else f"a {type(value).__name__} of {len(value)} items"
