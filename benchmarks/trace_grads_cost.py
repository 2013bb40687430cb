"""What ``trace --grads`` costs against one plain Keras forward and backward pass.

Both run on the same model (built from the config), the same seeded batch of 8 raw-pixel
images and its labels, in training mode, eagerly, alternately for ``--rounds`` rounds:

- plain: ``with GradientTape(): loss(y, model(x, training=True))``, then the gradient of
  every trainable weight;
- trace --grads: :func:`cnnbuild.insight.grads.layer_grads`, the pass behind the command
  (every layer's output gradient, every weight's, each layer's input-gradient zero
  fraction and the dead ReLU units, on one tape).

The default config is keras.io's small Xception ("Image classification from scratch":
180x180x3, entry flow 128/256/512/728 SeparableConv + BN + residual blocks), written out
below. The first round (Keras' first call of each layer) is reported apart.

    python benchmarks/trace_grads_cost.py
    python benchmarks/trace_grads_cost.py --config configs/shapes_demo.yaml --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnbuild.builder import build_model, keras_module  # noqa: E402
from cnnbuild.insight.grads import layer_grads, objective_fn, random_batch  # noqa: E402
from cnnbuild.trace import trace  # noqa: E402
from cnnbuild.validate import load_config  # noqa: E402

XCEPTION = """
name: keras_io_xception_small
input: [180, 180, 3]
blocks:
  entry:
    params: [size]
    layers:
      - Residual:
          main:
            - Activation: {activation: relu}
            - SeparableConv2D: {filters: $size, kernel_size: 3, padding: same}
            - BatchNormalization
            - Activation: {activation: relu}
            - SeparableConv2D: {filters: $size, kernel_size: 3, padding: same}
            - BatchNormalization
            - MaxPooling2D: {pool_size: 3, strides: 2, padding: same}
          shortcut:
            - Conv2D: {filters: $size, kernel_size: 1, strides: 2, padding: same}
layers:
  - Conv2D: {filters: 128, kernel_size: 3, strides: 2, padding: same}
  - BatchNormalization
  - Activation: {activation: relu}
  - entry: {size: 256}
  - entry: {size: 512}
  - entry: {size: 728}
  - SeparableConv2D: {filters: 1024, kernel_size: 3, padding: same}
  - BatchNormalization
  - Activation: {activation: relu}
  - GlobalAveragePooling2D
  - Dropout: {rate: 0.25}
  - Dense: {units: 1}
compile:
  optimizer: {adam: {learning_rate: 0.0003}}
  loss: binary_crossentropy
"""


def cpu() -> str:
    """The CPU's model name and whether it has native bf16 (``avx512_bf16``)."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            "unknown CPU",
        )
    except OSError:
        name = "unknown CPU"
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        flags = ""
    bf16 = "avx512_bf16" in flags
    return f"{name}, avx512_bf16 {'yes' if bf16 else 'no'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="a config (default: keras.io Xception)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds after the first")
    args = parser.parse_args()

    keras = keras_module()
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.config or Path(tmp) / "xception.yaml")
        if args.config is None:
            path.write_text(XCEPTION, encoding="utf-8")
        cfg = load_config(path)
    keras.utils.set_random_seed(0)
    model = build_model(cfg, compile=False)
    out = trace(cfg).output_shape
    units = out[-1] if out and len(out) == 1 else None
    x, y, _ = random_batch(cfg, units, seed=0)
    objective, what = objective_fn(cfg, units is not None, seed=0)

    def plain() -> list:
        with tf.GradientTape() as tape:
            value = objective(model(x, training=True), y)
        return [float(value)] + [g.numpy() for g in tape.gradient(value, model.trainable_variables)]

    def grads() -> tuple:
        return layer_grads(model, cfg, x, y, objective)

    times: dict[str, list[float]] = {"plain": [], "grads": []}
    for _ in range(args.rounds + 1):
        for name, fn in (("plain", plain), ("grads", grads)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    print(
        f"{cfg.name}: {model.count_params():,} parameters, {len(cfg.nodes)} layers, batch of "
        f"{len(x)}, {what}, training mode; {cpu()}; TensorFlow {tf.__version__}; "
        f"{args.rounds} rounds after a first, alternating"
    )
    print("| measurement | plain forward+backward (s) | trace --grads pass (s) | ratio |")
    print("|---|---|---|---|")
    p0, g0 = times["plain"][0], times["grads"][0]
    print(f"| first call | {p0:.2f} | {g0:.2f} | {g0 / p0:.2f}x |")
    if args.rounds:
        p, g = statistics.median(times["plain"][1:]), statistics.median(times["grads"][1:])
        print(f"| later calls (median) | {p:.2f} | {g:.2f} | {g / p:.2f}x |")


if __name__ == "__main__":
    main()
