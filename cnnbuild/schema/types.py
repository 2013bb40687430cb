"""Argument types shared by the layer schemas.

Each type is a pydantic ``Annotated`` with a plain validator, so the messages say what
was expected and what was received in Keras' words, and YAML's loose typing never
sneaks through (``true`` is not an integer, ``"3"`` is not a number).

The name lists are Keras' own (keras 3.x). ``tests/test_catalog.py`` checks that every
name here resolves in the installed Keras.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

from cnnbuild.errors import suggest

ACTIVATIONS = (
    "celu",
    "elu",
    "exponential",
    "gelu",
    "glu",
    "hard_shrink",
    "hard_sigmoid",
    "hard_silu",
    "hard_swish",
    "hard_tanh",
    "leaky_relu",
    "linear",
    "log_sigmoid",
    "log_softmax",
    "mish",
    "relu",
    "relu6",
    "selu",
    "sigmoid",
    "silu",
    "soft_shrink",
    "softmax",
    "softplus",
    "softsign",
    "sparse_plus",
    "sparse_sigmoid",
    "sparsemax",
    "squareplus",
    "swish",
    "tanh",
    "tanh_shrink",
    "threshold",
)
INITIALIZERS = (
    "constant",
    "glorot_normal",
    "glorot_uniform",
    "he_normal",
    "he_uniform",
    "identity",
    "lecun_normal",
    "lecun_uniform",
    "ones",
    "orthogonal",
    "random_normal",
    "random_uniform",
    "truncated_normal",
    "variance_scaling",
    "zeros",
)
REGULARIZERS = ("l1", "l2", "l1_l2", "orthogonal_regularizer")
CONSTRAINTS = ("max_norm", "min_max_norm", "non_neg", "unit_norm")
DTYPES = ("float16", "bfloat16", "float32", "float64", "mixed_float16", "mixed_bfloat16")
INTERPOLATIONS = ("bilinear", "nearest", "bicubic", "lanczos3", "lanczos5", "area")
FILL_MODES = ("reflect", "wrap", "constant", "nearest")

# Keras' serialized class names for the mapping form `{l2: {l2: 0.001}}`.
KERAS_CLASS = {
    "l1": "L1",
    "l2": "L2",
    "l1_l2": "L1L2",
    "orthogonal_regularizer": "OrthogonalRegularizer",
    "max_norm": "MaxNorm",
    "min_max_norm": "MinMaxNorm",
    "non_neg": "NonNeg",
    "unit_norm": "UnitNorm",
    "constant": "Constant",
    "glorot_normal": "GlorotNormal",
    "glorot_uniform": "GlorotUniform",
    "he_normal": "HeNormal",
    "he_uniform": "HeUniform",
    "identity": "Identity",
    "lecun_normal": "LecunNormal",
    "lecun_uniform": "LecunUniform",
    "ones": "Ones",
    "orthogonal": "Orthogonal",
    "random_normal": "RandomNormal",
    "random_uniform": "RandomUniform",
    "truncated_normal": "TruncatedNormal",
    "variance_scaling": "VarianceScaling",
    "zeros": "Zeros",
}


MAX_INT = 2**31 - 1
"""The largest size TensorFlow takes in a shape or a layer argument (an int32)."""


EXPONENT = re.compile(r"\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*")
"""E-notation as a string: YAML 1.1 reads a float in e-notation only with a dot and a signed
exponent (``1.0e-4``), so ``1e-4``, ``2e6`` and ``1.5e4`` arrive as text."""


def yaml_float(value: float) -> str:
    """A finite ``value`` written so that YAML 1.1 reads a float: ``0.0001``, ``1.0e-20``."""
    text = repr(float(value))
    if "e" not in text:
        return text
    mantissa, exponent = text.split("e")
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}"


def received(value: Any) -> str:
    """``value`` as a message shows it: its repr, cut at 60 characters; for e-notation YAML
    read as text (``'1e-4'``), how to write the number."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    if isinstance(value, str) and EXPONENT.fullmatch(value) and is_finite(float(value)):
        text += f" (YAML reads {value.strip()} as text: write {yaml_float(float(value))})"
    return text


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return (is_int(value) or isinstance(value, float)) and not isinstance(value, bool)


def is_finite(value: Any) -> bool:
    """Whether a number is finite; ``False`` for an integer too big for a float."""
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer beyond a float's range
        return False


def int_check(lo: int | None = None, hi: int | None = MAX_INT):
    def check(value: Any) -> int:
        if not is_int(value):
            raise ValueError(f"expected an integer; received {received(value)}")
        if lo is not None and value < lo:
            raise ValueError(f"expected an integer >= {lo}; received {value}")
        if hi is not None and value > hi:
            raise ValueError(f"expected an integer <= {hi}; received {value}")
        return value

    return check


def float_check(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
):
    def check(value: Any) -> float:
        if not is_number(value) or not is_finite(value):
            raise ValueError(f"expected a finite number; received {received(value)}")
        if lo is not None and (value <= lo if lo_open else value < lo):
            raise ValueError(f"expected a number {'>' if lo_open else '>='} {lo}; received {value}")
        if hi is not None and (value >= hi if hi_open else value > hi):
            raise ValueError(f"expected a number {'<' if hi_open else '<='} {hi}; received {value}")
        return float(value)

    return check


def _int_schema(lo: int | None, hi: int | None = MAX_INT) -> dict:
    schema: dict = {"type": "integer"}
    if lo is not None:
        schema["minimum"] = lo
    if hi is not None:
        schema["maximum"] = hi
    return schema


def Int(lo: int | None = None, hi: int | None = MAX_INT) -> Any:  # noqa: N802 - a type factory
    """An integer in ``[lo, hi]``; ``hi`` defaults to what TensorFlow holds (int32)."""
    schema = _int_schema(lo, hi)
    return Annotated[int, BeforeValidator(int_check(lo, hi)), WithJsonSchema(schema)]


def Float(
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,  # noqa: N802
    hi_open: bool = False,
) -> Any:
    schema: dict = {"type": "number"}
    if lo is not None:
        schema["exclusiveMinimum" if lo_open else "minimum"] = lo
    if hi is not None:
        schema["exclusiveMaximum" if hi_open else "maximum"] = hi
    return Annotated[
        float,
        BeforeValidator(float_check(lo, hi, lo_open=lo_open, hi_open=hi_open)),
        WithJsonSchema(schema),
    ]


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false; received {received(value)}")
    return value


Bool = Annotated[bool, BeforeValidator(_bool), WithJsonSchema({"type": "boolean"})]


def Pair(lo: int = 1) -> Any:  # noqa: N802
    """An int or a list of two ints, each >= ``lo``; normalised to a 2-tuple."""

    def check(value: Any) -> tuple[int, int]:
        if is_int(value):
            items = (value, value)
        elif isinstance(value, (list, tuple)) and len(value) == 2 and all(map(is_int, value)):
            items = tuple(value)
        else:
            raise ValueError(
                f"expected an integer or a list of 2 integers; received {received(value)}"
            )
        if min(items) < lo:
            raise ValueError(f"expected values >= {lo}; received {received(value)}")
        if max(items) > MAX_INT:
            raise ValueError(f"expected values <= {MAX_INT}; received {received(value)}")
        return items  # type: ignore[return-value]

    item = _int_schema(lo)
    schema = {"oneOf": [item, {"type": "array", "items": item, "minItems": 2, "maxItems": 2}]}
    return Annotated[tuple[int, int], BeforeValidator(check), WithJsonSchema(schema)]


def _padding_2d(value: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras' ZeroPadding2D / Cropping2D forms: n, [h, w] or [[top, bottom], [left, right]]."""
    bad = ValueError(
        "expected an integer, a list [height, width], or [[top, bottom], "
        f"[left, right]] of integers >= 0; received {received(value)}"
    )
    if is_int(value):
        out = ((value, value), (value, value))
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        if all(map(is_int, value)):
            out = ((value[0], value[0]), (value[1], value[1]))
        elif all(
            isinstance(v, (list, tuple)) and len(v) == 2 and all(map(is_int, v)) for v in value
        ):
            out = (tuple(value[0]), tuple(value[1]))
        else:
            raise bad
    else:
        raise bad
    if min(out[0] + out[1]) < 0 or max(out[0] + out[1]) > MAX_INT:
        raise bad
    return out  # type: ignore[return-value]


_nonneg = {"type": "integer", "minimum": 0, "maximum": MAX_INT}
Padding2D = Annotated[
    tuple[tuple[int, int], tuple[int, int]],
    BeforeValidator(_padding_2d),
    WithJsonSchema(
        {
            "oneOf": [
                _nonneg,
                {"type": "array", "items": _nonneg, "minItems": 2, "maxItems": 2},
                {
                    "type": "array",
                    "minItems": 2,
                    "maxItems": 2,
                    "items": {"type": "array", "items": _nonneg, "minItems": 2, "maxItems": 2},
                },
            ]
        }
    ),
]


def choice(options: tuple[str, ...], what: str, *, nullable: bool = False):
    def check(value: Any) -> str | None:
        if value is None and nullable:
            return None
        if not isinstance(value, str) or value not in options:
            msg = f"unknown {what} {received(value)}"
            close = suggest(value.lower(), options) if isinstance(value, str) else ""
            if close:
                msg += close
            elif len(options) <= 8:
                msg += "; expected one of " + ", ".join(repr(o) for o in options)
            raise ValueError(msg)
        return value

    return check


def Choice(options: tuple[str, ...], what: str = "value", *, nullable: bool = False) -> Any:  # noqa: N802
    schema: dict = {"enum": list(options) + ([None] if nullable else [])}
    return Annotated[
        str | None if nullable else str,
        BeforeValidator(choice(options, what, nullable=nullable)),
        WithJsonSchema(schema),
    ]


def named_object(options: tuple[str, ...], what: str):
    """A Keras object by name (``he_normal``) or ``{name: {arg: value}}``."""
    by_name = choice(options, what)

    def check(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, dict):
            if len(value) != 1:
                raise ValueError(
                    f"expected a {what} name or a mapping with one {what} name; "
                    f"received {received(value)}"
                )
            ((key, args),) = value.items()
            by_name(key)
            if args is None:
                args = {}
            if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
                raise ValueError(
                    f"the arguments of {key} must be a mapping; received {received(args)}"
                )
            for k, v in args.items():
                if not (
                    is_number(v)
                    or isinstance(v, (str, bool))
                    or v is None
                    or (isinstance(v, list) and all(is_number(i) for i in v))
                ):
                    raise ValueError(
                        f"{key}.{k} must be a number, string or list of numbers; "
                        f"received {received(v)}"
                    )
            return {key: args}
        return by_name(value)

    return check


def Named(options: tuple[str, ...], what: str) -> Any:  # noqa: N802
    schema = {
        "oneOf": [
            {"enum": list(options)},
            {"type": "null"},
            {
                "type": "object",
                "minProperties": 1,
                "maxProperties": 1,
                "propertyNames": {"enum": list(options)},
                "additionalProperties": {"type": ["object", "null"]},
            },
        ]
    }
    return Annotated[Any, BeforeValidator(named_object(options, what)), WithJsonSchema(schema)]


Activation = Choice(ACTIVATIONS, "activation", nullable=True)
Initializer = Named(INITIALIZERS, "initializer")
Regularizer = Named(REGULARIZERS, "regularizer")
Constraint = Named(CONSTRAINTS, "constraint")
Seed = Annotated[
    int | None,
    BeforeValidator(lambda v: None if v is None else int_check(0, 2**32 - 1)(v)),
    WithJsonSchema({"type": ["integer", "null"], "minimum": 0, "maximum": 2**32 - 1}),
]
Padding = Choice(("valid", "same"), "padding")


def _data_format(value: Any) -> str | None:
    if value in (None, "channels_last"):
        return value
    if value == "channels_first":
        raise ValueError(
            "cnnbuild models are channels_last (input is [height, width, "
            "channels]); received 'channels_first'"
        )
    raise ValueError(f"expected 'channels_last'; received {received(value)}")


DataFormat = Annotated[
    str | None, BeforeValidator(_data_format), WithJsonSchema({"enum": ["channels_last", None]})
]


def _factor_check(lo: float, hi: float, *, each: bool, lo_open: bool):
    """Keras' checks of an augmentation factor (a number or a [lower, upper] pair).

    ``each``: every number must lie in the range (RandomTranslation, RandomZoom);
    otherwise Keras' base rule: a number in the range, or a pair whose first value is
    at most ``hi`` and whose second is at least ``lo`` (RandomRotation, RandomContrast).
    """
    where = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"

    def inside(x: float) -> bool:
        return (x > lo if lo_open else x >= lo) and x <= hi

    def check(value: Any) -> Any:
        pair = isinstance(value, (list, tuple)) and len(value) == 2
        if not (is_number(value) and is_finite(value)) and not (
            pair and all(is_number(v) and is_finite(v) for v in value)
        ):
            raise ValueError(
                f"expected a number or a list [lower, upper]; received {received(value)}"
            )
        if not pair:
            ok = inside(value)
        elif each:
            ok = all(map(inside, value))
        else:
            ok = value[0] <= hi and value[1] >= lo
        if not ok:
            raise ValueError(
                f"expected {'numbers' if pair else 'a number'} in the range {where}; "
                f"received {received(value)}"
            )
        return float(value) if not pair else (float(value[0]), float(value[1]))

    return check


def Factor(lo: float = -1.0, hi: float = 1.0, *, each: bool = True, lo_open: bool = False) -> Any:  # noqa: N802
    number = {"type": "number", "maximum": hi}
    number["exclusiveMinimum" if lo_open else "minimum"] = lo
    return Annotated[
        Any,
        BeforeValidator(_factor_check(lo, hi, each=each, lo_open=lo_open)),
        WithJsonSchema(
            {
                "oneOf": [
                    number,
                    {
                        "type": "array",
                        "items": number if each else {"type": "number"},
                        "minItems": 2,
                        "maxItems": 2,
                    },
                ]
            }
        ),
    ]


def _numbers(value: Any) -> Any:
    """A number, or a non-empty list of numbers (one per channel)."""
    if is_number(value) and is_finite(value):
        return float(value)
    if (
        isinstance(value, (list, tuple))
        and value
        and all(is_number(v) and is_finite(v) for v in value)
    ):
        return tuple(float(v) for v in value)
    raise ValueError(
        f"expected a finite number or a list of finite numbers; received {received(value)}"
    )


Numbers = Annotated[
    Any,
    BeforeValidator(_numbers),
    WithJsonSchema(
        {
            "oneOf": [
                {"type": "number"},
                {"type": "array", "items": {"type": "number"}, "minItems": 1},
            ]
        }
    ),
]
"""A number or a per-channel list of numbers (Rescaling, Normalization)."""


def _name(value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]{0,99}", value):
        raise ValueError(
            "a layer name is letters, digits, '_', '.', '-', starting with a "
            f"letter or '_'; received {received(value)}"
        )
    return value


LayerName = Annotated[
    str,
    BeforeValidator(_name),
    WithJsonSchema({"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_.\-]*$"}),
]
