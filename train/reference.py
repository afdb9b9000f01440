"""The discriminative reference (training.objective: reference): not a VAE and never shipped, the
small CNN every VAE recipe is measured against in the same folds (`python -m train study`).

Three 3x3 convolution blocks with batch-norm and 2x2 max-pooling (channels c, 2c, 4c), a fourth
3x3 convolution of 4c, global max- and mean-pooling, one linear output: the shape of
streamdet.detect.model.conv_stack's `pooled` encoder, here with no decoder, no latent and no
reconstruction.  Trained by train/decide.py's loop (balanced batches: class-weighted BCE on windows
labelled by their clip); its logit is its loss, spread evenly over the bands so that calibration and
scoring take it as they take a DecisionNet's."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn

from streamdet.detect.features import LogMel
from streamdet.detect.model import conv_stack


class ReferenceNet(nn.Module):
    def __init__(self, frontend: LogMel, mean: torch.Tensor, std: torch.Tensor, window_frames: int, channels: int = 16):
        super().__init__()
        self.frontend = frontend
        self.register_buffer("mean", mean.reshape(1, 1, -1).float())
        self.register_buffer("std", std.reshape(1, 1, -1).float().clamp_min(1e-3))
        self.window_frames, self.n_mels = window_frames, int(mean.numel())
        self.padded = (window_frames + 7) // 8 * 8
        self.vaes = nn.ModuleList()  # none: what fit's metadata counts
        self.body = conv_stack(channels, True, "pooled")
        self.out = nn.Linear(2 * 4 * channels, 1)

    @torch.jit.export
    def features(self, samples: torch.Tensor) -> torch.Tensor:
        return self.frontend(samples)

    def logit(self, windows: torch.Tensor) -> torch.Tensor:
        x = ((windows - self.mean) / self.std).unsqueeze(1)
        h = self.body(nn.functional.pad(x, (0, 0, 0, self.padded - self.window_frames)))
        return self.out(torch.cat([h.amax(dim=(2, 3)), h.mean(dim=(2, 3))], dim=1))[:, 0]

    def training_pass(self, windows: torch.Tensor, labels: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        return self.logit(windows), torch.zeros((), device=windows.device)

    @torch.jit.export
    def errors(self, windows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        logit = self.logit(windows)
        return logit, logit[:, None].expand(-1, self.n_mels)

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.logit(windows)
