"""The VAEs, and the networks the artifact scripts around them: ReconstructNet (VAEs trained alone,
compared by their reconstruction errors) and DecisionNet (VAEs trained together for the decision).

The contract of a scripted network (what the daemon relies on, whatever trained it):
  features(samples [T]) -> log-mel dB frames [n, M]   (the front end travels with the model)
  errors(windows [B, W, M]) -> (loss [B], band errors [B, M]), from one pass: the daemon's call
  forward(windows) -> loss [B];  band_errors(windows) -> [B, M]
The loss is reduced from the band errors here alone (artifacts made before `errors()` existed are
scored with their forward and band_errors, two passes).
The loss is a signed sum of per-VAE reconstruction errors: one VAE with sign +1 for the
single-class modes, or a background VAE (+1) and a bird VAE (-1) for the contrast mode.  With
`log_errors` each band's error enters as its logarithm, so the contrast is a per-band log ratio
(which VAE explains the band better, by what factor) rather than a difference that grows with
how loud and busy a window is.  With `peak_frames` k > 0 the window's errors are not averaged
over all its frames but taken where the contrast peaks: over the k consecutive frames whose mean
is highest (a 100-ms call fills 5 of a window's 49 frames; the mean over all of them dilutes it).
With `top_bands` k > 0 the loss is the mean over the k bands where the contrast is highest, not
over all of them: a call fills a few bands, and the mean over 64 dilutes it
(docs/reconstruct-recipes.md).
"""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from streamdet.detect.features import LogMel


class _Sampling(nn.Module):
    """What every VAE here shares: a sampled latent for training, the posterior mean for scoring.
    A subclass provides encode(x) -> (mu, logvar) and decode(z) over flat windows."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass: (reconstruction, mu, logvar) with a sampled latent."""
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Scoring pass: decode the posterior mean, so a window always gets the same loss."""
        mu, _ = self.encode(x)
        return self.decode(mu)


class VAE(_Sampling):
    def __init__(self, n_inputs: int, hidden: int = 256, latent: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(n_inputs, hidden), nn.GELU(), nn.Linear(hidden, hidden // 2), nn.GELU())
        self.to_mu = nn.Linear(hidden // 2, latent)
        self.to_logvar = nn.Linear(hidden // 2, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden // 2), nn.GELU(), nn.Linear(hidden // 2, hidden), nn.GELU(), nn.Linear(hidden, n_inputs)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.to_mu(h), self.to_logvar(h).clamp(-12.0, 12.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class ConvVAE(_Sampling):
    """A VAE with 2-D convolutions over (time, mel): local time-frequency shapes (a call's sweep, a
    harmonic stack) are learnt once wherever they sit, instead of per position as in the MLP.

    Same interface as VAE (flat windows in, flat reconstructions out), so the ReconstructNet, training and
    scoring do not care which it is.  Three stride-2 stages take a window padded to a multiple of 8
    frames down to 1/8 of its size, and three transposed ones back; the padding is cropped off."""

    def __init__(self, window_frames: int, n_mels: int, channels: int = 16, latent: int = 16, norm: bool = False, encoder: str = "strided"):
        super().__init__()
        if n_mels % 8:
            raise ValueError(f"a convolutional VAE needs n_mels divisible by 8, found {n_mels}")
        if encoder not in ENCODERS:
            raise ValueError(f"model.encoder: expected one of {', '.join(ENCODERS)}, found {encoder!r}")
        if encoder == "lean" and channels % 2:
            raise ValueError(f"model.channels: the lean encoder's first stage has half of them, so they must be even, found {channels}")
        self.window_frames, self.n_mels, self.channels, self.encoder_kind = window_frames, n_mels, channels, encoder
        self.padded = (window_frames + 7) // 8 * 8
        self.encoder = conv_stack(channels, norm, encoder)
        c = channels
        self.flat = 4 * c * (self.padded // 8) * (n_mels // 8)
        self.to_mu = nn.Linear(self.flat, latent)
        self.to_logvar = nn.Linear(self.flat, latent)
        self.from_latent = nn.Sequential(nn.Linear(latent, self.flat), nn.GELU())
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * c, 2 * c, 4, stride=2, padding=1), nn.GELU(),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), nn.GELU(),
            nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1),
        )

    def encode_map(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's last feature map [B, 4c, padded/8, n_mels/8] of flat windows."""
        image = x.reshape(x.shape[0], 1, self.window_frames, self.n_mels)
        image = nn.functional.pad(image, (0, 0, 0, self.padded - self.window_frames))
        return self.encoder(image)

    def latent_of(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = h.reshape(h.shape[0], self.flat)
        return self.to_mu(h), self.to_logvar(h).clamp(-12.0, 12.0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.latent_of(self.encode_map(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        h = self.from_latent(z).reshape(z.shape[0], 4 * self.channels, self.padded // 8, self.n_mels // 8)
        return self.decoder(h)[:, 0, : self.window_frames, :].reshape(z.shape[0], self.window_frames * self.n_mels)


ENCODERS = ("strided", "pooled", "lean", "wide")


class MaxPool2(nn.Module):
    """nn.MaxPool2d(2) on maps of even height and width, as two elementwise maxima of strided views
    (the same numbers; torch's CPU max_pool2d took 17 ms where this takes 1 on a batch of 64)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.maximum(x[:, :, 0::2, :], x[:, :, 1::2, :])
        return torch.maximum(x[:, :, :, 0::2], x[:, :, :, 1::2])


def conv_stack(c: int, norm: bool, encoder: str) -> nn.Sequential:
    """1 channel in, 4c channels out at 1/8 of the time and mel resolution.

    strided: three stride-2 3x3 convolutions (c, 2c, 4c), cheap: each looks at a quarter of the
    positions the one before did.  pooled: the discriminative reference's shape, each 3x3
    convolution at its stage's full resolution followed by a 2x2 max-pool, then one more 3x3
    convolution at 1/8: a short call anywhere in a stage's 2x2 cell survives the pooling, where a
    stride-2 convolution sees it only at the positions it samples.  lean: the pooled shape at a
    third of its cost (docs/encoder-and-segments.md), stages of c/2, c and 4c channels and each
    max-pool before its activation, so the activation runs on a quarter of the positions.  wide:
    the pooled encoder's stages (c, 2c, 4c) in the lean order, which asks whether the lean first
    stage's c/2 channels cost anything (measured, not bundled: docs/encoder-and-segments.md)."""
    def stage(a: int, b: int, stride: int) -> list:
        # Batch-norm (the decision-trained VAEs): windows of both classes, of every recorder, on one scale.
        return [nn.Conv2d(a, b, 3, stride=stride, padding=1)] + ([nn.BatchNorm2d(b)] if norm else []) + [nn.GELU()]

    if encoder == "strided":
        return nn.Sequential(*stage(1, c, 2), *stage(c, 2 * c, 2), *stage(2 * c, 4 * c, 2))
    layers = []
    if encoder == "pooled":
        for a, b in ((1, c), (c, 2 * c), (2 * c, 4 * c)):
            layers += stage(a, b, 1) + [MaxPool2()]
    else:
        widths = ((1, c // 2), (c // 2, c), (c, 4 * c)) if encoder == "lean" else ((1, c), (c, 2 * c), (2 * c, 4 * c))
        for a, b in widths:
            *conv, act = stage(a, b, 1)
            layers += conv + [MaxPool2(), act]
    return nn.Sequential(*layers, *stage(4 * c, 4 * c, 1))


class DepthToSpace(nn.Module):
    """nn.PixelShuffle(2) as a reshape and one permuted copy (the same numbers; torch's CPU
    pixel_shuffle is slower)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x.reshape(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // 4, 2 * h, 2 * w)


def subpixel(up: nn.ConvTranspose2d) -> nn.Sequential:
    """The same map as a 4x4, stride-2, padding-1 transposed convolution, as a 3x3 convolution to
    four times the channels and a pixel shuffle (sub-pixel convolution).  Each of the four output
    phases (row and column parity) reads a 2x2 neighbourhood of the input through 4 of the 16 taps;
    the transposed form computes all 16 per input pixel and scatters, which torch's CPU kernels do
    slowly.  Equal up to float rounding."""
    if up.kernel_size != (4, 4) or up.stride != (2, 2) or up.padding != (1, 1) or up.groups != 1 or up.dilation != (1, 1):
        raise ValueError(f"subpixel: expected a 4x4, stride-2, padding-1 transposed convolution, found {up}")
    w = up.weight.detach()  # [in, out, 4, 4]
    taps = {0: {0: 3, 1: 1}, 1: {1: 2, 2: 0}}  # output phase -> {3x3 kernel row: transposed kernel row}
    k = w.new_zeros(up.out_channels, 2, 2, up.in_channels, 3, 3)
    for a, rows in taps.items():
        for b, cols in taps.items():
            for u, ky in rows.items():
                for v, kx in cols.items():
                    k[:, a, b, :, u, v] = w[:, :, ky, kx].t()
    conv = nn.Conv2d(up.in_channels, 4 * up.out_channels, 3, padding=1, bias=up.bias is not None)
    conv.weight.data = k.reshape(4 * up.out_channels, up.in_channels, 3, 3).contiguous()
    if up.bias is not None:
        conv.bias.data = up.bias.detach().repeat_interleave(4)
    return nn.Sequential(conv, DepthToSpace())


class PooledPhaseConv(nn.Conv2d):
    """A 3x3, padding-1 convolution from one channel followed by MaxPool2, computed on the four
    phases of the input (space-to-depth: rows and columns by parity) as one 3x3 convolution from 4
    channels to 4x the channels, one group per output phase, and the maximum over the groups.

    oneDNN runs a convolution from one channel at a few GFLOP/s; the phase form does 4x the
    multiply-adds (most taps are zero) in about half the time, and its pooling is a maximum over
    contiguous channel blocks instead of strided views.  Equal up to float rounding.  It keeps the
    convolution's own weight and bias (the state_dict does not change): the phase kernel, a few
    hundred numbers, is built from them on each call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        phases = x.reshape(b, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3).reshape(b, 4, height // 2, width // 2)
        c = self.out_channels
        # Output phase (a, b) reads full-resolution rows 2i+a-1..2i+a+1: the 3x3 kernel placed at
        # (a+1, b+1) in the 6x6 that a 3x3 kernel over phases spans, then split by parity.
        w = self.weight
        k = torch.stack([nn.functional.pad(w, (1, 2, 1, 2)), nn.functional.pad(w, (2, 1, 1, 2)), nn.functional.pad(w, (1, 2, 2, 1)), nn.functional.pad(w, (2, 1, 2, 1))]).reshape(4 * c, 3, 2, 3, 2).permute(0, 2, 4, 1, 3).reshape(4 * c, 4, 3, 3)
        bias = self.bias
        y = nn.functional.conv2d(phases, k, None if bias is None else bias.repeat(4), padding=1)
        return torch.maximum(torch.maximum(y[:, :c], y[:, c : 2 * c]), torch.maximum(y[:, 2 * c : 3 * c], y[:, 3 * c :]))


def phase_conv(conv: nn.Conv2d) -> PooledPhaseConv:
    """`conv` (one channel in, 3x3, stride 1, padding 1) as a PooledPhaseConv with its weights."""
    if conv.in_channels != 1 or conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1 or conv.dilation != (1, 1):
        raise ValueError(f"phase_conv: expected a 3x3, stride-1, padding-1 convolution from one channel, found {conv}")
    out = PooledPhaseConv(1, conv.out_channels, 3, padding=1, bias=conv.bias is not None)
    out.load_state_dict(conv.state_dict())
    return out


def _fused(layers: nn.Sequential) -> nn.Sequential:
    """Convolution + batch-norm pairs folded into one convolution (inference only); transposed
    convolutions as sub-pixel ones; a first convolution from one channel pooled at once as a
    PooledPhaseConv (its MaxPool2 kept in place as an Identity, so every layer keeps its name and
    an artifact saved before this rewrite has the same state_dict); everything else kept."""
    out, items = [], list(layers)
    for i, layer in enumerate(items):
        if isinstance(layer, nn.BatchNorm2d):
            continue
        if isinstance(layer, nn.Conv2d) and i + 1 < len(items) and isinstance(items[i + 1], nn.BatchNorm2d):
            layer = nn.utils.fusion.fuse_conv_bn_eval(layer, items[i + 1])
        elif isinstance(layer, nn.ConvTranspose2d):
            out.extend(subpixel(layer))
            continue
        if type(layer) is nn.Conv2d and layer.in_channels == 1 and isinstance(_after(items, i), MaxPool2):
            layer = phase_conv(layer)
        elif isinstance(layer, MaxPool2) and isinstance(out[-1], PooledPhaseConv):
            layer = nn.Identity()
        out.append(layer)
    return nn.Sequential(*out)


def _after(items: list, i: int):
    """The layer after items[i], past a batch-norm that folds into it."""
    j = i + 1 + (i + 1 < len(items) and isinstance(items[i + 1], nn.BatchNorm2d))
    return items[j] if j < len(items) else None


INFERENCE_FORM = "fused_subpixel"


def inference_form(net: nn.Module) -> nn.Module:
    """A copy of a trained network for scoring only: each ConvVAE's batch-norms folded into its
    convolutions and its transposed convolutions rewritten as sub-pixel ones.  Same outputs up to
    float rounding (docs/measurements.md has the speed and the largest difference); MLP VAEs are
    unchanged.  Its state_dict is that of the inference form: rebuild_eager knows it by the
    architecture's `form`."""
    import copy

    net = copy.deepcopy(net).eval()
    for vae in net.vaes:
        if isinstance(vae, ConvVAE):
            vae.encoder, vae.decoder = _fused(vae.encoder), _fused(vae.decoder)
    if isinstance(net, DecisionNet):
        net.head_stages = nn.ModuleList([_fused(s) if isinstance(s, nn.Sequential) else s for s in net.head_stages])
    return net


MODEL_KINDS = ("mlp", "conv")


def make_vae(kind: str, window_frames: int, n_mels: int, hidden: int, latent: int, channels: int, norm: bool = False, encoder: str = "strided") -> nn.Module:
    """A fresh VAE of `kind` for windows of window_frames x n_mels."""
    if kind == "conv":
        return ConvVAE(window_frames, n_mels, channels, latent, norm, encoder)
    if kind == "mlp":
        return VAE(window_frames * n_mels, hidden, latent)
    raise ValueError(f"model.kind: expected one of {', '.join(MODEL_KINDS)}, found {kind!r}")


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float) -> torch.Tensor:
    """The negative ELBO per input value (Gaussian reconstruction term, KL weighted by beta), averaged."""
    reconstruction = (recon - x).pow(2).mean(dim=1)
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1) / x.shape[1]
    return (reconstruction + beta * kl).mean()


def loss_from_bands(bands: torch.Tensor, top_bands: int) -> torch.Tensor:
    """A window's loss from its per-band errors [B, M]: the mean over the `top_bands` highest
    (all of them when 0)."""
    if top_bands <= 0 or top_bands >= bands.shape[1]:
        return bands.mean(dim=1)
    return bands.topk(top_bands, dim=1).values.mean(dim=1)


class ReconstructNet(nn.Module):
    def __init__(self, frontend: LogMel, vaes: List[nn.Module], signs: List[float], mean: torch.Tensor, std: torch.Tensor, window_frames: int, log_errors: bool = False, peak_frames: int = 0, top_bands: int = 0):
        """`mean` and `std` are [n_vaes, n_mels]: each VAE sees windows normalised by its own training data."""
        super().__init__()
        if len(vaes) != len(signs) or mean.shape[0] != len(vaes) or std.shape != mean.shape:
            raise ValueError("one sign, one mean and one std row per VAE")
        self.frontend = frontend
        self.vaes = nn.ModuleList(vaes)
        self.register_buffer("signs", torch.tensor(signs, dtype=torch.float32))
        self.register_buffer("mean", mean.reshape(len(vaes), 1, 1, -1).float())
        self.register_buffer("std", std.reshape(len(vaes), 1, 1, -1).float().clamp_min(1e-3))
        self.window_frames = window_frames
        self.n_mels = int(mean.shape[1])
        self.log_errors = log_errors
        self.peak_frames = min(peak_frames, window_frames)
        self.top_bands = top_bands
        self.log_floor = 1e-3  # errors are in units of the training data's variance; below this is noise

    @torch.jit.export
    def features(self, samples: torch.Tensor) -> torch.Tensor:
        return self.frontend(samples)

    @torch.jit.export
    def band_errors(self, windows: torch.Tensor) -> torch.Tensor:
        b = windows.shape[0]
        frames = 1 if self.peak_frames == 0 else self.window_frames
        total = torch.zeros(b, frames, self.n_mels, device=windows.device, dtype=windows.dtype)
        for i, vae in enumerate(self.vaes):
            x = ((windows - self.mean[i]) / self.std[i]).reshape(b, -1)
            err = (vae.reconstruct(x) - x).pow(2).reshape(b, self.window_frames, self.n_mels)
            if self.peak_frames == 0:
                err = err.mean(dim=1, keepdim=True)
            if self.log_errors:
                err = torch.log(err + self.log_floor)
            total = total + self.signs[i] * err
        if self.peak_frames == 0:
            return total[:, 0]
        # Moving averages over peak_frames frames; the window's bands are those of the best stretch.
        smooth = nn.functional.avg_pool1d(total.transpose(1, 2), self.peak_frames, stride=1).transpose(1, 2)
        best = smooth.mean(dim=2).argmax(dim=1)
        return smooth[torch.arange(b, device=windows.device), best]

    @torch.jit.export
    def errors(self, windows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(loss per window, error per window and band) from one pass: the daemon's call."""
        bands = self.band_errors(windows)
        return loss_from_bands(bands, self.top_bands), bands

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.errors(windows)[0]


class DecisionNet(nn.Module):
    """Two convolutional VAEs, of background (sign +1) and of bird audio (sign -1), trained together
    for the decision (train/decide.py): each still learns to reconstruct its own class (its ELBO is
    a regulariser), and a window's loss is a logit, higher for birds, made of
      - the reconstruction contrast, per band: softplus(w_b) * (error_background,b - error_bird,b),
        the errors averaged over the window's frames, and
      - a small head on what both encoders saw (through a convolution of the head's own when
        `head_channels` > 0), max- and mean-pooled over time and frequency (a call anywhere in the
        window counts the same), added to every band at the weight `head_gain` (1/M by default:
        spread evenly over the bands).
    So band_errors [B, M] are each band's share of the logit, and the loss is their mean: the
    daemon takes it as it takes any ReconstructNet's (top_bands 0), and which band peaks still says where
    the VAEs disagree.  Same contract as ReconstructNet."""

    def __init__(self, frontend: LogMel, vaes: List[ConvVAE], mean: torch.Tensor, std: torch.Tensor, window_frames: int, head_hidden: int = 32, head_gain: Optional[float] = None,
                 head_channels: int = 0):
        super().__init__()
        if len(vaes) != 2 or mean.shape[0] != 2 or std.shape != mean.shape:
            raise ValueError("a background and a bird VAE, with one mean and one std row each")
        self.frontend = frontend
        self.vaes = nn.ModuleList(vaes)
        self.register_buffer("signs", torch.tensor([1.0, -1.0]))
        self.register_buffer("mean", mean.reshape(2, 1, 1, -1).float())
        self.register_buffer("std", std.reshape(2, 1, 1, -1).float().clamp_min(1e-3))
        self.window_frames = window_frames
        self.n_mels = int(mean.shape[1])
        self.log_errors, self.peak_frames, self.top_bands = False, 0, 0
        self.band_weight = nn.Parameter(torch.zeros(self.n_mels))
        self.bias = nn.Parameter(torch.zeros(1))
        # The head reads each encoder's last map through a convolution of its own (head_channels > 0),
        # which the ELBO never pulls on, or as it is (an Identity: no weights, so every artifact
        # before it has the same state_dict).
        self.head_stages = nn.ModuleList([head_stage(4 * v.channels, head_channels) for v in vaes])
        pooled = sum(2 * (head_channels or 4 * v.channels) for v in vaes)
        self.head = nn.Sequential(nn.Linear(pooled, head_hidden), nn.GELU(), nn.Linear(head_hidden, 1))
        # The head's logit enters each band's share at this weight, so the loss (their mean) holds
        # it at this weight too.  1/n_mels is the default (every artifact before `head_gain`); full
        # weight measured the same in cross-validation: training makes up for the 64th
        # (docs/encoder-and-segments.md).
        self.head_gain = 1.0 / self.n_mels if head_gain is None else float(head_gain)

    @torch.jit.export
    def features(self, samples: torch.Tensor) -> torch.Tensor:
        return self.frontend(samples)

    def _parts(self, windows: torch.Tensor, elbo_mask: List[torch.Tensor], beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(band shares of the logit [B, M], the VAEs' summed negative ELBO over the windows each
        is to learn, sampled; 0 when no mask selects any)."""
        b = windows.shape[0]
        contrast = torch.zeros(b, self.n_mels, device=windows.device, dtype=windows.dtype)
        pooled: List[torch.Tensor] = []
        elbo = torch.zeros((), device=windows.device, dtype=windows.dtype)
        i = 0
        for vae, stage in zip(self.vaes, self.head_stages):
            x = ((windows - self.mean[i]) / self.std[i]).reshape(b, -1)
            h = vae.encode_map(x)
            mu, logvar = vae.latent_of(h)
            err = (vae.decode(mu) - x).pow(2).reshape(b, self.window_frames, self.n_mels).mean(dim=1)
            contrast = contrast + self.signs[i] * err
            seen = stage(h)
            pooled.append(torch.cat([seen.amax(dim=(2, 3)), seen.mean(dim=(2, 3))], dim=1))
            if len(elbo_mask) > i and bool(elbo_mask[i].any()):
                m = elbo_mask[i]
                z = mu[m] + torch.randn_like(mu[m]) * torch.exp(0.5 * logvar[m])
                elbo = elbo + vae_loss(x[m], vae.decode(z), mu[m], logvar[m], beta)
            i += 1
        logit = self.bias + self.head(torch.cat(pooled, dim=1))
        return nn.functional.softplus(self.band_weight) * contrast + logit * self.head_gain, elbo

    def training_pass(self, windows: torch.Tensor, labels: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(logit per window, the ELBO regulariser: background VAE on label 0, bird VAE on label 1)."""
        bands, elbo = self._parts(windows, [labels < 0.5, labels >= 0.5], beta)
        return bands.mean(dim=1), elbo

    @torch.jit.export
    def band_errors(self, windows: torch.Tensor) -> torch.Tensor:
        return self._parts(windows, [], 0.0)[0]

    @torch.jit.export
    def errors(self, windows: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        bands = self.band_errors(windows)
        return bands.mean(dim=1), bands

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        return self.errors(windows)[0]


def head_stage(width: int, channels: int) -> nn.Module:
    """The decision head's own 3x3 convolution over an encoder's last map (channels > 0), or none."""
    if not channels:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(width, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.GELU())


ARCH_KINDS = {"mlp": "mlp_vae", "conv": "conv_vae"}
ScoringNet = Union[ReconstructNet, DecisionNet]  # what an artifact scripts


def architecture(detector: ScoringNet, kind: str, hidden: int, latent: int, channels: int) -> dict:
    """The description stored in an artifact's metadata, enough to rebuild the module eagerly."""
    arch = {"kind": ARCH_KINDS[kind], "latent": latent, "signs": detector.signs.tolist(), "log_errors": detector.log_errors, "peak_frames": detector.peak_frames, "top_bands": detector.top_bands}
    arch.update({"channels": channels} if kind == "conv" else {"hidden": hidden})
    if kind == "conv" and detector.vaes[0].encoder_kind != "strided":
        arch["encoder"] = detector.vaes[0].encoder_kind  # absent: strided, as every artifact before it
    if isinstance(detector, DecisionNet):
        arch.update({"objective": "decision", "norm": True, "head_hidden": detector.head[0].out_features})
        if detector.head_gain != 1.0 / detector.n_mels:
            arch["head_gain"] = detector.head_gain  # absent: 1/n_mels, as every decision artifact before it
        if isinstance(detector.head_stages[0], nn.Sequential):
            arch["head_channels"] = detector.head_stages[0][0].out_channels  # absent: none, as every decision artifact before it
    return arch


def rebuild_eager(scripted: torch.nn.Module, arch: dict, frontend: LogMel, window_frames: int, n_mels: int) -> nn.Module:
    """An eager ReconstructNet with a scripted one's weights (for benchmarks and debugging)."""
    kind = "conv" if arch["kind"] == "conv_vae" else "mlp"
    vaes = [make_vae(kind, window_frames, n_mels, arch.get("hidden", 0), arch["latent"], arch.get("channels", 0), arch.get("norm", False), arch.get("encoder", "strided")) for _ in arch["signs"]]
    state = scripted.state_dict()
    k = len(arch["signs"])
    if arch.get("objective") == "decision":
        detector = DecisionNet(frontend, vaes, state["mean"].reshape(k, -1), state["std"].reshape(k, -1), window_frames, arch["head_hidden"], arch.get("head_gain"), arch.get("head_channels", 0))
    else:
        detector = ReconstructNet(frontend, vaes, arch["signs"], state["mean"].reshape(k, -1), state["std"].reshape(k, -1), window_frames, arch.get("log_errors", False), arch.get("peak_frames", 0), arch.get("top_bands", 0))
    if arch.get("form") == INFERENCE_FORM:
        detector = inference_form(detector)
    detector.load_state_dict(state)
    return detector.eval()
