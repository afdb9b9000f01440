"""Windows in, decisions out: losses, scores, events and the frequencies that made each event.

Pure: no ring, no bus, no clock. The daemon's channel feeds it; tests feed it a fake model.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from streamdet.config import DetectorConfig
from streamdet.detect.artifact import Model
from streamdet.detect.events import EventTracker
from streamdet.detect.features import mel_band_edges
from streamdet.detect.modes import polarity_sign


class BandExplainer:
    """Which frequencies made an event: per-band errors of its windows (signed so that larger means
    more bird-like), summed; reported as the run of mel bands around the peak reaching half of it."""

    def __init__(self, params, sign: float):
        self.edges = mel_band_edges(params)
        self.sign = sign
        self._event, self._sum = None, None

    def add(self, event_id: int | None, band_errors: np.ndarray, hit: bool) -> None:
        if event_id is None:
            return
        if event_id != self._event:
            self._event, self._sum = event_id, np.zeros(len(self.edges))
        if hit:
            self._sum += self.sign * band_errors

    def explain(self, transitions: list[dict]) -> None:
        """Add `band_hz` to the transitions of the event being summed (when it has a positive band)."""
        for t in transitions:
            if t["event_id"] == self._event and self._sum is not None and np.any(self._sum > 0):
                peak = int(np.argmax(self._sum))
                lo = hi = peak
                while lo > 0 and self._sum[lo - 1] >= self._sum[peak] / 2:
                    lo -= 1
                while hi < len(self._sum) - 1 and self._sum[hi + 1] >= self._sum[peak] / 2:
                    hi += 1
                t["band_hz"] = [round(float(self.edges[lo, 0])), round(float(self.edges[hi, 2]))]


class Scored(NamedTuple):
    """One batch of windows of one segment, decided."""

    losses: np.ndarray
    scores: np.ndarray
    silent: np.ndarray  # digital silence, or a non-finite loss: scored 0
    energies: np.ndarray | None  # the energy term, when the model uses one
    band_errors: np.ndarray
    invalid: int  # windows whose loss was not finite


class Detector:
    """The model, its scorer and the event tracker of one source."""

    def __init__(self, model: Model, config: DetectorConfig):
        self.tracker = EventTracker(config)
        self.use(model, config)

    def use(self, model: Model, config: DetectorConfig) -> None:
        """A new model and hysteresis (reload); an open event goes on with them."""
        self.model = model
        self.scorer = model.scorer()
        self.explainer = BandExplainer(model.features, polarity_sign(model.polarity))
        self.tracker.config = config

    def new_segment(self) -> None:
        self.scorer.reset()

    def errors(self, windows: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Per window: the loss, and the per-band errors (one model call for the whole batch)."""
        return self.model.errors(windows)

    def decide(self, windows: torch.Tensor, losses: np.ndarray, band_errors: np.ndarray, silent: np.ndarray) -> Scored:
        invalid = ~np.isfinite(losses)
        if invalid.any():  # audio far beyond full scale, or a model that misbehaves: never a crash, never a bird
            losses, band_errors = np.where(invalid, 0.0, losses), np.where(invalid[:, None], 0.0, band_errors)
            silent = silent | invalid
        decisions, energies = self.scorer.decide(losses, windows.cpu().numpy() if self.scorer.energy else None, silent)
        return Scored(losses, self.scorer.score(decisions), silent, energies, band_errors, int(invalid.sum()))

    def step(self, t_start: float, t_end: float, score: float, band_errors: np.ndarray) -> list[dict]:
        """One window's score into the hysteresis; the event transitions it caused, explained.
        An end is explained before this window counts (it belongs to the next event, if any)."""
        transitions = self.tracker.update(t_start, t_end, score)
        self.explainer.explain([t for t in transitions if t["state"] == "end"])
        self.explainer.add(self.tracker.open_id, band_errors, score >= self.tracker.config.off_score)
        self.explainer.explain([t for t in transitions if t["state"] == "start"])
        return transitions

    def close(self) -> list[dict]:
        """End of a segment or a gap: the open event ends."""
        transitions = self.tracker.close()
        self.explainer.explain(transitions)
        return transitions
