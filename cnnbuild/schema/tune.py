"""The ``tune:`` section: a search space over config paths, and how a study runs.

A space entry is one of::

    {float: [low, high], log: true}      # a float in [low, high] (log scale optional)
    {float: [low, high], step: 0.1}      # on a grid
    {int: [low, high], step: 16}         # an integer (step and log optional)
    {choice: [16, 32, 64]}               # one of the listed scalars

Whether a path exists and whether its values suit the argument it sets are checked by
:mod:`cnnbuild.search_space` against the rest of the config, not here.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator

from cnnbuild.schema.sections import Strict
from cnnbuild.schema.types import Bool, Int, Seed, is_finite, is_int, is_number, received

PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\[[0-9]+\]|\.[A-Za-z_$][A-Za-z0-9_]*)*$"
PATH_RE = re.compile(PATH_PATTERN)


def _bounds(kind: str):
    check = is_int if kind == "int" else is_number
    what = "integers" if kind == "int" else "numbers"

    def parse(value: Any) -> tuple:
        if not (isinstance(value, list) and len(value) == 2):
            raise ValueError(f"expected [low, high], a list of 2 {what}; received {value!r}")
        for v in value:
            if not check(v) or not is_finite(v):
                raise ValueError(f"expected [low, high], 2 {what}; received {received(v)}")
        if value[0] >= value[1]:
            raise ValueError(f"expected low < high; received [{value[0]}, {value[1]}]")
        return tuple(value)

    return parse


def _choices(value: Any) -> list:
    if not isinstance(value, list) or len(value) < 2:
        raise ValueError(f"expected a list of at least 2 values; received {value!r}")
    for v in value:
        if not (v is None or isinstance(v, (str, bool)) or is_number(v)):
            raise ValueError(
                f"a choice is a number, string, true/false or null; received {received(v)}"
            )
    seen = []
    for v in value:
        if any(type(v) is type(s) and v == s for s in seen):
            raise ValueError(f"{v!r} is listed twice")
        seen.append(v)
    return value


def _step(value: Any) -> Any:
    if value is not None and (not is_number(value) or value <= 0):
        raise ValueError(f"expected a number > 0; received {received(value)}")
    return value


_pair = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_int_pair = {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 2}


class SpaceEntry(Strict):
    """The values one config path takes during a search."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        json_schema_extra={
            "oneOf": [{"required": ["float"]}, {"required": ["int"]}, {"required": ["choice"]}]
        },
    )

    float_range: Annotated[
        tuple | None, BeforeValidator(_bounds("float")), WithJsonSchema(_pair)
    ] = Field(None, alias="float", description="[low, high]: a float in that range")
    int_range: Annotated[
        tuple | None, BeforeValidator(_bounds("int")), WithJsonSchema(_int_pair)
    ] = Field(None, alias="int", description="[low, high]: an integer in that range")
    choice: Annotated[
        list | None,
        BeforeValidator(_choices),
        WithJsonSchema(
            {
                "type": "array",
                "minItems": 2,
                "items": {"type": ["number", "string", "boolean", "null"]},
            }
        ),
    ] = Field(None, description="one of these values")
    log: Bool = Field(False, description="sample on a log scale (low > 0)")
    step: Annotated[
        Any, BeforeValidator(_step), WithJsonSchema({"type": "number", "exclusiveMinimum": 0})
    ] = Field(None, description="sample on a grid: low, low + step, ...")

    @model_validator(mode="after")
    def _consistent(self) -> SpaceEntry:
        given = [k for k, v in self.kinds().items() if v is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of float: [low, high], int: [low, high] or choice: [...]"
                + (f"; received {' and '.join(given)}" if given else "")
            )
        if self.choice is not None and (self.log or self.step is not None):
            raise ValueError("log and step apply to float and int ranges, not to choice")
        if self.log and self.step is not None:
            raise ValueError("give log or step, not both (a log scale has no fixed step)")
        low, high = self.float_range or self.int_range or (None, None)
        if self.log and low <= 0:
            raise ValueError(f"a log scale needs low > 0; received low={low}")
        if self.int_range is not None and self.step is not None and not is_int(self.step):
            raise ValueError(f"the step of an int range is an integer; received {self.step!r}")
        if self.step is not None:
            count = (high - low) / self.step
            if not math.isfinite(count):
                raise ValueError(
                    f"step {self.step!r} is too small for [{low!r}, {high!r}]: the number "
                    "of steps is beyond a float's range; give a larger step"
                )
            if abs(count - round(count)) > 1e-9:
                last = low + math.floor(count + 1e-9) * self.step
                raise ValueError(
                    f"high - low = {high - low:g} is not a multiple of step {self.step}: "
                    f"the largest value reached would be {last:g}; set high to {last:g}"
                )
        return self

    def kinds(self) -> dict[str, Any]:
        return {"float": self.float_range, "int": self.int_range, "choice": self.choice}

    @property
    def kind(self) -> str:
        return next(k for k, v in self.kinds().items() if v is not None)

    def corners(self) -> list[Any]:
        """The extreme values: both bounds of a range (as sampled), every choice."""
        if self.choice is not None:
            return list(self.choice)
        low, high = self.float_range or self.int_range
        if self.float_range is not None:
            return [float(low), float(high)]
        return [low, high]


class Pruning(Strict):
    """Optuna's MedianPruner: stop a trial whose metric after an epoch is worse than the
    median of earlier trials after the same epoch."""

    enabled: Bool = True
    startup_trials: Int(0) = Field(2, description="trials that finish before any is pruned")
    warmup_epochs: Int(0) = Field(1, description="epochs a trial runs before it can be pruned")


class TuneSection(Strict):
    """Settings of ``cnnbuild tune``: the metric, the budget and the search space."""

    metric: str = Field(
        "val_accuracy", description="epoch metric to optimise; minimised when it names a loss"
    )
    trials: Int(1, 100_000) = Field(20, description="trials in the whole study")
    epochs: Int(1, 100_000) | None = Field(None, description="epochs per trial (train.epochs)")
    limit: Int(1) | None = Field(None, description="train and test images per trial (train.limit)")
    seed: Seed = Field(None, description="sampler seed (train.seed, else 0)")
    pruning: Pruning = Pruning()
    space: dict[
        Annotated[str, WithJsonSchema({"type": "string", "pattern": PATH_PATTERN})], SpaceEntry
    ] = Field(
        {},
        description="config path -> values, e.g. layers[0].Conv2D.filters: {choice: [16, 32]}",
        json_schema_extra={"additionalProperties": False},
    )

    @property
    def maximize(self) -> bool:
        return "loss" not in self.metric
