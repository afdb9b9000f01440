from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from audiogen import clip, write

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def private_cache_home(tmp_path_factory):
    """Tests never write into the user's ~/.cache: every process they start inherits this."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old

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


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real training run on generated clips: the artifact the daemon tests load."""
    from train.cli import main

    root = make_bad_dataset(tmp_path_factory.mktemp("tinydata"))
    (root / "train.yaml").write_text(TINY_TRAIN_YAML.format(epochs=30))
    assert main(["fit", "--config", str(root / "train.yaml")]) == 0
    return root / "model.pt"


def streamdet_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "streamdet", *args]


def start_daemon(*args: str, env: dict | None = None) -> subprocess.Popen:
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(streamdet_command("run", *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def collect(endpoint: str, until_final: bool = True, timeout_s: float = 60.0, on_message=None, curve=None) -> list[tuple[str, dict, float]]:
    """Subscribe and gather (topic, message, receive time) until a final status (or timeout)."""
    from streamdet.bus import Subscriber

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


@pytest.fixture
def endpoint() -> str:
    from streamdet.demo import free_tcp_endpoint

    return free_tcp_endpoint()
