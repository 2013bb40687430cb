"""Typed sections of a model config besides the layers: compile, train, lint and budget."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    model_validator,
)

from cnnbuild.backend import STRATEGIES
from cnnbuild.catalog import LOSS_NAMES
from cnnbuild.errors import suggest
from cnnbuild.schema.types import (
    EXPONENT,
    Bool,
    Choice,
    Float,
    Int,
    Seed,
    choice,
    is_int,
    is_number,
    received,
)

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
DATASET_FORMS = f"{', '.join(DATASETS)}, npz:PATH or folder:PATH"
"""Every way to name a dataset on the command line, for messages."""


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
                raise ValueError(
                    f"{name}.{key} must be a number or true/false; received {received(arg)}"
                )
            if key == "learning_rate" and not (is_number(arg) and arg > 0):
                raise ValueError(
                    f"{name}.learning_rate must be a number > 0; received {received(arg)}"
                )
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
    loss: Choice(LOSS_NAMES, "loss") = "sparse_categorical_crossentropy"
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
        f"expected a dataset name ({', '.join(DATASETS)}) or {{npz: PATH}} or "
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


# -- fine-tuning: where the weights start, what is frozen, training in phases ---------

APPLICATIONS_PREFIX = "keras.applications."
PRETRAINED = ("imagenet",)


class FreezeRange(Strict):
    """Layers to freeze, by name in the model's order: ``{until: NAME}`` (from the input
    up to and including NAME), ``{from: A, to: B}``, ``{from: A}`` (A to the output), or
    nothing (``freeze: none``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    until: str | None = None
    start: str | None = Field(None, alias="from")
    to: str | None = None

    @model_validator(mode="after")
    def _one_way(self) -> FreezeRange:
        if self.until is not None and (self.start is not None or self.to is not None):
            raise ValueError("give `until: NAME` or `from: A, to: B`, not both")
        if self.to is not None and self.start is None:
            raise ValueError("`to:` needs `from:`; to freeze from the input, write `until:`")
        return self

    @property
    def empty(self) -> bool:
        return self.until is None and self.start is None


def _freeze(value: Any) -> Any:
    if value == "none" or value is None:
        return {}
    if isinstance(value, str):
        raise ValueError(
            f"freeze is `none`, `{{until: NAME}}` or `{{from: A, to: B}}`; received {value!r}"
        )
    return value


Freeze = Annotated[
    FreezeRange,
    BeforeValidator(_freeze),
    WithJsonSchema(
        {
            "description": "none, {until: NAME} or {from: A, to: B}: layers frozen, by name",
            "anyOf": [
                {"const": "none"},
                {
                    "type": "object",
                    "properties": {
                        "until": {"type": "string"},
                        "from": {"type": "string"},
                        "to": {"type": "string"},
                    },
                    "additionalProperties": False,
                },
            ],
        }
    ),
]


class InitConfig(Strict):
    """Where the starting weights come from: ``{from: SOURCE}``, SOURCE a run directory
    (its best model), a ``.keras`` file or ``keras.applications.NAME``; weights are
    matched by layer name."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    source: str = Field(alias="from", min_length=1)
    weights: Choice(PRETRAINED, "weights") | None = None
    skip_mismatch: Bool = False

    @model_validator(mode="after")
    def _weights_for_applications(self) -> InitConfig:
        if self.weights is not None and not self.application:
            raise ValueError(
                f"weights: {self.weights} applies to `from: keras.applications.NAME` only; "
                f"{self.source!r} brings its own weights"
            )
        if self.application and self.weights is None:
            raise ValueError(
                f"{self.source} has no trained weights of its own: add `weights: imagenet`"
            )
        return self

    @property
    def application(self) -> str | None:
        """``NAME`` of ``keras.applications.NAME``, else ``None``."""
        if self.source.startswith(APPLICATIONS_PREFIX):
            return self.source.removeprefix(APPLICATIONS_PREFIX)
        return None


class Phase(Strict):
    """One phase of ``train.phases``: its epochs, learning rate and what is frozen."""

    epochs: Int(1, 100_000)
    learning_rate: Float(0.0, lo_open=True) | None = None
    freeze: Freeze | None = None


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
    phases: Annotated[list[Phase], Field(min_length=1)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _epochs_of_phases(cls, data: Any) -> Any:
        """Without ``epochs:``, the phases' epochs add up to it (a given ``epochs`` that
        differs is reported by the config, at its line)."""
        if not isinstance(data, dict) or "epochs" in data:
            return data
        phases = data.get("phases")
        if isinstance(phases, list) and phases:
            counts = [p.get("epochs") if isinstance(p, dict) else None for p in phases]
            if all(is_int(c) and not isinstance(c, bool) and c > 0 for c in counts):
                return {**data, "epochs": sum(counts)}
        return data

    @model_validator(mode="after")
    def _one_lr_controller(self) -> TrainConfig:
        if self.lr_schedule is not None and self.reduce_lr_on_plateau is not None:
            raise ValueError(
                "give lr_schedule or reduce_lr_on_plateau, not both: Keras cannot "
                "lower a learning rate that a schedule sets"
            )
        return self


def _rule_ids(value: Any) -> Any:
    if isinstance(value, str):  # `ignore: dead-layer`: a list in YAML is [dead-layer]
        raise ValueError(f"ignore is a list of rule ids: write [{value}]; received {value!r}")
    if not isinstance(value, list):
        raise ValueError(f"ignore is a list of rule ids, e.g. [dead-layer]; received {value!r}")
    return value


class LintConfig(Strict):
    """Per-config lint settings."""

    ignore: Annotated[list[str], BeforeValidator(_rule_ids)] = []
    max_dense_params_million: Float(0.0, lo_open=True) = 5.0


# -- budget: ceilings and growth limits (rule `budget`) --------------------------------

COUNT_SUFFIXES = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
SIZE_SUFFIXES = {**COUNT_SUFFIXES, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}
_EXAMPLES = {"count": "1.5M", "bytes": "64MiB", "percent": "10%"}
_AMOUNT = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*(%?)\s*$")


@dataclass(frozen=True)
class Limit:
    """One budget limit: a warn tier, a fail tier, or both (``None`` where not set)."""

    warn: float | None = None
    fail: float | None = None


def parse_amount(value: Any, unit: str) -> float:
    """``1.5M`` -> 1500000; ``64MiB`` -> 67108864; ``10%`` -> 10.

    Args:
        value: a number or a string such as ``1.5M``, ``10G``, ``64MiB``, ``10%``.
        unit: ``count`` (K/M/G/T), ``bytes`` (also KiB/MiB/GiB/TiB) or ``percent``
            (a number or ``N%``).

    Raises:
        ValueError: a value that is not a non-negative amount of that unit.
    """
    suffixes = {"count": COUNT_SUFFIXES, "bytes": SIZE_SUFFIXES, "percent": {}}[unit]
    if is_number(value):
        number = _finite(value)
        if number is None or number < 0:
            big = number is None and not isinstance(value, float)
            shown = "an integer too big for a float" if big else repr(value)
            raise ValueError(f"expected a number >= 0; received {shown}")
        return number
    example = _EXAMPLES[unit]
    match = _AMOUNT.match(value) if isinstance(value, str) else None
    if match is None or (match[3] and unit != "percent") or (match[2] and match[3]):
        percent = match is not None and match[3] and not match[2]
        where = " (a percent is a growth limit: budget.growth)" if percent else ""
        if isinstance(value, str) and EXPONENT.fullmatch(value) and float(value) < 1e15:
            plain = f"{float(value):f}".rstrip("0").rstrip(".")
            where = f" (YAML 1.1 reads {value.strip()} as text: write {plain} or {example})"
        raise ValueError(f"expected a number or a string like {example}; received {value!r}{where}")
    number, suffix = _finite(match[1]), match[2]
    if number is None:
        raise ValueError(f"expected a finite number; received {len(match[1])} digits")
    if suffix and suffix not in suffixes:
        allowed = ", ".join(suffixes) if suffixes else "none (a number or N%)"
        raise ValueError(f"unknown suffix {suffix!r} in {value!r}; suffixes: {allowed}")
    return number * suffixes.get(suffix, 1)


def _finite(value: Any) -> float | None:
    """``value`` as a float, or ``None`` when it is NaN, infinite or too big for a float
    (an integer of hundreds of digits)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _limit(unit: str):
    def parse(value: Any) -> Limit:
        if isinstance(value, Limit):
            return value
        if value is None:
            raise ValueError(
                f"the limit is empty; give an amount (e.g. {_EXAMPLES[unit]}) or "
                "{warn: X, fail: Y}, or remove the key"
            )
        if not isinstance(value, dict):
            return Limit(fail=parse_amount(value, unit))
        unknown = [k for k in value if k not in ("warn", "fail")]
        if unknown or not value:
            raise ValueError(f"expected a value or {{warn: X, fail: Y}}; received {value!r}")
        empty = [k for k, v in value.items() if v is None]
        if empty:
            raise ValueError(
                f"{' and '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty; give an "
                f"amount (e.g. {_EXAMPLES[unit]}) or remove the key"
            )
        limit = Limit(**{k: parse_amount(v, unit) for k, v in value.items()})
        if limit.warn is not None and limit.fail is not None and limit.warn > limit.fail:
            raise ValueError(f"warn ({value['warn']}) is above fail ({value['fail']})")
        return limit

    return parse


def _limit_schema(unit: str) -> dict:
    pattern = {
        "count": r"^[0-9.]+ *[KMGT]?$",
        "bytes": r"^[0-9.]+ *([KMGT]|[KMGT]iB)?$",
        "percent": r"^[0-9.]+ *%?$",
    }[unit]
    amount = {"oneOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": pattern}]}
    return {
        "oneOf": [
            amount,
            {
                "type": "object",
                "properties": {"warn": amount, "fail": amount},
                "minProperties": 1,
                "additionalProperties": False,
            },
        ]
    }


def LimitType(unit: str) -> Any:  # noqa: N802 - a type factory
    """A budget limit of ``unit``: an amount, or ``{warn: X, fail: Y}``."""
    return Annotated[Limit, BeforeValidator(_limit(unit)), WithJsonSchema(_limit_schema(unit))]


BUDGET_UNITS = {
    "params": "count",
    "trainable_params": "count",
    "macs": "count",
    "activation_memory": "bytes",
    "weights": "bytes",
}
"""Each budgeted figure and its unit; ``weights`` is bytes at float32."""


class Growth(Strict):
    """Growth limits in percent against a baseline (``validate --baseline REF``)."""

    @model_validator(mode="before")
    @classmethod
    def _mapping(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError(
                "growth must be a mapping of a figure to a percent, e.g. "
                f"{{params: 10%, macs: 5%}}; received {value!r}"
            )
        known = [k for k in cls.model_fields if k != "growth"]
        for key in value:
            if key not in known:
                raise ValueError(
                    f"unknown growth limit {key!r}{suggest(str(key), known)} "
                    f"(growth limits: {', '.join(known)})"
                )
        return value

    params: LimitType("percent") = None  # null is refused
    trainable_params: LimitType("percent") = None  # null is refused
    macs: LimitType("percent") = None  # null is refused
    activation_memory: LimitType("percent") = None  # null is refused
    weights: LimitType("percent") = None  # null is refused


class BudgetConfig(Strict):
    """Ceilings on the model's size and cost, and growth limits against a baseline."""

    params: LimitType("count") = None  # null is refused
    trainable_params: LimitType("count") = None  # null is refused
    macs: LimitType("count") = None  # null is refused
    activation_memory: LimitType("bytes") = None  # null is refused
    weights: LimitType("bytes") = None  # null is refused
    growth: Growth = None  # null is refused (Growth._mapping)


def format_amount(value: float, unit: str) -> str:
    """The inverse of :func:`parse_amount`, for messages: ``1,500,000 (1.5M)``,
    ``67,108,864 bytes (64 MiB)``, ``10%``."""
    if unit == "percent":
        return f"{value:g}%"
    if unit == "bytes":
        steps = [(2**40, " TiB"), (2**30, " GiB"), (2**20, " MiB"), (2**10, " KiB")]
        exact = f"{value:,.0f} bytes"
    else:
        steps = [(10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")]
        exact = f"{value:,.0f}"
    for size, suffix in steps:
        if value >= size:
            return f"{exact} ({value / size:.4g}{suffix})"
    return exact
