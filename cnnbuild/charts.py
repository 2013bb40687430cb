"""Training plots with matplotlib (Agg backend, no display needed), saved atomically.

Titles and class names are shown through :func:`cnnbuild.escape.mathtext` (a ``$`` in a
class name is text, not mathtext)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cnnbuild.escape import mathtext
from cnnbuild.io import save_figure


def pyplot() -> Any:
    """matplotlib's ``pyplot`` on the Agg backend (no display needed), imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def curves(history: list[dict], path: Path, title: str) -> None:
    """Loss and accuracy per epoch, train vs validation."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax.plot(
                    epochs,
                    [np.nan if v is None else v for v in values],
                    style,
                    label="validation" if key.startswith("val_") else "train",
                    markersize=3,
                )
        for start in phase_starts(history):
            ax.axvline(start - 0.5, color="grey", linestyle=":", linewidth=1)
            ax.annotate(
                f"phase {history[start - epochs[0]]['phase']}",
                (start - 0.4, 0.97),
                xycoords=("data", "axes fraction"),
                fontsize=7,
                color="grey",
                va="top",
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(mathtext(title))
    save_figure(fig, path)
    plt.close(fig)


def phase_starts(history: list[dict]) -> list[int]:
    """The epochs (1-based) where a phase of ``train.phases`` after the first begins."""
    return [
        b["epoch"]
        for a, b in zip(history, history[1:], strict=False)
        if b.get("phase") is not None and b.get("phase") != a.get("phase")
    ]


def confusion(matrix: np.ndarray, names: list[str], path: Path, title: str) -> None:
    """The confusion matrix (rows: true class, columns: predicted), with class names."""
    plt = pyplot()
    n = len(names)
    size = min(4 + 0.45 * n, 16)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    step = max(1, n // 25)
    ticks = np.arange(0, n, step)
    labels = [mathtext(names[i]) for i in ticks]
    ax.set_xticks(ticks, labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(ticks, labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        top = matrix.max() or 1
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if matrix[i, j] > top / 2 else "black",
                    )
    ax.set_title(mathtext(title))
    save_figure(fig, path)
    plt.close(fig)
