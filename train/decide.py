"""Training the VAEs for the decision (training.objective: decision).

Both VAEs of the contrast detector and the small head on their encoders learn together: each step
shows a batch of half background windows (label 0) and half bird windows (label 1, their clip's
label), a logistic loss on the detector's loss (a logit), and each VAE's ELBO on the windows of its
own class as a regulariser, so that each still reconstructs its class.  Balanced batches weigh the
two classes equally whatever their counts.  The model kept is the one with the lowest held-out
logistic loss."""
from __future__ import annotations

import time

import numpy as np
import torch
from rich.progress import Progress

from streamdet.detect.features import LogMel, mel_band_edges
from streamdet.detect.model import DecisionNet, make_vae
from train.config import TrainConfig
from train.windows import WindowSet


class Augmenter:
    """What differs between recorders, drawn anew for every window: its level (+-level_db), and
    for a `lowpass` share of windows a band limit (drawn from `lowpass_hz`, 4-11 kHz by default),
    above which the bands hold nothing (in bgnorm windows: 0 dB above their floor)."""

    def __init__(self, config: TrainConfig, generator: torch.Generator):
        a, p = config.augment, config.features
        self.level_db, self.lowpass, self.generator = a.level_db, a.lowpass, generator
        self.cut_low, self.cut_span = a.lowpass_hz[0], a.lowpass_hz[1] - a.lowpass_hz[0]
        self.centres = torch.from_numpy(mel_band_edges(p)[:, 1].astype(np.float32))
        self.bgnorm = p.kind == "bgnorm"  # an empty band is 0 dB above its floor; otherwise the window's lowest value

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if self.lowpass > 0:
            cut = self.cut_low + self.cut_span * torch.rand(n, generator=self.generator)
            chosen = torch.rand(n, generator=self.generator) < self.lowpass
            above = (self.centres[None, :] > cut[:, None]) & chosen[:, None]  # [n, M]
            empty = torch.zeros(n, 1, 1) if self.bgnorm else x.amin(dim=(1, 2), keepdim=True)
            x = torch.where(above[:, None, :], empty.expand_as(x), x)
        if self.level_db > 0:
            x = x + (torch.rand(n, 1, 1, generator=self.generator) * 2 - 1) * self.level_db
        return x


def new_detector(config: TrainConfig, means: list[torch.Tensor], stds: list[torch.Tensor], vaes: list[torch.nn.Module] | None = None) -> torch.nn.Module:
    m, p = config.model, config.features
    if config.training.objective == "reference":
        from train.reference import ReferenceNet

        return ReferenceNet(LogMel(p), torch.stack(means).mean(dim=0), torch.stack(stds).mean(dim=0), p.window_frames, m.channels)
    vaes = vaes or [make_vae("conv", p.window_frames, p.n_mels, m.hidden, m.latent, m.channels, norm=True, encoder=m.encoder) for _ in range(2)]
    return DecisionNet(LogMel(p), vaes, torch.stack(means), torch.stack(stds), p.window_frames, head_gain=m.head_gain, head_channels=m.head_channels)


def fit_decision(config: TrainConfig, sets: dict[str, tuple[WindowSet, WindowSet]], stats: dict[str, tuple[torch.Tensor, torch.Tensor]], device: torch.device, progress: Progress | None,
                 vaes: list[torch.nn.Module] | None = None) -> tuple[DecisionNet, dict]:
    """The detector trained for the decision on sets['background'] and sets['bird'] (train, held
    out), each VAE normalised by its class's `stats` (mean, std), from fresh VAEs or from `vaes`
    (background, bird) already trained on their own class."""
    t = config.training
    roles = ("background", "bird")
    detector = new_detector(config, [stats[r][0] for r in roles], [stats[r][1] for r in roles], vaes).to(device)
    generator = torch.Generator().manual_seed(t.seed)
    torch.manual_seed(t.seed)
    augment = Augmenter(config, generator)
    optimiser = torch.optim.Adam(detector.parameters(), lr=t.learning_rate)
    (bg, bg_val), (bird, bird_val) = sets["background"], sets["bird"]
    batches = BagBatches(bg, bird, t.batch_size, t.clip_bags, generator) if t.clip_bags else WindowBatches(bg, bird, t.batch_size, generator)
    schedule = rate_schedule(optimiser, t.lr_schedule, t.epochs * batches.steps)
    task = progress.add_task("training for the decision", total=t.epochs, info="") if progress else None
    started, best, history, stale = time.perf_counter(), (float("inf"), None), [], 0
    for epoch in range(1, t.epochs + 1):
        detector.train()
        total = torch.zeros((), device=device)
        for x, window_labels, owner, targets in batches.epoch():
            logit, elbo = detector.training_pass(augment(x).to(device), window_labels.to(device), t.beta)
            if owner is not None:
                logit = smooth_max(logit, owner.to(device), len(targets))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, targets.to(device)) + t.elbo_weight * elbo
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.detach()
        held_out = _held_out_bce(detector, bg_val if len(bg_val) else bg, bird_val if len(bird_val) else bird, device, bags=bool(t.clip_bags))
        history.append({"epoch": epoch, "train_loss": round(float(total) / batches.steps, 5), "val_bce": round(held_out, 5), "learning_rate": optimiser.param_groups[0]["lr"]})
        if held_out < best[0] - 1e-6:
            best, stale = (held_out, {k: v.detach().cpu().clone() for k, v in detector.state_dict().items()}), 0
        else:
            stale += 1
        if progress:
            progress.update(task, advance=1, info=f"train {float(total) / batches.steps:.4f} held-out BCE {held_out:.4f} best {best[0]:.4f}")
        if stale >= t.patience:
            break
    detector.load_state_dict(best[1])
    info = {"epochs": len(history), "stopped_early": len(history) < t.epochs, "best_val_bce": round(best[0], 5), "windows": len(bg) + len(bird), "seconds": round(time.perf_counter() - started, 2), "history": history}
    return detector.cpu().eval(), info


def rate_schedule(optimiser: torch.optim.Optimizer, kind: str, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """training.lr_schedule: the rate held (constant) or falling along a half cosine to 0 (cosine)."""
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, steps))
    return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)


def smooth_max(logit: torch.Tensor, owner: torch.Tensor, bags: int) -> torch.Tensor:
    """Each bag's log-sum-exp of its windows' logits: a maximum that every window learns from."""
    top = torch.full((bags,), -torch.inf, device=logit.device).scatter_reduce(0, owner, logit, "amax", include_self=True)
    return top + torch.zeros(bags, device=logit.device).index_add(0, owner, (logit - top[owner]).exp()).log()


class WindowBatches:
    """Half background, half bird windows per step, each window labelled by its clip."""

    def __init__(self, bg: WindowSet, bird: WindowSet, batch_size: int, generator: torch.Generator):
        self.bg, self.bird, self.generator = bg, bird, generator
        self.half = max(1, batch_size // 2)
        self.steps = max(1, (len(bg) + len(bird)) // (2 * self.half))
        self.labels = torch.cat([torch.zeros(self.half), torch.ones(self.half)])

    def epoch(self):
        draw = {"bg": _Cycle(len(self.bg), self.generator), "bird": _Cycle(len(self.bird), self.generator)}
        for _ in range(self.steps):
            yield torch.cat([self.bg.batch(draw["bg"](self.half)), self.bird.batch(draw["bird"](self.half))]), self.labels, None, self.labels


class BagBatches:
    """Multiple-instance: per step, as many clips of each class as fill a batch, each a bag of up
    to `bag_size` of its windows; a bag is scored by its windows' smooth maximum."""

    def __init__(self, bg: WindowSet, bird: WindowSet, batch_size: int, bag_size: int, generator: torch.Generator):
        self.sets, self.bag_size, self.generator = {"bg": bg, "bird": bird}, bag_size, generator
        self.per_class = max(1, batch_size // (2 * bag_size))
        self.bags = {"bg": clip_bags(bg), "bird": clip_bags(bird)}
        self.steps = max(1, (len(self.bags["bg"]) + len(self.bags["bird"])) // (2 * self.per_class))

    def epoch(self):
        draw = {k: _Cycle(len(v), self.generator) for k, v in self.bags.items()}
        for _ in range(self.steps):
            chosen, owner, labels = [], [], []
            for key, label in (("bg", 0.0), ("bird", 1.0)):
                for b in draw[key](self.per_class):
                    members = self.bags[key][b]
                    if len(members) > self.bag_size:
                        members = members[torch.randperm(len(members), generator=self.generator)[: self.bag_size].numpy()]
                    chosen.append(self.sets[key].batch(members))
                    owner += [len(labels)] * len(members)
                    labels.append(label)
            owner_t, targets = torch.tensor(owner), torch.tensor(labels)
            yield torch.cat(chosen), targets[owner_t], owner_t, targets


def clip_bags(windows: WindowSet) -> list[np.ndarray]:
    """The indices of each clip's windows (windows of one clip share their first cache frame);
    each window made in memory (a mix) is a bag of its own."""
    _, clip = np.unique(windows.rows[:, 0], return_inverse=True)
    order = np.argsort(clip, kind="stable")
    bags = np.split(order, np.flatnonzero(np.diff(clip[order])) + 1) if len(order) else []
    return bags + [np.array([i]) for i in range(len(windows.rows), len(windows))]


class _Cycle:
    """Indices 0..n-1 in shuffled order, reshuffled each time they run out, taken `k` at a time."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator, self.order, self.at = n, generator, np.zeros(0, np.int64), 0

    def __call__(self, k: int) -> np.ndarray:
        out = []
        while k > 0:
            if self.at >= len(self.order):
                self.order, self.at = torch.randperm(self.n, generator=self.generator).numpy(), 0
            take = self.order[self.at : self.at + k]
            out.append(take)
            self.at += len(take)
            k -= len(take)
        return np.concatenate(out)


def _held_out_bce(detector: DecisionNet, bg: WindowSet, bird: WindowSet, device: torch.device, bags: bool = False, chunk: int = 1024) -> float:
    """The logistic loss over held-out windows, or with `bags` over held-out clips (each scored by
    its windows' smooth maximum, as it was trained), each class weighing half."""
    detector.eval()
    parts = []
    with torch.no_grad():
        for windows, label in ((bg, 0.0), (bird, 1.0)):
            logit = torch.cat([detector(windows.batch(np.arange(a, min(a + chunk, len(windows)))).to(device)) for a in range(0, len(windows), chunk)] or [torch.zeros(0)])
            if bags and len(logit):
                owner = torch.from_numpy(np.concatenate([np.full(len(b), i) for i, b in enumerate(clip_bags(windows))]))
                order = torch.from_numpy(np.concatenate(clip_bags(windows)))
                logit = smooth_max(logit[order], owner.to(device), int(owner.max()) + 1)
            parts.append(float(torch.nn.functional.binary_cross_entropy_with_logits(logit, torch.full_like(logit, label), reduction="sum")) / max(len(logit), 1))
    return float(np.mean(parts))
