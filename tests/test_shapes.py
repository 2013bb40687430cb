"""The static engine against real Keras layers, over generated argument combinations.

Each case is a one-layer config written as YAML and sent through the whole static path
(parse, schema, expand, trace); the same config is built in Keras. Output shapes and
trainable / non-trainable parameter counts must be equal, and a shape the static engine
rejects must be one Keras rejects too.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnbuild.config import from_document
from cnnbuild.shapes import conv_dim, transpose_dim
from cnnbuild.source import parse_text
from cnnbuild.trace import trace

SETTINGS = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)


def static(input_shape: list, layers: list) -> tuple:
    """(output shape, trainable, non-trainable, errors) from the static engine."""
    text = yaml.safe_dump({"name": "case", "input": input_shape, "layers": layers})
    cfg = from_document(parse_text(text, "case.yaml"))
    assert cfg is not None
    tr = trace(cfg)
    errors = [f for f in cfg.findings + tr.findings if f.severity == "error"]
    if errors:
        return None, None, None, errors
    return tuple(tr.output_shape), tr.trainable, tr.non_trainable, []


def keras_result(input_shape: list, layers: list) -> tuple:
    """(output shape, trainable, non-trainable) from Keras, or the exception it raised."""
    import keras

    from cnnbuild.builder import build_model

    text = yaml.safe_dump({"name": "case", "input": input_shape, "layers": layers})
    cfg = from_document(parse_text(text, "case.yaml"))
    try:
        model = build_model(cfg, compile=False)
    except Exception as exc:  # noqa: BLE001 (any Keras refusal counts)
        return exc
    count = lambda ws: int(sum(np.prod(w.shape) for w in ws))  # noqa: E731
    out = tuple(model.output.shape[1:])
    keras.backend.clear_session(free_memory=False)
    return out, count(model.trainable_weights), count(model.non_trainable_weights)


def agree(input_shape: list, layers: list) -> None:
    shape, trainable, frozen, errors = static(input_shape, layers)
    real = keras_result(input_shape, layers)
    if errors:
        assert isinstance(real, Exception) or any(d is not None and d <= 0 for d in real[0]), (
            f"static engine rejected {layers} ({errors[0].message}) but Keras built {real}"
        )
        return
    assert not isinstance(real, Exception), f"Keras refused {layers}: {real}"
    assert (shape, trainable, frozen) == real, layers


sizes = st.integers(1, 40)
kernels = st.integers(1, 7)
stride = st.integers(1, 4)
padding = st.sampled_from(["valid", "same"])


@st.composite
def conv_cases(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    channels = groups * draw(st.integers(1, 3))
    dilate = draw(st.booleans())
    strides = [1, 1] if dilate else [draw(stride), draw(stride)]
    args = {
        "filters": groups * draw(st.integers(1, 4)),
        "kernel_size": [draw(kernels), draw(kernels)],
        "strides": strides,
        "padding": draw(padding),
        "groups": groups,
        "use_bias": draw(st.booleans()),
        "dilation_rate": [draw(st.integers(1, 3)), draw(st.integers(1, 3))] if dilate else 1,
    }
    return [draw(sizes), draw(sizes), channels], [{"Conv2D": args}]


@st.composite
def depthwise_cases(draw):
    kind = draw(st.sampled_from(["DepthwiseConv2D", "SeparableConv2D"]))
    dilate = draw(st.booleans())
    args = {
        "kernel_size": [draw(kernels), draw(kernels)],
        "strides": 1 if dilate else [draw(stride), draw(stride)],
        "padding": draw(padding),
        "depth_multiplier": draw(st.integers(1, 3)),
        "use_bias": draw(st.booleans()),
    }
    if dilate:
        args["dilation_rate"] = draw(st.integers(1, 3))
    if kind == "SeparableConv2D":
        args["filters"] = draw(st.integers(1, 6))
    return [draw(sizes), draw(sizes), draw(st.integers(1, 5))], [{kind: args}]


@st.composite
def pool_cases(draw):
    kind = draw(st.sampled_from(["MaxPooling2D", "AveragePooling2D"]))
    args = {"pool_size": [draw(kernels), draw(kernels)], "padding": draw(padding)}
    if draw(st.booleans()):
        args["strides"] = [draw(stride), draw(stride)]
    return [draw(sizes), draw(sizes), draw(st.integers(1, 4))], [{kind: args}]


@st.composite
def other_cases(draw):
    shape = [draw(sizes), draw(sizes), draw(st.integers(1, 6))]
    kind = draw(
        st.sampled_from(
            [
                "BatchNormalization",
                "LayerNormalization",
                "ZeroPadding2D",
                "Cropping2D",
                "Dense",
                "Flatten",
                "GlobalAveragePooling2D",
                "GlobalMaxPooling2D",
                "SpatialDropout2D",
                "Resizing",
            ]
        )
    )
    if kind == "BatchNormalization":
        args = {"center": draw(st.booleans()), "scale": draw(st.booleans())}
    elif kind == "LayerNormalization":
        args = {
            "axis": draw(st.sampled_from([-1, [1, 2], [1, 2, 3]])),
            "center": draw(st.booleans()),
            "scale": draw(st.booleans()),
        }
    elif kind == "ZeroPadding2D":
        args = {"padding": draw(st.sampled_from([1, [2, 3], [[0, 1], [2, 0]]]))}
    elif kind == "Cropping2D":
        args = {"cropping": draw(st.sampled_from([0, 1, [2, 0], [[0, 1], [1, 0]]]))}
    elif kind == "Dense":
        args = {"units": draw(st.integers(1, 9)), "use_bias": draw(st.booleans())}
    elif kind in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        args = {"keepdims": draw(st.booleans())}
    elif kind == "Resizing":
        args = {"height": draw(sizes), "width": draw(sizes)}
    else:
        args = {"rate": 0.5} if kind == "SpatialDropout2D" else {}
    return shape, [{kind: args} if args else kind]


@pytest.mark.parametrize(
    "strategy",
    [conv_cases(), depthwise_cases(), pool_cases(), other_cases()],
    ids=["conv", "depthwise-separable", "pooling", "other"],
)
def test_static_engine_agrees_with_keras(strategy):
    @SETTINGS
    @given(strategy)
    def check(case):
        agree(*case)

    check()


@pytest.mark.parametrize(
    ("input_shape", "layer"),
    [
        (
            [32, 32, 3],
            {"Conv2D": {"filters": 8, "kernel_size": 3, "strides": 5}},
        ),  # stride > kernel
        (
            [7, 9, 2],
            {"Conv2D": {"filters": 4, "kernel_size": [3, 5], "strides": 2, "padding": "same"}},
        ),
        (
            [15, 15, 4],
            {
                "Conv2D": {
                    "filters": 6,
                    "kernel_size": 3,
                    "groups": 2,
                    "dilation_rate": 2,
                    "use_bias": False,
                }
            },
        ),
        ([5, 5, 3], {"MaxPooling2D": {"pool_size": 3, "strides": 2, "padding": "same"}}),
        ([6, 6, 3], {"AveragePooling2D": {"pool_size": 7, "padding": "same"}}),
        (
            [9, 4, 3],
            {"DepthwiseConv2D": {"kernel_size": 3, "depth_multiplier": 3, "use_bias": False}},
        ),
        (
            [8, 8, 3],
            {
                "SeparableConv2D": {
                    "filters": 5,
                    "kernel_size": 3,
                    "depth_multiplier": 2,
                    "strides": 3,
                    "padding": "same",
                }
            },
        ),
        ([8, 8, 3], {"BatchNormalization": {"center": False}}),
        ([8, 8, 3], {"BatchNormalization": {"renorm": True}}),
        ([8, 8, 3], {"Dense": {"units": 4}}),
        ([1, 1, 16], {"Conv2DTranspose": {"filters": 8, "kernel_size": 4}}),  # DCGAN's start
        (
            [7, 5, 3],
            {
                "Conv2DTranspose": {
                    "filters": 2,
                    "kernel_size": 3,
                    "strides": [2, 3],
                    "padding": "same",
                    "output_padding": [1, 0],
                }
            },
        ),
        ([7, 5, 3], {"UpSampling2D": {"size": [3, 2], "interpolation": "bilinear"}}),
        ([7, 5, 3], {"Reshape": {"target_shape": [5, -1]}}),
        ([7, 5, 3], {"Normalization": {"axis": None}}),
        ([7, 5, 3], {"Normalization": {"axis": [-3, -2, -1]}}),
        ([7, 5, 3], {"Rescaling": {"scale": [1, 2, 3], "offset": [0.5, 0, -1]}}),
        ([None, None, 4], {"GroupNormalization": {"groups": 2}}),  # free sizes: fine
        ([None, None, 4], {"PReLU": {"shared_axes": [1, 2]}}),
        ([None, 5, 4], {"Permute": {"dims": [2, 1, 3]}}),
        ([None, None, 3], {"CenterCrop": {"height": 4, "width": 4}}),
        ([7, 5, 3], {"Softmax": {"axis": [-3, 0]}}),
        ([7, 5, 6], {"Conv2D": {"filters": 4, "kernel_size": 3, "groups": 2, "lora_rank": 3}}),
        ([1, 1, 9], {"Dense": {"units": 4, "lora_rank": 2, "trainable": False}}),
    ],
)
def test_table_of_edge_cases(input_shape, layer):
    agree(input_shape, [layer])


def test_invalid_shapes_are_rejected_by_both():
    for layers in (
        [{"Conv2D": {"filters": 1, "kernel_size": 5}}],
        [{"MaxPooling2D": {"pool_size": 4}}],
        [{"Cropping2D": {"cropping": 2}}],
    ):
        shape, _, _, errors = static([3, 3, 1], layers)
        assert errors and errors[0].rule == "shape"
        agree([3, 3, 1], layers)


@pytest.mark.parametrize(
    ("input_shape", "layer", "message"),
    [
        ([None, None, 3], {"PReLU": {}}, "PReLU needs a known size on every axis"),
        ([4, 4, 3], {"PReLU": {"shared_axes": 4}}, "names axis 4"),
        ([4, 4, 6], {"GroupNormalization": {"groups": 4}}, "groups=4 must divide the 6"),
        ([4, 4, 3], {"GroupNormalization": {"groups": 4}}, "groups=4 must divide the 3"),
        ([4, 4, 3], {"Softmax": {"axis": 4}}, "Softmax axis=4 is out of range"),
        ([4, 4, 3], {"UnitNormalization": {"axis": [1, -5]}}, "axis=-5 is out of range"),
    ],
)
def test_new_layers_refuse_what_keras_cannot_build(input_shape, layer, message):
    """Each refusal names the argument and says why; Keras refuses the same model when it
    builds it or, for an axis out of range, the first time it runs it."""
    _, _, _, errors = static(input_shape, [layer])
    assert [e.rule for e in errors] == ["shape"] and message in errors[0].message
    import keras

    kind, args = next(iter(layer.items()))
    shape = [4 if d is None else d for d in input_shape]
    with pytest.raises(Exception):  # noqa: B017 - ValueError, IndexError or a TF error
        built = getattr(keras.layers, kind)(**args)
        built(keras.Input(shape=input_shape))
        built(np.zeros((1, *shape), "float32"))


@pytest.mark.parametrize(
    ("args", "text"),
    [
        ((32, 3, 1, "valid"), "(32 - 3) // 1 + 1 = 30"),
        ((32, 3, 2, "same"), "ceil(32 / 2) = 16"),
        ((10, 3, 1, "valid", 2), "(10 - 5) // 1 + 1 = 6"),
    ],
)
def test_dimension_arithmetic_is_shown(args, text):
    calc = conv_dim(*args)
    assert text in calc.text


@pytest.mark.parametrize(
    ("args", "text", "value"),
    [
        ((16, 3, 2, "same", None), "16 * 2 = 32", 32),
        ((16, 3, 2, "valid", None), "(16 - 1) * 2 + 3 + 0 = 33", 33),
        ((16, 1, 3, "valid", None), "(16 - 1) * 3 + 1 + 2 = 48", 48),
        ((16, 4, 2, "same", 1), "(16 - 1) * 2 + 4 % 2 + 1 = 31", 31),
        ((5, 3, 1, "valid", None, 2), "(5 - 1) * 1 + 5 + 0 = 9", 9),
    ],
)
def test_transposed_dimension_arithmetic_is_shown(args, text, value):
    calc = transpose_dim(*args)
    assert (calc.text, calc.value) == (text, value)


def test_receptive_field_and_jump_of_a_known_stack():
    from cnnbuild.config import from_document

    cfg = from_document(
        parse_text(
            yaml.safe_dump(
                {
                    "name": "rf",
                    "input": [32, 32, 3],
                    "layers": [
                        {"Conv2D": {"filters": 4, "kernel_size": 3}},
                        {"MaxPooling2D": {"pool_size": 2}},
                        {"Conv2D": {"filters": 4, "kernel_size": 3}},
                    ],
                }
            ),
            "rf.yaml",
        )
    )
    rows = trace(cfg).rows[1:]  # after input_scaling
    # 3 -> 3 + (2-1)*1 = 4 -> 4 + (3-1)*2 = 8; jumps 1, 2, 2
    assert [(r.field.size, r.field.jump) for r in rows] == [
        ((3, 3), (1, 1)),
        ((4, 4), (2, 2)),
        ((8, 8), (2, 2)),
    ]


def test_stride_keeps_counting_after_a_squeeze_and_excitation_branch():
    """A global-pool branch makes the field the whole image; the stride still multiplies."""
    from cnnbuild.config import from_document

    text = """
name: se
input: [32, 32, 3]
layers:
  - Conv2D: {filters: 8, kernel_size: 3, strides: 2, padding: same, name: features}
  - GlobalAveragePooling2D: {keepdims: true}
  - Dense: {units: 8, activation: sigmoid, name: gate}
  - Multiply: {inputs: [features, gate]}
  - Conv2D: {filters: 8, kernel_size: 3, strides: 2, padding: same}
"""
    tr = trace(from_document(parse_text(text, "se.yaml")))
    assert tr.summary_dict()["receptive_field"] == "whole"
    assert tr.summary_dict()["cumulative_stride"] == [4, 4]
