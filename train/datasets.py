"""Labelled clip lists from the layouts found in the wild.

Every problem with a row is reported with the file and line it came from.  By default a
single bad row stops the run before any training; `skip_bad_rows` drops them with a warning.
"""
from __future__ import annotations

import csv
import logging
import os
import subprocess
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from train.config import PRESETS, DataConfig

log = logging.getLogger("train.datasets")

CONFIDENCE_RANK = {"low": 0, "medium": 1, "high": 2}


class DatasetError(Exception):
    pass


@dataclass(frozen=True)
class Item:
    path: Path
    label: int  # 1: bird, 0: no bird
    dataset: str  # the block results are stratified and reported by
    itemid: str
    group: str = ""  # the recording (or class) it came from: splits keep a group on one side

    @property
    def split_group(self) -> str:
        return self.group or str(self.path)


def read_dataset(config: DataConfig) -> list[Item]:
    if config.kind == "espeak":
        from train.speech import SpeechError, espeak_clips

        try:
            made = espeak_clips(Path(config.root) if config.root else speech_dir(), config.clips, config.seed)
        except (SpeechError, OSError, subprocess.SubprocessError) as exc:
            raise DatasetError(str(exc)) from None
        return [Item(path, 0, config.name or "espeak", f"espeak/{path.name}", f"espeak_{voice}") for path, voice in made]
    if config.kind == "manifest":
        return read_manifest(Path(config.labels), config.split, config.min_confidence, Path(config.audio_dir) if config.audio_dir else None, config.skip_bad_rows)
    if config.kind in PRESETS:
        labels, audio_dir = locate_preset(config)
        return read_bad(audio_dir, labels, config.name, config.skip_bad_rows)
    return read_bad(Path(config.audio_dir), Path(config.labels), config.name, config.skip_bad_rows)


def speech_dir() -> Path:
    """Where synthetic speech is made by default: beside the feature cache."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamdet" / "speech"


def locate_preset(config: DataConfig) -> tuple[Path, Path]:
    """A BAD dataset's metadata CSV and clip folder under `root`, in the layouts it is found in:
    `root/<csv>` + `root/wav/`, the archive unpacked into a folder of its own
    (`root/<csv>` + `root/ff1010bird_wav/wav/`), or `root` pointing at that folder or at `wav/`
    itself with the CSV beside it or above it.  `labels` and `audio_dir` override the search."""
    csv_name = PRESETS[config.kind]
    root = Path(config.root) if config.root else None
    if config.labels:
        labels = Path(config.labels)
    else:
        places = [root, root.parent, root.parent.parent]
        labels = next((d / csv_name for d in places if (d / csv_name).is_file()), None)
        if labels is None:
            raise DatasetError(f"{config.kind}: no {csv_name} in {', '.join(str(d) for d in places)}")
    if config.audio_dir:
        return labels, Path(config.audio_dir)
    base = root or labels.parent
    candidates = [base / "wav", *sorted(base.glob("*_wav/wav")), *sorted(base.glob("*/wav")), base]
    for folder in candidates:
        if folder.is_dir() and any(f.suffix.lower() == ".wav" for f in folder.iterdir()):
            return labels, folder
    raise DatasetError(f"{config.kind}: no folder of .wav clips under {base} (looked in {base / 'wav'}, {base / '*_wav/wav'}, {base / '*/wav'} and {base} itself)")


def read_labels(labels: Path, audio_dir: Path | None = None, split: str | None = None, skip_bad_rows: bool = False) -> list[Item]:
    """Any labelled table, recognised by its header: BAD (`itemid,...,hasbird`) or `file,label`."""
    header = _read_rows(labels, "\t" if _is_tsv(labels) else ",", required=())
    columns = set(header[0][1]) if header else set()
    if {"itemid", "hasbird"} <= columns:
        return read_bad(audio_dir or labels.parent, labels, skip_bad_rows=skip_bad_rows)
    return read_manifest(labels, split, "medium", audio_dir, skip_bad_rows)


def unlabelled(folder: Path) -> list[Item]:
    """Every audio file below `folder` (e.g. Chernobyl), for prediction; labels are -1."""
    from streamdet.capture.audio import AUDIO_SUFFIXES, list_audio_candidates

    if not folder.is_dir():
        raise DatasetError(f"{folder}: not a directory")
    files = [p for p in list_audio_candidates(folder) if p.suffix.lower() in AUDIO_SUFFIXES]
    if not files:
        raise DatasetError(f"{folder}: no audio files")
    # Item ids are file names without their suffix, or relative paths where names repeat in subfolders.
    stems = Counter(p.stem for p in files)
    ids = [p.stem if stems[p.stem] == 1 else str(p.relative_to(folder).with_suffix("")) for p in files]
    return [Item(p, -1, folder.name, i) for p, i in zip(files, ids)]


def read_bad(audio_dir: Path, labels: Path, name: str | None = None, skip_bad_rows: bool = False) -> list[Item]:
    """A BAD 2018 CSV: `itemid,hasbird` or `itemid,datasetid,hasbird`; item ids with or without `.wav`."""
    rows = _read_rows(labels, ",", required=("itemid", "hasbird"))
    items, problems, seen = [], [], {}
    for line, row in rows:
        itemid = (row.get("itemid") or "").strip()
        where = f"{labels} line {line}"
        if not itemid:
            problems.append(f"{where}: empty itemid")
            continue
        clip_id = itemid[:-4] if itemid.lower().endswith(".wav") else itemid  # r001 and r001.wav are one clip
        if clip_id in seen:
            problems.append(f"{where}: duplicate itemid {itemid!r} (the same clip as line {seen[clip_id]})")
            continue
        seen[clip_id] = line
        label = (row.get("hasbird") or "").strip()
        if label not in ("0", "1"):
            problems.append(f"{where}: hasbird for {itemid!r} must be 0 or 1, found {label!r}")
            continue
        path = _find_clip(audio_dir, itemid)
        if path is None:
            problems.append(f"{where}: no audio file for {itemid!r} in {audio_dir} (tried {itemid}, {itemid}.wav)")
            continue
        dataset = (row.get("datasetid") or "").strip() or name or labels.stem
        items.append(Item(path, int(label), dataset, Path(itemid).stem))
    return _settle(items, problems, labels, skip_bad_rows)


LABEL_VALUES = {"bird": 1, "1": 1, "nobird": 0, "0": 0}


def read_manifest(manifest: Path, split: str | None, min_confidence: str = "medium", root: Path | None = None, skip_bad_rows: bool = False) -> list[Item]:
    """A `file,label` table (CSV, or TSV such as ../shared/data/clips/MANIFEST.tsv).
    `unknown` labels are left out, as are rows of another `split` or below `min_confidence`."""
    rows = _read_rows(manifest, "\t" if _is_tsv(manifest) else ",", required=("file", "label"))
    root = root or manifest.parent
    items, problems, seen = [], [], {}
    for line, row in rows:
        if split and row.get("split") != split:
            continue
        label = (row.get("label") or "").strip()
        if label == "unknown":
            continue
        where = f"{manifest} line {line}"
        if label not in LABEL_VALUES:
            problems.append(f"{where}: label must be bird/1, nobird/0 or unknown, found {label!r}")
            continue
        if CONFIDENCE_RANK.get(row.get("label_confidence") or "high", 0) < CONFIDENCE_RANK[min_confidence]:
            continue
        file = (row.get("file") or "").strip()
        if file in seen:
            problems.append(f"{where}: duplicate file {file!r} (first on line {seen[file]})")
            continue
        seen[file] = line
        path = root / file
        if not path.is_file():
            problems.append(f"{where}: no audio file {path}")
            continue
        group = (row.get("group") or "").strip()
        items.append(Item(path, LABEL_VALUES[label], manifest_block(file), path.stem, group))
    return _settle(items, problems, manifest, skip_bad_rows)


SPLIT_FOLDERS = ("dev", "eval", "train", "test")


def manifest_block(file: str) -> str:
    """The block a manifest row is reported in: the clips README's blocks (maad24h, bad, other) for
    `dev/...`/`eval/...` rows, else the file's top folder (nips4b, esc50, ... in the field set)."""
    parts = Path(file).parts
    if len(parts) > 1 and parts[0] not in SPLIT_FOLDERS:
        return parts[0]
    return clip_block(parts[-1])


def clip_block(filename: str) -> str:
    """The blocks the clips README asks results to be reported by."""
    if filename.startswith("maad24h__"):
        return "maad24h"
    if filename.startswith("bad_"):
        return "bad"
    return "other"


def _is_tsv(path: Path) -> bool:
    return path.suffix.lower() in (".tsv", ".tab")


def _find_clip(audio_dir: Path, itemid: str) -> Path | None:
    """The clip in `audio_dir`, or in its `wav/` (so a dataset's root works as well as its clip folder)."""
    for folder in (audio_dir, audio_dir / "wav"):
        for candidate in (folder / itemid, folder / f"{itemid}.wav"):
            if candidate.is_file():
                return candidate
    return None


def _read_rows(path: Path, delimiter: str, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            missing = [c for c in required if c not in (reader.fieldnames or [])]
            if missing:
                raise DatasetError(f"{path}: missing column(s) {', '.join(missing)} (found: {', '.join(reader.fieldnames or []) or 'nothing'})")
            rows = []
            for row in reader:
                if row.get(None):  # DictReader's home for fields beyond the header's
                    raise DatasetError(f"{path} line {reader.line_num}: {len(row[None])} more field(s) than the header's {len(reader.fieldnames)}")
                rows.append((reader.line_num, row))
            return rows
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at offset {exc.start}); save it as UTF-8") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: not a readable table ({exc})") from None


def _settle(items: list[Item], problems: list[str], source: Path, skip_bad_rows: bool) -> list[Item]:
    if problems and not skip_bad_rows:
        how = "skip_bad_rows: true in the dataset's config, or --skip-bad-rows, drops"
        more = f" (and {len(problems) - 1} more; {how} them)" if len(problems) > 1 else f" ({how} such rows)"
        raise DatasetError(problems[0] + more)
    for problem in problems:
        log.warning("skipped: %s", problem)
    if not items:
        raise DatasetError(f"{source}: no usable rows")
    return items
