"""Log-mel front end: parameters, the frame transform, and sliding windows over a frame stream.

A frame is computed once, when its last sample arrives; windows of `window_frames` frames every
`hop_frames` frames are views over the frames, never recomputed.  Framing is `center=False`, so a
frame depends only on its own samples and the streaming result equals the offline one.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn
from torchaudio.transforms import AmplitudeToDB, MelSpectrogram

FEATURE_KINDS = ("logmel_db", "pcen", "bgnorm")
# A frame whose every log-mel value is at or below this is digital silence (zeros sit at the
# -100 dB floor; even one-LSB dither reaches about -52 dB): a mute, a dropout or padding.  A window
# holding any such frame is not scored: no natural recording looks like that to the model.
SILENT_DB = -80.0


@dataclass(frozen=True)
class FeatureParams:
    sample_rate: int = 22050
    n_fft: int = 882  # 40 ms
    hop_length: int = 441  # 20 ms at 22.05 kHz
    n_mels: int = 64
    f_min: float = 150.0
    f_max: float = 10000.0  # below the resampler roll-off (0.99 x Nyquist) of 22.05 kHz audio made from 44.1 kHz
    window_frames: int = 49  # 48 hops + one FFT = exactly 1.000 s at the defaults
    hop_frames: int = 25  # a new window every 0.5 s
    kind: str = "logmel_db"  # or "pcen" (per-channel energy normalisation), or "bgnorm" (see background_floors)
    pcen_time_constant: float = 0.4  # seconds; the PCEN values are librosa's defaults
    pcen_alpha: float = 0.98
    pcen_delta: float = 2.0
    pcen_r: float = 0.5
    bg_seconds: float = 5.0  # bgnorm: each band's noise floor is a low percentile of the trailing bg_seconds ...
    bg_percentile: float = 20.0  # ... of the segment, ending with the window; the window is shown relative to it

    @property
    def window_samples(self) -> int:
        """Audio samples spanned by one window, from its first frame's start to its last frame's end."""
        return (self.window_frames - 1) * self.hop_length + self.n_fft

    @property
    def window_seconds(self) -> float:
        return self.window_samples / self.sample_rate

    @property
    def hop_seconds(self) -> float:
        return self.hop_frames * self.hop_length / self.sample_rate

    def problems(self):
        """(field, what was expected) for each thing that makes these parameters unusable."""
        if self.kind not in FEATURE_KINDS:
            yield "kind", f"expected one of {', '.join(map(repr, FEATURE_KINDS))}, found {self.kind!r}"
        for name in ("pcen_time_constant", "pcen_alpha", "pcen_delta", "pcen_r", "bg_seconds"):
            if not isinstance(getattr(self, name), (int, float)) or isinstance(getattr(self, name), bool) or not 0 < getattr(self, name) < 1e4:
                yield name, f"expected a positive number below 10000, found {str(getattr(self, name))[:40]}"
        if not isinstance(self.bg_percentile, (int, float)) or not 0 <= self.bg_percentile <= 100:
            yield "bg_percentile", f"expected a number from 0 to 100, found {str(self.bg_percentile)[:40]}"
        ints = ("sample_rate", "n_fft", "hop_length", "n_mels", "window_frames", "hop_frames")
        bad = [n for n in ints if isinstance(getattr(self, n), bool) or not isinstance(getattr(self, n), int) or getattr(self, n) <= 0]
        for name in bad:
            yield name, f"expected a positive integer, found {getattr(self, name)!r}"
        if bad:
            return
        if self.hop_length > self.n_fft:
            yield "hop_length", f"expected at most n_fft ({self.n_fft}), found {self.hop_length}"
        if self.hop_frames > self.window_frames:
            yield "hop_frames", f"expected at most window_frames ({self.window_frames}), found {self.hop_frames}"
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            yield "f_max", f"expected 0 <= f_min < f_max <= sample_rate/2 ({self.sample_rate / 2:g} Hz), found f_min {self.f_min:g}, f_max {self.f_max:g}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def frame_dict(self) -> dict:
        """Only what decides the log-mel frames themselves (PCEN is computed from those)."""
        return {k: v for k, v in self.to_dict().items() if k != "kind" and not k.startswith(("pcen_", "bg_"))}

    @property
    def bg_frames(self) -> int:
        """bgnorm's context in frames: never shorter than a window, so every window sees its whole self."""
        return max(self.window_frames, int(round(self.bg_seconds * self.sample_rate / self.hop_length)))

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureParams":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown feature parameter(s) {', '.join(unknown)}")
        return cls(**data)


class LogMel(nn.Module):
    """Samples [T] -> log-mel frames [n_frames, n_mels] in dB. TorchScript-compatible."""

    def __init__(self, params: FeatureParams):
        super().__init__()
        self.n_fft = params.n_fft
        self.mel = MelSpectrogram(
            sample_rate=params.sample_rate,
            n_fft=params.n_fft,
            hop_length=params.hop_length,
            f_min=params.f_min,
            f_max=params.f_max,
            n_mels=params.n_mels,
            center=False,
            power=2.0,
        )
        # No top_db: it clips relative to the loudest frame of the call, which would make a
        # frame's value depend on how the stream happened to be chunked.
        self.to_db = AmplitudeToDB(stype="power", top_db=None)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.to_db(self.mel(samples)).transpose(-1, -2).contiguous()


def mel_band_edges(params: FeatureParams) -> np.ndarray:
    """[n_mels, 3]: lower edge, centre and upper edge in Hz of each triangular mel filter (HTK scale, as torchaudio)."""
    def to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    points = np.linspace(to_mel(params.f_min), to_mel(params.f_max), params.n_mels + 2)
    hz = 700.0 * (10 ** (points / 2595.0) - 1.0)
    return np.stack([hz[:-2], hz[1:-1], hz[2:]], axis=1)


class PCEN:
    """Per-channel energy normalisation of log-mel dB frames, with its smoother's state.

    M[t] = (1 - b) M[t-1] + b E[t] over mel magnitudes E (scaled as 32-bit integer audio), then
    (E / (eps + M)^alpha + delta)^r - delta^r.  The recursion runs in blocks as one matrix
    product each, so it is exact, vectorised, and resumable chunk after chunk."""

    BLOCK = 64
    EPS = 1e-6

    def __init__(self, params: FeatureParams, device: torch.device | str = "cpu"):
        self.params = params
        t = params.pcen_time_constant * params.sample_rate / params.hop_length  # in frames
        b = (np.sqrt(1 + 4 * t * t) - 1) / (2 * t * t)
        i = np.arange(self.BLOCK)
        kernel = np.where(i[:, None] >= i[None, :], b * (1 - b) ** np.maximum(i[:, None] - i[None, :], 0), 0.0)
        self._kernel = torch.tensor(kernel, dtype=torch.float64, device=device)
        self._carry = torch.tensor((1 - b) ** (i + 1), dtype=torch.float64, device=device)[:, None]
        self.state: torch.Tensor | None = None

    def reset(self) -> None:
        self.state = None

    def __call__(self, frames_db: torch.Tensor) -> torch.Tensor:
        if not len(frames_db):
            return frames_db
        p = self.params
        e = torch.sqrt(torch.pow(10.0, frames_db.double() / 10.0)) * 2.0**31
        if self.state is None:
            self.state = e[0]  # start as if the first frame had always been there
        smooth = torch.empty_like(e)
        for a in range(0, len(e), self.BLOCK):
            block = e[a : a + self.BLOCK]
            n = len(block)
            smooth[a : a + n] = self._kernel[:n, :n] @ block + self._carry[:n] * self.state
            self.state = smooth[a + n - 1]
        out = (e / (self.EPS + smooth) ** p.pcen_alpha + p.pcen_delta) ** p.pcen_r - p.pcen_delta**p.pcen_r
        return out.to(frames_db.dtype)


def background_floors(frames_db: torch.Tensor, base: int, n_frames: int, starts: list[int], params: FeatureParams) -> torch.Tensor:
    """bgnorm: each window's noise floor per band, [n_windows, n_mels].

    The floor of the window starting at frame s is the `bg_percentile` percentile (the lower of two
    neighbours, a k-th smallest value) of each band over the frames [max(0, e - bg_frames), e) of its
    segment, e = min(s + window_frames, n_frames): the window itself and the seconds before it.  It
    needs nothing after the window, so a stream computes it when the window completes, and the
    streaming result equals the offline one.  Subtracting it makes a window's values 'dB above this
    band's recent floor': the recorder's gain, the microphone's colour and stationary noise (rain,
    wind, hum, insect drones) cancel.  `frames_db` holds the segment's frames from index `base` on."""
    if not starts:
        return torch.zeros(0, params.n_mels, dtype=frames_db.dtype, device=frames_db.device)
    ends = np.minimum(np.asarray(starts) + params.window_frames, n_frames)
    lows = np.maximum(ends - params.bg_frames, 0)
    out = torch.empty(len(starts), params.n_mels, dtype=frames_db.dtype, device=frames_db.device)
    lengths = ends - lows
    on_cpu = frames_db.device.type == "cpu"
    frames = frames_db.numpy() if on_cpu else frames_db
    for length in np.unique(lengths).tolist():  # one batched k-th value per context length
        chosen = np.nonzero(lengths == length)[0]
        k = 1 + int(params.bg_percentile / 100.0 * (length - 1))
        for a in range(0, len(chosen), 256):  # bounded memory: 256 x bg_frames x n_mels at most
            part = chosen[a : a + 256]
            index = lows[part][:, None] - base + np.arange(length)
            if on_cpu:  # numpy's introselect: the same k-th values, faster than torch's kthvalue (docs/measurements.md)
                out[torch.from_numpy(part)] = torch.from_numpy(np.partition(frames[index], k - 1, axis=1)[:, k - 1])
            else:
                out[torch.from_numpy(part).to(frames_db.device)] = frames[torch.from_numpy(index).to(frames_db.device)].kthvalue(k, dim=1).values
    return out


def model_frames(frames_db, params: FeatureParams) -> torch.Tensor:
    """A whole segment's log-mel dB frames as the model sees them (PCEN applied when asked for)."""
    if not isinstance(frames_db, torch.Tensor):  # a copy: cached frames are read-only memory maps
        frames_db = torch.from_numpy(np.array(frames_db, dtype=np.float32))
    return PCEN(params)(frames_db) if params.kind == "pcen" else frames_db


def frame_count(n_samples: int, params: FeatureParams) -> int:
    if n_samples < params.n_fft:
        return 0
    return 1 + (n_samples - params.n_fft) // params.hop_length


def window_starts(n_frames: int, params: FeatureParams, final: bool) -> list[int]:
    """First-frame indices of the windows over `n_frames` frames.

    Windows lie on a grid of `hop_frames`.  When the stream segment is `final`, one more window
    is aligned to its end if the grid left frames unscored, so no tail of a file goes unheard;
    and a segment shorter than a window gets one window of its frames repeated (see `window_index`)."""
    w, h = params.window_frames, params.hop_frames
    if n_frames < w:
        return [0] if final and n_frames > 0 else []
    starts = list(range(0, n_frames - w + 1, h))
    if final and starts[-1] + w < n_frames:
        starts.append(n_frames - w)
    return starts


def window_index(starts: list[int], n_frames: int, params: FeatureParams) -> np.ndarray:
    """[n_windows, window_frames] frame indices; cyclic, so a segment shorter than a window fills it with repeats."""
    return (np.asarray(starts)[:, None] + np.arange(params.window_frames)) % max(n_frames, 1)


def silent_frames(frames_db):
    """Which log-mel dB frames (a tensor, or an array such as a cache's memory map) are digital
    silence: every band at or below SILENT_DB."""
    peaks = frames_db.amax(dim=1) if isinstance(frames_db, torch.Tensor) else np.asarray(frames_db).max(axis=1)
    return peaks <= SILENT_DB


def silent_windows(frames_db, starts: list[int], params: FeatureParams) -> np.ndarray:
    """Which windows of a segment's log-mel dB frames hold digital silence."""
    if not starts:
        return np.zeros(0, dtype=bool)
    silent = silent_frames(frames_db)
    return silent[window_index(starts, len(silent), params)].any(axis=1)


def windows_from_frames(frames, params: FeatureParams) -> tuple[list[int], torch.Tensor]:
    """All windows of a complete segment's log-mel dB frames: (start frames, [n, window_frames, n_mels])."""
    frames = model_frames(frames, params)
    starts = window_starts(len(frames), params, final=True)
    if not starts:
        return [], torch.zeros(0, params.window_frames, params.n_mels)
    windows = frames[torch.from_numpy(window_index(starts, len(frames), params))]
    if params.kind == "bgnorm":
        windows = windows - background_floors(frames, 0, len(frames), starts, params)[:, None, :]
    return starts, windows


def offline_frames(samples: np.ndarray, params: FeatureParams, frontend: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Every complete frame of a whole segment of samples at once (`center=False`, as streaming frames it)."""
    n = frame_count(len(samples), params)
    if n == 0:
        return torch.zeros(0, params.n_mels)
    with torch.no_grad():
        return (frontend or LogMel(params))(torch.from_numpy(np.ascontiguousarray(samples[: (n - 1) * params.hop_length + params.n_fft])))


def offline_windows(samples: np.ndarray, params: FeatureParams, frontend: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[list[int], torch.Tensor]:
    """All windows of a complete segment of samples at once (what streaming gives, computed in one go)."""
    frames = offline_frames(samples, params, frontend)
    if not len(frames):
        return [], torch.zeros(0, params.window_frames, params.n_mels)
    return windows_from_frames(frames, params)


class StreamingWindows:
    """Samples in, windows out, for one continuous segment of a stream.

    `push` returns the windows completed by the new samples as views over the frame buffer;
    `finish` returns the end-aligned tail window, if any, and readies the object for a new segment.
    """

    def __init__(self, params: FeatureParams, frontend: Callable[[torch.Tensor], torch.Tensor] | None = None, device: torch.device | str = "cpu"):
        """`frontend` maps samples to frames; by default a LogMel of `params` (a model's own `features` in the daemon)."""
        self.params = params
        self.device = torch.device(device)
        self.frontend = frontend or LogMel(params).to(self.device)
        self.pcen = PCEN(params, self.device) if params.kind == "pcen" else None
        self.silent = np.zeros(0, dtype=bool)  # digital silence, for the windows the last push or finish returned
        self.reset()

    def reset(self) -> None:
        self._samples = torch.zeros(0)
        self._frames = torch.zeros(0, self.params.n_mels, device=self.device)
        self._silent_frames = torch.zeros(0, dtype=torch.bool, device=self.device)  # digital silence, per kept frame
        self._any_silent = False  # the common case, none: no per-window work at all
        self._frames_base = 0  # segment index of _frames[0]
        self._next_grid = 0  # grid index of the next window to emit
        self.frames_total = 0
        if self.pcen is not None:
            self.pcen.reset()

    def push(self, samples: np.ndarray) -> tuple[list[int], torch.Tensor]:
        p = self.params
        self._samples = torch.cat([self._samples, torch.from_numpy(samples)])
        n_new = frame_count(len(self._samples), p)
        if n_new:
            used = (n_new - 1) * p.hop_length + p.n_fft
            with torch.no_grad():
                frames = self.frontend(self._samples[:used].to(self.device))
                silent = silent_frames(frames)  # judged on dB frames, before PCEN
                self._silent_frames = torch.cat([self._silent_frames, silent])
                self._any_silent = self._any_silent or bool(silent.any())
                if self.pcen is not None:
                    frames = self.pcen(frames)
            self._frames = torch.cat([self._frames, frames])
            self._samples = self._samples[n_new * p.hop_length :]
            self.frames_total += n_new
        return self._take(final=False)

    def finish(self) -> tuple[list[int], torch.Tensor]:
        """Close the segment: the end-aligned tail window if the grid left frames unscored."""
        out = self._take(final=True)
        self.reset()
        return out

    def _take(self, final: bool) -> tuple[list[int], torch.Tensor]:
        w, h, n = self.params.window_frames, self.params.hop_frames, self.frames_total
        first = self._next_grid
        grid_count = max(0, (n - w) // h + 1 - first) if n >= w else 0
        self._next_grid += grid_count
        starts = [(first + i) * h for i in range(grid_count)]
        parts = []
        if grid_count:
            local = self._frames[first * h - self._frames_base :]
            parts.append(local.unfold(0, w, h)[:grid_count].transpose(1, 2))
        last_end = (self._next_grid - 1) * h + w if self._next_grid else 0
        if final and n > 0 and last_end < n:
            start = max(n - w, 0)  # the end-aligned tail, or a short segment's repeated frames
            local = torch.from_numpy(window_index([start], n, self.params)[0] - self._frames_base)
            starts.append(start)
            parts.append(self._frames[local.to(self._frames.device)].unsqueeze(0))
        if starts and self.params.kind == "bgnorm":
            floors = background_floors(self._frames, self._frames_base, n, starts, self.params)
            parts = [torch.cat(parts) - floors[:, None, :]]
        if starts and self._any_silent:
            local = torch.from_numpy(window_index(starts, n, self.params) - self._frames_base).to(self._silent_frames.device)
            self.silent = self._silent_frames[local].any(dim=1).cpu().numpy()
        else:
            self.silent = np.zeros(len(starts), dtype=bool)
        # Keep what the next grid window, or a tail window, could still need.
        keep_from = max(0, self._next_grid * h - h + 1) if self._next_grid else 0
        if self.params.kind == "bgnorm":  # and the background context of any later window (grid or tail)
            keep_from = max(0, min(keep_from, n - self.params.bg_frames))
        if keep_from > self._frames_base:
            self._frames = self._frames[keep_from - self._frames_base :]
            self._silent_frames = self._silent_frames[keep_from - self._frames_base :]
            self._any_silent = self._any_silent and bool(self._silent_frames.any())
            self._frames_base = keep_from
        if not parts:
            return [], torch.zeros(0, w, self.params.n_mels, device=self.device)
        return starts, parts[0] if len(parts) == 1 else torch.cat(parts)
