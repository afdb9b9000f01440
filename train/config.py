"""The training configuration (configs/train.yaml), loaded with streamdet's typed loader."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from streamdet.features import FeatureParams
from streamdet.typedconfig import ConfigError, build, check, load_yaml

# The BAD 2018 datasets as distributed: `root` holds the metadata CSV and the `wav/` folder.
PRESETS = {
    "ff1010bird": "ff1010bird_metadata_2018.csv",
    "warblrb10k": "warblrb10k_public_metadata_2018.csv",
    "birdvox20k": "BirdVoxDCASE20k_csvpublic.csv",
}
DATA_KINDS = ("bad", "manifest", *PRESETS)


@dataclass
class DataConfig:
    """One labelled dataset.

    kind `bad`: a folder of clips (`audio_dir`) plus a BAD 2018 CSV (`labels`: itemid,[datasetid,]hasbird).
    kind `ff1010bird`, `warblrb10k`, `birdvox20k`: the same, found under `root` as distributed.
    kind `manifest`: a table of `file,label` (CSV or TSV; label 0/1 or bird/nobird/unknown), such as
    ../shared/data/clips/MANIFEST.tsv; files relative to `audio_dir` or else to the table's folder,
    filtered by `split` and `min_confidence` when those columns exist."""

    kind: str = field(default="bad", metadata={"choices": DATA_KINDS})
    name: str | None = None
    root: str | None = None
    audio_dir: str | None = None
    labels: str | None = None
    split: str | None = None
    min_confidence: str = field(default="medium", metadata={"choices": ("high", "medium", "low")})
    skip_bad_rows: bool = False

    def __post_init__(self):
        if self.kind in PRESETS and self.root:
            self.labels = self.labels or str(Path(self.root) / PRESETS[self.kind])
            self.audio_dir = self.audio_dir or str(Path(self.root) / "wav")
            self.name = self.name or self.kind

    def problems(self):
        if self.kind in PRESETS and not (self.root or (self.audio_dir and self.labels)):
            yield "root", f"expected the folder holding {PRESETS[self.kind]} and wav/"
        if self.kind == "bad" and not (self.audio_dir and self.labels):
            yield "audio_dir", "expected both audio_dir and labels for a 'bad' dataset"
        if self.kind == "manifest" and not self.labels:
            yield "labels", "expected the path of the file,label table"


@dataclass
class ModelConfig:
    hidden: int = field(default=256, metadata={"min": 8})
    latent: int = field(default=16, metadata={"min": 1})


@dataclass
class TrainingConfig:
    epochs: int = field(default=30, metadata={"min": 1})
    batch_size: int = field(default=128, metadata={"min": 1})
    learning_rate: float = field(default=1e-3, metadata={"above": 0.0})
    beta: float = field(default=0.5, metadata={"min": 0.0})
    val_fraction: float = field(default=0.25, metadata={"above": 0.0, "max": 0.9})
    seed: int = 0
    device: str = "auto"


@dataclass
class CalibrationConfig:
    strategy: str = field(default="percentile", metadata={"choices": ("percentile",)})
    # Percentile of the normal class's validation window losses that becomes the threshold.
    percentile: float = field(default=95.0, metadata={"above": 0.0, "max": 100.0})


@dataclass
class TrainConfig:
    data: list[DataConfig] = field(default_factory=list)
    normal: str = field(default="nobird", metadata={"choices": ("nobird", "bird")})
    features: FeatureParams = field(default_factory=FeatureParams)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    output: str = "runs/model.pt"

    def problems(self):
        if not self.data:
            yield "data", "expected at least one dataset"


def load_train_config(path: Path | str) -> TrainConfig:
    """Relative paths in the file are taken relative to the file's folder."""
    path = Path(path)
    try:
        config = build(TrainConfig, load_yaml(path))
        base = path.parent
        for i, d in enumerate(config.data):
            config.data[i] = replace(d, root=_rebase(base, d.root), audio_dir=_rebase(base, d.audio_dir), labels=_rebase(base, d.labels))
        config.output = _rebase(base, config.output)
        check(config)
    except ConfigError as exc:
        message = str(exc)
        raise ConfigError(message if message.startswith("config ") else f"config {path}: {message}") from None
    return config


def _rebase(base: Path, value: str | None) -> str | None:
    if value is None or Path(value).is_absolute():
        return value
    return str((base / value).resolve())
