"""The static engine and the schema against the installed Keras, case by case.

* Shapes, parameters (trainable and not) and MACs of the layers added for issue 8, over
  tables of arguments, each compared with the real Keras layer (MACs on the Keras side
  come from the built layer's own kernels and tensor shapes, not from the static engine).
* Refusals: every constructor check of a supported layer that Keras' own test suite
  exercises (``keras/src/layers/**/*_test.py``, ``assertRaises``), plus the issue's cases,
  runs against Keras and against our validator; both must refuse, or both accept.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cnnbuild.catalog import REGISTRY
from cnnbuild.config import from_document
from cnnbuild.source import parse_text
from cnnbuild.trace import trace
from tests.conftest import recursion_limit

keras = pytest.importorskip("keras")


def _plain(value):
    """YAML-safe: tuples become lists."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _config(kind: str, kwargs: dict, input_shape: tuple) -> tuple:
    layer = {kind: _plain(kwargs)} if kwargs else kind
    text = yaml.safe_dump({"name": "case", "input": list(input_shape), "layers": [layer]})
    cfg = from_document(parse_text(text, "case.yaml"))
    return cfg, (trace(cfg) if cfg is not None and cfg.ok else None)


# -- shapes, parameters and MACs -------------------------------------------------------

SHAPE_CASES = [
    *[
        ("Conv2DTranspose", {"filters": 3, "kernel_size": k, "strides": s, "padding": p}, (h, w, 2))
        for k, s, p, (h, w) in itertools.product(
            (1, 2, 3, 4), (1, 2, 3), ("valid", "same"), ((5, 5), (6, 7))
        )
    ],
    (
        "Conv2DTranspose",
        {"filters": 2, "kernel_size": 3, "strides": 2, "output_padding": 1},
        (5, 6, 3),
    ),
    (
        "Conv2DTranspose",
        {"filters": 2, "kernel_size": [3, 4], "strides": [3, 2], "output_padding": [2, 0]},
        (5, 6, 3),
    ),
    (
        "Conv2DTranspose",
        {"filters": 2, "kernel_size": 4, "strides": 2, "padding": "same", "output_padding": 1},
        (5, 6, 3),
    ),
    ("Conv2DTranspose", {"filters": 4, "kernel_size": 3, "dilation_rate": 2}, (5, 6, 3)),
    ("Conv2DTranspose", {"filters": 4, "kernel_size": 3, "use_bias": False}, (5, 6, 3)),
    ("UpSampling2D", {}, (5, 6, 3)),
    ("UpSampling2D", {"size": [2, 3], "interpolation": "bilinear"}, (5, 6, 3)),
    ("UpSampling2D", {"size": 3, "interpolation": "nearest"}, (1, 1, 4)),
    ("Reshape", {"target_shape": [-1, 3]}, (4, 6, 3)),
    ("Reshape", {"target_shape": [8, 9]}, (4, 6, 3)),
    ("Reshape", {"target_shape": [2, -1, 2, 3]}, (4, 6, 3)),
    ("Normalization", {}, (5, 6, 3)),
    ("Normalization", {"axis": None}, (5, 6, 3)),
    ("Normalization", {"axis": [1, 2]}, (5, 6, 3)),
    ("Normalization", {"axis": [-3, -1]}, (5, 6, 3)),
    ("Normalization", {"mean": [1, 2, 3], "variance": [4, 5, 6]}, (5, 6, 3)),
    ("Normalization", {"mean": 0.5, "variance": 2}, (5, 6, 3)),
    ("Normalization", {"invert": True, "trainable": False}, (5, 6, 3)),
    ("Rescaling", {"scale": [0.5, 0.25, 2], "offset": 1}, (5, 6, 3)),
    ("Rescaling", {"scale": 0.5, "offset": [1, 2, 3]}, (5, 6, 3)),
    ("Rescaling", {"scale": [0.00392156862745098]}, (5, 6, 3)),
    # issue 18: layers strangers use, and lora_rank (Keras' own conv test case: groups 2)
    ("LeakyReLU", {}, (5, 6, 3)),
    ("LeakyReLU", {"negative_slope": 0.1}, (5, 6, 3)),
    ("PReLU", {}, (5, 6, 3)),
    ("PReLU", {"shared_axes": [1, 2]}, (5, 6, 3)),
    ("PReLU", {"shared_axes": 3, "trainable": False}, (5, 6, 3)),
    ("ELU", {"alpha": 0.5}, (5, 6, 3)),
    ("Softmax", {}, (5, 6, 3)),
    ("Softmax", {"axis": 1}, (5, 6, 3)),
    ("Softmax", {"axis": [1, 2]}, (5, 6, 3)),
    ("GroupNormalization", {"groups": 2}, (5, 6, 4)),
    ("GroupNormalization", {"groups": -1, "center": False}, (5, 6, 4)),
    ("GroupNormalization", {"groups": 4}, (5, 6, 4)),
    ("GroupNormalization", {"groups": 3, "axis": 1, "scale": False}, (6, 5, 4)),
    ("UnitNormalization", {}, (5, 6, 3)),
    ("UnitNormalization", {"axis": [1, 2]}, (5, 6, 3)),
    ("GaussianNoise", {"stddev": 0.1}, (5, 6, 3)),
    ("GaussianDropout", {"rate": 0.3, "seed": 1}, (5, 6, 3)),
    ("Permute", {"dims": [2, 1, 3]}, (5, 6, 3)),
    ("Permute", {"dims": [3, 1, 2]}, (5, 6, 3)),
    ("Identity", {}, (5, 6, 3)),
    ("CenterCrop", {"height": 3, "width": 4}, (5, 6, 3)),
    ("CenterCrop", {"height": 8, "width": 7}, (5, 6, 3)),
    ("RandomBrightness", {"factor": 0.2}, (5, 6, 3)),
    ("RandomBrightness", {"factor": [-0.1, 0.3], "value_range": [0, 1]}, (5, 6, 3)),
    ("Conv2D", {"filters": 4, "kernel_size": 3, "lora_rank": 2}, (5, 6, 3)),
    ("Conv2D", {"filters": 6, "kernel_size": 2, "groups": 2, "lora_rank": 2}, (5, 5, 4)),
    ("Conv2D", {"filters": 4, "kernel_size": 3, "lora_rank": 0}, (5, 6, 3)),
    ("Dense", {"units": 5, "lora_rank": 3}, (5, 6, 3)),
    ("Dense", {"units": 5, "lora_rank": 2, "lora_alpha": 4, "use_bias": False}, (1, 1, 7)),
]


def _keras_layer_figures(kind: str, kwargs: dict, input_shape: tuple) -> tuple:
    from cnnbuild.builder import keras_macs, layer_kwargs

    cfg, _ = _config(kind, kwargs, input_shape)
    node = next(n for n in cfg.nodes if n.name != "input_scaling")
    layer = REGISTRY[node.kind].make(keras, layer_kwargs(node))
    inp = keras.Input(shape=input_shape)
    keras.Model(inp, layer(inp))

    def count(weights):
        return int(sum(np.prod(w.shape) for w in weights))

    return (
        tuple(layer.output.shape[1:]),
        count(layer.trainable_weights),
        count(layer.non_trainable_weights),
        keras_macs(layer),
    )


@pytest.mark.parametrize(("kind", "kwargs", "input_shape"), SHAPE_CASES, ids=str)
def test_static_figures_equal_keras(kind, kwargs, input_shape):
    _, tr = _config(kind, kwargs, input_shape)
    assert tr is not None and not tr.findings, tr and [f.format() for f in tr.findings]
    ours = (tr.output_shape, tr.trainable, tr.non_trainable, tr.macs)
    assert ours == _keras_layer_figures(kind, kwargs, input_shape)


ISSUE_18_LAYERS = {
    "LeakyReLU",
    "PReLU",
    "ELU",
    "Softmax",
    "GroupNormalization",
    "UnitNormalization",
    "GaussianNoise",
    "GaussianDropout",
    "Permute",
    "Identity",
    "CenterCrop",
    "RandomBrightness",
}


def test_shape_cases_cover_every_new_layer():
    assert {"Conv2DTranspose", "UpSampling2D", "Reshape", "Normalization", "Rescaling"} <= {
        kind for kind, _, _ in SHAPE_CASES
    }
    assert {kind for kind, _, _ in SHAPE_CASES} >= ISSUE_18_LAYERS
    assert ISSUE_18_LAYERS - {"Identity"} <= {kind for kind, _, _ in REFUSALS}  # no args
    assert {kind for kind, a, _ in SHAPE_CASES if "lora_rank" in a} == {"Conv2D", "Dense"}


ALIAS_CASES = [
    ("MaxPool2D", {"pool_size": 2}),
    ("AvgPool2D", {"pool_size": 3, "strides": 1}),
    ("GlobalAvgPool2D", {"keepdims": True}),
    ("GlobalMaxPool2D", {}),
    ("Convolution2D", {"filters": 4, "kernel_size": 3, "strides": 2}),
    ("SeparableConvolution2D", {"filters": 4, "kernel_size": 3, "depth_multiplier": 2}),
]


@pytest.mark.parametrize(("alias", "kwargs"), ALIAS_CASES, ids=str)
def test_a_keras_alias_is_its_class_with_keras_figures(alias, kwargs):
    """An alias is Keras' own second name of one class: the config accepts it, the node
    is the canonical kind (what Keras serialises), and the figures equal the layer that
    Keras builds from the alias."""
    from cnnbuild.builder import keras_macs

    cfg, tr = _config(alias, kwargs, (9, 9, 4))
    assert tr is not None and not tr.findings
    node = cfg.nodes[-1]  # after input_scaling
    assert node.kind != alias and getattr(keras.layers, alias) is getattr(keras.layers, node.kind)
    assert alias in REGISTRY[node.kind].aliases
    layer = getattr(keras.layers, alias)(**kwargs)
    inp = keras.Input(shape=(9, 9, 4))
    keras.Model(inp, layer(inp))
    assert type(layer).__name__ == node.kind
    params = int(sum(np.prod(w.shape) for w in layer.weights))
    assert (tr.output_shape, tr.total_params, tr.macs) == (
        tuple(layer.output.shape[1:]),
        params,
        keras_macs(layer),
    )


def test_every_keras_alias_of_a_registered_class_is_accepted():
    """Every name under which keras.layers exposes a registered class is a kind or an
    alias here, so a Keras alias a user writes is never an unknown layer."""
    from cnnbuild.catalog import ALIASES

    classes = {id(getattr(keras.layers, kind)): kind for kind in REGISTRY}
    found = set()
    for name in dir(keras.layers):
        kind = classes.get(id(getattr(keras.layers, name)))
        if kind is not None and name != kind:
            assert ALIASES.get(name) == kind, name
            found.add(name)
    assert found == set(ALIASES)


def test_keras_macs_counts_a_convolution_by_hand():
    """One 3x3 convolution of 2 channels into 4 on a 5x5 image, valid padding:
    3x3 output positions, each 3*3*2 multiplies per filter."""
    figures = _keras_layer_figures("Conv2D", {"filters": 4, "kernel_size": 3}, (5, 5, 2))
    assert figures[3] == (3 * 3) * (3 * 3 * 2) * 4


@pytest.mark.parametrize(
    ("kind", "kwargs", "input_shape"),
    [
        ("Reshape", {"target_shape": [7, -1]}, (4, 6, 3)),
        ("Reshape", {"target_shape": [5, 5]}, (4, 6, 3)),
        ("Rescaling", {"scale": [1, 2]}, (4, 6, 3)),
        ("Normalization", {"mean": [1, 2], "variance": [1, 1]}, (4, 6, 3)),
    ],
    ids=str,
)
def test_shapes_keras_cannot_take_are_findings(kind, kwargs, input_shape):
    from cnnbuild.builder import layer_kwargs

    cfg, tr = _config(kind, kwargs, input_shape)
    assert [f.rule for f in tr.findings] == ["shape"]
    layer = REGISTRY[kind].make(keras, layer_kwargs(cfg.nodes[-1]))  # after input_scaling
    with pytest.raises(Exception):  # noqa: B017 - Keras raises ValueError or a TF error
        layer(np.zeros((1, *input_shape), "float32"))


# -- refusals ----------------------------------------------------------------------------

IMAGE = (8, 8, 3)
REFUSALS = [
    # relu_test.py
    ("ReLU", {"max_value": -10}, True),
    ("ReLU", {"negative_slope": -10}, True),
    ("ReLU", {"threshold": -10}, True),
    ("ReLU", {"negative_slope": None}, True),
    ("ReLU", {"threshold": None}, True),
    ("ReLU", {"max_value": 6, "negative_slope": 0.1, "threshold": 0.5}, False),
    # conv_test.py
    ("Conv2D", {"filters": 0, "kernel_size": 2}, True),
    ("Conv2D", {"filters": 2, "kernel_size": [1, 0]}, True),
    ("Conv2D", {"filters": 2, "kernel_size": 2, "strides": [1, 0]}, True),
    ("Conv2D", {"filters": 2, "kernel_size": 2, "strides": 2, "dilation_rate": [2, 1]}, True),
    ("Conv2D", {"filters": 2, "kernel_size": 2, "groups": 0}, True),
    ("Conv2D", {"filters": 5, "kernel_size": 2, "groups": 2}, True),
    ("Conv2D", {"filters": 6, "kernel_size": 2, "groups": 3}, False),
    ("Conv2D", {"filters": 2, "kernel_size": 9}, True),  # output size would be zero
    # conv_transpose_test.py
    ("Conv2DTranspose", {"filters": 0, "kernel_size": 2}, True),
    ("Conv2DTranspose", {"filters": 2, "kernel_size": [1, 0]}, True),
    ("Conv2DTranspose", {"filters": 2, "kernel_size": 2, "strides": [1, 0]}, True),
    ("Conv2DTranspose", {"filters": 2, "kernel_size": 2, "strides": 2, "output_padding": 2}, True),
    (
        "Conv2DTranspose",
        {"filters": 2, "kernel_size": 2, "strides": [2, 1], "output_padding": [1, 1]},
        True,
    ),
    (
        "Conv2DTranspose",
        {"filters": 2, "kernel_size": 2, "strides": 2, "dilation_rate": [2, 1]},
        True,
    ),
    ("Conv2DTranspose", {"filters": 2, "kernel_size": 2, "strides": 2, "output_padding": 1}, False),
    # depthwise_conv_test.py, separable_conv_test.py
    ("DepthwiseConv2D", {"kernel_size": 2, "depth_multiplier": 0}, True),
    ("DepthwiseConv2D", {"kernel_size": [1, 0]}, True),
    ("DepthwiseConv2D", {"kernel_size": 2, "strides": [1, 0]}, True),
    ("DepthwiseConv2D", {"kernel_size": 9}, True),
    ("SeparableConv2D", {"filters": 2, "kernel_size": 2, "depth_multiplier": 0}, True),
    ("SeparableConv2D", {"filters": 0, "kernel_size": 2}, True),
    ("SeparableConv2D", {"filters": 2, "kernel_size": [1, 0]}, True),
    ("SeparableConv2D", {"filters": 2, "kernel_size": 2, "strides": [1, 0]}, True),
    ("SeparableConv2D", {"filters": 2, "kernel_size": 9}, True),
    # dense_test.py
    ("Dense", {"units": 0}, True),
    ("Dense", {"units": -1}, True),
    ("Dense", {"units": 2.5}, True),
    # batch_normalization_test.py
    ("BatchNormalization", {"renorm": True, "renorm_clipping": {"random_key": 1.0}}, True),
    ("BatchNormalization", {"renorm": True, "renorm_clipping": {"rmax": 0.0, "rmin": 1.0}}, True),
    ("BatchNormalization", {"renorm": True, "renorm_clipping": {"rmax": 1.0, "dmax": -1.0}}, True),
    (
        "BatchNormalization",
        {"renorm": True, "renorm_clipping": {"rmax": 3.0, "rmin": -1.0, "dmax": 5.0}},
        False,
    ),
    # layer_normalization_test.py
    ("LayerNormalization", {"axis": {"axis": -1}}, True),
    # dropout_test.py
    ("Dropout", {"rate": -0.1}, True),
    ("Dropout", {"rate": 1.1}, True),
    ("Dropout", {"rate": 0.5, "noise_shape": [1, 0, 1]}, True),
    ("Dropout", {"rate": 0.5, "noise_shape": [1, 1.5, 1]}, True),
    ("Dropout", {"rate": 0.5, "noise_shape": "1"}, True),
    ("Dropout", {"rate": 0.5, "noise_shape": [None, 1, 3]}, False),
    # reshape_test.py
    ("Reshape", {"target_shape": [-2, 5]}, True),
    ("Reshape", {"target_shape": [-1, -1, 5]}, True),
    ("Reshape", {"target_shape": [-1, 12]}, False),
    # zero_padding2d_test.py, cropping2d_test.py
    ("ZeroPadding2D", {"padding": [1, 2, 3]}, True),
    ("ZeroPadding2D", {"padding": [[1, 2], [3, 4, 5]]}, True),
    ("ZeroPadding2D", {"padding": [[1, 2], [3, 4]]}, False),
    ("Cropping2D", {"cropping": [1]}, True),
    ("Cropping2D", {"cropping": [1, 2, 3]}, True),
    ("Cropping2D", {"cropping": "1"}, True),
    ("Cropping2D", {"cropping": [[1, 2], [3, 4, 5]]}, True),
    ("Cropping2D", {"cropping": [[1, 2], [3, -4]]}, True),
    ("Cropping2D", {"cropping": [[1, 2], "3"]}, True),
    ("Cropping2D", {"cropping": [[4, 4], [1, 1]]}, True),  # crops the whole height
    ("Cropping2D", {"cropping": [[1, 2], [3, 4]]}, False),
    # normalization_test.py
    ("Normalization", {"mean": 0.5}, True),
    ("Normalization", {"variance": 0.1}, True),
    ("Normalization", {"axis": 4}, True),
    ("Normalization", {"axis": -5}, True),
    ("Normalization", {"mean": [1, 2], "variance": [1, 2, 3]}, True),
    ("Normalization", {"axis": [1, -1]}, False),
    # random_translation_test.py (factors outside [-1, 1])
    ("RandomTranslation", {"height_factor": 1.5, "width_factor": 0.1}, True),
    ("RandomTranslation", {"height_factor": 0.1, "width_factor": -1.2}, True),
    ("RandomTranslation", {"height_factor": [0.5, 1.2], "width_factor": 0.1}, True),
    ("RandomTranslation", {"height_factor": [0.2, 0.1], "width_factor": 1.0}, False),
    # RandomZoom: factors in (-1, 1]
    ("RandomZoom", {"height_factor": -1.0}, True),
    ("RandomZoom", {"height_factor": 1.5}, True),
    ("RandomZoom", {"height_factor": 0.2, "width_factor": [-0.5, 1.0]}, False),
    # RandomRotation, RandomContrast: Keras' base factor rule
    ("RandomRotation", {"factor": 1.5}, True),
    ("RandomRotation", {"factor": [1.5, 2.0]}, True),
    ("RandomRotation", {"factor": [-2.0, -1.5]}, True),
    ("RandomRotation", {"factor": [-0.2, 0.3]}, False),
    ("RandomContrast", {"factor": -0.1}, True),
    ("RandomContrast", {"factor": 1.5}, True),
    ("RandomContrast", {"factor": [0.2, 0.5]}, False),
    # up_sampling2d
    ("UpSampling2D", {"size": 0}, True),
    ("UpSampling2D", {"size": [2, 1]}, False),
    # issue 18: leaky_relu_test.py, prelu_test.py, softmax_test.py, ...
    ("LeakyReLU", {"negative_slope": -0.1}, True),
    ("LeakyReLU", {"negative_slope": None}, True),
    ("LeakyReLU", {"negative_slope": 0.0}, False),
    ("PReLU", {"shared_axes": 4}, True),
    ("PReLU", {"shared_axes": [1, 2], "alpha_initializer": "ones"}, False),
    ("ELU", {"alpha": 0.0}, False),
    ("Softmax", {"axis": 4}, True),
    ("Softmax", {"axis": -5}, True),
    ("Softmax", {"axis": [-1, 1]}, False),
    ("GroupNormalization", {"groups": 0}, True),
    ("GroupNormalization", {"groups": -2}, True),
    ("GroupNormalization", {"groups": 2}, True),  # 3 channels
    ("GroupNormalization", {"groups": 4}, True),  # more groups than channels
    ("GroupNormalization", {"groups": 3}, False),
    ("GroupNormalization", {"groups": -1, "axis": 1}, False),
    ("UnitNormalization", {"axis": "1"}, True),
    ("UnitNormalization", {"axis": [1, 2]}, False),
    ("GaussianNoise", {"stddev": 1.5}, True),
    ("GaussianNoise", {"stddev": -0.1}, True),
    ("GaussianNoise", {"stddev": 1.0}, False),
    ("GaussianDropout", {"rate": 1.1}, True),
    ("GaussianDropout", {"rate": 0.0}, False),
    ("Permute", {"dims": [1, 2]}, True),
    ("Permute", {"dims": [0, 1, 2]}, True),
    ("Permute", {"dims": [1, 1, 2]}, True),
    ("Permute", {"dims": [3, 1, 2]}, False),
    ("CenterCrop", {"height": 4, "width": 12}, False),
    ("CenterCrop", {"height": 4}, True),
    ("RandomBrightness", {"factor": 1.5}, True),
    ("RandomBrightness", {"factor": [1.5, 2.0]}, True),
    ("RandomBrightness", {"factor": 0.2, "value_range": [0, 1, 2]}, True),
    ("RandomBrightness", {"factor": [-0.2, 0.3], "value_range": [1, 0]}, False),
    # lora_rank: Keras freezes the kernel; a kernel constraint is refused
    (
        "Conv2D",
        {"filters": 2, "kernel_size": 2, "lora_rank": 2, "kernel_constraint": "non_neg"},
        True,
    ),
    ("Conv2D", {"filters": 2, "kernel_size": 2, "lora_rank": -1}, True),
    ("Conv2D", {"filters": 2, "kernel_size": 2, "lora_rank": 2, "lora_alpha": 0.5}, False),
    ("Dense", {"units": 2, "lora_rank": 4}, False),
    ("Dense", {"units": 2, "lora_rank": 4, "kernel_constraint": "max_norm"}, True),
    # integers beyond what TensorFlow holds
    ("Conv2D", {"filters": 1, "kernel_size": 2**64, "padding": "same"}, True),
    ("Dense", {"units": 2**64}, True),
    ("MaxPooling2D", {"pool_size": 2**63, "padding": "same"}, True),
]


def _keras_refuses(kind: str, kwargs: dict) -> bool:
    try:
        layer = getattr(keras.layers, kind)(**kwargs)
        layer(keras.Input(shape=IMAGE))  # build: the weights and the static shapes
        layer(np.zeros((1, *IMAGE), "float32"))  # and run once
    except (ValueError, TypeError, OverflowError, IndexError):
        return True
    except Exception as exc:  # TensorFlow's own errors (InvalidArgumentError, ...)
        return "tensorflow" in type(exc).__module__
    return False


@pytest.mark.parametrize(("kind", "kwargs", "refused"), REFUSALS, ids=str)
def test_we_refuse_exactly_what_keras_refuses(kind, kwargs, refused):
    assert _keras_refuses(kind, kwargs) is refused, "the case's expectation is wrong"
    cfg, tr = _config(kind, kwargs, IMAGE)
    ours = (
        cfg is None or not cfg.ok or tr is None or any(f.severity == "error" for f in tr.findings)
    )
    assert ours is refused


def test_refusals_cover_every_issue_case():
    cases = {(k, tuple(sorted(a))) for k, a, r in REFUSALS if r}
    assert ("ReLU", ("threshold",)) in cases
    assert ("RandomTranslation", ("height_factor", "width_factor")) in cases
    assert ("BatchNormalization", ("renorm", "renorm_clipping")) in cases


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        ("Conv2D", {"filters": 1, "kernel_size": 2**31 - 1, "padding": "same"}),
        ("Dense", {"units": 2**31 - 1}),
        ("UpSampling2D", {"size": 2**31 - 1}),
    ],
    ids=str,
)
def test_layers_too_large_to_allocate_are_findings_not_crashes(kind, kwargs):
    """Valid integers, but weights or outputs beyond what one TensorFlow tensor holds
    (Keras would die allocating them, so these are not run against Keras)."""
    cfg, tr = _config(kind, kwargs, IMAGE)
    assert cfg.ok and [f.rule for f in tr.findings] == ["shape"]
    assert "TensorFlow holds" in tr.findings[0].message or "one layer can hold" in (
        tr.findings[0].message
    )


def test_an_integer_learning_rate_beyond_int64_builds(tmp_path):
    from cnnbuild.builder import make_optimizer

    text = yaml.safe_dump(
        {
            "name": "lr",
            "input": [4, 4, 1],
            "layers": ["Flatten", {"Dense": {"units": 2}}],
            "compile": {"optimizer": {"sgd": {"learning_rate": 10**300}}},
        }
    )
    cfg = from_document(parse_text(text, "lr.yaml"))
    assert cfg.ok
    assert float(make_optimizer(cfg).learning_rate) > 0


@pytest.mark.slow
def test_a_1000_layer_stack_builds_saves_and_loads_without_recursion_error(tmp_path):
    """1,000 layers under Python's default recursion limit (1,000): about the depth at
    which Keras fails to load under that limit (tests/test_deep_model.py shows the
    failure, scaled down to a limit of 300)."""
    from cnnbuild.builder import build_model, keras_summary
    from cnnbuild.io import save_model
    from cnnbuild.runs import load_model

    with recursion_limit(1000):
        text = yaml.safe_dump(
            {
                "name": "deep",
                "input": [2, 2, 1],
                "blocks": {"two": {"layers": [{"Dense": {"units": 2}}, "ReLU"]}},
                "layers": [{"two": {"repeat": 500}}],
            }
        )
        cfg = from_document(parse_text(text, "deep.yaml"))
        tr = trace(cfg)
        assert len(cfg.nodes) == 1 + 1000 and not tr.findings  # input_scaling, then the stack
        model = build_model(cfg, compile=False)
        assert len(model.layers) == 1 + 1 + 1000  # the InputLayer, input_scaling, the stack
        assert keras_summary(cfg, model) == tr.to_dict()
        save_model(model, tmp_path / "deep.keras")
        loaded = load_model(tmp_path / "deep.keras")
        x = np.random.default_rng(0).random((3, 2, 2, 1), dtype="float32")
        np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_adapt_normalization_adapts_what_each_layer_receives():
    import tensorflow as tf

    from cnnbuild.builder import adapt_normalization, build_model

    text = yaml.safe_dump(
        {
            "name": "norm",
            "input": [4, 4, 2],
            "layers": [
                {"Rescaling": {"scale": 0.5, "name": "half"}},
                {"Normalization": {"name": "adapted"}},
                {"Normalization": {"mean": 1.0, "variance": 4.0, "name": "given"}},
                "Flatten",
            ],
        }
    )
    cfg = from_document(parse_text(text, "norm.yaml"))
    model = build_model(cfg, compile=False)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 4, 4, 2)).astype("uint8")
    labelled = tf.data.Dataset.from_tensor_slices((images, np.zeros(64))).batch(16)
    assert adapt_normalization(model, labelled) == ["adapted"]
    seen = images.astype("float64") * 0.5  # what the layer receives: after Rescaling
    layer = model.get_layer("adapted")
    np.testing.assert_allclose(
        np.asarray(layer.mean).reshape(-1), seen.mean(axis=(0, 1, 2)), rtol=1e-4
    )
    np.testing.assert_allclose(
        np.asarray(layer.variance).reshape(-1), seen.var(axis=(0, 1, 2)), rtol=1e-3
    )
    out = model.predict(images, verbose=0).reshape(-1, 2)
    expected = ((seen - seen.mean(axis=(0, 1, 2))) / seen.std(axis=(0, 1, 2)) - 1.0) / 2.0
    np.testing.assert_allclose(out, expected.reshape(-1, 2), atol=1e-3)


@st.composite
def _upsampling_case(draw):
    """A transposed convolution, an UpSampling2D or a Reshape on a small image."""
    h, w, c = (draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(1, 4)))
    kind = draw(st.sampled_from(["Conv2DTranspose", "UpSampling2D", "Reshape"]))
    if kind == "UpSampling2D":
        size = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
        return kind, {"size": size}, (h, w, c)
    if kind == "Reshape":
        dims = [h * w, c] if draw(st.booleans()) else [h, w * c]
        if draw(st.booleans()):
            dims[draw(st.integers(0, 1))] = -1
        return kind, {"target_shape": dims}, (h, w, c)
    strides = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    args = {
        "filters": draw(st.integers(1, 4)),
        "kernel_size": [draw(st.integers(1, 5)), draw(st.integers(1, 5))],
        "strides": strides,
        "padding": draw(st.sampled_from(["valid", "same"])),
        "use_bias": draw(st.booleans()),
    }
    if draw(st.booleans()):
        args["output_padding"] = [draw(st.integers(0, s - 1)) for s in strides]
    if strides == [1, 1] and draw(st.booleans()):
        args["dilation_rate"] = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    return kind, args, (h, w, c)


def _assert_case_equals_keras(case: tuple) -> None:
    """Our figures for one generated layer equal Keras', or Keras refuses when we do."""
    kind, kwargs, input_shape = case
    _, tr = _config(kind, kwargs, input_shape)
    assert tr is not None
    if tr.findings:  # the static engine refuses: Keras must refuse too
        try:
            figures = _keras_layer_figures(kind, kwargs, input_shape)
        except Exception:  # ValueError or a TF error
            return
        # or, for a transposed convolution, build an empty output (a dimension of 0),
        # which we refuse by name
        assert 0 in figures[0], (figures, [f.format() for f in tr.findings])
        assert any("would be 0" in f.format() for f in tr.findings), tr.findings
        return
    ours = (tr.output_shape, tr.trainable, tr.non_trainable, tr.macs)
    assert ours == _keras_layer_figures(kind, kwargs, input_shape)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_upsampling_case())
@example(  # found by a fresh clone's CI: Keras builds a 0-wide output here, we refuse it
    (
        "Conv2DTranspose",
        {
            "filters": 1,
            "kernel_size": [1, 2],
            "strides": [1, 2],
            "padding": "same",
            "use_bias": False,
            "output_padding": [0, 0],
        },
        (1, 1, 1),
    )
)
def test_generated_cases_equal_keras(case):
    _assert_case_equals_keras(case)


def test_per_channel_preprocessing_survives_save_and_plain_keras_load(tmp_path):
    from cnnbuild.builder import adapt_normalization, build_model
    from cnnbuild.io import save_model

    text = yaml.safe_dump(
        {
            "name": "pre",
            "input": [3, 3, 3],
            "layers": [
                {"Rescaling": {"scale": [0.5, 0.25, 2.0], "offset": [1, 0, -1]}},
                "Normalization",
                {"Normalization": {"mean": [1, 2, 3], "variance": [1, 4, 9]}},
            ],
        }
    )
    cfg = from_document(parse_text(text, "pre.yaml"))
    model = build_model(cfg, compile=False)
    images = np.random.default_rng(1).integers(0, 256, (32, 3, 3, 3)).astype("float32")
    adapt_normalization(model, images)
    save_model(model, tmp_path / "pre.keras")
    loaded = keras.saving.load_model(tmp_path / "pre.keras")
    np.testing.assert_allclose(
        loaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5
    )
    scaled = images * np.array([0.5, 0.25, 2.0]) + np.array([1, 0, -1])
    standard = (scaled - scaled.mean(axis=(0, 1, 2))) / scaled.std(axis=(0, 1, 2))
    expected = (standard - np.array([1, 2, 3])) / np.array([1, 2, 3])
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-3)


@st.composite
def _new_layer_case(draw):
    """One of the issue-18 layers with generated arguments on a small image: Keras must
    give our figures, or refuse exactly when we do."""
    h, w, c = (draw(st.integers(1, 7)), draw(st.integers(1, 7)), draw(st.integers(1, 6)))
    kind = draw(st.sampled_from(["GroupNormalization", "PReLU", "Permute", "CenterCrop"]))
    if kind == "GroupNormalization":
        args = {"groups": draw(st.sampled_from([-1, 1, 2, 3, 4])), "center": draw(st.booleans())}
    elif kind == "PReLU":
        shared = draw(st.lists(st.integers(1, 3), unique=True, max_size=3))
        args = {"shared_axes": shared} if shared else {}
    elif kind == "Permute":
        args = {"dims": draw(st.permutations([1, 2, 3]))}
    else:
        args = {"height": draw(st.integers(1, 9)), "width": draw(st.integers(1, 9))}
    return kind, args, (h, w, c)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_new_layer_case())
def test_generated_new_layer_cases_equal_keras(case):
    _assert_case_equals_keras(case)
