"""The training loop of one VAE: batches, outlier exposure, early stopping, checkpoints."""
from __future__ import annotations

import time

import numpy as np
import torch
from rich.progress import Progress

from streamdet.detect.model import make_vae, vae_loss
from train import distributed
from train.checkpoint import Checkpoint
from train.config import TrainConfig
from train.windows import WindowSet


def new_vae(config: TrainConfig) -> torch.nn.Module:
    m, p = config.model, config.features
    return make_vae(m.kind, p.window_frames, p.n_mels, m.hidden, m.latent, m.channels, norm=config.training.objective == "decision")


def _epoch(vae, model, optimiser, train: WindowSet, outliers: WindowSet | None, prepare, generator: torch.Generator, t, device: torch.device) -> torch.Tensor:
    """One pass over this rank's share of `train`; the summed loss, on the device."""
    vae.train()
    order = torch.randperm(len(train), generator=generator).numpy()
    total = torch.zeros((), device=device)  # summed on the device: no host sync per step
    exposed = outliers is not None and len(outliers) > 0 and t.outlier_weight > 0
    other = torch.randint(len(outliers), (len(order),), generator=generator).numpy() if exposed else None
    for a in range(0, len(order), t.batch_size):
        x = prepare(train.batch(distributed.shard(order[a : a + t.batch_size])))
        loss = vae_loss(x, *model(x), beta=t.beta)
        if exposed:
            o = prepare(outliers.batch(distributed.shard(other[a : a + t.batch_size])))
            recon, _, _ = model(o)
            loss = loss + t.outlier_weight * torch.relu(t.outlier_margin - (recon - o).pow(2).mean(dim=1)).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total += loss.detach() * len(x)
    return total


def fit_vae(name: str, train: WindowSet, val: WindowSet, mean, std, config: TrainConfig, device: torch.device, progress: Progress, checkpoint: Checkpoint, outliers: WindowSet | None = None) -> tuple[torch.nn.Module, dict]:
    """Train one VAE; stop when the held-out reconstruction error has not improved for `patience`
    epochs.  With `outliers` (and training.outlier_weight), each step also shows it a batch of
    them and penalises reconstructing them better than the margin (outlier exposure)."""
    if name in checkpoint.state["done"]:
        done = checkpoint.state["done"][name]
        vae = new_vae(config)
        vae.load_state_dict(done["best"])
        return vae.eval(), done["info"]
    t = config.training
    current = checkpoint.state.get("current")
    resuming = bool(current and current["name"] == name)
    if not resuming:
        checkpoint.restore_rng()  # between two VAEs: the next one starts from the saved random state
    vae = new_vae(config).to(device)
    optimiser = torch.optim.Adam(vae.parameters(), lr=t.learning_rate)
    generator = torch.Generator().manual_seed(t.seed)
    mean, std = mean.to(device), std.to(device)
    run = {"epoch": 0, "best_val": float("inf"), "best": None, "stale": 0, "history": []}
    if resuming:
        vae.load_state_dict(current["vae"])
        optimiser.load_state_dict(current["optimiser"])
        generator.set_state(current["generator"])
        run = current["run"]
        checkpoint.restore_rng()
    task = progress.add_task(f"training {name}", total=t.epochs, completed=run["epoch"], info="")
    started = time.perf_counter()
    pinned = device.type == "cuda"
    model = distributed.wrap(vae)

    def prepare(x):
        # Pinned host memory and an asynchronous copy: the GPU is not kept waiting on the host.
        x = (x.pin_memory() if pinned else x).to(device, non_blocking=pinned)
        return ((x - mean) / std).reshape(len(x), -1)

    while run["epoch"] < t.epochs and run["stale"] < t.patience:
        total = _epoch(vae, model, optimiser, train, outliers, prepare, generator, t, device)
        total = distributed.all_mean(total).item() * distributed.size()
        val_error = _reconstruction_error(vae, val if len(val) else train, prepare, t.batch_size)
        run["epoch"] += 1
        run["history"].append({"epoch": run["epoch"], "train_loss": round(total / len(train), 5), "val_error": round(val_error, 5)})
        if val_error < run["best_val"] - 1e-6:
            run["best_val"], run["stale"] = val_error, 0
            run["best"] = {k: v.detach().cpu().clone() for k, v in vae.state_dict().items()}
        else:
            run["stale"] += 1
        checkpoint.state["current"] = {"name": name, "vae": vae.state_dict(), "optimiser": optimiser.state_dict(), "generator": generator.get_state(), "run": run}
        checkpoint.save()
        progress.update(task, completed=run["epoch"], info=f"train {total / len(train):.4f} held-out {val_error:.4f} best {run['best_val']:.4f}")
    seconds = time.perf_counter() - started
    info = {"epochs": run["epoch"], "stopped_early": run["epoch"] < t.epochs, "best_val_error": round(run["best_val"], 5), "windows": len(train), "seconds": round(seconds, 2), "history": run["history"]}
    best = new_vae(config)
    best.load_state_dict(run["best"])
    checkpoint.state["done"][name] = {"best": run["best"], "info": info}
    checkpoint.state["current"] = None
    checkpoint.save()
    return best.eval(), info


def _reconstruction_error(vae: torch.nn.Module, windows: WindowSet, prepare, batch_size: int) -> float:
    vae.eval()
    total = None
    with torch.no_grad():
        for a in range(0, len(windows), batch_size * 8):
            x = prepare(windows.batch(np.arange(a, min(a + batch_size * 8, len(windows)))))
            error = (vae.reconstruct(x) - x).pow(2).mean(dim=1).sum()
            total = error if total is None else total + error
    return float(total) / len(windows)
