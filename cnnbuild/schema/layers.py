"""One pydantic model per layer kind: Keras' argument names, types, ranges and defaults.

``tests/test_catalog.py`` checks every default here against the installed Keras
layer's signature, so the schema cannot drift from Keras silently.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema, model_validator

from cnnbuild.schema.types import (
    ACTIVATIONS,
    DTYPES,
    FILL_MODES,
    INTERPOLATIONS,
    MAX_INT,
    Bool,
    Choice,
    Constraint,
    DataFormat,
    Factor,
    Float,
    Initializer,
    Int,
    LayerName,
    Numbers,
    Padding,
    Padding2D,
    Pair,
    Regularizer,
    Seed,
    is_int,
)
from cnnbuild.schema.types import Activation as ActivationName

PosInt = Int(1)


class LayerArgs(BaseModel):
    """Arguments every Keras layer takes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: LayerName | None = None
    trainable: Bool = True
    dtype: Choice(DTYPES, "dtype", nullable=True) = None


def _strides_or_dilation(args: Any) -> None:
    """Keras' own rule for convolutions: not both strides > 1 and dilation > 1."""
    if max(args.strides) > 1 and max(args.dilation_rate) > 1:
        raise ValueError(
            "`strides > 1` not supported in conjunction with "
            f"`dilation_rate > 1`; received strides={list(args.strides)} and "
            f"dilation_rate={list(args.dilation_rate)}"
        )


LoraRank = Int(0) | None
LoraAlpha = Float(0.0, lo_open=True) | None


def _lora_rules(args: Any) -> None:
    """Keras' ``enable_lora``: the kernel is frozen and two low-rank factors learn; it
    refuses a kernel constraint."""
    if args.lora_rank and args.kernel_constraint is not None:
        raise ValueError(
            "LoRA is incompatible with kernel constraints; remove kernel_constraint or "
            f"lora_rank; received lora_rank={args.lora_rank}"
        )


class Conv2D(LayerArgs):
    filters: PosInt
    kernel_size: Pair(1)
    strides: Pair(1) = (1, 1)
    padding: Padding = "valid"
    data_format: DataFormat = None
    dilation_rate: Pair(1) = (1, 1)
    groups: PosInt = 1
    activation: ActivationName = None
    use_bias: Bool = True
    kernel_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"
    kernel_regularizer: Regularizer = None
    bias_regularizer: Regularizer = None
    activity_regularizer: Regularizer = None
    kernel_constraint: Constraint = None
    bias_constraint: Constraint = None
    lora_rank: LoraRank = None
    lora_alpha: LoraAlpha = None

    @model_validator(mode="after")
    def _keras_rules(self) -> Conv2D:
        _strides_or_dilation(self)
        _lora_rules(self)
        if self.filters % self.groups:
            raise ValueError(
                "the number of filters must be evenly divisible by the number "
                f"of groups; received groups={self.groups}, filters={self.filters}"
            )
        return self


class Conv2DTranspose(LayerArgs):
    filters: PosInt
    kernel_size: Pair(1)
    strides: Pair(1) = (1, 1)
    padding: Padding = "valid"
    output_padding: Pair(0) | None = None
    data_format: DataFormat = None
    dilation_rate: Pair(1) = (1, 1)
    activation: ActivationName = None
    use_bias: Bool = True
    kernel_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"
    kernel_regularizer: Regularizer = None
    bias_regularizer: Regularizer = None
    activity_regularizer: Regularizer = None
    kernel_constraint: Constraint = None
    bias_constraint: Constraint = None

    @model_validator(mode="after")
    def _keras_rules(self) -> Conv2DTranspose:
        _strides_or_dilation(self)
        if self.output_padding is not None and any(
            p >= s for p, s in zip(self.output_padding, self.strides, strict=True)
        ):
            raise ValueError(
                "output_padding must be smaller than strides on each axis; received "
                f"strides={list(self.strides)}, output_padding={list(self.output_padding)}"
            )
        return self


class DepthwiseConv2D(LayerArgs):
    kernel_size: Pair(1)
    strides: Pair(1) = (1, 1)
    padding: Padding = "valid"
    depth_multiplier: PosInt = 1
    data_format: DataFormat = None
    dilation_rate: Pair(1) = (1, 1)
    activation: ActivationName = None
    use_bias: Bool = True
    depthwise_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"
    depthwise_regularizer: Regularizer = None
    bias_regularizer: Regularizer = None
    activity_regularizer: Regularizer = None
    depthwise_constraint: Constraint = None
    bias_constraint: Constraint = None

    @model_validator(mode="after")
    def _keras_rules(self) -> DepthwiseConv2D:
        _strides_or_dilation(self)
        return self


class SeparableConv2D(LayerArgs):
    filters: PosInt
    kernel_size: Pair(1)
    strides: Pair(1) = (1, 1)
    padding: Padding = "valid"
    data_format: DataFormat = None
    dilation_rate: Pair(1) = (1, 1)
    depth_multiplier: PosInt = 1
    activation: ActivationName = None
    use_bias: Bool = True
    depthwise_initializer: Initializer = "glorot_uniform"
    pointwise_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"
    depthwise_regularizer: Regularizer = None
    pointwise_regularizer: Regularizer = None
    bias_regularizer: Regularizer = None
    activity_regularizer: Regularizer = None
    depthwise_constraint: Constraint = None
    pointwise_constraint: Constraint = None
    bias_constraint: Constraint = None

    _keras_rules = DepthwiseConv2D._keras_rules


class MaxPooling2D(LayerArgs):
    pool_size: Pair(1) = (2, 2)
    strides: Pair(1) | None = None
    padding: Padding = "valid"
    data_format: DataFormat = None


class AveragePooling2D(MaxPooling2D):
    pool_size: Pair(1)


class GlobalAveragePooling2D(LayerArgs):
    data_format: DataFormat = None
    keepdims: Bool = False


class GlobalMaxPooling2D(GlobalAveragePooling2D):
    pass


class Flatten(LayerArgs):
    data_format: DataFormat = None


class Dense(LayerArgs):
    units: PosInt
    activation: ActivationName = None
    use_bias: Bool = True
    kernel_initializer: Initializer = "glorot_uniform"
    bias_initializer: Initializer = "zeros"
    kernel_regularizer: Regularizer = None
    bias_regularizer: Regularizer = None
    activity_regularizer: Regularizer = None
    kernel_constraint: Constraint = None
    bias_constraint: Constraint = None
    lora_rank: LoraRank = None
    lora_alpha: LoraAlpha = None

    @model_validator(mode="after")
    def _keras_rules(self) -> Dense:
        _lora_rules(self)
        return self


Rate = Float(0.0, 1.0, hi_open=True)


class Dropout(LayerArgs):
    rate: Rate
    noise_shape: list[Int(1) | None] | None = None
    seed: Seed = None


class SpatialDropout2D(LayerArgs):
    rate: Rate
    data_format: DataFormat = None
    seed: Seed = None


AxisList = Int() | list[Int()]


class BatchNormalization(LayerArgs):
    axis: Int() = -1
    momentum: Float(0.0, 1.0) = 0.99
    epsilon: Float(0.0, lo_open=True) = 0.001
    center: Bool = True
    scale: Bool = True
    beta_initializer: Initializer = "zeros"
    gamma_initializer: Initializer = "ones"
    moving_mean_initializer: Initializer = "zeros"
    moving_variance_initializer: Initializer = "ones"
    beta_regularizer: Regularizer = None
    gamma_regularizer: Regularizer = None
    beta_constraint: Constraint = None
    gamma_constraint: Constraint = None
    renorm: Bool = False
    renorm_clipping: (
        dict[Choice(("rmax", "rmin", "dmax"), "renorm_clipping key"), Float()] | None
    ) = None
    renorm_momentum: Float(0.0, 1.0) = 0.99
    synchronized: Bool = False

    @model_validator(mode="after")
    def _keras_rules(self) -> BatchNormalization:
        clip = self.renorm_clipping or {}
        if not self.renorm:
            return self  # Keras reads renorm_clipping only with renorm: true
        if "rmax" in clip and "rmin" in clip and clip["rmax"] < clip["rmin"]:
            raise ValueError(
                "renorm_clipping: rmax should be greater than rmin; received "
                f"rmax={clip['rmax']:g}, rmin={clip['rmin']:g}"
            )
        if clip.get("dmax", 0.0) < 0:
            raise ValueError(
                f"renorm_clipping: dmax should be non-negative; received dmax={clip['dmax']:g}"
            )
        return self


class LayerNormalization(LayerArgs):
    axis: AxisList = -1
    epsilon: Float(0.0, lo_open=True) = 0.001
    center: Bool = True
    scale: Bool = True
    beta_initializer: Initializer = "zeros"
    gamma_initializer: Initializer = "ones"
    beta_regularizer: Regularizer = None
    gamma_regularizer: Regularizer = None
    beta_constraint: Constraint = None
    gamma_constraint: Constraint = None


class Activation(LayerArgs):
    activation: Choice(ACTIVATIONS, "activation")


class ReLU(LayerArgs):
    max_value: Float(0.0) | None = None
    negative_slope: Float(0.0) = 0.0
    threshold: Float(0.0) = 0.0


class ZeroPadding2D(LayerArgs):
    padding: Padding2D = ((1, 1), (1, 1))
    data_format: DataFormat = None


class Cropping2D(LayerArgs):
    cropping: Padding2D = ((0, 0), (0, 0))
    data_format: DataFormat = None


class Rescaling(LayerArgs):
    """``x * scale + offset``; a list gives one value per channel."""

    scale: Numbers
    offset: Numbers = 0.0


class Normalization(LayerArgs):
    """``(x - mean) / sqrt(variance)`` per channel; without mean/variance, ``train``
    adapts them on the training images."""

    axis: AxisList | None = -1
    mean: Numbers | None = None
    variance: Numbers | None = None
    invert: Bool = False

    @model_validator(mode="after")
    def _keras_rules(self) -> Normalization:
        if (self.mean is None) != (self.variance is None):
            raise ValueError(
                "when setting values directly, both mean and variance must be set; "
                f"received mean={self.mean}, variance={self.variance}"
            )
        if self.mean is not None:
            rank = [0 if isinstance(v, float) else 1 for v in (self.mean, self.variance)]
            sizes = [1 if isinstance(v, float) else len(v) for v in (self.mean, self.variance)]
            if rank[0] != rank[1] or sizes[0] != sizes[1]:
                raise ValueError(
                    "mean and variance must have the same shape; received "
                    f"mean={list(_as_tuple(self.mean))}, variance={list(_as_tuple(self.variance))}"
                )
            axes = 0 if self.axis is None else 1 if isinstance(self.axis, int) else len(self.axis)
            if rank[0] > axes:
                raise ValueError(
                    f"a list mean needs an axis to apply along; received axis={self.axis}"
                )
        return self


def _as_tuple(value: float | tuple[float, ...]) -> tuple[float, ...]:
    return (value,) if isinstance(value, float) else value


def _target_shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"expected a list of integers; received {value!r}")
    items = tuple(value)
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a list of integers; received {list(value)}")
        if v < -1 or v > MAX_INT:
            raise ValueError(
                "each dimension of target_shape must be a non-negative integer, or -1 "
                f"for a single unknown dimension; received target_shape={list(value)}"
            )
    if items.count(-1) > 1:
        raise ValueError(
            f"target_shape may hold at most one -1; received target_shape={list(value)}"
        )
    return items


class Reshape(LayerArgs):
    target_shape: Annotated[
        tuple[int, ...],
        BeforeValidator(_target_shape),
        WithJsonSchema(
            {
                "type": "array",
                "items": {"type": "integer", "minimum": -1, "maximum": MAX_INT},
                "minItems": 1,
            }
        ),
    ]


class UpSampling2D(LayerArgs):
    size: Pair(1) = (2, 2)
    data_format: DataFormat = None
    interpolation: Choice(INTERPOLATIONS, "interpolation") = "nearest"


class Resizing(LayerArgs):
    height: PosInt
    width: PosInt
    interpolation: Choice(INTERPOLATIONS, "interpolation") = "bilinear"
    crop_to_aspect_ratio: Bool = False
    pad_to_aspect_ratio: Bool = False
    fill_mode: Choice(("constant",), "fill_mode") = "constant"
    fill_value: Float() = 0.0
    antialias: Bool = False
    data_format: DataFormat = None


class RandomFlip(LayerArgs):
    mode: Choice(("horizontal", "vertical", "horizontal_and_vertical"), "mode") = (
        "horizontal_and_vertical"
    )
    seed: Seed = None
    data_format: DataFormat = None


class _RandomAffine(LayerArgs):
    fill_mode: Choice(FILL_MODES, "fill_mode") = "reflect"
    interpolation: Choice(("nearest", "bilinear"), "interpolation") = "bilinear"
    seed: Seed = None
    fill_value: Float() = 0.0
    data_format: DataFormat = None


class RandomTranslation(_RandomAffine):
    height_factor: Factor(-1.0, 1.0)
    width_factor: Factor(-1.0, 1.0)


class RandomCrop(LayerArgs):
    height: PosInt
    width: PosInt
    seed: Seed = None
    data_format: DataFormat = None


class RandomRotation(_RandomAffine):
    factor: Factor(-1.0, 1.0, each=False)


class RandomZoom(_RandomAffine):
    height_factor: Factor(-1.0, 1.0, lo_open=True)
    width_factor: Factor(-1.0, 1.0, lo_open=True) | None = None


class RandomContrast(LayerArgs):
    factor: Factor(0.0, 1.0, each=False)
    value_range: tuple[Float(), Float()] = (0, 255)
    seed: Seed = None


class LeakyReLU(LayerArgs):
    negative_slope: Float(0.0) = 0.3


class PReLU(LayerArgs):
    """``max(x, 0) + alpha * min(x, 0)`` with a learnt ``alpha`` per value; axes in
    ``shared_axes`` (1-based, 1 = height) share one alpha."""

    alpha_initializer: Initializer = "zeros"
    alpha_regularizer: Regularizer = None
    alpha_constraint: Constraint = None
    shared_axes: Int(1) | list[Int(1)] | None = None


class ELU(LayerArgs):
    alpha: Float() = 1.0


class Softmax(LayerArgs):
    axis: AxisList = -1


def _groups(value: Any) -> int:
    if not is_int(value) or (value <= 0 and value != -1):
        raise ValueError(
            f"expected a positive integer (or -1 for instance normalization); received {value!r}"
        )
    return value


class GroupNormalization(LayerArgs):
    groups: Annotated[
        int,
        BeforeValidator(_groups),
        WithJsonSchema({"oneOf": [{"type": "integer", "minimum": 1}, {"const": -1}]}),
    ] = 32
    axis: Int() = -1
    epsilon: Float(0.0, lo_open=True) = 0.001
    center: Bool = True
    scale: Bool = True
    beta_initializer: Initializer = "zeros"
    gamma_initializer: Initializer = "ones"
    beta_regularizer: Regularizer = None
    gamma_regularizer: Regularizer = None
    beta_constraint: Constraint = None
    gamma_constraint: Constraint = None


class UnitNormalization(LayerArgs):
    axis: AxisList = -1


class GaussianNoise(LayerArgs):
    stddev: Float(0.0, 1.0)
    seed: Seed = None


class GaussianDropout(LayerArgs):
    rate: Float(0.0, 1.0)
    seed: Seed = None


def _permutation(value: Any) -> tuple[int, ...]:
    if (
        not isinstance(value, (list, tuple))
        or not value
        or not all(map(is_int, value))
        or sorted(value) != list(range(1, len(value) + 1))
    ):
        raise ValueError(
            "dims is a permutation of 1..rank (1 is the first axis after the batch); "
            f"received {value!r}"
        )
    return tuple(value)


class Permute(LayerArgs):
    dims: Annotated[
        tuple[int, ...],
        BeforeValidator(_permutation),
        WithJsonSchema({"type": "array", "items": {"type": "integer", "minimum": 1}}),
    ]


class Identity(LayerArgs):
    pass


class CenterCrop(LayerArgs):
    height: PosInt
    width: PosInt
    data_format: DataFormat = None


class RandomBrightness(LayerArgs):
    factor: Factor(-1.0, 1.0, each=False)
    value_range: tuple[Float(), Float()] = (0, 255)
    seed: Seed = None


class MergeArgs(LayerArgs):
    """The arguments of a layer that merges a list of inputs (Add, Concatenate, ...);
    the block syntax's ``merge:`` offers exactly the kinds whose model derives from it."""


class Add(MergeArgs):
    pass


class Multiply(MergeArgs):
    pass


class Concatenate(MergeArgs):
    axis: Int() = -1


def args_model(kind: str) -> type[LayerArgs]:
    """The argument model of the layer called ``kind``."""
    return globals()[kind]


def merge_kinds() -> tuple[str, ...]:
    """The layer kinds that merge a list of inputs, in the order they are written here."""
    return tuple(
        name
        for name, model in globals().items()
        if isinstance(model, type) and issubclass(model, MergeArgs) and model is not MergeArgs
    )


def keras_kwargs(args: LayerArgs) -> dict[str, Any]:
    """The arguments the user set, as Keras takes them (defaults are Keras' own)."""
    return {k: getattr(args, k) for k in args.model_fields_set}
