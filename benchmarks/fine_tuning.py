"""Fine-tuned vs from scratch on a few images of new classes: scikit-learn's digits.

A backbone is trained on digits 0-4 (upscaled to 32x32x3, 80% of them). Then, on the
same N training images of digits 5-9 (N/5 per class, a new draw per seed), the same
network is trained twice for the same epochs:

* fine-tuned: ``init: {from: SOURCE_RUN}``, backbone frozen up to its pooling layer,
  a new 5-class head; phase 1 trains the head (at --head-lr, 0.01), phase 2 everything
  at 1e-4;
* from scratch: the same layers, fresh weights, everything trainable at Adam's default
  learning rate (0.001).

Both are scored on the same held-out digits 5-9 (every image not drawn for training).

    python benchmarks/fine_tuning.py                 # N=60, 3 seeds, batch 4
    python benchmarks/fine_tuning.py --n 60 --seeds 5
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402

from cnnbuild.train import train  # noqa: E402

BACKBONE = """
  - Conv2D: {filters: 16, kernel_size: 3, padding: same, use_bias: false, name: c1}
  - BatchNormalization: {momentum: 0.9, name: bn1}
  - Activation: {activation: relu, name: r1}
  - MaxPooling2D: {pool_size: 2, name: mp1}
  - Conv2D: {filters: 32, kernel_size: 3, padding: same, activation: relu, name: c2}
  - MaxPooling2D: {pool_size: 2, name: mp2}
  - Conv2D: {filters: 64, kernel_size: 3, padding: same, activation: relu, name: c3}
  - GlobalAveragePooling2D: {name: pool}
"""


def digits(classes: range, n_train: int | None, seed: int) -> dict[str, np.ndarray]:
    """Digits of ``classes`` as uint8 32x32x3 images labelled from 0: ``n_train``
    (stratified, a draw by ``seed``) to train on, the rest to test on."""
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = np.isin(data.target, list(classes))
    pixels = np.rint(data.images[keep] * (255 / 16)).astype(np.uint8)
    images = np.repeat(np.kron(pixels, np.ones((4, 4), np.uint8))[..., None], 3, axis=-1)
    labels = data.target[keep] - classes.start
    rng = np.random.default_rng(seed)
    if n_train is None:
        order = rng.permutation(len(labels))
        train_idx, test_idx = order[: len(order) * 4 // 5], order[len(order) * 4 // 5 :]
    else:
        per = n_train // len(classes)
        train_idx = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:per] for c in range(len(classes))]
        )
        test_idx = np.setdiff1d(np.arange(len(labels)), train_idx)
    return {
        "x_train": images[train_idx],
        "y_train": labels[train_idx],
        "x_test": images[test_idx],
        "y_test": labels[test_idx],
    }


def run(config: Path, text: str, out: Path) -> float:
    config.write_text(text, encoding="utf-8")
    quiet = Console(file=io.StringIO())
    return train(config, {}, out=out, console=quiet, live=False)["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=60, help="training images of digits 5-9")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--head-epochs", type=int, default=15)
    parser.add_argument("--all-epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--head-lr", type=float, default=0.01, help="phase 1's learning rate")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fine_tuning-"))
    np.savez(work / "old.npz", **digits(range(0, 5), None, 0))
    source = run(
        work / "source.yaml",
        f"name: source\ninput: [32, 32, 3]\nlayers:{BACKBONE}"
        "  - Dense: {units: 5, activation: softmax, name: head04}\n"
        f"train: {{dataset: {{npz: {work / 'old.npz'}}}, epochs: 10, batch_size: 32, seed: 0}}\n",
        work / "source",
    )
    print(
        f"source (digits 0-4, {len(np.load(work / 'old.npz')['y_train'])} images): "
        f"test accuracy {source:.4f}"
    )
    epochs = args.head_epochs + args.all_epochs
    results: dict[str, list[float]] = {"fine-tuned": [], "from scratch": []}
    for seed in range(args.seeds):
        npz = work / f"new{seed}.npz"
        np.savez(npz, **digits(range(5, 10), args.n, seed))
        head = "  - Dense: {units: 5, activation: softmax, name: head59}\n"
        common = f"dataset: {{npz: {npz}}}, batch_size: {args.batch_size}, seed: {seed}"
        tuned = run(
            work / "tuned.yaml",
            f"name: tuned\ninput: [32, 32, 3]\ninit: {{from: {work / 'source'}}}\n"
            f"freeze: {{until: pool}}\nlayers:{BACKBONE}{head}train: {{{common}, phases: "
            f"[{{epochs: {args.head_epochs}, learning_rate: {args.head_lr}}}, "
            f"{{epochs: {args.all_epochs}, learning_rate: 0.0001, freeze: none}}]}}\n",
            work / f"tuned{seed}",
        )
        scratch = run(
            work / "scratch.yaml",
            f"name: scratch\ninput: [32, 32, 3]\nlayers:{BACKBONE}{head}"
            f"train: {{{common}, epochs: {epochs}}}\n",
            work / f"scratch{seed}",
        )
        results["fine-tuned"].append(tuned)
        results["from scratch"].append(scratch)
        print(f"seed {seed}: fine-tuned {tuned:.4f}  from scratch {scratch:.4f}", flush=True)
    for name, values in results.items():
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{name}: mean test accuracy {statistics.mean(values):.4f} (sd {spread:.4f})")
    print(json.dumps({**vars(args), "source": source, **results}))


if __name__ == "__main__":
    main()
