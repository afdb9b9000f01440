"""From a window's loss to its decision value and calibrated score, as the artifact prescribes.

decision d = s                                   without an energy term, where s = +loss or -loss
                                                 so that higher s is more bird-like (the polarity);
decision d = (s - centre) / spread + w * e / e_spread   with it, where e is the window's 2-8 kHz
                                                 energy in dB above the median of the last
                                                 `context_windows` windows of its segment;
score = logistic((d - threshold) / scale), so 0.5 is exactly the calibrated threshold.

The energy term has state (the trailing windows), kept per segment: `reset()` at every boundary.
Training, evaluation and the daemon all go through this class, so they cannot disagree.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from streamdet.detect.features import FeatureParams, mel_band_edges
from streamdet.detect.modes import polarity_sign

ENERGY_BAND_HZ = (2000.0, 8000.0)
SILENT_DECISION = -1e6  # a digitally silent window's decision: its score is 0


def band_energy_db(windows_db: np.ndarray, params: FeatureParams, band_hz=ENERGY_BAND_HZ) -> np.ndarray:
    """Mean power in `band_hz` of each log-mel dB window [n, frames, bands], in dB."""
    centres = mel_band_edges(params)[:, 1]
    band = (centres >= band_hz[0]) & (centres <= band_hz[1])
    power = np.power(np.float32(10.0), np.asarray(windows_db, dtype=np.float32)[:, :, band] / np.float32(10.0))
    return 10 * np.log10(power.sum(axis=2, dtype=np.float64).mean(axis=1) + 1e-12)


class Scorer:
    def __init__(self, scoring: dict, params: FeatureParams, context_windows: int | None = None):
        self.sign = polarity_sign(scoring["polarity"])
        self.threshold, self.scale = float(scoring.get("threshold", 0.0)), float(scoring.get("scale", 1.0))
        self.energy = scoring.get("energy")
        self.params = params
        context = int(self.energy["context_windows"]) if self.energy else (context_windows or 1)
        self._recent: deque = deque(maxlen=context)

    def reset(self) -> None:
        self._recent.clear()

    def energy_terms(self, windows_db, silent=None) -> np.ndarray:
        """Each window's band energy in dB above the median of the trailing windows of its segment
        (silent windows neither get a term nor enter the median)."""
        band = self.energy["band_hz"] if self.energy else ENERGY_BAND_HZ
        energies = band_energy_db(windows_db, self.params, band)
        e = np.zeros(len(energies))
        for i, energy in enumerate(energies.tolist()):
            if silent is not None and silent[i]:
                continue
            self._recent.append(energy)
            ordered = sorted(self._recent)  # at most context_windows values: cheaper than numpy here
            mid = len(ordered) // 2
            e[i] = energy - (ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2)
        return e

    def decide(self, losses: np.ndarray, windows_db=None, silent=None) -> tuple[np.ndarray, np.ndarray | None]:
        """Decision values for consecutive windows of one segment, and their energy terms."""
        d = self.sign * np.asarray(losses, dtype=np.float64)
        e = None
        if self.energy:
            e, en = self.energy_terms(windows_db, silent), self.energy
            d = (d - en["loss_centre"]) / en["loss_spread"] + en["weight"] * e / en["energy_spread"]
        if silent is not None and np.any(silent):
            d = np.where(silent, SILENT_DECISION, d)
        return d, e

    def score(self, decision: np.ndarray) -> np.ndarray:
        return calibrated_score(decision, self.threshold, self.scale)


def calibrated_score(decision: np.ndarray, threshold: float, scale: float) -> np.ndarray:
    """The published score: sigmoid((decision - threshold) / scale), 0.5 at the threshold."""
    z = np.clip((np.asarray(decision, dtype=np.float64) - threshold) / scale, -700, 700)
    return 1.0 / (1.0 + np.exp(-z))  # exact to 1 - 1e-16 (z = 37); only past that is it 1.0


def energy_problems(energy) -> list[str]:
    if energy is None:
        return []
    if not isinstance(energy, dict):
        return [f"scoring.energy: expected an object or null, found {energy!r}"]
    found = []
    for key in ("weight", "loss_centre"):
        if not isinstance(energy.get(key), (int, float)) or not np.isfinite(energy[key]):
            found.append(f"scoring.energy.{key}: expected a finite number, found {energy.get(key)!r}")
    for key in ("loss_spread", "energy_spread"):
        if not isinstance(energy.get(key), (int, float)) or not energy[key] > 0:
            found.append(f"scoring.energy.{key}: expected a positive number, found {str(energy.get(key))[:30]}")
    windows = energy.get("context_windows")
    if isinstance(windows, bool) or not isinstance(windows, int) or not 1 <= windows <= 10000:
        found.append(f"scoring.energy.context_windows: expected a whole number of windows from 1 to 10000, found {str(windows)[:30]}")
    band = energy.get("band_hz")
    if not (isinstance(band, list) and len(band) == 2 and all(isinstance(b, (int, float)) for b in band) and 0 <= band[0] < band[1]):
        found.append(f"scoring.energy.band_hz: expected [low, high] in Hz, found {band!r}")
    return found
