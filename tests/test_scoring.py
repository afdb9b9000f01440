import numpy as np
import pytest

from streamdet.detect.features import FeatureParams, mel_band_edges
from streamdet.detect.scoring import Scorer, band_energy_db

P = FeatureParams()
ENERGY = {"weight": 0.5, "context_windows": 3, "band_hz": [2000.0, 8000.0], "loss_centre": 1.0, "loss_spread": 2.0, "energy_spread": 4.0}


def windows_at(levels_db):
    return np.stack([np.full((P.window_frames, P.n_mels), level, np.float32) for level in levels_db])


def test_score_is_one_half_at_the_threshold_and_follows_polarity():
    high = Scorer({"polarity": "high_loss_is_bird", "threshold": 2.0, "scale": 0.5}, P)
    low = Scorer({"polarity": "low_loss_is_bird", "threshold": -2.0, "scale": 0.5}, P)
    d_high, _ = high.decide(np.array([2.0, 3.0, 1.0]))
    assert high.score(d_high) == pytest.approx([0.5, 0.8808, 0.1192], abs=1e-4)
    d_low, _ = low.decide(np.array([2.0, 1.0, 3.0]))  # low loss is bird: loss 1 is more bird-like
    assert low.score(d_low) == pytest.approx([0.5, 0.8808, 0.1192], abs=1e-4)
    assert np.isfinite(high.score(np.array([1e30, -1e30]))).all()


def test_band_energy_of_flat_windows():
    # Every band at -40 dB: the 2-8 kHz bands' powers add up; the mean over frames stays the same.
    centres = mel_band_edges(P)[:, 1]
    n_bands = int(((centres >= 2000) & (centres <= 8000)).sum())
    assert band_energy_db(windows_at([-40.0]), P)[0] == pytest.approx(-40 + 10 * np.log10(n_bands), abs=1e-3)


def test_energy_term_is_relative_to_the_trailing_median_of_the_segment():
    scorer = Scorer({"polarity": "high_loss_is_bird", "threshold": 0.0, "scale": 1.0, "energy": ENERGY}, P)
    levels = [-40.0, -40.0, -20.0, -40.0, -40.0]
    d, e = scorer.decide(np.ones(5), windows_at(levels))
    assert e == pytest.approx([0.0, 0.0, 20.0, 0.0, 0.0], abs=1e-6)  # medians over the last 3 windows
    assert d == pytest.approx([0.0, 0.0, 0.5 * 20 / 4, 0.0, 0.0], abs=1e-6)  # (1 - 1)/2 + 0.5 e / 4
    # Consecutive calls continue the segment; reset starts a new one.
    _, e2 = scorer.decide(np.ones(1), windows_at([-30.0]))
    assert e2[0] == pytest.approx(10.0, abs=1e-6)
    scorer.reset()
    _, e3 = scorer.decide(np.ones(1), windows_at([-30.0]))
    assert e3[0] == pytest.approx(0.0, abs=1e-6)
