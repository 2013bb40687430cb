"""Training runs: resolve settings, pick the device, load and check the data, fit with
progress, checkpoints and schedules, evaluate on the test set, fill the run directory.

A run directory holds ``config.yaml`` (the resolved config), ``state.json`` (what a
resume needs), ``last.keras`` and ``model.keras`` (best by ``train.monitor``),
``history.csv``/``history.json``, ``metrics.json``, ``curves.png``, ``confusion.png``
and, with ``tensorboard: true``, ``tb/``. Every file is written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
import platform
import random
import shlex
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError
from rich.console import Console

from cnnbuild.config import ModelConfig
from cnnbuild.data import Data, describe, load_dataset
from cnnbuild.errors import DataError, RunError, UsageError, shape_str
from cnnbuild.io import save_model, write_json, write_text
from cnnbuild.schema.config import TrainConfig
from cnnbuild.trace import trace
from cnnbuild.validate import load_config

ONE_HOT_LOSSES = ("categorical_crossentropy", "categorical_focal_crossentropy", "categorical_hinge")
CPU_STEPS_PER_EXECUTION = 8
GPU_STEPS_PER_EXECUTION = 32
STATE = "state.json"


# -- settings ---------------------------------------------------------------------------


def resolve_train(cfg: ModelConfig | None, overrides: dict[str, Any]) -> TrainConfig:
    """The config's ``train:`` section (defaults without a config) with CLI overrides
    applied and checked.

    Raises:
        UsageError: an override is out of range or of the wrong type.
    """
    base = cfg.doc.data.get("train") if cfg and isinstance(cfg.doc.data, dict) else None
    merged = {**(base or {}), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        return TrainConfig.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()
        )
        raise UsageError(problems) from None


def _absolute(value: str | None, base: Path) -> str | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def resolved_config(cfg: ModelConfig, settings: TrainConfig) -> dict:
    """The config as it ran: ``train:`` fully spelled out, data paths made absolute."""
    data = dict(cfg.doc.data)
    train = settings.model_dump(mode="json", exclude_none=True)
    cwd = Path.cwd()
    if isinstance(settings.dataset, dict):
        ((kind, path),) = settings.dataset.items()
        train["dataset"] = {kind: _absolute(path, cwd)}
    if settings.data_dir:
        train["data_dir"] = _absolute(settings.data_dir, cwd)
    data["train"] = train
    return data


@dataclass
class Device:
    kind: str  # "cpu" or "gpu"
    name: str
    mixed_precision: bool
    jit_compile: bool
    steps_per_execution: int
    policy: str = "float32"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def select_device(settings: TrainConfig) -> Device:
    """Pick CPU or GPU and the settings that suit it.

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
    from cnnbuild.precision import FLOAT32, policy_name

    policy = policy_name(kind, settings.mixed_precision)
    return Device(
        kind=kind,
        name=name,
        mixed_precision=policy != FLOAT32,
        jit_compile=settings.jit_compile if settings.jit_compile is not None else on_gpu,
        steps_per_execution=settings.steps_per_execution
        or (GPU_STEPS_PER_EXECUTION if on_gpu else CPU_STEPS_PER_EXECUTION),
        policy=policy,
    )


# -- data -------------------------------------------------------------------------------


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
    units = out[-1] if out else None
    loss = cfg.compile.loss
    classes = data.num_classes
    if loss.startswith("binary"):
        if classes != 2 or units != 1:
            raise DataError(
                f"{cfg.file}: loss {loss} needs 2 classes and 1 output unit; "
                f"dataset {data.name} has {classes} classes and the last layer "
                f"{cfg.output} has {units} units"
            )
    elif units != classes:
        raise DataError(
            f"{cfg.file}: dataset {data.name} has {classes} classes but the last "
            f"layer {cfg.output} has {units} units; set its units to {classes}"
        )


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


def load_data(shape: tuple, settings: TrainConfig, quiet: bool = False) -> Data:
    """The dataset ``settings`` name, read for a model whose input is ``shape``."""
    data = load_dataset(
        settings.dataset,
        data_dir=settings.data_dir,
        image_size=shape[:2] if len(shape) == 3 else None,
        channels=shape[-1] or 3,
        test_split=settings.test_split,
        seed=settings.seed if settings.seed is not None else 1337,
        quiet=quiet,
    )
    return data.limited(settings.limit)


# -- callbacks --------------------------------------------------------------------------


def fmt_metrics(logs: dict, keys: list[str]) -> str:
    return "  ".join(f"{k} {logs[k]:.4f}" for k in keys if k in logs)


def make_callbacks(keras: Any, run: Run, console: Console, live: bool) -> list[Any]:
    """Progress display, non-finite-loss guard and checkpointing, as Keras callbacks."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    class Reporter(keras.callbacks.Callback):
        """A rich progress bar per epoch (or nothing, off a terminal) and an epoch line."""

        def on_epoch_begin(self, epoch, logs=None):
            run.epoch_start = time.perf_counter()
            run.train_end = None
            if live:
                self.progress = Progress(
                    TextColumn(f"epoch {epoch + 1}/{run.settings.epochs}"),
                    BarColumn(),
                    TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[metrics]}"),
                    TextColumn("{task.fields[speed]}"),
                    TimeRemainingColumn(),
                    console=console,
                    transient=True,
                )
                self.task = self.progress.add_task("", total=run.steps, metrics="", speed="")
                self.progress.start()

        def on_train_batch_end(self, batch, logs=None):
            logs = logs or {}
            run.train_end = time.perf_counter()
            loss = logs.get("loss")
            if loss is not None and not math.isfinite(float(loss)):
                run.diverged = (len(run.history) + run.initial_epoch + 1, batch + 1, float(loss))
                self.model.stop_training = True
            if live:
                done = min(batch + 1, run.steps)
                seconds = max(run.train_end - run.epoch_start, 1e-9)
                speed = min(done * (run.global_batch or run.settings.batch_size), run.n_train)
                speed /= seconds
                self.progress.update(
                    self.task,
                    completed=done,
                    metrics=fmt_metrics(logs, ["loss", "accuracy"]),
                    speed=f"{speed:,.0f} img/s",
                )

        def on_epoch_end(self, epoch, logs=None):
            if live:
                self.progress.stop()

    class Checkpointer(keras.callbacks.Callback):
        """Record history; save last.keras every epoch and model.keras when best."""

        def on_epoch_end(self, epoch, logs=None):
            if run.diverged:
                return
            run.end_epoch(epoch, dict(logs or {}), self.model)

    return [Reporter(), Checkpointer()]


# -- the run ----------------------------------------------------------------------------


@dataclass
class Run:
    """A training run and its directory."""

    cfg: ModelConfig
    settings: TrainConfig
    dir: Path
    console: Console
    device: Device | None = None
    n_train: int = 0
    steps: int = 0
    initial_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    best: float | None = None
    best_epoch: int | None = None
    monitor: str = "val_accuracy"
    diverged: tuple[int, int, float] | None = None
    epoch_start: float = 0.0
    train_end: float | None = None
    seed: int = 0
    wall_start: float = field(default_factory=time.perf_counter)
    prior_wall: float = 0.0
    global_batch: int = 0

    def restored(self, epoch: int) -> None:
        """BackupAndRestore resumed at ``epoch``: forget any later record."""
        self.history = self.history[:epoch]
        self.initial_epoch = epoch
        scores = [(h[self.monitor], h["epoch"]) for h in self.history if self.monitor in h]
        pick = max if self.mode_max else min
        self.best, self.best_epoch = pick(scores) if scores else (None, None)

    @property
    def wall_seconds(self) -> float:
        """Seconds this run has taken so far, over all its sessions."""
        return self.prior_wall + time.perf_counter() - self.wall_start

    @property
    def mode_max(self) -> bool:
        return "loss" not in self.monitor

    def path(self, name: str) -> Path:
        return self.dir / name

    def end_epoch(self, epoch: int, logs: dict, model: Any) -> None:
        seconds = (self.train_end or time.perf_counter()) - self.epoch_start
        record = {
            "epoch": epoch + 1,
            **{k: float(v) for k, v in logs.items() if isinstance(v, (int, float, np.floating))},
        }
        lr = model.optimizer.learning_rate
        record["learning_rate"] = float(np.asarray(lr))
        record["train_seconds"] = round(seconds, 3)
        record["images_per_second"] = round(self.n_train / max(seconds, 1e-9), 1)
        self.history.append(record)
        value = record.get(self.monitor)
        improved = value is not None and (
            self.best is None or (value > self.best if self.mode_max else value < self.best)
        )
        if improved:
            self.best, self.best_epoch = value, epoch + 1
            save_model(model, self.path("model.keras"))
        save_model(model, self.path("last.keras"))
        self.save_state("running")
        self.save_history()
        keys = [k for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in record]
        star = " *" if improved else ""
        self.console.print(
            f"epoch {epoch + 1}/{self.settings.epochs}  {fmt_metrics(record, keys)}  "
            f"lr {record['learning_rate']:.3g}  {seconds:.1f}s  "
            f"{record['images_per_second']:,.0f} img/s{star}",
            highlight=False,
        )

    def save_state(self, status: str) -> None:
        write_json(
            self.path(STATE),
            {
                "status": status,
                "epochs_done": len(self.history),
                "best": self.best,
                "best_epoch": self.best_epoch,
                "monitor": self.monitor,
                "seed": self.seed,
                "wall_seconds": round(self.wall_seconds, 2),
                "history": self.history,
            },
        )

    def save_history(self) -> None:
        write_json(self.path("history.json"), self.history)
        keys: list[str] = []
        for record in self.history:
            keys += [k for k in record if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        write_text(self.path("history.csv"), buf.getvalue())


def new_run_dir(cfg: ModelConfig, out: Path | None) -> Path:
    """``runs/<name>-<YYYYmmdd-HHMMSS>`` or ``out``; never an existing run's folder.

    Raises:
        UsageError: ``out`` already holds a run.
    """
    if out is not None:
        if (out / STATE).exists() or (out / "metrics.json").exists():
            raise UsageError(
                f"--out {out}: already holds a run; resume it with "
                f"--resume {out}, or choose another folder"
            )
        out.mkdir(parents=True, exist_ok=True)
        return out
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{cfg.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


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


def keras_callbacks(keras: Any, run: Run) -> list[Any]:
    s = run.settings
    out = []
    if s.early_stopping is not None:
        out.append(keras.callbacks.EarlyStopping(**s.early_stopping.model_dump()))
    if s.reduce_lr_on_plateau is not None:
        out.append(
            keras.callbacks.ReduceLROnPlateau(**s.reduce_lr_on_plateau.model_dump(), verbose=0)
        )
    if s.tensorboard:
        out.append(keras.callbacks.TensorBoard(log_dir=str(run.path("tb"))))
    return out


def _resume_state(run_dir: Path) -> dict:
    try:
        state = json.loads((run_dir / STATE).read_text())
    except FileNotFoundError:
        raise UsageError(f"--resume {run_dir}: not a run directory (no {STATE})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RunError(f"--resume {run_dir}: cannot read {STATE}: {exc}") from None
    if not (run_dir / "last.keras").is_file():
        raise RunError(
            f"--resume {run_dir}: no last.keras; no epoch finished in that run, "
            "so start it again instead"
        )
    return state


def train(
    config: Path | None,
    overrides: dict[str, Any],
    *,
    out: Path | None = None,
    resume: Path | None = None,
    console: Console | None = None,
    live: bool | None = None,
    verbose: bool = False,
) -> dict:
    """Train a config (or resume a run) and evaluate it on the test set.

    Args:
        config: the YAML config; with ``resume``, the run's own config.yaml is used.
        overrides: ``train:`` settings from the command line (None means not given).
        out: the run directory (default ``runs/<name>-<timestamp>``).
        resume: a run directory to continue from its last completed epoch.
        console: where progress and results go.
        live: show progress bars (default: when the console is a terminal).
        verbose: show TensorFlow's start-up messages.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        ConfigError, UsageError, DataError, RunError: with a message for the user.
    """
    console = console or Console()
    live = console.is_terminal if live is None else live
    state = None
    if resume is not None:
        state = _resume_state(resume)
        extra = sorted(k for k, v in overrides.items() if v is not None and k != "epochs")
        if extra:
            raise UsageError(
                "a resumed run keeps its recorded settings; only --epochs may "
                "change (received " + ", ".join("--" + k.replace("_", "-") for k in extra) + ")"
            )
        cfg = load_config(resume / "config.yaml")
        if config is not None:
            console.print(
                f"resuming with {resume / 'config.yaml'} (the run's own config; "
                f"{config} is not read)",
                highlight=False,
            )
    elif config is None:
        raise UsageError("give a CONFIG to train, or --resume RUN_DIR")
    else:
        cfg = load_config(config)
    settings = resolve_train(cfg, overrides)

    from cnnbuild.builder import build_model, keras_module

    keras = keras_module(verbose)
    import tensorflow as tf

    device = select_device(settings)
    from cnnbuild import distribute

    plan = distribute.make_plan(settings.strategy, device.kind)
    relaunch = None
    if plan.strategy is not None:
        if (settings.steps_per_execution or 1) > 1:
            raise UsageError(
                f"--steps-per-execution {settings.steps_per_execution}: Keras' multi-step "
                f"loop fails under tf.distribute ({plan.name}); use 1, the default there"
            )
        device.steps_per_execution = 1
    if plan.multi_worker:
        if resume is not None or out is None:
            raise UsageError(
                "--strategy multi-worker: give every worker the same --out RUN_DIR (no "
                "--resume); to continue after a failure, run the same command again"
            )
        out = distribute.worker_dir(out, plan.cluster)
        if distribute.can_relaunch(out) and (out / STATE).is_file():
            relaunch = json.loads((out / STATE).read_text())
        if settings.seed is None and relaunch is None:
            raise UsageError(
                "--strategy multi-worker: every worker must shuffle alike; set train.seed "
                "or --seed (cnnbuild train --workers N sets one for you)"
            )
    seed = (
        settings.seed
        if settings.seed is not None
        else (state or relaunch or {}).get("seed", random.SystemRandom().randrange(2**31))
    )
    data = load_data(cfg.input_shape, settings, quiet=not live)
    check_data(cfg, data)
    x_tr, y_tr, x_val, y_val = split_validation(
        data.x_train, data.y_train, settings.validation_split, seed
    )
    if len(x_tr) == 0:
        raise DataError(
            f"dataset {data.name}: no training images left after "
            f"validation_split {settings.validation_split}"
        )
    if relaunch is not None and out is not None:
        run_dir = out
    else:
        run_dir = resume if resume is not None else new_run_dir(cfg, out)
    settings = settings.model_copy(
        update={
            "seed": seed,
            "mixed_precision": device.mixed_precision,
            "jit_compile": device.jit_compile,
            "steps_per_execution": device.steps_per_execution,
            "strategy": plan.name,
        }
    )
    global_batch = plan.global_batch(settings.batch_size)
    run = Run(
        cfg,
        settings,
        run_dir,
        console,
        device,
        n_train=len(x_tr),
        seed=seed,
        steps=math.ceil(len(x_tr) / global_batch),
        global_batch=global_batch,
    )
    run.monitor = (
        settings.monitor
        if len(x_val) or not settings.monitor.startswith("val_")
        else settings.monitor.removeprefix("val_")
    )
    if state is not None:
        run.history = state["history"]
        run.best, run.best_epoch = state["best"], state["best_epoch"]
        run.initial_epoch = len(run.history)
        run.prior_wall = float(state.get("wall_seconds", 0.0))
    if relaunch is not None:
        run.history = relaunch["history"]
        run.restored(len(run.history))
        run.prior_wall = float(relaunch.get("wall_seconds", 0.0))
    # the resolved config (rewritten on resume, where --epochs may have changed)
    write_text(
        run.path("config.yaml"), yaml.safe_dump(resolved_config(cfg, settings), sort_keys=False)
    )

    keras.utils.set_random_seed(seed)
    one_hot = data.num_classes if cfg.compile.loss in ONE_HOT_LOSSES else None
    train_ds = _pipeline(x_tr, y_tr, settings, data, True, seed, one_hot, global_batch)
    val_ds = (
        _pipeline(x_val, y_val, settings, data, False, seed, one_hot, global_batch)
        if len(x_val)
        else None
    )
    if plan.strategy is not None:
        train_ds = distribute.shard(train_ds)
        val_ds = distribute.shard(val_ds) if val_ds is not None else None
    with plan.scope():
        if state is not None:
            keras.mixed_precision.set_global_policy(device.policy)
            model = _load(keras, run.path("last.keras"), compile=True)
        else:
            lr = make_schedule(keras, cfg, settings, run.steps)
            model = build_model(
                cfg,
                mixed_precision=device.policy,
                lr=lr,
                steps_per_execution=device.steps_per_execution,
                jit_compile=device.jit_compile,
            )
    where = f"{device.kind} ({device.name})"
    console.print(
        f"[bold]{cfg.name}[/bold]: {model.count_params():,} parameters; "
        f"{describe(settings.dataset)}"
        f" {len(x_tr):,} train / {len(x_val):,} validation / {len(data.x_test):,} test images;"
        f" {where}; {plan.describe()}; batch {settings.batch_size}"
        + (f" per replica x {plan.replicas} = {global_batch}" if plan.replicas > 1 else "")
        + f"; precision {device.policy}; XLA {'on' if device.jit_compile else 'off'}"
        f"; steps/execution {device.steps_per_execution}; seed {seed}",
        highlight=False,
    )
    console.print(f"run directory: {run_dir}", highlight=False)
    if run.initial_epoch >= settings.epochs:
        console.print(f"already trained {run.initial_epoch} epochs", highlight=False)
    callbacks = make_callbacks(keras, run, console, live) + keras_callbacks(keras, run)
    if plan.multi_worker:

        def restored(epoch: int) -> None:
            run.restored(epoch)
            if epoch:
                console.print(f"restored from the backup: continuing after epoch {epoch}")

        callbacks += distribute.backup_callbacks(keras, run_dir, plan.strategy, restored)
    status = "completed"
    where_ops = (
        tf.device("/GPU:0" if device.kind == "gpu" else "/CPU:0")
        if plan.strategy is None
        else plan.scope()
    )
    try:
        with where_ops:
            model.fit(
                train_ds,
                validation_data=val_ds,
                epochs=settings.epochs,
                initial_epoch=run.initial_epoch,
                callbacks=callbacks,
                verbose=0,
                shuffle=False,
            )
    except KeyboardInterrupt:
        run.save_state("interrupted")
        done = len(run.history)
        again = f"cnnbuild train --resume {shlex.quote(str(run_dir))}"
        if done:
            raise RunError(
                f"interrupted; epoch {done} is saved in {run_dir / 'last.keras'}. "
                f"Resume with:\n  {again}"
            ) from None
        raise RunError(
            f"interrupted before the first epoch finished; nothing to resume in {run_dir}"
        ) from None
    if run.diverged:
        epoch, step, loss = run.diverged
        run.save_state("diverged")
        kept = (
            f"the last good checkpoint (epoch {len(run.history)}) is {run_dir / 'last.keras'}"
            if run.history
            else "no epoch finished"
        )
        raise RunError(
            f"the loss became {loss} at epoch {epoch}, step {step}; training "
            f"stopped and {kept}. Lower the learning rate, or check the data "
            "scaling and the loss"
        )
    if len(run.history) < settings.epochs:
        status = "early_stopped"
    train_seconds = sum(h["train_seconds"] for h in run.history)
    digest = distribute.weights_digest(model)
    if run.best_epoch is not None and run.path("model.keras").exists():
        model.load_weights(run.path("model.keras"))
    result = evaluate_model(
        model,
        cfg,
        data,
        settings.batch_size,
        one_hot,
        run_dir,
        f"{cfg.name}: best epoch {run.best_epoch}",
    )
    steady = run.history[1:] or run.history
    metrics = {
        "test_accuracy": result["accuracy"],
        "test_loss": result["loss"],
        "epochs": len(run.history),
        "epochs_planned": settings.epochs,
        "best_epoch": run.best_epoch,
        "monitor": run.monitor,
        "best": run.best,
        "wall_seconds": round(run.wall_seconds, 2),
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(
            sum(run.n_train for _ in run.history) / max(train_seconds, 1e-9), 1
        ),
        "steady_images_per_second": round(
            len(steady) * run.n_train / max(sum(h["train_seconds"] for h in steady), 1e-9), 1
        ),
        "device": device.kind,
        "device_name": device.name,
        "mixed_precision": device.mixed_precision,
        "precision_policy": device.policy,
        "jit_compile": device.jit_compile,
        "steps_per_execution": device.steps_per_execution,
        "batch_size": settings.batch_size,
        "strategy": plan.name,
        "replicas": plan.replicas,
        "workers": plan.cluster.num_workers if plan.cluster else 1,
        "global_batch_size": global_batch,
        "weights_sha256": digest,
        "seed": seed,
        "dataset": describe(settings.dataset),
        "train_images": len(x_tr),
        "validation_images": len(x_val),
        "test_images": len(data.x_test),
        "per_class_accuracy": result["per_class"],
        "status": status,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
    }
    write_json(run.path("metrics.json"), metrics)
    run.save_state(status)
    from cnnbuild.plots import curves

    curves(run.history, run.path("curves.png"), cfg.name)
    console.print(
        f"test accuracy {metrics['test_accuracy']:.4f}  test loss "
        f"{metrics['test_loss']:.4f}  ({metrics['epochs']} epochs, "
        f"{metrics['wall_seconds']:.1f}s, {metrics['images_per_second']:,.0f} img/s "
        f"on {device.kind})",
        highlight=False,
    )
    if plan.multi_worker:
        console.print(f"final weights sha256 {digest}", highlight=False)
    distribute.finish(run_dir, plan.cluster)
    if plan.is_chief:
        console.print(f"saved to {run_dir}/", highlight=False)
    return metrics


def _pipeline(
    x,
    y,
    settings: TrainConfig,
    data: Data,
    training: bool,
    seed: int,
    one_hot: int | None,
    batch_size: int | None = None,
) -> Any:
    from cnnbuild.data.pipeline import make_pipeline

    return make_pipeline(
        x,
        y,
        batch_size=batch_size or settings.batch_size,
        scale=data.scale,
        training=training,
        seed=seed,
        one_hot=one_hot,
        shuffle_buffer=settings.shuffle_buffer,
    )


def _load(keras: Any, path: Path, compile: bool = False) -> Any:
    """Load a saved model with Keras' safe_mode on (no Lambda or arbitrary code).

    With ``compile``, the optimizer comes back with its state (step count, moments, the
    learning-rate schedule), which is what a resume needs.
    """
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except Exception as exc:  # Keras raises many types for a bad file
        raise RunError(f"{path}: cannot load the model: {exc}") from None


# -- evaluation -------------------------------------------------------------------------


def evaluate_model(
    model: Any,
    cfg: ModelConfig | None,
    data: Data,
    batch_size: int,
    one_hot: int | None,
    out_dir: Path,
    title: str,
) -> dict:
    """Test loss, accuracy, per-class accuracy; writes ``confusion.png`` into ``out_dir``."""
    from cnnbuild.data.pipeline import make_pipeline
    from cnnbuild.plots import confusion

    ds = make_pipeline(
        data.x_test,
        data.y_test,
        batch_size=batch_size,
        scale=data.scale,
        training=False,
        one_hot=one_hot,
    )
    scores = model.evaluate(ds, verbose=0, return_dict=True)
    outputs = np.asarray(model.predict(ds, verbose=0), dtype=np.float32)
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        predicted = outputs.argmax(axis=1)
    else:
        threshold = 0.0 if cfg is None or cfg.compile.from_logits else 0.5
        predicted = (outputs.reshape(-1) > threshold).astype(int)
    n = data.num_classes
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (data.y_test, np.clip(predicted, 0, n - 1)), 1)
    confusion(matrix, data.class_names, out_dir / "confusion.png", title)
    totals = matrix.sum(axis=1)
    per_class = {
        name: (round(float(matrix[i, i] / totals[i]), 4) if totals[i] else None)
        for i, name in enumerate(data.class_names)
    }
    accuracy = float(np.trace(matrix) / max(matrix.sum(), 1))
    return {
        "loss": float(scores.get("loss", float("nan"))),
        "accuracy": round(accuracy, 4),
        "per_class": per_class,
        "confusion": matrix.tolist(),
    }


def evaluate(
    target: Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    console: Console | None = None,
    verbose: bool = False,
) -> dict:
    """Evaluate a run directory's best model (or a .keras file) on a test set.

    Writes ``evaluation.json`` and ``confusion.png`` into ``<run>/evaluate/`` (or
    ``<model>-evaluate/`` beside a .keras file), never over the run's own files.
    """
    console = console or Console()
    cfg = None
    if target.is_dir():
        model_path = target / "model.keras"
        if not model_path.is_file():
            raise UsageError(f"{target}: no model.keras in this folder; is it a run directory?")
        cfg = load_config(target / "config.yaml")
        out_dir = target / "evaluate"
    elif target.suffix == ".keras" and target.is_file():
        model_path = target
        out_dir = target.with_name(target.stem + "-evaluate")
    else:
        raise UsageError(f"{target}: expected a run directory or a .keras file")
    from cnnbuild.builder import keras_module

    keras = keras_module(verbose)
    model = _load(keras, model_path)
    overrides = {"dataset": dataset, "data_dir": data_dir, "limit": limit, "batch_size": batch_size}
    settings = resolve_train(cfg, overrides)
    data = load_data(tuple(model.input.shape[1:]), settings, quiet=not console.is_terminal)
    if cfg is not None:
        check_data(cfg, data)
    loss_name = cfg.compile.loss if cfg else ""
    one_hot = data.num_classes if loss_name in ONE_HOT_LOSSES else None
    if cfg is None:
        # a bare .keras file: raw scores unless its last layer applies softmax
        activation = getattr(getattr(model.layers[-1], "activation", None), "__name__", "")
        logits = activation != "softmax"
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=logits))
    else:
        from cnnbuild.builder import make_loss

        model.compile(loss=make_loss(cfg))
    result = evaluate_model(
        model, cfg, data, settings.batch_size, one_hot, out_dir, f"{model_path} on {data.name}"
    )
    result.update(model=str(model_path), dataset=data.name, test_images=len(data.x_test))
    write_json(out_dir / "evaluation.json", result)
    return result


def print_evaluation(console: Console, result: dict) -> None:
    from rich.table import Table

    console.print(
        f"{result['model']} on {result['dataset']} ({result['test_images']:,} test "
        f"images): test accuracy {result['accuracy']:.4f}  test loss "
        f"{result['loss']:.4f}",
        highlight=False,
    )
    table = Table(title="per-class accuracy")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("images", justify="right")
    for i, (name, acc) in enumerate(result["per_class"].items()):
        table.add_row(
            name, "-" if acc is None else f"{acc:.4f}", f"{sum(result['confusion'][i]):,}"
        )
    console.print(table)


def stdout_console() -> Console:
    return Console(file=sys.stdout, highlight=False, soft_wrap=not sys.stdout.isatty())
