"""Shape, parameter, MAC and receptive-field arithmetic, in plain Python.

Every rule follows Keras 3's own code (``keras/src/ops/operation_utils.py``):

* ``valid``: ``out = floor((in - dilated_kernel) / stride) + 1``, where
  ``dilated_kernel = dilation * (kernel - 1) + 1``; an output of zero or less is an error.
* ``same``: ``out = ceil(in / stride)`` (Keras writes ``floor((in - 1) / stride) + 1``).

Shapes exclude the batch dimension; ``None`` is a free size. MACs count the
multiply-accumulates of the weighted layers (convolutions and Dense), per image, in the
forward pass; pooling, normalisation and activations count 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cnnbuild.errors import shape_str

Shape = tuple  # tuple[int | None, ...]
AXES = ("H", "W")


class ShapeError(Exception):
    """A layer that cannot take its input: names the argument to point at, and a fix."""

    def __init__(self, message: str, hint: str = "", arg: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.arg = arg


@dataclass
class DimCalc:
    """How one output dimension was computed, e.g. ``H: (32 - 3) // 1 + 1 = 30``."""

    axis: str
    text: str
    value: int | None


@dataclass
class LayerOut:
    """What a layer does to its input, statically."""

    shape: Shape
    trainable: int = 0
    non_trainable: int = 0
    macs: int = 0
    calcs: list[DimCalc] = field(default_factory=list)
    kernel: tuple[int, int] | None = None  # effective (dilated) window, for receptive fields
    stride: tuple[int, int] | None = None
    global_pool: bool = False

    @property
    def params(self) -> int:
        return self.trainable + self.non_trainable


def conv_dim(
    size: int | None, kernel: int, stride: int, padding: str, dilation: int = 1, axis: str = "H"
) -> DimCalc:
    """One spatial output size of a convolution or pooling window, with its arithmetic.

    >>> conv_dim(32, 3, 1, "valid").text
    '(32 - 3) // 1 + 1 = 30'
    >>> conv_dim(32, 3, 2, "same").text
    'ceil(32 / 2) = 16'
    """
    eff = dilation * (kernel - 1) + 1
    if size is None:
        return DimCalc(axis, "None (free size)", None)
    if padding == "same":
        out = (size + stride - 1) // stride
        return DimCalc(axis, f"ceil({size} / {stride}) = {out}", out)
    out = (size - eff) // stride + 1
    text = f"({size} - {eff}) // {stride} + 1 = {out}"
    if dilation > 1:
        text += f"  (dilated kernel {dilation}*({kernel}-1)+1 = {eff})"
    return DimCalc(axis, text, out)


def _need_rank(shape: Shape, rank: int, kind: str) -> None:
    if len(shape) != rank:
        want = "(height, width, channels)" if rank == 3 else f"rank {rank}"
        raise ShapeError(
            f"{kind} expects a {rank}-D input {want}; received {shape_str(shape)}",
            hint="check the layers before it",
        )


def _channels(shape: Shape, kind: str) -> int:
    if shape[-1] is None:
        raise ShapeError(f"{kind} needs a known channel count; received {shape_str(shape)}")
    return shape[-1]


def _windowed(
    inp: Shape,
    kind: str,
    kernel: tuple[int, int],
    strides: tuple[int, int],
    padding: str,
    dilation: tuple[int, int] = (1, 1),
    kernel_arg: str = "kernel_size",
) -> tuple[list[DimCalc], tuple]:
    _need_rank(inp, 3, kind)
    calcs = [
        conv_dim(inp[i], kernel[i], strides[i], padding, dilation[i], AXES[i]) for i in range(2)
    ]
    for c, size, k, d in zip(calcs, inp[:2], kernel, dilation, strict=True):
        if c.value is not None and c.value <= 0:
            eff = d * (k - 1) + 1
            raise ShapeError(
                f"output {c.axis} would be {c.value}: input {shape_str(inp)}, "
                f"{kernel_arg}={list(kernel)}"
                + (f", dilation_rate={list(dilation)}" if max(dilation) > 1 else "")
                + f", strides={list(strides)}, padding={padding!r} "
                f"gives {c.text}",
                hint=f"use padding: same, a {kernel_arg} of at most {size} "
                f"(now {eff}), or downsample less before this layer",
                arg=kernel_arg,
            )
    eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))
    return calcs, eff


def _spatial(calcs: list[DimCalc]) -> tuple:
    return tuple(c.value for c in calcs)


def _area(calcs: list[DimCalc]) -> int:
    h, w = _spatial(calcs)
    return (h or 0) * (w or 0)


def conv2d(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    calcs, eff = _windowed(inp, "Conv2D", a.kernel_size, a.strides, a.padding, a.dilation_rate)
    cin = _channels(inp, "Conv2D")
    if cin % a.groups:
        raise ShapeError(
            f"the input's {cin} channels are not divisible by groups={a.groups}",
            hint="choose groups that divides both the input channels and filters",
            arg="groups",
        )
    per = a.kernel_size[0] * a.kernel_size[1] * (cin // a.groups)
    trainable, frozen = _with_lora(per, a.filters, a.lora_rank)
    return LayerOut(
        _spatial(calcs) + (a.filters,),
        trainable + (a.filters if a.use_bias else 0),
        frozen,
        _area(calcs) * a.filters * per,
        calcs,
        eff,
        a.strides,
    )


def _with_lora(fan_in: int, units: int, rank: int | None) -> tuple[int, int]:
    """(trainable, frozen) kernel weights: with ``lora_rank`` Keras freezes the
    ``fan_in x units`` kernel and learns two factors, ``fan_in x rank`` and ``rank x units``
    (the forward pass still multiplies by one merged kernel, so MACs do not change)."""
    if not rank:
        return fan_in * units, 0
    return fan_in * rank + rank * units, fan_in * units


def transpose_dim(
    size: int | None,
    kernel: int,
    stride: int,
    padding: str,
    output_padding: int | None,
    dilation: int = 1,
    axis: str = "H",
) -> DimCalc:
    """One spatial output size of a transposed convolution (Keras'
    ``compute_conv_transpose_output_shape``).

    >>> transpose_dim(16, 3, 2, "same", None).text
    '16 * 2 = 32'
    >>> transpose_dim(16, 3, 2, "valid", None).text
    '(16 - 1) * 2 + 3 + 0 = 33'
    """
    eff = dilation * (kernel - 1) + 1
    if size is None:
        return DimCalc(axis, "None (free size)", None)
    if padding == "same" and output_padding is None:
        out = size * stride
        return DimCalc(axis, f"{size} * {stride} = {out}", out)
    if padding == "same":
        out = (size - 1) * stride + eff % 2 + output_padding
        return DimCalc(axis, f"({size} - 1) * {stride} + {eff} % 2 + {output_padding} = {out}", out)
    extra = max(eff, stride) - eff if output_padding is None else output_padding
    out = (size - 1) * stride + eff + extra
    return DimCalc(axis, f"({size} - 1) * {stride} + {eff} + {extra} = {out}", out)


def conv2d_transpose(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    _need_rank(inp, 3, "Conv2DTranspose")
    cin = _channels(inp, "Conv2DTranspose")
    pads = a.output_padding or (None, None)
    calcs = [
        transpose_dim(
            inp[i], a.kernel_size[i], a.strides[i], a.padding, pads[i], a.dilation_rate[i], AXES[i]
        )
        for i in range(2)
    ]
    for c in calcs:
        if c.value is not None and c.value <= 0:
            raise ShapeError(
                f"output {c.axis} would be {c.value}: {c.text}",
                hint="use a larger input or kernel_size",
                arg="kernel_size",
            )
    k = a.kernel_size[0] * a.kernel_size[1]
    weights = k * cin * a.filters + (a.filters if a.use_bias else 0)
    # every input pixel is spread over a kernel-sized patch of every filter
    area = math.prod(d or 0 for d in inp[:2])
    return LayerOut(_spatial(calcs) + (a.filters,), weights, 0, area * k * cin * a.filters, calcs)


def depthwise_conv2d(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    calcs, eff = _windowed(
        inp, "DepthwiseConv2D", a.kernel_size, a.strides, a.padding, a.dilation_rate
    )
    cout = _channels(inp, "DepthwiseConv2D") * a.depth_multiplier
    k = a.kernel_size[0] * a.kernel_size[1]
    weights = k * cout + (cout if a.use_bias else 0)
    return LayerOut(
        _spatial(calcs) + (cout,), weights, 0, _area(calcs) * cout * k, calcs, eff, a.strides
    )


def separable_conv2d(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    calcs, eff = _windowed(
        inp, "SeparableConv2D", a.kernel_size, a.strides, a.padding, a.dilation_rate
    )
    mid = _channels(inp, "SeparableConv2D") * a.depth_multiplier
    k = a.kernel_size[0] * a.kernel_size[1]
    weights = k * mid + mid * a.filters + (a.filters if a.use_bias else 0)
    macs = _area(calcs) * (mid * k + mid * a.filters)
    return LayerOut(_spatial(calcs) + (a.filters,), weights, 0, macs, calcs, eff, a.strides)


def pooling2d(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    strides = a.strides or a.pool_size
    calcs, eff = _windowed(inp, "pooling", a.pool_size, strides, a.padding, kernel_arg="pool_size")
    return LayerOut(_spatial(calcs) + (inp[2],), calcs=calcs, kernel=eff, stride=strides)


def global_pooling2d(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    _need_rank(inp, 3, "global pooling")
    shape = (1, 1, inp[2]) if a.keepdims else (inp[2],)
    return LayerOut(shape, global_pool=True)


def flatten(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    if not inp:
        raise ShapeError("Flatten needs an input with at least one axis")
    size = None if None in inp else math.prod(inp)
    text = " * ".join(str(d) for d in inp) + f" = {size}"
    return LayerOut((size,), calcs=[DimCalc("N", text, size)])


def dense(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    if not inp or inp[-1] is None:
        raise ShapeError(
            f"Dense needs a known last axis; received {shape_str(inp)}",
            hint="add Flatten or GlobalAveragePooling2D before it",
        )
    trainable, frozen = _with_lora(inp[-1], a.units, a.lora_rank)
    positions = math.prod(d or 0 for d in inp[:-1]) if len(inp) > 1 else 1
    return LayerOut(
        inp[:-1] + (a.units,),
        trainable + (a.units if a.use_bias else 0),
        frozen,
        positions * inp[-1] * a.units,
    )


def identity(inputs: list[Shape], a: Any) -> LayerOut:
    return LayerOut(inputs[0])


def _per_channel(inp: Shape, values: Any, arg: str, kind: str) -> None:
    """A list value must broadcast over the last (channel) axis."""
    if (
        isinstance(values, tuple)
        and len(values) != 1
        and (not inp or inp[-1] is None or inp[-1] != len(values))
    ):
        raise ShapeError(
            f"{kind} {arg} has {len(values)} values but the input {shape_str(inp)} has "
            f"{'no known' if not inp or inp[-1] is None else inp[-1]} channels",
            hint=f"give one {arg} per channel, or a single number",
            arg=arg,
        )


def rescaling(inputs: list[Shape], a: Any) -> LayerOut:
    _per_channel(inputs[0], a.scale, "scale", "Rescaling")
    _per_channel(inputs[0], a.offset, "offset", "Rescaling")
    return LayerOut(inputs[0])


def normalization(inputs: list[Shape], a: Any) -> LayerOut:
    """Keras' Normalization: mean and variance per kept axis (plus a count) when adapted,
    all non-trainable; no weights when mean and variance are given."""
    inp = inputs[0]
    axes = [] if a.axis is None else _norm_axes(inp, a.axis, "Normalization")
    if a.mean is not None:
        kept = [inp[i] for i in sorted(axes)]
        if isinstance(a.mean, tuple) and len(a.mean) != 1 and (not kept or kept[-1] != len(a.mean)):
            raise ShapeError(
                f"Normalization mean has {len(a.mean)} values but axis {a.axis} of the "
                f"input {shape_str(inp)} has size {kept[-1] if kept else 'none'}",
                hint="give one mean and variance per channel, or single numbers",
                arg="mean",
            )
        return LayerOut(inp)
    n = math.prod(inp[i] for i in axes)
    return LayerOut(inp, 0, 2 * n + 1)


def reshape(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    target = a.target_shape
    text_in = shape_str(inp)
    if None in inp:
        out = tuple(None if d == -1 else d for d in target)
        return LayerOut(out)
    size = math.prod(inp)
    known = math.prod(d for d in target if d != -1)
    if -1 in target:
        if known == 0 or size % known:
            raise ShapeError(
                f"cannot reshape {text_in} ({size} values) to {list(target)}: "
                f"{size} is not divisible by {known}",
                hint="choose a target_shape whose known sizes divide the input size",
                arg="target_shape",
            )
        out = tuple(size // known if d == -1 else d for d in target)
    else:
        if known != size:
            raise ShapeError(
                f"cannot reshape {text_in} ({size} values) to {list(target)} ({known} values)",
                hint="the total size must stay the same; use -1 for one free dimension",
                arg="target_shape",
            )
        out = tuple(target)
    return LayerOut(out)


def up_sampling2d(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    _need_rank(inp, 3, "UpSampling2D")
    calcs = []
    for i in range(2):
        size = inp[i]
        val = None if size is None else size * a.size[i]
        calcs.append(DimCalc(AXES[i], f"{size} * {a.size[i]} = {val}", val))
    return LayerOut(_spatial(calcs) + (inp[2],), calcs=calcs)


def spatial_dropout2d(inputs: list[Shape], a: Any) -> LayerOut:
    _need_rank(inputs[0], 3, "SpatialDropout2D")
    return LayerOut(inputs[0])


def _norm_axes(shape: Shape, axis: int | list[int], kind: str) -> list[int]:
    axes = [axis] if isinstance(axis, int) else list(axis)
    rank = len(shape) + 1  # Keras counts the batch axis
    out = []
    for ax in axes:
        pos = ax if ax >= 0 else rank + ax
        if not 1 <= pos < rank:
            raise ShapeError(
                f"{kind} axis={ax} is out of range for input {shape_str(shape)} "
                "(axis 0 is the batch)",
                arg="axis",
            )
        if shape[pos - 1] is None:
            raise ShapeError(f"{kind} axis={ax} has a free size in {shape_str(shape)}", arg="axis")
        out.append(pos - 1)
    return out


def _axes_in_range(shape: Shape, axis: int | list[int], kind: str) -> None:
    """Keras counts the batch as axis 0; an axis beyond the input's rank is an error."""
    rank = len(shape) + 1
    for ax in [axis] if isinstance(axis, int) else axis:
        if not -rank <= ax < rank:
            raise ShapeError(
                f"{kind} axis={ax} is out of range for input {shape_str(shape)} "
                "(axis 0 is the batch)",
                arg="axis",
            )


def softmax(inputs: list[Shape], a: Any) -> LayerOut:
    _axes_in_range(inputs[0], a.axis, "Softmax")
    return LayerOut(inputs[0])


def unit_norm(inputs: list[Shape], a: Any) -> LayerOut:
    _axes_in_range(inputs[0], a.axis, "UnitNormalization")
    return LayerOut(inputs[0])


def prelu(inputs: list[Shape], a: Any) -> LayerOut:
    """One learnt alpha per value, except along ``shared_axes`` (1-based after the batch)."""
    inp = inputs[0]
    shared = [] if a.shared_axes is None else a.shared_axes
    shared = [shared] if isinstance(shared, int) else shared
    for ax in shared:
        if ax > len(inp):
            raise ShapeError(
                f"PReLU shared_axes={list(shared)} names axis {ax}, but the input "
                f"{shape_str(inp)} has {len(inp)} axes after the batch",
                hint=f"use axes from 1 to {len(inp)}",
                arg="shared_axes",
            )
    sizes = [1 if i + 1 in shared else d for i, d in enumerate(inp)]
    if None in sizes:
        raise ShapeError(
            f"PReLU needs a known size on every axis it does not share; received {shape_str(inp)}",
            hint="share the free axes: shared_axes: [1, 2]",
            arg="shared_axes",
        )
    return LayerOut(inp, math.prod(sizes))


def group_norm(inputs: list[Shape], a: Any) -> LayerOut:
    """Keras' GroupNormalization: the axis splits into ``groups`` (``-1``: one per
    channel); a gamma and a beta per channel."""
    inp = inputs[0]
    (ax,) = _norm_axes(inp, a.axis, "GroupNormalization")
    dim = inp[ax]
    groups = dim if a.groups == -1 else a.groups
    if dim < groups or dim % groups:
        raise ShapeError(
            f"GroupNormalization groups={groups} must divide the {dim} channels of "
            f"the input {shape_str(inp)}",
            hint=f"choose groups that divides {dim}",
            arg="groups",
        )
    return LayerOut(inp, dim * (int(a.center) + int(a.scale)))


def permute(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    if len(a.dims) != len(inp):
        raise ShapeError(
            f"Permute dims={list(a.dims)} has {len(a.dims)} axes but the input "
            f"{shape_str(inp)} has {len(inp)} (after the batch)",
            hint=f"give a permutation of 1..{len(inp)}",
            arg="dims",
        )
    return LayerOut(tuple(inp[d - 1] for d in a.dims))


def batch_norm(inputs: list[Shape], a: Any) -> LayerOut:
    (ax,) = _norm_axes(inputs[0], a.axis, "BatchNormalization")
    c = inputs[0][ax]
    trainable = c * (int(a.center) + int(a.scale))
    non_trainable = c * (5 if a.renorm else 2)
    return LayerOut(inputs[0], trainable, non_trainable)


def layer_norm(inputs: list[Shape], a: Any) -> LayerOut:
    axes = _norm_axes(inputs[0], a.axis, "LayerNormalization")
    n = math.prod(inputs[0][i] for i in axes)
    return LayerOut(inputs[0], n * (int(a.center) + int(a.scale)))


def zero_padding2d(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    _need_rank(inp, 3, "ZeroPadding2D")
    calcs = []
    for i, (lo, hi) in enumerate(a.padding):
        size = inp[i]
        val = None if size is None else size + lo + hi
        calcs.append(DimCalc(AXES[i], f"{size} + {lo} + {hi} = {val}", val))
    return LayerOut(_spatial(calcs) + (inp[2],), calcs=calcs, stride=(1, 1), kernel=(1, 1))


def cropping2d(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    _need_rank(inp, 3, "Cropping2D")
    calcs = []
    for i, (lo, hi) in enumerate(a.cropping):
        size = inp[i]
        val = None if size is None else size - lo - hi
        calcs.append(DimCalc(AXES[i], f"{size} - {lo} - {hi} = {val}", val))
        if val is not None and val <= 0:
            raise ShapeError(
                f"cropping {[lo, hi]} from {AXES[i]}={size} leaves {val}",
                hint=f"crop less than {size} in total",
                arg="cropping",
            )
    return LayerOut(_spatial(calcs) + (inp[2],), calcs=calcs, stride=(1, 1), kernel=(1, 1))


def resize_to(inputs: list[Shape], a: Any) -> LayerOut:
    inp = inputs[0]
    _need_rank(inp, 3, type(a).__name__)
    calcs = [
        DimCalc("H", f"{inp[0]} -> {a.height}", a.height),
        DimCalc("W", f"{inp[1]} -> {a.width}", a.width),
    ]
    return LayerOut((a.height, a.width, inp[2]), calcs=calcs)


def image_identity(inputs: list[Shape], a: Any) -> LayerOut:
    _need_rank(inputs[0], 3, type(a).__name__)
    return LayerOut(inputs[0])


def _broadcast(a: Shape, b: Shape) -> Shape:
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return a
    out = list(a[: len(a) - len(b)])
    for i, j in zip(a[len(a) - len(b) :], b, strict=True):
        if i is None or j is None:
            out.append(None)
        elif i == 1:
            out.append(j)
        elif j == 1 or i == j:
            out.append(i)
        else:
            raise ValueError
    return tuple(out)


def elementwise(inputs: list[Shape], a: Any) -> LayerOut:
    out = inputs[0]
    for other in inputs[1:]:
        try:
            out = _broadcast(out, other)
        except ValueError:
            raise ShapeError(
                f"{type(a).__name__} inputs have incompatible shapes "
                + " and ".join(shape_str(s) for s in inputs),
                hint="make the branches agree: a 1x1 Conv2D projection with matching "
                "strides on the shortcut",
            ) from None
    return LayerOut(out)


def concatenate(inputs: list[Shape], a: Any) -> LayerOut:
    first = inputs[0]
    rank = len(first)
    if any(len(s) != rank for s in inputs):
        raise ShapeError(
            "Concatenate inputs have different ranks: " + " and ".join(shape_str(s) for s in inputs)
        )
    ax = a.axis if a.axis >= 0 else rank + 1 + a.axis
    if not 1 <= ax <= rank:
        raise ShapeError(
            f"Concatenate axis={a.axis} is out of range for {shape_str(first)}", arg="axis"
        )
    ax -= 1
    for s in inputs[1:]:
        for i in range(rank):
            if i != ax and None not in (s[i], first[i]) and s[i] != first[i]:
                raise ShapeError(
                    "Concatenate needs equal shapes except on the concatenation axis; "
                    "received " + " and ".join(shape_str(s) for s in inputs),
                    hint="make the branches downsample alike",
                )
    total = None if any(s[ax] is None for s in inputs) else sum(s[ax] for s in inputs)
    text = " + ".join(str(s[ax]) for s in inputs) + f" = {total}"
    out = first[:ax] + (total,) + first[ax + 1 :]
    return LayerOut(out, calcs=[DimCalc("C" if ax == rank - 1 else f"axis {a.axis}", text, total)])


Rule = Callable[[list[Shape], Any], LayerOut]


@dataclass
class Field:
    """Receptive field (in input pixels) and cumulative stride (jump) per spatial axis."""

    size: tuple[int, int] = (1, 1)
    jump: tuple[int, int] = (1, 1)
    whole: bool = False

    def after(self, out: LayerOut) -> Field:
        """The field after a layer; ``r' = r + (k - 1) * j`` and ``j' = j * s``."""
        if out.global_pool:
            return Field(self.size, self.jump, True)
        if out.kernel is None:
            return self
        size = tuple(
            r + (k - 1) * j for r, k, j in zip(self.size, out.kernel, self.jump, strict=True)
        )
        jump = tuple(j * s for j, s in zip(self.jump, out.stride or (1, 1), strict=True))
        return Field(size, jump, self.whole)  # type: ignore[arg-type]

    @staticmethod
    def merge(fields: list[Field]) -> Field:
        size = tuple(max(f.size[i] for f in fields) for i in range(2))
        jump = tuple(max(f.jump[i] for f in fields) for i in range(2))
        return Field(size, jump, any(f.whole for f in fields))  # type: ignore[arg-type]

    def text(self) -> str:
        if self.whole:
            return "whole image"
        return f"{self.size[0]}x{self.size[1]}"


def numel(shape: Shape) -> int:
    """Elements in one sample of ``shape`` (free sizes count 0)."""
    return math.prod(d or 0 for d in shape)
