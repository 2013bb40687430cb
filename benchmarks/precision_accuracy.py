"""Accuracy under bf16 vs float32: the same runs with ``--no-mixed-precision`` and with
``--mixed-precision`` (``mixed_bfloat16`` on a CPU, ``mixed_float16`` on a GPU).

Three models, each trained by ``cnnbuild train`` in its own process with the same seed:

- the demo: ``configs/shapes_demo.yaml`` as ``make demo`` runs it;
- scikit-learn's digits (real scans, 8x8 grey, 1,797 images) with a small CNN;
- the TensorFlow tutorial CNN (``configs/cifar10_tutorial.yaml``) on the shapes dataset.

Prints a table of test accuracies and the difference in points; the target is |diff| <=
0.5 points. Needs scikit-learn (``pip install -e '.[bench]'``).

    python benchmarks/precision_accuracy.py
    python benchmarks/precision_accuracy.py --quick       # smoke run on tiny sizes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

DIGITS = """
name: digits_cnn
input: [8, 8, 1]
layers:
  - Conv2D: {filters: 32, kernel_size: 3, padding: same, activation: relu}
  - Conv2D: {filters: 32, kernel_size: 3, padding: same, activation: relu}
  - MaxPooling2D: {pool_size: 2}
  - Flatten
  - Dense: {units: 64, activation: relu}
  - Dense: {units: 10}
compile:
  optimizer: {adam: {learning_rate: 0.002}}
  loss: sparse_categorical_crossentropy
  from_logits: true
  metrics: [accuracy]
"""


def digits_npz(path: Path) -> Path:
    """scikit-learn's digits as uint8 0..255 images in the npz layout ``train`` reads."""
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    y = digits.target.astype(np.int32)
    order = np.random.default_rng(0).permutation(len(x))
    test = order[:360]
    train = order[360:]
    np.savez(path, x_train=x[train], y_train=y[train], x_test=x[test], y_test=y[test])
    return path


def train(config: Path, out: Path, flags: list[str], env: dict) -> dict:
    command = [sys.executable, "-m", "cnnbuild", "train", str(config), "--out", str(out)]
    proc = subprocess.run(command + flags, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"{config.name} {' '.join(flags)} failed (exit {proc.returncode})")
    return json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    quick = ["--limit", "256", "--epochs", "1"] if args.quick else []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        digits_config = tmp_path / "digits.yaml"
        digits_config.write_text(DIGITS)
        data = digits_npz(tmp_path / "digits.npz")
        runs = {
            "demo (shapes_demo, 8 epochs)": (ROOT / "configs/shapes_demo.yaml", []),
            "digits (scikit-learn), 30 epochs": (
                digits_config,
                ["--dataset", f"npz:{data}", "--epochs", "30", "--batch-size", "32"],
            ),
            "tutorial CNN on shapes, 10 epochs": (
                ROOT / "configs/cifar10_tutorial.yaml",
                ["--dataset", "shapes", "--epochs", "10"],
            ),
        }
        print("| model | float32 test acc | mixed test acc | policy | diff (points) |")
        print("|---|---|---|---|---|", flush=True)
        for index, (label, (config, flags)) in enumerate(runs.items()):
            common = [*flags, "--seed", str(args.seed), *quick]
            f32 = train(config, tmp_path / f"f32-{index}", [*common, "--no-mixed-precision"], env)
            mixed = train(config, tmp_path / f"mixed-{index}", [*common, "--mixed-precision"], env)
            diff = 100 * (mixed["test_accuracy"] - f32["test_accuracy"])
            print(
                f"| {label} | {f32['test_accuracy']:.4f} | {mixed['test_accuracy']:.4f} | "
                f"{mixed['precision_policy']} | {diff:+.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
