"""What each training mode means, in one table: which clips the VAE(s) learn, which clips are the
normal ones the threshold is set on, and which way the loss points."""
from __future__ import annotations

from typing import NamedTuple


class Mode(NamedTuple):
    polarity: str  # how a loss reads: high_loss_is_bird, or low_loss_is_bird
    roles: tuple[str, ...]  # the VAEs trained: on background (no-bird) audio, on bird audio, or both
    normal_label: int  # the label of the clips whose windows set the threshold and scale


MODES = {
    "nobird": Mode("high_loss_is_bird", ("background",), 0),  # birds are the anomaly
    "bird": Mode("low_loss_is_bird", ("bird",), 1),  # a VAE of bird audio: birds reconstruct well
    "contrast": Mode("high_loss_is_bird", ("background", "bird"), 0),  # background error minus bird error
}
POLARITIES = ("high_loss_is_bird", "low_loss_is_bird")


def polarity_sign(polarity: str) -> float:
    """+1 where a higher loss is more bird-like, -1 where a lower one is."""
    return 1.0 if polarity == "high_loss_is_bird" else -1.0
