"""An on-disk cache of log-mel frames, so epochs and evaluations never decode audio twice.

One folder per set of feature parameters holds `frames.f32` (every file's frames, appended one
after another) and `index.json` (for each file: its size and mtime, and where its frames are).
Frames are read through a memory map, so 44 hours of audio (about 2 GB of frames) train without
being held in memory.  A file that changes on disk is computed again; a file that cannot be
decoded is remembered as such until it changes.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from streamdet.capture.audio import AudioError, load_resampled
from streamdet.detect.features import PCEN, FeatureParams, LogMel, offline_frames

CACHE_VERSION = 1  # bump when decoding or the front end changes what a frame holds

log = logging.getLogger("train.cache")


class FeatureCache:
    def __init__(self, root: Path | str, params: FeatureParams, workers: int | None = None):
        """`workers`: processes decoding files in parallel (default: one per core, at most 8)."""
        self.params, self.root = params, Path(root)
        self.workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
        spec = json.dumps({"version": CACHE_VERSION, "frames": params.frame_dict()}, sort_keys=True)
        self.dir = Path(root) / f"logmel-{hashlib.sha256(spec.encode()).hexdigest()[:16]}"
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "features.json").write_text(spec)
        self._frames_path = self.dir / "frames.f32"
        self._index_path = self.dir / "index.json"
        self.index = self._read_index()
        self._memmap = None
        self.computed = 0  # files decoded by this object (0 on a warm cache)

    def ensure(self, paths: list[Path], progress=None) -> None:
        """Compute and append the frames of every path not yet cached (or changed since)."""
        todo = [p for p in paths if not self._fresh(p)]
        if not todo:
            return
        task = progress.add_task("features", total=len(todo), info="") if progress else None
        with self._locked():
            self.index = self._read_index()
            self._cut_torn_tail()
            todo = [p for p in todo if not self._fresh(p)]
            workers = min(self.workers, len(todo) // 20)  # a pool pays only for enough files
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) if workers > 1 else None
            results = pool.map(compute_frames, todo, [self.params] * len(todo), chunksize=4) if pool else map(compute_frames, todo, [self.params] * len(todo))
            try:
                with open(self._frames_path, "ab") as out:
                    for path, computed in zip(todo, results):  # in order: appends stay deterministic
                        self.index[_key(path)] = self._append(path, computed, out)
                        self.computed += 1
                        if progress:
                            progress.update(task, advance=1, info=path.name[:40])
                    out.flush()
                    os.fsync(out.fileno())
            finally:
                if pool:
                    pool.shutdown(cancel_futures=True)
                # Only what was written whole is indexed (a file interrupted mid-write is not), and the
                # index is replaced atomically: an interruption keeps every finished file.
                tmp = self._index_path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.index))
                tmp.replace(self._index_path)
        self._memmap = None

    def _cut_torn_tail(self) -> None:
        """Drop frames beyond the last indexed file (a write cut short by SIGKILL, OOM or a full
        disk), so that appends start where the index says the frames end.  Called under the lock."""
        row = 4 * self.params.n_mels
        size = self._frames_path.stat().st_size if self._frames_path.exists() else 0
        end = max((e["offset"] + e["n_frames"] for e in self.index.values() if "offset" in e), default=0)
        if size > end * row:
            log.warning("feature cache %s: dropping %d bytes written by an interrupted run", self._frames_path, size - end * row)
            os.truncate(self._frames_path, end * row)

    def frames(self, path: Path) -> np.ndarray | None:
        """The cached frames of `path` [n, n_mels] (a read-only view), or None if it has none."""
        entry = self.index.get(_key(path))
        if not entry or "error" in entry or entry["n_frames"] == 0:
            return None
        return self.memmap()[entry["offset"] : entry["offset"] + entry["n_frames"]]

    def error(self, path: Path) -> str | None:
        entry = self.index.get(_key(path))
        return entry.get("error") if entry else None

    def memmap(self) -> np.ndarray:
        if self._memmap is None:
            n = self._frames_path.stat().st_size // (4 * self.params.n_mels) if self._frames_path.exists() else 0
            self._memmap = np.memmap(self._frames_path, dtype=np.float32, mode="r", shape=(n, self.params.n_mels)) if n else np.zeros((0, self.params.n_mels), np.float32)
        return self._memmap

    def entry(self, path: Path) -> dict | None:
        entry = self.index.get(_key(path))
        return None if not entry or "error" in entry or entry["n_frames"] == 0 else entry

    def model_memmap(self, params: FeatureParams) -> np.ndarray:
        """Frames as the model sees them, at the same offsets as `memmap()`: the log-mel dB frames
        themselves, or PCEN of them, derived once into a file of its own (recomputed when files are added)."""
        if params.kind in ("logmel_db", "bgnorm"):  # bgnorm's floors are per window (train/windows.py)
            return self.memmap()
        base = self.memmap()
        tag = hashlib.sha256(json.dumps(params.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
        path = self.dir / f"frames-{params.kind}-{tag}.npy"
        done = self.dir / f"frames-{params.kind}-{tag}.rows"
        if not (done.exists() and done.read_text() == str(len(base))):
            with self._locked():
                derived = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=base.shape) if len(base) else None
                for entry in self.index.values():
                    if "error" not in entry and entry["n_frames"]:
                        a, b = entry["offset"], entry["offset"] + entry["n_frames"]
                        derived[a:b] = PCEN(params)(torch.from_numpy(np.array(base[a:b]))).numpy()
                if derived is not None:
                    derived.flush()
                done.write_text(str(len(base)))
        return np.load(path, mmap_mode="r") if len(base) else base

    def _append(self, path: Path, computed: tuple[dict, np.ndarray | None, list[str]], out) -> dict:
        entry, frames, notices = computed
        for notice in notices:
            log.warning("%s: %s; using what is there", path, notice)
        if frames is None:
            return entry
        offset = out.tell() // (4 * self.params.n_mels)
        out.write(np.ascontiguousarray(frames, dtype=np.float32).tobytes())
        return {**entry, "offset": offset, "n_frames": int(len(frames))}

    def _fresh(self, path: Path) -> bool:
        entry = self.index.get(_key(path))
        if entry is None:
            return False
        stat = path.stat()
        return entry["size"] == stat.st_size and entry["mtime_ns"] == stat.st_mtime_ns

    def _read_index(self) -> dict:
        """The index, less any entry whose frames are not (all) in the frames file."""
        try:
            index = json.loads(self._index_path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("feature cache %s: unreadable index; computing again", self._index_path)
            return {}
        rows = self._frames_path.stat().st_size // (4 * self.params.n_mels) if self._frames_path.exists() else 0
        return {k: e for k, e in index.items() if "offset" not in e or e["offset"] + e["n_frames"] <= rows}

    @contextmanager
    def _locked(self):
        with open(self.dir / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


@functools.lru_cache(maxsize=4)
def _frontend(params: FeatureParams) -> LogMel:
    return LogMel(params)


def _one_thread() -> None:
    torch.set_num_threads(1)


def compute_frames(path: Path, params: FeatureParams) -> tuple[dict, np.ndarray | None, list[str]]:
    """(index entry, log-mel frames or None, notices) of one file: decoding and the front end,
    runnable in a worker process."""
    stat = path.stat()
    entry = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    notices: list[str] = []
    try:
        samples = load_resampled(path, params.sample_rate, notices)
    except (AudioError, OSError) as exc:
        return {**entry, "error": str(exc)}, None, notices
    if not np.isfinite(samples).all():
        return {**entry, "error": "contains NaN or infinite samples"}, None, notices
    frames = offline_frames(samples, params, _frontend(params)).numpy()
    return {**entry, "seconds": round(len(samples) / params.sample_rate, 3)}, frames, notices


def _key(path: Path) -> str:
    return str(Path(path).resolve())


def default_cache_dir() -> Path:
    import os

    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "streamdet" / "features"
