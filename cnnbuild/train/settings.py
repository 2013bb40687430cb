"""Settings of a run: the ``train:`` section with CLI overrides, the device, the data
and its fit to the model, the learning-rate schedule, and the one console factory."""

from __future__ import annotations

import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from cnnbuild.catalog import label_problem, resolved_compile
from cnnbuild.config import ModelConfig
from cnnbuild.data import Data
from cnnbuild.errors import DataError, RunError, shape_str
from cnnbuild.precision import FLOAT32, policy_name
from cnnbuild.schema.sections import TrainConfig
from cnnbuild.trace import trace
from cnnbuild.transfer import source_path

CPU_STEPS_PER_EXECUTION = 8
GPU_STEPS_PER_EXECUTION = 32
# Deeper than this, a CPU runs one step per call by default: Keras' multi-step loop (a
# while loop around the step) takes TensorFlow far longer to trace and optimise, about 6 s
# more on a 155-layer MobileNetV2's first epoch, for a saving per step (Keras' own
# overhead, about a millisecond) that such a model's long steps do not feel. On a small
# CNN the loop is worth about 5 % of the steady speed (docs/guides/training-speed.md).
CPU_MULTI_STEP_LAYERS = 50


def stdout_console() -> Console:
    """The console every command prints to: stdout, plain lines off a terminal."""
    return Console(file=sys.stdout, highlight=False, soft_wrap=not sys.stdout.isatty())


def _absolute(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def resolved_config(cfg: ModelConfig, settings: TrainConfig) -> dict:
    """The config as it ran: ``train:`` fully spelled out, data paths made absolute."""
    data = dict(cfg.doc.data)
    train = settings.model_dump(mode="json", exclude_none=True, by_alias=True)
    cwd = Path.cwd()
    if isinstance(settings.dataset, dict):
        ((kind, path),) = settings.dataset.items()
        train["dataset"] = {kind: _absolute(path, cwd)}
    if settings.data_dir:
        train["data_dir"] = _absolute(settings.data_dir, cwd)
    data["train"] = train
    data["compile"] = resolved_compile(cfg)
    if cfg.init is not None and cfg.init.application is None:  # read again on --resume
        data["init"] = {**data["init"], "from": str(source_path(cfg).resolve())}
    return data


@dataclass
class Device:
    kind: str  # "cpu" or "gpu"
    name: str
    jit_compile: bool
    steps_per_execution: int
    policy: str = FLOAT32  # the Keras dtype policy (see cnnbuild.precision)

    @property
    def mixed_precision(self) -> bool:
        """Whether the policy computes in a 16-bit type (bf16 or float16)."""
        return self.policy != FLOAT32


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def select_device(settings: TrainConfig, layers: int) -> Device:
    """Pick CPU or GPU and the settings that suit it, the dtype policy included.

    Args:
        settings: the run's ``train:`` settings.
        layers: the model's layer count (picks the CPU's default steps per execution).

    Raises:
        RunError: ``device: gpu`` when TensorFlow sees no GPU.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    kind = settings.device
    if kind == "gpu" and not gpus:
        raise RunError(
            "--device gpu: TensorFlow sees no GPU on this machine "
            "(tf.config.list_physical_devices('GPU') is empty); check the CUDA "
            "driver, or use --device cpu"
        )
    if kind == "auto":
        kind = "gpu" if gpus else "cpu"
    if kind == "cpu":
        if gpus:
            tf.config.set_visible_devices([], "GPU")
        name = _cpu_name()
    else:
        details = tf.config.experimental.get_device_details(gpus[0])
        name = details.get("device_name", gpus[0].name)
    on_gpu = kind == "gpu"
    policy = policy_name(kind, settings.mixed_precision)
    return Device(
        kind=kind,
        name=name,
        jit_compile=settings.jit_compile if settings.jit_compile is not None else on_gpu,
        steps_per_execution=settings.steps_per_execution or default_steps(on_gpu, layers),
        policy=policy,
    )


def default_steps(on_gpu: bool, layers: int) -> int:
    """Batches per compiled call when the run does not say: 32 on a GPU; on a CPU 8, or 1
    for a model deeper than ``CPU_MULTI_STEP_LAYERS``."""
    if on_gpu:
        return GPU_STEPS_PER_EXECUTION
    return CPU_STEPS_PER_EXECUTION if layers <= CPU_MULTI_STEP_LAYERS else 1


def check_data(cfg: ModelConfig, data: Data) -> None:
    """Refuse data that does not fit the model: image shape and number of classes.

    Raises:
        DataError: saying what the data has and what the config expects.
    """
    want = cfg.input_shape
    have = data.image_shape
    if len(want) != len(have) or any(
        w is not None and w != h for w, h in zip(want, have, strict=False)
    ):
        hint = (
            f"set input: {list(have)}"
            if want[-1] == have[-1]
            else f"set input: {list(have)} (the data has {have[-1]} channel(s))"
        )
        raise DataError(
            f"{cfg.file}: dataset {data.name} has images of shape "
            f"{shape_str(have)} but the config's input is {shape_str(want)}; "
            f"{hint}, or use input: [null, null, {have[-1]}] with a Resizing "
            "layer"
        )
    out = trace(cfg).output_shape
    problem = label_problem(cfg.compile.loss, data.num_classes, out[-1] if out else None)
    if problem:
        raise DataError(f"{cfg.file}: dataset {data.name} and last layer {cfg.output!r}: {problem}")


def split_validation(
    x: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Hold out ``fraction`` of the training set for validation, chosen by ``seed``."""
    n_val = int(round(len(x) * fraction))
    if fraction > 0 and n_val == 0:
        n_val = 1
    order = np.random.default_rng(seed).permutation(len(x))
    val, tr = np.sort(order[:n_val]), np.sort(order[n_val:])
    return x[tr], y[tr], x[val], y[val]


def make_schedule(keras: Any, cfg: ModelConfig, settings: TrainConfig, steps_per_epoch: int) -> Any:
    """The learning rate: the optimizer's, or a Keras schedule built from ``lr_schedule``."""
    if settings.lr_schedule is None:
        return None
    ((name, args),) = cfg.compile.optimizer.items()
    base = args.get("learning_rate")
    if base is None:
        base = float(np.asarray(keras.optimizers.get(name).learning_rate))
    total = settings.epochs * steps_per_epoch
    if settings.lr_schedule.cosine is not None:
        cos = settings.lr_schedule.cosine
        warmup = min(int(cos.warmup_epochs * steps_per_epoch), total - 1)
        if warmup:
            return keras.optimizers.schedules.CosineDecay(
                0.0,
                max(total - warmup, 1),
                alpha=cos.alpha,
                warmup_target=base,
                warmup_steps=warmup,
            )
        return keras.optimizers.schedules.CosineDecay(base, total, alpha=cos.alpha)
    step = settings.lr_schedule.step
    bounds = list(
        range(step.every_epochs * steps_per_epoch, total, step.every_epochs * steps_per_epoch)
    )
    values = [base * step.factor**k for k in range(len(bounds) + 1)]
    if not bounds:
        return base
    return keras.optimizers.schedules.PiecewiseConstantDecay(bounds, values)
