"""Typed sections of a model config besides the layers: compile, train and lint."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema, model_validator

from cnnbuild.backend import STRATEGIES
from cnnbuild.catalog import LOGIT_LOSSES, LOSS_NAMES  # noqa: F401 - re-exported
from cnnbuild.schema.types import Bool, Choice, Float, Int, Seed, choice, is_number

_COMMON_OPT = (
    "learning_rate",
    "weight_decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
)
OPTIMIZERS: dict[str, tuple[str, ...]] = {
    "sgd": ("momentum", "nesterov"),
    "adam": ("beta_1", "beta_2", "epsilon", "amsgrad"),
    "adamw": ("beta_1", "beta_2", "epsilon", "amsgrad"),
    "rmsprop": ("rho", "momentum", "epsilon", "centered"),
    "adagrad": ("initial_accumulator_value", "epsilon"),
    "adadelta": ("rho", "epsilon"),
    "adamax": ("beta_1", "beta_2", "epsilon"),
    "nadam": ("beta_1", "beta_2", "epsilon"),
    "ftrl": (
        "learning_rate_power",
        "initial_accumulator_value",
        "l1_regularization_strength",
        "l2_regularization_strength",
        "l2_shrinkage_regularization_strength",
        "beta",
    ),
    "lion": ("beta_1", "beta_2"),
}
LOSSES = LOSS_NAMES  # described once, in cnnbuild.catalog
METRICS = (
    "accuracy",
    "sparse_categorical_accuracy",
    "categorical_accuracy",
    "binary_accuracy",
    "sparse_top_k_categorical_accuracy",
    "top_k_categorical_accuracy",
    "auc",
    "precision",
    "recall",
    "mae",
    "mse",
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
)
DATASETS = {"cifar10": 10, "cifar100": 100, "shapes": 10}


def _optimizer(value: Any) -> dict[str, dict[str, Any]]:
    if isinstance(value, str):
        choice(tuple(OPTIMIZERS), "optimizer")(value)
        return {value: {}}
    if isinstance(value, dict) and len(value) == 1:
        ((name, args),) = value.items()
        choice(tuple(OPTIMIZERS), "optimizer")(name)
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise ValueError(f"the arguments of {name} must be a mapping; received {args!r}")
        allowed = _COMMON_OPT + OPTIMIZERS[name]
        for key, arg in args.items():
            choice(allowed, f"{name} argument")(key)
            if not (is_number(arg) or isinstance(arg, bool) or arg is None):
                raise ValueError(f"{name}.{key} must be a number or true/false; received {arg!r}")
            if key == "learning_rate" and not (is_number(arg) and arg > 0):
                raise ValueError(f"{name}.learning_rate must be a number > 0; received {arg!r}")
        return {name: args}
    raise ValueError(
        "expected an optimizer name (adam) or a mapping "
        f"{{adam: {{learning_rate: 0.001}}}}; received {value!r}"
    )


Optimizer = Annotated[
    dict,
    BeforeValidator(_optimizer),
    WithJsonSchema(
        {
            "oneOf": [
                {"enum": list(OPTIMIZERS)},
                {
                    "type": "object",
                    "minProperties": 1,
                    "maxProperties": 1,
                    "properties": {
                        name: {
                            "type": ["object", "null"],
                            "properties": {
                                k: {"type": ["number", "boolean", "null"]}
                                for k in _COMMON_OPT + extra
                            },
                            "additionalProperties": False,
                        }
                        for name, extra in OPTIMIZERS.items()
                    },
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CompileConfig(Strict):
    """Arguments of ``model.compile``."""

    optimizer: Optimizer = {"adam": {}}
    loss: Choice(LOSSES, "loss") = "sparse_categorical_crossentropy"
    from_logits: Bool | None = None
    metrics: list[Choice(METRICS, "metric")] = ["accuracy"]


class EarlyStopping(Strict):
    monitor: str = "val_loss"
    min_delta: Float(0.0) = 0.0
    patience: Int(0) = 0
    mode: Choice(("auto", "min", "max"), "mode") = "auto"
    restore_best_weights: Bool = False
    start_from_epoch: Int(0) = 0


class ReduceLROnPlateau(Strict):
    monitor: str = "val_loss"
    factor: Float(0.0, 1.0, lo_open=True, hi_open=True) = 0.1
    patience: Int(0) = 10
    mode: Choice(("auto", "min", "max"), "mode") = "auto"
    min_delta: Float(0.0) = 0.0001
    cooldown: Int(0) = 0
    min_lr: Float(0.0) = 0.0


class CosineSchedule(Strict):
    """keras.optimizers.schedules.CosineDecay over the whole run (decay_steps derived)."""

    alpha: Float(0.0, 1.0) = 0.0
    warmup_epochs: Float(0.0) = 0.0


class StepSchedule(Strict):
    """keras.optimizers.schedules.PiecewiseConstantDecay: multiply by `factor` every
    `every_epochs` epochs."""

    every_epochs: Int(1)
    factor: Float(0.0, 1.0, lo_open=True) = 0.1


class Schedule(Strict):
    cosine: CosineSchedule | None = None
    step: StepSchedule | None = None

    @model_validator(mode="after")
    def _one(self) -> Schedule:
        if (self.cosine is None) == (self.step is None):
            raise ValueError("give exactly one schedule: cosine or step")
        return self


def _dataset(value: Any) -> Any:
    if isinstance(value, str):
        if ":" in value:
            kind, _, path = value.partition(":")
            if kind in ("npz", "folder") and path:
                return {kind: path}
        return choice(tuple(DATASETS), "dataset")(value)
    if isinstance(value, dict) and len(value) == 1:
        ((kind, path),) = value.items()
        choice(("npz", "folder"), "dataset kind")(kind)
        if not isinstance(path, str) or not path:
            raise ValueError(f"{kind}: expected a path; received {path!r}")
        return {kind: path}
    raise ValueError(
        "expected a dataset name (cifar10, cifar100, shapes) or {npz: PATH} or "
        f"{{folder: PATH}}; received {value!r}"
    )


Dataset = Annotated[
    Any,
    BeforeValidator(_dataset),
    WithJsonSchema(
        {
            "oneOf": [
                {"enum": list(DATASETS)},
                {
                    "type": "object",
                    "properties": {"npz": {"type": "string"}, "folder": {"type": "string"}},
                    "minProperties": 1,
                    "maxProperties": 1,
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


class TrainConfig(Strict):
    """Settings of ``cnnbuild train``; each can be overridden by a CLI flag."""

    dataset: Dataset = "cifar10"
    data_dir: str | None = None
    epochs: Int(1, 100_000) = 10
    batch_size: Int(1, 65_536) = 64
    validation_split: Float(0.0, 1.0, hi_open=True) = 0.1
    seed: Seed = None
    limit: Int(1) | None = None
    test_split: Float(0.0, 1.0, lo_open=True, hi_open=True) = 0.2
    shuffle_buffer: Int(1) | None = None
    steps_per_execution: Int(1) | None = None
    device: Choice(("auto", "cpu", "gpu"), "device") = "auto"
    strategy: Choice(STRATEGIES, "strategy") = "auto"
    mixed_precision: Bool | None = None
    jit_compile: Bool | None = None
    early_stopping: EarlyStopping | None = None
    reduce_lr_on_plateau: ReduceLROnPlateau | None = None
    lr_schedule: Schedule | None = None
    monitor: str = "val_accuracy"
    tensorboard: Bool = False

    @model_validator(mode="after")
    def _one_lr_controller(self) -> TrainConfig:
        if self.lr_schedule is not None and self.reduce_lr_on_plateau is not None:
            raise ValueError(
                "give lr_schedule or reduce_lr_on_plateau, not both: Keras cannot "
                "lower a learning rate that a schedule sets"
            )
        return self


class LintConfig(Strict):
    """Per-config lint settings."""

    ignore: list[str] = []
    max_dense_params_million: Float(0.0, lo_open=True) = 5.0
