"""The training configuration (configs/train.yaml), loaded with streamdet's typed loader."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from streamdet.detect.features import FeatureParams
from streamdet.detect.modes import MODES
from streamdet.typedconfig import PATH, build, check, in_file, load_yaml, rebase_paths

# The BAD 2018 datasets as distributed: `root` holds the metadata CSV and the `wav/` folder.
PRESETS = {
    "ff1010bird": "ff1010bird_metadata_2018.csv",
    "warblrb10k": "warblrb10k_public_metadata_2018.csv",
    "birdvox20k": "BirdVoxDCASE20k_csvpublic.csv",
}
DATA_KINDS = ("bad", "manifest", "espeak", *PRESETS)


@dataclass
class DataConfig:
    """One labelled dataset.

    kind `bad`: a folder of clips (`audio_dir`) plus a BAD 2018 CSV (`labels`: itemid,[datasetid,]hasbird).
    kind `ff1010bird`, `warblrb10k`, `birdvox20k`: the same, found under `root` as distributed.
    kind `espeak`: `clips` no-bird clips of synthetic speech in many voices (train/speech.py; needs espeak-ng).
    kind `manifest`: a table of `file,label` (CSV or TSV; label 0/1 or bird/nobird/unknown), such as
    ../shared/data/clips/MANIFEST.tsv; files relative to `audio_dir` or else to the table's folder,
    filtered by `split` and `min_confidence` when those columns exist."""

    kind: str = field(default="bad", metadata={"choices": DATA_KINDS})
    name: str | None = None
    root: str | None = field(default=None, metadata=PATH)
    audio_dir: str | None = field(default=None, metadata=PATH)
    labels: str | None = field(default=None, metadata=PATH)
    split: str | None = None
    min_confidence: str = field(default="medium", metadata={"choices": ("high", "medium", "low")})
    skip_bad_rows: bool = False
    # kind `espeak`: this many no-bird clips of synthetic speech (train/speech.py), made under
    # `root` (default: beside the feature cache) once per (clips, seed).
    clips: int = field(default=300, metadata={"min": 1, "max": 100_000})
    seed: int = 0

    def __post_init__(self):
        if self.kind in PRESETS:
            self.name = self.name or self.kind

    def problems(self):
        if self.kind in PRESETS and not (self.root or (self.audio_dir and self.labels)):
            yield "root", f"expected the folder holding {PRESETS[self.kind]} and the clips (wav/, or <archive>_wav/wav/)"
        if self.kind == "bad" and not (self.audio_dir and self.labels):
            yield "audio_dir", "expected both audio_dir and labels for a 'bad' dataset"
        if self.kind == "manifest" and not self.labels:
            yield "labels", "expected the path of the file,label table"


@dataclass
class NetConfig:
    kind: str = field(default="mlp", metadata={"choices": ("mlp", "conv")})  # conv: 2-D convolutions over (time, mel)
    hidden: int = field(default=256, metadata={"min": 8, "max": 65536})  # mlp: width of the first layer
    channels: int = field(default=8, metadata={"min": 1, "max": 512})  # conv: channels of the first stage (then x2, x4)
    encoder: str = field(default="strided", metadata={"choices": ("strided", "pooled", "lean", "wide")})  # conv: streamdet.detect.model.conv_stack
    latent: int = field(default=16, metadata={"min": 1, "max": 4096})
    log_errors: bool = False  # contrast per band as a log ratio of the VAEs' errors (streamdet.detect.model.ReconstructNet)
    peak_frames: int = field(default=0, metadata={"min": 0, "max": 1000})  # 0: errors averaged over the window; k: where k frames peak
    top_bands: int = field(default=0, metadata={"min": 0, "max": 512})  # 0: the loss is the mean over all bands; k: over the k highest
    # decision: the weight of the head's logit in the loss; null: 1/n_mels, the head spread over the
    # bands and averaged with them (every decision-trained artifact before it)
    head_gain: float | None = field(default=None, metadata={"min": 0.0, "max": 1000.0})
    # decision: 0, the head reads the encoders' last maps as they are; k, through a 3x3 convolution of
    # k channels of its own per encoder, which only the decision trains (the ELBO never pulls on it;
    # measured, not bundled: docs/encoder-and-segments.md)
    head_channels: int = field(default=0, metadata={"min": 0, "max": 512})

    def problems(self):
        if self.kind == "conv" and self.encoder == "lean" and self.channels % 2:
            yield "channels", f"the lean encoder's first stage has half of them, so they must be even, found {self.channels}"


@dataclass
class TrainingConfig:
    epochs: int = field(default=30, metadata={"min": 1})
    patience: int = field(default=8, metadata={"min": 1})  # epochs without a better validation loss before stopping
    batch_size: int = field(default=128, metadata={"min": 1})
    learning_rate: float = field(default=1e-3, metadata={"above": 0.0})
    # decision: constant, or cosine (the rate falls along a half cosine to 0 over all epochs' steps,
    # so the last epochs settle instead of jumping between held-out losses a tenth apart; measured,
    # not better: docs/encoder-and-segments.md).
    lr_schedule: str = field(default="constant", metadata={"choices": ("constant", "cosine")})
    beta: float = field(default=0.1, metadata={"min": 0.0})
    val_fraction: float = field(default=0.25, metadata={"above": 0.0, "max": 0.9})
    seed: int = 0
    device: str = "auto"
    # At most this many windows of one clip per VAE and epoch (evenly spread over the clip), so long
    # focal recordings are cut into windows without dominating; 0: no limit.
    max_windows_per_clip: int = field(default=0, metadata={"min": 0})
    # Outlier exposure (contrast mode): each VAE is also shown the other VAE's windows, and pays
    # this weight times how far their reconstruction error is below `outlier_margin` (in units of
    # its training data's variance): it learns its own class and, explicitly, not the other.  0: off.
    outlier_weight: float = field(default=0.0, metadata={"min": 0.0, "max": 100.0})
    outlier_margin: float = field(default=1.0, metadata={"above": 0.0, "max": 100.0})
    # reconstruct: each VAE learns only its own class (anomaly detection as first described).  decision (contrast mode,
    # conv VAEs): both VAEs and a small head on their encoders are trained together with a logistic
    # loss on windows labelled by their clip, each VAE's ELBO kept as a regulariser (train/decide.py).
    # reference: not a VAE, the discriminative CNN every recipe is measured against (train/reference.py); never shipped.
    objective: str = field(default="reconstruct", metadata={"choices": ("reconstruct", "decision", "reference")})
    elbo_weight: float = field(default=1.0, metadata={"min": 0.0, "max": 100.0})  # decision: the ELBO's weight beside the logistic loss
    # decision: 0, each window carries its clip's label; k > 0, multiple-instance: each clip is a bag of
    # up to k of its windows, and the logistic loss is on the bag's smooth maximum (a bird clip needs
    # one bird window, a no-bird clip none), as a clip is scored by its highest window.
    clip_bags: int = field(default=0, metadata={"min": 0, "max": 1000})
    # decision: first train each VAE alone on its own class for this many epochs (as `reconstruct`
    # does), so that the contrast starts out as the plain VAE detector's; 0: from scratch.
    pretrain_epochs: int = field(default=0, metadata={"min": 0, "max": 10000})
    # "BLOCK:N": every group of BLOCK split into runs of N consecutive files for every split
    # (held-out part, calibration and cross-validation folds).  ["esc50:8"] makes ESC-50's groups
    # its own folds (a class's clips 1-8, 9-16, 17-24; ESC-50 keeps one source's clips in one
    # fold) instead of whole classes, as a station meets new clips of sounds it has heard.
    group_runs: list[str] = field(default_factory=list)

    def problems(self):
        for run in self.group_runs:
            block, _, n = run.partition(":")
            if not block or not n.isdigit() or int(n) < 1:
                yield "group_runs", f"expected BLOCK:N with N at least 1, found {run!r}"


@dataclass
class SelectConfig:
    """Which windows of bird clips teach the bird VAE (labels are per clip; most windows hold no call)."""

    # Keep windows whose 2-8 kHz energy is this many dB above the clip's median window; null keeps all.
    call_db: float | None = 3.0
    # Windows of bird clips at most this many dB above their clip's median also teach the background
    # VAE: the ambience of the sites birds were recorded at (most windows of a bird clip hold no call).
    background_quiet_db: float | None = None
    # Bird clips with strong labels (NIPS4Bplus beside NIPS4B): "calls" keeps only their windows a
    # bird vocalisation overlaps; "calls_and_quiet" also teaches the background VAE their windows no
    # vocalisation overlaps; "none" labels every window by its clip, as clips without them are.
    strong: str = field(default="none", metadata={"choices": ("none", "calls", "calls_and_quiet")})


@dataclass
class AugmentConfig:
    """Synthetic bird windows for the bird VAE: a bird window mixed into a background window."""

    bird_mixes: int = field(default=0, metadata={"min": 0})  # how many; 0 turns it off
    gain_db: list[float] = field(default_factory=lambda: [0.0, 15.0])  # the call's gain range
    # decision objective, against what differs between recorders (birds and no-birds alike):
    level_db: float = field(default=0.0, metadata={"min": 0.0, "max": 40.0})  # each window moved by up to +-this many dB
    lowpass: float = field(default=0.0, metadata={"min": 0.0, "max": 1.0})  # this share of windows band-limited ...
    lowpass_hz: list[float] = field(default_factory=lambda: [4000.0, 11000.0])  # ... at a cut drawn from this range

    def problems(self):
        if len(self.gain_db) != 2 or self.gain_db[0] > self.gain_db[1]:
            yield "gain_db", f"expected [low, high], found {self.gain_db}"
        if len(self.lowpass_hz) != 2 or not 0 < self.lowpass_hz[0] <= self.lowpass_hz[1]:
            yield "lowpass_hz", f"expected [low, high] in Hz, low above 0, found {self.lowpass_hz}"


@dataclass
class EnergyConfig:
    """Add to each window's decision its 2-8 kHz energy above the trailing median (streamdet.detect.scoring)."""

    weight: float = field(default=0.5, metadata={"min": 0.0})  # 0 turns it off
    context_windows: int = field(default=20, metadata={"min": 1})  # the trailing median's span (20 = 10 s)


@dataclass
class CalibrationConfig:
    strategy: str = field(default="clip_fpr", metadata={"choices": ("clip_fpr", "percentile", "gamma", "f1")})
    # clip_fpr: the threshold is met by this fraction of held-out no-bird clips' aggregates (the level
    # at which a clip is called); the daemon's windows use the same threshold.
    clip_fpr: float = field(default=0.05, metadata={"above": 0.0, "max": 0.5})
    # If set, the threshold is raised until held-out no-bird audio gives at most this many false
    # alarms (runs of windows at or above it) per hour.
    false_alarms_per_hour: float | None = None
    # 0: calibrate on the held-out part (val_fraction).  K > 1: calibrate on out-of-fold decisions
    # of K models trained on grouped folds of all the training data, so that the threshold is
    # estimated on every recording and class rather than a tenth of them (K more trainings).
    folds: int = field(default=0, metadata={"min": 0, "max": 20})
    # percentile: the threshold is this percentile of held-out normal-class window scores.
    percentile: float = field(default=95.0, metadata={"above": 0.0, "max": 100.0})
    # gamma: a gamma distribution fitted to those scores (the DCASE baseline), cut at this quantile.
    gamma_quantile: float = field(default=0.95, metadata={"above": 0.0, "max": 0.9999})
    # clip_fpr per block: the threshold is the highest of each block's clip_fpr level, so that at most
    # clip_fpr of every block's held-out no-bird clips reach it, not only of all of them pooled (an
    # easy block, such as synthetic speech, would otherwise let a hard one through).  A block with
    # fewer than 2/clip_fpr no-bird clips is pooled with the other small ones (train/calibrate.py).
    per_block: bool = False
    # How a clip's score follows from its windows' (evaluate, predict): max, or topK (mean of the K best).
    clip_aggregate: str = "max"

    def problems(self):
        if not (self.clip_aggregate == "max" or (self.clip_aggregate.startswith("top") and self.clip_aggregate[3:].isdigit() and int(self.clip_aggregate[3:]) > 0)):
            yield "clip_aggregate", f"expected 'max' or 'topK' such as 'top3', found {self.clip_aggregate!r}"


@dataclass
class TrainConfig:
    data: list[DataConfig] = field(default_factory=list)
    # nobird: a VAE of background, high loss = bird; bird: a VAE of bird clips, low loss = bird;
    # contrast: both, score = background loss - bird loss.
    mode: str = field(default="contrast", metadata={"choices": tuple(MODES)})
    features: FeatureParams = field(default_factory=FeatureParams)
    model: NetConfig = field(default_factory=NetConfig)  # the network; streamdet.config.ModelConfig is which artifact a daemon loads
    training: TrainingConfig = field(default_factory=TrainingConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    energy: EnergyConfig = field(default_factory=EnergyConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    cache_dir: str | None = field(default=None, metadata=PATH)  # default: $XDG_CACHE_HOME/streamdet/features
    output: str = field(default="runs/model.pt", metadata=PATH)

    def problems(self):
        if not self.data:
            yield "data", "expected at least one dataset"
        if self.energy.weight and self.features.kind == "pcen":
            yield "energy.weight", f"the energy term measures dB band energy: expected 0 with features.kind {self.features.kind!r}"
        if self.model.top_bands > self.features.n_mels:
            yield "model.top_bands", f"expected at most features.n_mels ({self.features.n_mels}), found {self.model.top_bands}"
        if self.training.objective in ("decision", "reference") and (self.mode != "contrast" or self.model.kind != "conv"):
            yield "training.objective", f"decision trains a background and a bird convolutional VAE together: expected mode 'contrast' and model.kind 'conv', found {self.mode!r} and {self.model.kind!r}"
        if self.augment.bird_mixes and self.features.kind == "pcen":
            yield "augment.bird_mixes", f"mixing adds powers of dB windows: expected 0 with features.kind {self.features.kind!r}"


def load_train_config(path: Path | str) -> TrainConfig:
    """Relative paths in the file are taken relative to the file's folder."""
    def build_rebased() -> TrainConfig:
        config = build(TrainConfig, load_yaml(path))
        rebase_paths(config, path)
        check(config)
        return config

    return in_file(path, build_rebased)
