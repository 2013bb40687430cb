"""``shapes``: a built-in, offline, CIFAR-shaped dataset (32×32×3, 10 classes).

Each image is one filled or outlined shape of a random size, position and colour over a
noisy background of another colour. Position varies over the whole image, so a model
must recognise a shape wherever it appears: the translation invariance that convolution
and pooling give a CNN. The set is generated from a seed, so it is the same everywhere.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from cnnbuild.data.base import Data, tidy

CLASSES = [
    "circle",
    "ring",
    "square",
    "frame",
    "diamond",
    "triangle",
    "plus",
    "cross",
    "hbar",
    "vbar",
]
SIZE = 32
TRAIN, TEST = 12_000, 2_000
SEED = 2026


def _masks(label: int, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean (N, 32, 32) masks of one class; dx, dy are offsets from each centre."""
    ax, ay = np.abs(dx), np.abs(dy)
    t = np.maximum(1.2, r / 3.5)  # stroke half-width
    name = CLASSES[label]
    if name == "circle":
        return dx**2 + dy**2 <= r**2
    if name == "ring":
        d2 = dx**2 + dy**2
        return (d2 <= r**2) & (d2 >= (r - 2 * t) ** 2)
    if name == "square":
        return (ax <= r * 0.85) & (ay <= r * 0.85)
    if name == "frame":
        s = r * 0.85
        return (ax <= s) & (ay <= s) & ((ax >= s - 1.6 * t) | (ay >= s - 1.6 * t))
    if name == "diamond":
        return ax + ay <= r
    if name == "triangle":
        return (dy <= r * 0.8) & (dy >= -r * 0.9) & (ax <= (dy + r * 0.9) * 0.6)
    if name == "plus":
        return ((ax <= t) & (ay <= r)) | ((ay <= t) & (ax <= r))
    if name == "cross":
        return (
            ((np.abs(dx - dy) <= 1.4 * t) | (np.abs(dx + dy) <= 1.4 * t))
            & (ax <= r * 0.8)
            & (ay <= r * 0.8)
        )
    if name == "hbar":
        return (ax <= r) & (ay <= t)
    return (ay <= r) & (ax <= t)  # vbar


def generate(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images (uint8, (n, 32, 32, 3)) and labels (int32), balanced over the classes."""
    images, labels, _ = _draw(n, seed)
    return images, labels


def generate_with_boxes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The images and labels of :func:`generate`, with each shape's bounding box.

    Returns:
        Images, labels and boxes (int32, (n, 4)): ``(row0, col0, row1, col1)``, the first
        and last pixel rows and columns the drawn shape covers (inclusive).
    """
    images, labels, mask = _draw(n, seed)
    rows, cols = mask.any(axis=2), mask.any(axis=1)
    boxes = np.stack(
        [
            rows.argmax(axis=1),
            cols.argmax(axis=1),
            SIZE - 1 - rows[:, ::-1].argmax(axis=1),
            SIZE - 1 - cols[:, ::-1].argmax(axis=1),
        ],
        axis=1,
    )
    return images, labels, boxes.astype(np.int32)


def _draw(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASSES)).astype(np.int32)
    r = rng.uniform(5.0, 11.0, n)[:, None, None]
    cx = rng.uniform(r[:, 0, 0], SIZE - 1 - r[:, 0, 0])[:, None, None]
    cy = rng.uniform(r[:, 0, 0], SIZE - 1 - r[:, 0, 0])[:, None, None]
    grid = np.arange(SIZE, dtype=np.float32)
    mask = np.empty((n, SIZE, SIZE), dtype=bool)
    for label in range(len(CLASSES)):
        idx = np.flatnonzero(labels == label)
        dx = grid[None, None, :] - cx[idx].astype(np.float32)
        dy = cy[idx].astype(np.float32) - grid[None, :, None]
        dx, dy = np.broadcast_arrays(dx, dy)
        mask[idx] = _masks(label, dx, dy, r[idx].astype(np.float32))
    background = rng.uniform(0, 255, (n, 1, 1, 3))
    shift = rng.uniform(90, 160, (n, 1, 1, 3)) * rng.choice([-1, 1], (n, 1, 1, 3))
    foreground = np.where(
        background + shift > 255,
        background - shift,
        np.where(background + shift < 0, background - shift, background + shift),
    )
    noise = rng.standard_normal((n, SIZE, SIZE, 3), dtype=np.float32) * 18
    images = np.where(mask[..., None], foreground.astype(np.float32), background.astype(np.float32))
    images += noise
    return np.clip(images, 0, 255).astype(np.uint8), labels, mask


@lru_cache(maxsize=1)
def _generated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`generate`, once a process: 14,000 images take 1.5 s to draw, and the tuner's
    trials (and a resumed run) load the set again in the same process. Read-only, so no
    caller can change what the next one gets."""
    x, y = generate(n, seed)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def load_shapes(train: int = TRAIN, test: int = TEST, seed: int = SEED) -> Data:
    """The ``shapes`` dataset: ``train`` + ``test`` images generated from ``seed``."""
    x, y = _generated(train + test, seed)
    return tidy(
        "shapes",
        x[:train],
        y[:train],
        x[train:],
        y[train:],
        CLASSES,
        f"built-in shapes (seed {seed})",
    )
