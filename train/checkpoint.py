"""The training checkpoint: written after every epoch, so an interrupted `fit` resumes exactly.

It holds the finished VAEs, the one in progress (weights, optimiser, its batch-order generator and
torch's global random state, which draws the VAE's latent noise), and a key: what decides the result
apart from how long and where it trains.  Epochs may be extended and the device changed on resume;
anything else changed is refused.  Loaded with `weights_only=True`: a checkpoint is data, never code.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from streamdet.errors import one_line
from train.config import TrainConfig

log = logging.getLogger("train.checkpoint")

# What may change between an interrupted run and its resumption.
FREE_KEYS = {"training": ("epochs", "device", "threads"), "": ("output", "cache_dir", "data")}


class CheckpointError(Exception):
    pass


def config_key(config: TrainConfig, items: list | None = None) -> str:
    """A hash of everything that decides the trained weights: the config less FREE_KEYS, and the
    clips (by id, label and block, not by absolute path, so a moved dataset still resumes)."""
    plain = asdict(config)
    for section, keys in FREE_KEYS.items():
        target = plain[section] if section else plain
        for key in keys:
            target.pop(key, None)
    plain["items"] = sorted((i.itemid, i.label, i.dataset, i.group) for i in items or [])
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpoint:
    def __init__(self, path: Path | None, config: TrainConfig, resume: bool, items: list | None = None):
        self.path = path
        self.key = config_key(config, items)
        self.state: dict = {"key": self.key, "done": {}, "current": None, "torch_rng": None}
        self.resumed = False
        if resume:
            if path is None or not path.exists():
                raise CheckpointError(f"--resume: no checkpoint at {path}; train without --resume to start")
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:
                raise CheckpointError(f"{path}: not a readable checkpoint ({one_line(exc, 120)})") from None
            if not isinstance(saved, dict) or saved.get("key") != self.key:
                raise CheckpointError(f"{path}: checkpoint of a different configuration or data; remove it or train without --resume")
            self.state, self.resumed = saved, True
            log.info("resuming from %s (%s)", path, ", ".join(self.state["done"]) or "first model")

    def save(self) -> None:
        from train.distributed import is_main

        if self.path and is_main():
            self.state["torch_rng"] = torch.get_rng_state()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            torch.save(self.state, tmp)
            tmp.replace(self.path)

    def restore_rng(self) -> None:
        """Put torch's global random state back where the checkpoint left it (once, on resume)."""
        if self.resumed and self.state.get("torch_rng") is not None:
            torch.set_rng_state(self.state["torch_rng"])
        self.resumed = False
