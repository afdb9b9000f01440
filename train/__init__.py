"""Offline training for streamdet: `python -m train fit --config configs/train.yaml`."""
