"""The layer registry against Keras itself: names, arguments, defaults, and name lists.

These iterate over the registry, so a layer added to it is checked the moment it exists.
"""

from __future__ import annotations

import inspect

import pytest
import yaml

from cnnbuild import shapes
from cnnbuild.catalog import LOSSES, REGISTRY, register, register_loss
from cnnbuild.config import from_document
from cnnbuild.schema.types import ACTIVATIONS, CONSTRAINTS, INITIALIZERS, REGULARIZERS
from cnnbuild.source import parse_text
from cnnbuild.trace import trace

keras = pytest.importorskip("keras")

# Keras arguments YAML configs deliberately leave out (not CNN-training settings).
NOT_EXPOSED = {"Dense": {"quantization_config"}}
COMMON = {"name", "trainable", "dtype"}

# one valid use of every registered layer, on a (12, 12, 4) input
SAMPLE = {
    "Conv2D": {"filters": 3, "kernel_size": 3},
    "DepthwiseConv2D": {"kernel_size": 3},
    "SeparableConv2D": {"filters": 3, "kernel_size": 3},
    "AveragePooling2D": {"pool_size": 2},
    "Dense": {"units": 3},
    "Dropout": {"rate": 0.1},
    "SpatialDropout2D": {"rate": 0.1},
    "Activation": {"activation": "gelu"},
    "Rescaling": {"scale": 0.5},
    "Conv2DTranspose": {"filters": 3, "kernel_size": 3, "strides": 2},
    "Reshape": {"target_shape": [-1, 4]},
    "Resizing": {"height": 8, "width": 6},
    "RandomTranslation": {"height_factor": 0.1, "width_factor": 0.1},
    "RandomCrop": {"height": 8, "width": 8},
    "RandomRotation": {"factor": 0.1},
    "RandomZoom": {"height_factor": 0.1},
    "RandomContrast": {"factor": 0.1},
    "GroupNormalization": {"groups": 2},
    "GaussianNoise": {"stddev": 0.1},
    "GaussianDropout": {"rate": 0.1},
    "Permute": {"dims": [2, 1, 3]},
    "CenterCrop": {"height": 8, "width": 8},
    "RandomBrightness": {"factor": 0.1},
}


def _signature(kind: str) -> inspect.Signature:
    return inspect.signature(getattr(keras.layers, kind).__init__)


def _base_arguments(kind: str) -> set[str]:
    """Arguments a Keras class passes on to its base classes' constructors
    (Conv2D's ``lora_rank`` is BaseConv's)."""
    out: set[str] = set()
    for cls in getattr(keras.layers, kind).__mro__[1:]:
        if cls is keras.layers.Layer:
            break
        if "__init__" in vars(cls):
            out |= set(inspect.signature(cls.__init__).parameters)
    return out


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_arguments_are_keras_own(kind):
    params = set(_signature(kind).parameters) - {"self", "kwargs"}
    ours = set(REGISTRY[kind].args.model_fields)
    keras_args = params | _base_arguments(kind)
    assert ours - COMMON <= keras_args, f"{kind}: not Keras arguments: {ours - COMMON - params}"
    assert params - ours <= NOT_EXPOSED.get(kind, set()), (
        f"{kind}: Keras arguments missing from the schema: {params - ours}"
    )


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_defaults_are_keras_defaults(kind):
    model = REGISTRY[kind].args
    for name, param in _signature(kind).parameters.items():
        field = model.model_fields.get(name)
        if field is None or field.is_required() or param.default is inspect.Parameter.empty:
            continue
        keras_default = param.default
        if isinstance(keras_default, tuple):
            keras_default = list(keras_default)
        if name.endswith("_initializer") and isinstance(keras_default, str):
            keras_default = keras_default.lower()  # PReLU's "Zeros" is "zeros"
        required = {f: SAMPLE[kind][f] for f in SAMPLE.get(kind, {})}
        normalised = model.model_validate({**required, name: keras_default})
        assert getattr(normalised, name) == field.default, (
            f"{kind}.{name}: ours {field.default!r}, Keras {param.default!r}"
        )


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_every_layer_builds_and_matches_the_static_engine(kind):
    from cnnbuild.builder import build_model

    args = SAMPLE.get(kind)
    if REGISTRY[kind].merge:
        layers = [
            {"Conv2D": {"filters": 4, "kernel_size": 1, "name": "a"}},
            {kind: {"inputs": ["input", "a"]}},
        ]
    else:
        layers = [{kind: args} if args else kind]
    text = yaml.safe_dump({"name": "one", "input": [12, 12, 4], "layers": layers})
    cfg = from_document(parse_text(text, "one.yaml"))
    assert cfg is not None and cfg.ok, [f.format() for f in cfg.findings]
    tr = trace(cfg)
    assert not tr.findings
    model = build_model(cfg, compile=False)
    assert tuple(model.output.shape[1:]) == tr.output_shape
    assert model.count_params() == tr.total_params
    from cnnbuild.builder import keras_summary

    assert keras_summary(cfg, model) == tr.to_dict()


def test_a_layer_kind_registers_once():
    with pytest.raises(ValueError, match="'Conv2D' is already registered"):
        register("Conv2D", shapes.conv2d, "conv", "again")
    with pytest.raises(ValueError, match="'huber' is already registered"):
        register_loss("huber", "Huber", logits=False, labels="one_hot")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_is_a_keras_loss_taking_from_logits_as_described(name):
    import inspect as _inspect

    spec = LOSSES[name]
    cls = getattr(keras.losses, spec.keras_class)
    assert keras.losses.get(name) is not None
    assert ("from_logits" in _inspect.signature(cls.__init__).parameters) is spec.logits
    assert type(keras.losses.get(name)).__name__ in (spec.keras_class, "function")


def test_activation_names_resolve_in_keras():
    for name in ACTIVATIONS:
        assert keras.activations.get(name) is not None, name


@pytest.mark.parametrize(
    ("names", "arg"),
    [
        (INITIALIZERS, "kernel_initializer"),
        (REGULARIZERS, "kernel_regularizer"),
        (CONSTRAINTS, "kernel_constraint"),
    ],
)
def test_every_listed_name_builds_through_the_builder(names, arg):
    from cnnbuild.builder import make_layer

    for name in names:
        text = yaml.safe_dump(
            {"name": "n", "input": [2, 2, 4], "layers": [{"Dense": {"units": 2, arg: name}}]}
        )
        cfg = from_document(parse_text(text, "n.yaml"))
        assert cfg is not None and cfg.ok, name
        layer = make_layer(cfg.nodes[-1])
        layer.build((None, 2, 2, 4))
        assert getattr(layer, arg) is not None, name


def test_snake_names_are_keras_automatic_names():
    for kind, entry in REGISTRY.items():
        layer = getattr(keras.layers, kind)(**SAMPLE.get(kind, {}))
        assert layer.name.rstrip("_0123456789") == entry.snake, kind


@pytest.mark.parametrize(
    ("kinds", "scaled"),
    [
        (["Rescaling", "Conv2D"], True),
        (["Normalization", "Conv2D"], True),
        (["RandomFlip", "Resizing", "Rescaling", "Conv2D"], True),
        (["Conv2D", "Rescaling"], False),
        (["RandomFlip", "Conv2D"], False),
        ([], False),
    ],
)
def test_scales_input_looks_only_at_the_leading_preprocessing(kinds, scaled):
    from cnnbuild.catalog import scales_input

    assert scales_input(kinds) is scaled


def test_kinds_answers_from_the_registry():
    from cnnbuild.catalog import kinds
    from cnnbuild.schema.blocks import MERGES

    assert set(MERGES) == set(kinds(trait="merge")) == {"Add", "Multiply", "Concatenate"}
    assert set(kinds(group="conv")) == {
        "Conv2D",
        "Conv2DTranspose",
        "DepthwiseConv2D",
        "SeparableConv2D",
    }
    assert set(kinds(group="augment", trait="augment")) == set(kinds(trait="augment"))
    with pytest.raises(ValueError, match="unknown trait"):
        kinds(trait="convolutional")


def _affine_at_inference(kind: str) -> bool:
    """Whether Keras' layer maps the midpoint of two inputs to the midpoint of their
    outputs (an affine map), in inference mode, on random values of both signs."""
    import numpy as np

    layer = getattr(keras.layers, kind)(**SAMPLE.get(kind, {}))
    rng = np.random.default_rng(0)
    x, y = (rng.normal(0, 3, (2, 12, 12, 4)).astype("float32") for _ in range(2))
    f = [np.asarray(layer(v, training=False)) for v in (x, y, (x + y) / 2)]
    return bool(np.allclose(f[2], (f[0] + f[1]) / 2, atol=1e-4))


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_lint_traits_hold_for_every_kind(kind, tmp_path):
    """Iterates over the registry, so a new kind is checked the moment it is added:
    a kind marked ``linear`` is affine in Keras (inference) and ``linear-stack`` looks
    through it between two convolutions; an activation is not affine and stops it; and a
    kind Keras finds affine that keeps the feature map must say so (``linear``), unless it
    is input handling (random augmentation, or the input's scaling)."""
    from cnnbuild.catalog import LINEAR_GROUPS
    from cnnbuild.validate import check_file

    entry = REGISTRY[kind]
    if entry.merge or entry.group in LINEAR_GROUPS:  # merges; the rule's own subjects
        return
    affine = _affine_at_inference(kind)
    if entry.linear or entry.group == "activation":
        assert affine is entry.linear, kind
    args = {"Reshape": {"target_shape": [12, 12, 4]}}.get(kind, SAMPLE.get(kind))
    layers = [
        {"Conv2D": {"filters": 4, "kernel_size": 1}},
        {kind: args} if args else kind,
        {"Conv2D": {"filters": 4, "kernel_size": 1, "activation": "relu"}},
        "Flatten",
    ]
    if entry.group in ("augment", "preprocess"):
        layers.insert(0, {"Rescaling": {"scale": 0.5}})
    path = tmp_path / "trait.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "input": [12, 12, 4], "layers": layers}))
    _, tr, findings = check_file(path)
    if not tr.complete:  # it changes the rank: no convolution can follow it
        assert not entry.linear, [f.format() for f in findings]
        return
    stacked = [f for f in findings if f.rule == "linear-stack"]
    assert bool(stacked) is entry.linear, kind
    if affine and not (entry.augment or entry.scaling):
        assert entry.linear, f"{kind} is affine in Keras and keeps the map: mark it linear"


def test_an_alias_registers_once_and_resolves():
    from cnnbuild.catalog import ALIASES, resolve

    assert resolve("MaxPool2D") is REGISTRY["MaxPooling2D"]
    assert resolve("Conv2d") is None
    with pytest.raises(ValueError, match="'MaxPool2D' is already registered"):
        register("MaxPool2D", shapes.pooling2d, "pool", "again")
    assert not set(ALIASES) & set(REGISTRY)


def test_a_model_ending_in_a_softmax_layer_gives_probabilities():
    from cnnbuild.catalog import resolved_compile

    text = yaml.safe_dump(
        {"name": "p", "input": [4, 4, 1], "layers": ["Flatten", {"Dense": {"units": 3}}, "Softmax"]}
    )
    cfg = from_document(parse_text(text, "p.yaml"))
    assert resolved_compile(cfg)["from_logits"] is False


def test_the_json_schema_takes_every_alias_with_its_class_arguments():
    import jsonschema

    from cnnbuild.catalog import ALIASES
    from cnnbuild.schema.jsonschema import json_schema

    validator = jsonschema.Draft7Validator(json_schema())
    for alias, kind in ALIASES.items():
        args = SAMPLE.get(kind, {"filters": 2, "kernel_size": 1} if "Conv" in kind else {})
        good = {"input": [8, 8, 3], "layers": [{alias: args}, alias if not args else "Flatten"]}
        assert list(validator.iter_errors(good)) == [], alias
        bad = {"input": [8, 8, 3], "layers": [{alias: {**args, "no_such_argument": 1}}]}
        assert list(validator.iter_errors(bad)), alias
