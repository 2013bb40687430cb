"""validate speed: 200 generated configs in one `cnnbuild validate` call, next to the time
of `python -c "import tensorflow"` on the same machine, measured in the same run.

Target: all 200 take less than half the time of importing TensorFlow.

    python benchmarks/validate_speed.py [--configs 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def generate(folder: Path, n: int, seed: int = 0) -> None:
    """n varied configs: plain stacks of random depth and widths, and the zoo's ResNet-20."""
    rng = random.Random(seed)
    zoo = (ROOT / "configs" / "zoo" / "resnet20.yaml").read_text()
    for i in range(n):
        if i % 10 == 0:
            (folder / f"resnet20_{i}.yaml").write_text(
                zoo.replace("name: resnet20", f"name: resnet20_{i}")
            )
            continue
        layers = []
        size = 32
        for _ in range(rng.randint(2, 5)):
            for _ in range(rng.randint(1, 3)):
                layers.append(
                    {
                        "Conv2D": {
                            "filters": rng.choice([16, 32, 64, 128]),
                            "kernel_size": rng.choice([1, 3, 5]),
                            "padding": "same",
                            "activation": "relu",
                        }
                    }
                )
                if rng.random() < 0.5:
                    layers.append("BatchNormalization")
            if size > 2:
                layers.append({"MaxPooling2D": {"pool_size": 2}})
                size //= 2
        layers += ["GlobalAveragePooling2D", {"Dropout": {"rate": 0.3}}, {"Dense": {"units": 10}}]
        config = {
            "name": f"gen_{i}",
            "input": [32, 32, 3],
            "layers": layers,
            "compile": {"optimizer": "adam", "from_logits": True},
            "train": {"dataset": "cifar10", "epochs": 5},
        }
        (folder / f"gen_{i}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def timed(cmd: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    return time.perf_counter() - start, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), args.configs)
        validate = [sys.executable, "-m", "cnnbuild", "validate", tmp, "--format", "json"]
        tf_import = [sys.executable, "-c", "import tensorflow"]
        times: dict[str, list[float]] = {"validate": [], "tf": []}
        for _ in range(args.repeats):  # alternate, so both see the same machine state
            seconds, code = timed(validate)
            if code not in (0, 1):
                raise SystemExit(f"validate exited {code}")
            times["validate"].append(seconds)
            times["tf"].append(timed(tf_import)[0])
    v = statistics.median(times["validate"])
    t = statistics.median(times["tf"])
    print(
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, median of "
        f"{args.repeats} alternating runs"
    )
    print("| measurement | seconds | configs/s |")
    print("|---|---|---|")
    print(
        f"| `cnnbuild validate` on {args.configs} configs (one process) | {v:.2f} | "
        f"{args.configs / v:,.0f} |"
    )
    print(f'| `python -c "import tensorflow"` | {t:.2f} | |')
    print(f"| ratio validate / import tensorflow | {v / t:.2f} (target < 0.5) | |")


if __name__ == "__main__":
    main()
