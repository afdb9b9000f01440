"""What an artifact says about how it was made."""
from __future__ import annotations

import logging
import subprocess
from collections import defaultdict
from pathlib import Path

import streamdet
from train.datasets import Item

log = logging.getLogger("train.fit")


def data_summary(items: list[Item], val_items: list[Item], unusable: list[Item]) -> dict:
    by_dataset = defaultdict(lambda: {"bird": 0, "nobird": 0})
    for item in items:
        by_dataset[item.dataset]["bird" if item.label else "nobird"] += 1
    return {"clips": len(items), "unusable": len(unusable), "by_dataset": dict(by_dataset), "val_items": sorted(i.itemid for i in val_items)}


def code_version() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"streamdet {streamdet.__version__}" + (f" ({commit})" if commit else "")
