"""The clips folder, read-only and only inside it: a clip's URL from its path, the file a URL
names (no `..`, no absolute names, no symlink out of the folder), the detections per hour its
sidecars hold, and a clip's spectrogram for the page."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from streamdet.bus.messages import levels_base64
from streamdet.subscribers.web.state import HourCounts

SUFFIXES = (".flac", ".json")
MAX_SIDECAR_BYTES = 1 << 16
SPECTROGRAM_ROWS = 64
MAX_CLIP_SECONDS = 120.0  # a clip is seconds long; a longer file is shown from its start


class ClipsFolder:
    def __init__(self, root: Path):
        self.root = Path(root).resolve()

    def file(self, relative: str) -> Path | None:
        """The regular file `relative` names inside the folder, or None (anything else)."""
        if not well_formed(relative):
            return None
        try:
            path = (self.root / relative).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a symlink loop
            return None
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    @staticmethod
    def url_of(clip: str | None) -> str | None:
        """`<source>/<name>.flac` of a clip the daemon announces (it is written once its post-roll
        is in, so it may not be there yet; `file` decides when it is asked for), else None."""
        if not isinstance(clip, str) or not clip:
            return None
        relative = "/".join(Path(clip).parts[-2:])
        return relative if well_formed(relative) and relative.endswith(".flac") else None

    def count_hours(self, hours: HourCounts) -> int:
        """Every sidecar's detection into `hours`; how many were read."""
        read = 0
        for sidecar in sorted(self.root.glob("*/*.json")):
            try:
                if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
                    continue
                meta = json.loads(sidecar.read_text())
                if meta.get("kind") == "check":
                    continue  # a stretch recorded for a check is not a detection
                wall = meta.get("onset_wall") or _iso_seconds(meta.get("written_at"))
                key = f"{meta.get('run_id')}/{meta.get('source')}/{meta.get('event_id')}"
            except (OSError, ValueError, AttributeError, TypeError):
                continue  # a sidecar being written, or not one of ours
            if isinstance(wall, (int, float)):
                read += hours.add(key, float(wall))
        return read


def well_formed(relative) -> bool:
    """Exactly `<source>/<name>` with a clip's or sidecar's suffix: no `..`, no root, no NUL."""
    parts = relative.split("/") if isinstance(relative, str) else []
    return len(parts) == 2 and not any(part in ("", ".", "..") or "\x00" in part or "\\" in part for part in parts) and Path(parts[1]).suffix in SUFFIXES


def _iso_seconds(text) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(text).timestamp()
    except (TypeError, ValueError):
        return None


def spectrogram(path: Path, rows: int = SPECTROGRAM_ROWS) -> dict:
    """A clip's spectrogram as the page draws the live one: 8-bit levels, frame after frame, rows
    of log-spaced bands from 150 Hz up to 11 kHz (or Nyquist), with the frame length."""
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        rate = f.samplerate
        audio = f.read(frames=int(MAX_CLIP_SECONDS * rate), dtype="float32", always_2d=True).mean(axis=1)
    n_fft, hop = 1024, 441 * max(1, rate // 22050)
    if len(audio) < n_fft:
        audio = np.pad(audio, (0, n_fft - len(audio)))
    starts = np.arange(0, len(audio) - n_fft + 1, hop)
    frames = audio[starts[:, None] + np.arange(n_fft)] * np.hanning(n_fft)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    freqs = np.fft.rfftfreq(n_fft, 1.0 / rate)
    edges = np.geomspace(150.0, min(11000.0, rate / 2), rows + 1)
    bands = np.stack([power[:, (freqs >= lo) & (freqs < hi)].mean(axis=1) if ((freqs >= lo) & (freqs < hi)).any()
                      else power[:, np.argmin(np.abs(freqs - lo))] for lo, hi in zip(edges[:-1], edges[1:])], axis=1)
    db = 10 * np.log10(bands + 1e-10)
    lo, hi = float(np.percentile(db, 5)), float(db.max())
    return {"n_frames": int(db.shape[0]), "n_mels": rows, "frame_s": hop / rate, "band_hz": [150.0, float(edges[-1])], "lo": lo, "hi": hi,
            "frames": levels_base64(db, lo, hi)}
