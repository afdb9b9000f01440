from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import TINY_TRAIN_YAML, make_bad_dataset


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

@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A real training run on generated clips: the artifact the daemon tests load."""
    from train.cli import main

    root = make_bad_dataset(tmp_path_factory.mktemp("tinydata"))
    (root / "train.yaml").write_text(TINY_TRAIN_YAML.format(epochs=30))
    assert main(["fit", "--config", str(root / "train.yaml")]) == 0
    return root / "model.pt"


@pytest.fixture
def endpoint() -> str:
    from streamdet.demo import free_tcp_endpoint

    return free_tcp_endpoint()


SLOW_FIXTURES = {"tiny_model", "broker"}  # a real training run; a real MQTT broker


def pytest_collection_modifyitems(items):
    """Whatever needs a trained model or a broker is slow, wherever it is written."""
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
