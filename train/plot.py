"""A ROC-curve PNG from numpy and zlib alone (the project keeps to its listed dependencies)."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (23, 190, 207)]


def roc_png(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], size: int = 480, margin: int = 40) -> Path:
    """Draw each (fpr, tpr) curve in its own colour over a grid and the chance diagonal.
    Legend colours follow the order of `curves` (COLOURS); the caller names them in text."""
    img = np.full((size, size, 3), 255, np.uint8)
    span = size - 2 * margin

    def to_px(x, y):
        return margin + np.asarray(x) * span, size - margin - np.asarray(y) * span

    for g in np.linspace(0, 1, 11):
        _line(img, *to_px([g, g], [0, 1]), (225, 225, 225))
        _line(img, *to_px([0, 1], [g, g]), (225, 225, 225))
    _line(img, *to_px([0, 1], [0, 1]), (160, 160, 160))
    for x, y in ([0, 1], [0, 0]), ([0, 0], [0, 1]), ([1, 1], [0, 1]), ([0, 1], [1, 1]):
        _line(img, *to_px(x, y), (0, 0, 0))
    for i, (fpr, tpr) in enumerate(curves.values()):
        colour = COLOURS[i % len(COLOURS)]
        px, py = to_px(fpr, tpr)
        for dx, dy in ((-1, 0), (0, 0), (1, 0), (0, -1), (0, 1)):  # three pixels wide both ways
            _line(img, px + dx, py + dy, colour)
        img[margin // 2 - 4 : margin // 2 + 4, margin + 20 * i : margin + 20 * i + 14] = colour  # legend swatch
    _write_png(Path(path), img)
    return Path(path)


def _line(img: np.ndarray, xs, ys, colour) -> None:
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 2
        px = np.clip(np.round(np.linspace(x0, x1, n)).astype(int), 0, img.shape[1] - 1)
        py = np.clip(np.round(np.linspace(y0, y1, n)).astype(int), 0, img.shape[0] - 1)
        img[py, px] = colour


def _write_png(path: Path, img: np.ndarray) -> None:
    h, w, _ = img.shape
    raw = b"".join(b"\x00" + img[row].tobytes() for row in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
