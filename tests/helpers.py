"""What the tests share: the repository, a tiny dataset and training config, and running the
daemon and subscribing to it as a user would."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from audiogen import clip, write

REPO = Path(__file__).resolve().parent.parent

TINY_TRAIN_YAML = """
data:
  - kind: bad
    audio_dir: wav
    labels: labels.csv
mode: nobird
model: {{hidden: 64, latent: 8}}
training: {{epochs: {epochs}, batch_size: 64, learning_rate: 0.002, beta: 0.1, val_fraction: 0.25, seed: 0, device: cpu}}
calibration: {{strategy: percentile, percentile: 99.5}}
output: model.pt
"""


RATES = (22050, 44100, 16000)  # the rates the tests replay: a model must have heard each


def make_bad_dataset(root: Path, n_nobird: int = 24, n_bird: int = 6, seconds: float = 6.0) -> Path:
    """A tiny dataset in the BAD 2018 layout: wav/<itemid>.wav and labels.csv (itemid,hasbird)."""
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rows = ["itemid,hasbird"]
    for i in range(n_nobird):
        sr = RATES[i % len(RATES)]
        write(root / "wav" / f"bg{i:02d}.wav", clip(seconds, sr, seed=i, level_db=-32 + (i % 4) * 2), sr)
        rows.append(f"bg{i:02d},0")
    for i in range(n_bird):
        sr = RATES[i % len(RATES)]
        write(root / "wav" / f"bird{i:02d}.wav", clip(seconds, sr, calls=[(1.0, 1.5)], seed=100 + i), sr)
        rows.append(f"bird{i:02d},1")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def streamdet_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamdet", *args]


def start_daemon(*args: str, env: dict | None = None) -> subprocess.Popen:
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(streamdet_command("run", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def collect(endpoint: str, until_final: bool = True, timeout_s: float = 60.0, on_message=None, curve=None) -> list[tuple[str, dict, float]]:
    """Subscribe and gather (topic, message, receive time) until a final status (or timeout)."""
    from streamdet.bus.sockets import Subscriber

    sub = Subscriber(endpoint, curve=curve)
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            item = sub.receive(timeout_s=0.5)
            if item is None:
                continue
            topic, msg = item
            got.append((topic, msg, time.monotonic()))
            if on_message:
                on_message(topic, msg)
            if until_final and msg["type"] == "status" and msg["state"] in ("finished", "stopped"):
                break
    finally:
        sub.close()
    return got


def two_site_manifest(root: Path, epochs: int) -> Path:
    """Two blocks (sites) of eight recordings each, every recording cut into two clips of one
    group; half the recordings hold a call. Returns a training config over them (contrast mode)."""
    rows = ["file\tlabel\tgroup"]
    for block, sr in (("siteA", 22050), ("siteB", 16000)):
        (root / block).mkdir()
        for rec in range(8):
            bird = rec % 2
            for part in range(2):
                name = f"{block}/r{rec}_{part}.wav"
                write(root / name, clip(4.0, sr, [(1.5, 1.0)] if bird else [], seed=100 * (block == "siteB") + 2 * rec + part), sr)
                rows.append(f"{name}\t{'bird' if bird else 'nobird'}\t{block}_r{rec}")
    (root / "MANIFEST.tsv").write_text("\n".join(rows) + "\n")
    text = TINY_TRAIN_YAML.format(epochs=epochs).replace("  - kind: bad\n    audio_dir: wav\n    labels: labels.csv", "  - kind: manifest\n    labels: MANIFEST.tsv")
    text = text.replace("mode: nobird", "mode: contrast").replace("val_fraction: 0.25", "val_fraction: 0.3")
    (root / "t.yaml").write_text(text + f"cache_dir: {root / 'cache'}\n")
    return root / "t.yaml"
