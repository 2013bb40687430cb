"""The registry: every layer kind and every loss, each described once.

A layer kind registers here with its schema (the pydantic model of its arguments), its
static shape rule, its Keras factory and its traits; validation, the static engine, the
JSON Schema, the builder, the lint rules and the tests all read this table, so a new
layer is covered everywhere the moment it is added. Losses are described here once
(from_logits capable, the label form the trainer feeds) for lint and trainer alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from cnnbuild import shapes
from cnnbuild.schema import layers as L

Factory = Callable[[Any, dict[str, Any]], Any]
"""``factory(keras, kwargs)`` returns the Keras layer; kwargs already hold Keras values."""


@dataclass(frozen=True)
class LayerKind:
    """Everything cnnbuild knows about one Keras layer class.

    Attributes:
        name: the Keras class name, also the YAML key.
        args: the pydantic model of its arguments.
        rule: the static shape rule.
        group: for the README and the rules: conv, pool, dense, norm, preprocess, ...
        doc: one line for the README's table.
        factory: how the builder makes the Keras layer (default: ``keras.layers.<name>``).
        merge: takes a list of inputs (Add, Concatenate, Multiply): its argument model
            derives from :class:`cnnbuild.schema.layers.MergeArgs`.
        augment: a random augmentation layer (active only in training).
        scaling: rescales pixel values (Rescaling, Normalization): a config whose first
            layers include one gets no automatic ``input_scaling``.
        linear: a fixed linear (affine) map at inference that keeps two convolutions
            around it one linear map (BatchNormalization, Dropout, padding, reshaping):
            lint's ``linear-stack`` looks through it.
        applies: the activation the layer itself applies (``Softmax``: softmax), read
            where an output's activation matters (``from_logits``).
        aliases: other Keras names of the same class (``MaxPool2D``); a config may use
            them, and the model shows the canonical name, as Keras serialises it.
        training: the default of ``training`` in the Keras layer's ``call`` (``True``
            for image preprocessing, ``False`` for dropout and noise), which Keras
            records on every symbolic call; ``None`` when ``call`` has none. A test
            reads it back from each Keras class's signature.
    """

    name: str
    args: type[L.LayerArgs]
    rule: shapes.Rule
    group: str
    doc: str
    factory: Factory | None = None
    merge: bool = False
    augment: bool = False
    scaling: bool = False
    linear: bool = False
    applies: str | None = None
    aliases: tuple[str, ...] = ()
    training: bool | None = None

    @property
    def snake(self) -> str:
        """Keras' automatic layer-name stem (``to_snake_case``): ``Conv2D`` -> ``conv2d``."""
        name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", self.name)
        return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()

    def make(self, keras: Any, kwargs: dict[str, Any]) -> Any:
        """The Keras layer for ``kwargs`` (what :func:`cnnbuild.builder.make_layer` calls)."""
        if self.factory is not None:
            return self.factory(keras, kwargs)
        return getattr(keras.layers, self.name)(**kwargs)


REGISTRY: dict[str, LayerKind] = {}
ALIASES: dict[str, str] = {}
"""Keras' other names for a registered class (``MaxPool2D`` -> ``MaxPooling2D``)."""
TRAITS = ("merge", "augment", "scaling", "linear")


def register(
    name: str,
    rule: shapes.Rule,
    group: str,
    doc: str,
    *,
    args: type[L.LayerArgs] | None = None,
    factory: Factory | None = None,
    applies: str | None = None,
    aliases: tuple[str, ...] = (),
    training: bool | None = None,
    **traits: bool,
) -> LayerKind:
    """Register a layer kind once.

    Args:
        name: the Keras class name.
        rule: its static shape rule (see :mod:`cnnbuild.shapes`).
        group: its group.
        doc: one line for the README.
        args: its argument model; default: the model of the same name in
            :mod:`cnnbuild.schema.layers`.
        factory: how to build it, when not ``keras.layers.<name>(**kwargs)``.
        applies: the activation the layer applies, if it is one (``softmax``).
        aliases: Keras' other names for the class.
        training: the default of ``training`` in its Keras ``call``, if it has one.
        **traits: ``augment``, ``scaling``, ``linear`` (``merge`` follows the args model).

    Returns:
        The registered entry.

    Raises:
        ValueError: ``name`` or an alias is already registered, or a trait is unknown.
    """
    for key in (name, *aliases):
        if key in REGISTRY or key in ALIASES:
            raise ValueError(f"layer kind {key!r} is already registered")
    unknown = set(traits) - set(TRAITS[1:])
    if unknown:
        raise ValueError(f"unknown traits {sorted(unknown)}; traits are {TRAITS[1:]}")
    model = args or L.args_model(name)
    merge = issubclass(model, L.MergeArgs)
    kind = LayerKind(
        name,
        model,
        rule,
        group,
        doc,
        factory,
        merge,
        applies=applies,
        aliases=aliases,
        training=training,
        **traits,
    )
    REGISTRY[name] = kind
    ALIASES.update(dict.fromkeys(aliases, name))
    return kind


def resolve(name: str) -> LayerKind | None:
    """The registry entry a config's layer name means (a Keras alias gives its class),
    or ``None`` for a name Keras' layers do not have here."""
    return REGISTRY.get(ALIASES.get(name, name))


def _words(name: str) -> set[str]:
    return {w.lower() for w in re.findall(r"[A-Z]+[a-z0-9]*|[a-z0-9]+", name)}


INPUT_LAYERS = ("Input", "InputLayer")
"""Keras' input "layers": not kinds; a config gives its input once, as ``input:``."""
INPUT_ARGS = ("input_shape", "batch_input_shape", "input_dim")
"""Keras' ways to give the input on a layer (Sequential's first layer, Keras 2)."""
INPUT_WAY = "give it once, at the top: `input: [height, width, channels]`"


def near_kinds(
    name: str, options: Iterable[str] | None = None, n: int = 1, cutoff: float = 0.6
) -> list[str]:
    """The names ``name`` most likely meant (a typo or a case slip), best first; never one
    that only drops a word of ``name`` (GroupNorm... is not Normalization, a
    preprocessing layer).

    >>> near_kinds("Conv2d")
    ['Conv2D']
    >>> near_kinds("GroupNormalisation")
    ['GroupNormalization']

    Args:
        name: the unknown name.
        options: the names to choose from; default: every kind and alias.
        n: at most this many.
        cutoff: difflib's similarity cutoff.
    """
    from difflib import get_close_matches

    options = list(options if options is not None else (*REGISTRY, *ALIASES))
    folded = [o for o in options if o.lower() == name.lower()]
    close = folded or get_close_matches(name, options, n=n + 5, cutoff=cutoff)
    words = _words(name)
    return [c for c in close if not _words(c) < words][:n]


def kinds(group: str | None = None, trait: str | None = None) -> tuple[str, ...]:
    """The registered kind names of ``group`` and/or with ``trait``, in registry order.

    >>> kinds(trait="merge")
    ('Add', 'Multiply', 'Concatenate')
    >>> kinds(group="conv")
    ('Conv2D', 'Conv2DTranspose', 'DepthwiseConv2D', 'SeparableConv2D')

    Raises:
        ValueError: ``trait`` is not one of :data:`TRAITS`.
    """
    if trait is not None and trait not in TRAITS:
        raise ValueError(f"unknown trait {trait!r}; traits are {TRAITS}")
    return tuple(
        k.name
        for k in REGISTRY.values()
        if (group is None or k.group == group) and (trait is None or getattr(k, trait))
    )


def _list_or_number(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _rescaling(keras: Any, kwargs: dict[str, Any]) -> Any:
    """Per-channel values travel as lists (serialisable in model.keras)."""
    kwargs = {k: _list_or_number(v) if k in ("scale", "offset") else v for k, v in kwargs.items()}
    return keras.layers.Rescaling(**kwargs)


def _normalization(keras: Any, kwargs: dict[str, Any]) -> Any:
    kwargs = {
        k: _list_or_number(v) if k in ("mean", "variance", "axis") else v for k, v in kwargs.items()
    }
    return keras.layers.Normalization(**kwargs)


register(
    "Conv2D",
    shapes.conv2d,
    "conv",
    "2-D convolution (groups, dilation, lora_rank)",
    aliases=("Convolution2D",),
)
register(
    "Conv2DTranspose",
    shapes.conv2d_transpose,
    "conv",
    "transposed convolution: upsamples by strides (output_padding)",
    aliases=("Convolution2DTranspose",),
)
register(
    "DepthwiseConv2D",
    shapes.depthwise_conv2d,
    "conv",
    "one filter per input channel (depth_multiplier)",
)
register(
    "SeparableConv2D",
    shapes.separable_conv2d,
    "conv",
    "depthwise then 1x1 pointwise",
    aliases=("SeparableConvolution2D",),
)
register("MaxPooling2D", shapes.pooling2d, "pool", "max over each window", aliases=("MaxPool2D",))
register(
    "AveragePooling2D",
    shapes.pooling2d,
    "pool",
    "mean over each window",
    aliases=("AvgPool2D",),
    linear=True,
)
register(
    "GlobalAveragePooling2D",
    shapes.global_pooling2d,
    "pool",
    "mean over height and width",
    aliases=("GlobalAvgPool2D",),
)
register(
    "GlobalMaxPooling2D",
    shapes.global_pooling2d,
    "pool",
    "max over height and width",
    aliases=("GlobalMaxPool2D",),
)
register(
    "UpSampling2D",
    shapes.up_sampling2d,
    "reshape",
    "repeat rows and columns (or resize)",
    linear=True,
)
register("Flatten", shapes.flatten, "reshape", "to one axis")
register("Reshape", shapes.reshape, "reshape", "to target_shape (one -1 is inferred)", linear=True)
register("Permute", shapes.permute, "reshape", "reorder the axes (dims, 1-based)", linear=True)
register(
    "ZeroPadding2D",
    shapes.zero_padding2d,
    "reshape",
    "pad height and width with zeros",
    linear=True,
)
register("Cropping2D", shapes.cropping2d, "reshape", "crop height and width", linear=True)
register("Identity", shapes.identity, "reshape", "passes its input on unchanged", linear=True)
register("Dense", shapes.dense, "dense", "fully connected, on the last axis (lora_rank)")
register(
    "Dropout", shapes.identity, "regularize", "drops units in training", linear=True, training=False
)
register(
    "SpatialDropout2D",
    shapes.spatial_dropout2d,
    "regularize",
    "drops whole feature maps in training",
    linear=True,
    training=False,
)
register(
    "GaussianNoise",
    shapes.identity,
    "regularize",
    "adds zero-mean noise (stddev) in training",
    linear=True,
    training=False,
)
register(
    "GaussianDropout",
    shapes.identity,
    "regularize",
    "multiplies by 1-centred noise (rate) in training",
    linear=True,
    training=False,
)
register(
    "BatchNormalization",
    shapes.batch_norm,
    "norm",
    "normalise over the batch; 2 trainable + 2 moving values per channel",
    linear=True,
)
register("LayerNormalization", shapes.layer_norm, "norm", "normalise over the given axes")
register(
    "GroupNormalization",
    shapes.group_norm,
    "norm",
    "normalise groups of channels per image (groups; -1: one per channel)",
)
register("UnitNormalization", shapes.unit_norm, "norm", "scale to unit L2 norm along axis")
register("Activation", shapes.identity, "activation", "any Keras activation by name")
register("ReLU", shapes.identity, "activation", "ReLU with max_value, negative_slope, threshold")
register("LeakyReLU", shapes.identity, "activation", "x, or negative_slope * x below 0")
register("PReLU", shapes.prelu, "activation", "leaky ReLU with a learnt slope per value")
register("ELU", shapes.identity, "activation", "x, or alpha * (exp(x) - 1) below 0")
register("Softmax", shapes.softmax, "activation", "softmax along axis", applies="softmax")
register(
    "Rescaling",
    shapes.rescaling,
    "preprocess",
    "x * scale + offset (a list: one value per channel)",
    factory=_rescaling,
    scaling=True,
)
register(
    "Normalization",
    shapes.normalization,
    "preprocess",
    "(x - mean) / sqrt(variance) per channel; adapted on the training images when not given",
    factory=_normalization,
    scaling=True,
)
register(
    "Resizing",
    shapes.resize_to,
    "preprocess",
    "resize images to height x width",
    linear=True,
    training=True,
)
register(
    "CenterCrop",
    shapes.resize_to,
    "preprocess",
    "crop the centre to height x width (resize when smaller)",
    linear=True,
    training=True,
)
register(
    "RandomFlip", shapes.image_identity, "augment", "random flips", augment=True, training=True
)
register(
    "RandomTranslation",
    shapes.image_identity,
    "augment",
    "random shifts",
    augment=True,
    training=True,
)
register(
    "RandomCrop",
    shapes.resize_to,
    "augment",
    "random crop to height x width (centre crop at inference)",
    augment=True,
    training=True,
)
register(
    "RandomRotation",
    shapes.image_identity,
    "augment",
    "random rotations",
    augment=True,
    training=True,
)
register("RandomZoom", shapes.image_identity, "augment", "random zoom", augment=True, training=True)
register(
    "RandomContrast",
    shapes.image_identity,
    "augment",
    "random contrast",
    augment=True,
    training=True,
)
register(
    "RandomBrightness",
    shapes.image_identity,
    "augment",
    "random brightness shift (factor of value_range)",
    augment=True,
    training=True,
)
register("Add", shapes.elementwise, "merge", "sum of its inputs (residual connections)")
register(
    "Multiply",
    shapes.elementwise,
    "merge",
    "product of its inputs, broadcasting 1-sized axes (squeeze-and-excitation)",
)
register("Concatenate", shapes.concatenate, "merge", "join its inputs along `axis`")

LINEAR_GROUPS = frozenset({"conv", "dense"})
PREPROCESS_GROUPS = frozenset({"preprocess", "augment"})
"""Groups of the layers that may come before the model proper (input handling)."""


def scales_input(kinds: Iterable[str]) -> bool:
    """Whether layers of these kinds, in order from the input, scale the pixels before
    the model proper: a scaling layer (Rescaling, Normalization) among the leading
    preprocessing and augmentation layers. When not, the model gets ``input_scaling``.

    >>> scales_input(["RandomFlip", "Rescaling", "Conv2D"])
    True
    >>> scales_input(["Conv2D", "Rescaling"])
    False
    """
    for kind in kinds:
        entry = REGISTRY.get(kind)
        if entry is None:
            return False
        if entry.scaling:
            return True
        if entry.group not in PREPROCESS_GROUPS:
            return False
    return False


IMPLICIT_DEFAULTS = {"activation": "linear", "data_format": "channels_last", "dtype": "float32"}
"""What an argument left out (``None``) means, where Keras writes the meaning out."""
RUN_POLICIES = frozenset({"mixed_float16", "mixed_bfloat16"})
"""The dtype policies a run records on every layer (``train.mixed_precision``): float32
weights, lower-precision compute; a setting of the run, not of the architecture."""


def comparable_arguments(args: Any) -> dict[str, Any]:
    """A layer's arguments (its argument model) as two configs are compared: JSON values,
    without ``name``, and every value that means the same as leaving the argument out
    written as left out: ``activation: linear``, ``data_format: channels_last``,
    ``dtype: float32`` or a run's mixed policy, and ``strides`` equal to ``pool_size``
    (Keras' pooling default).

    >>> comparable_arguments(L.MaxPooling2D(pool_size=2, strides=2))["strides"] is None
    True
    """
    fields = type(args).model_fields
    out = args.model_dump(mode="json", exclude={"name"})
    for key, meaning in IMPLICIT_DEFAULTS.items():
        if out.get(key) == meaning and fields[key].default is None:
            out[key] = None
    if out.get("dtype") in RUN_POLICIES:
        out["dtype"] = None
    pooled = out.get("strides") is not None and out.get("strides") == out.get("pool_size")
    if pooled and fields["strides"].default is None:
        out["strides"] = None
    return out


# -- losses ------------------------------------------------------------------------------

LABEL_FORMS = ("sparse", "one_hot", "binary")


@dataclass(frozen=True)
class LossSpec:
    """One Keras loss, as lint and trainer need it.

    Attributes:
        name: the YAML name (Keras' function name).
        keras_class: the ``keras.losses`` class.
        logits: takes ``from_logits`` (cross-entropies).
        labels: the label form it compares outputs with: ``sparse`` (integer class
            ids, one output per class), ``one_hot`` (the trainer one-hot encodes the
            class ids, one output per class) or ``binary`` (0/1 labels, one output).
    """

    name: str
    keras_class: str
    logits: bool
    labels: str


LOSSES: dict[str, LossSpec] = {}


def register_loss(name: str, keras_class: str, *, logits: bool, labels: str) -> LossSpec:
    """Describe a loss once.

    Raises:
        ValueError: ``name`` is already described, or ``labels`` is not a label form.
    """
    if name in LOSSES:
        raise ValueError(f"loss {name!r} is already registered")
    if labels not in LABEL_FORMS:
        raise ValueError(f"labels must be one of {LABEL_FORMS}; received {labels!r}")
    spec = LossSpec(name, keras_class, logits, labels)
    LOSSES[name] = spec
    return spec


register_loss(
    "sparse_categorical_crossentropy", "SparseCategoricalCrossentropy", logits=True, labels="sparse"
)
register_loss("categorical_crossentropy", "CategoricalCrossentropy", logits=True, labels="one_hot")
register_loss("binary_crossentropy", "BinaryCrossentropy", logits=True, labels="binary")
register_loss("binary_focal_crossentropy", "BinaryFocalCrossentropy", logits=True, labels="binary")
register_loss(
    "categorical_focal_crossentropy",
    "CategoricalFocalCrossentropy",
    logits=True,
    labels="one_hot",
)
register_loss("categorical_hinge", "CategoricalHinge", logits=False, labels="one_hot")
register_loss("hinge", "Hinge", logits=False, labels="binary")
register_loss("squared_hinge", "SquaredHinge", logits=False, labels="binary")
# the rest compare one output per class with the one-hot encoded class id
register_loss("kl_divergence", "KLDivergence", logits=False, labels="one_hot")
register_loss("poisson", "Poisson", logits=False, labels="one_hot")
register_loss("mean_squared_error", "MeanSquaredError", logits=False, labels="one_hot")
register_loss("mean_absolute_error", "MeanAbsoluteError", logits=False, labels="one_hot")
register_loss("huber", "Huber", logits=False, labels="one_hot")
register_loss("log_cosh", "LogCosh", logits=False, labels="one_hot")

LOSS_NAMES: tuple[str, ...] = tuple(LOSSES)
LOGIT_LOSSES: frozenset[str] = frozenset(n for n, s in LOSSES.items() if s.logits)


def loss_spec(name: str) -> LossSpec:
    """The description of the loss called ``name`` (a name the schema accepted)."""
    return LOSSES[name]


def one_hot_classes(loss: str, num_classes: int) -> int | None:
    """What the trainer passes as ``one_hot`` to the pipeline: the class count when
    ``loss`` wants one-hot labels, else ``None`` (integer labels are fed as they are)."""
    return num_classes if loss_spec(loss).labels == "one_hot" else None


def label_problem(loss: str, classes: int, units: int | None) -> str | None:
    """Why a model output of ``units`` cannot learn ``classes`` integer-labelled classes
    with ``loss`` (fed as the trainer feeds it), or ``None`` when it can.

    Lint (``classes-mismatch``) and the trainer's data check both ask this.
    """
    spec = loss_spec(loss)
    if spec.labels == "binary":
        if classes != 2 or units != 1:
            return (
                f"{loss} is for one yes/no output (2 classes, units: 1); the data has "
                f"{classes} classes and the model outputs {units} value(s); use "
                "sparse_categorical_crossentropy for more than 2 classes"
            )
        return None
    if units != classes:
        return (
            f"the model outputs {units} value(s) per image but the data has {classes} "
            f"classes; the last layer needs units: {classes}"
        )
    return None


PROBABILITY_ACTIVATIONS = frozenset({"softmax", "sigmoid"})


def output_activation(node: Any) -> str | None:
    """The activation a node applies (``None`` for a layer without one)."""
    if node is None or node.args is None:
        return None
    spec = REGISTRY.get(node.kind)
    if spec is not None and spec.applies is not None:
        return spec.applies
    if node.kind == "Activation":
        return node.args.activation
    return getattr(node.args, "activation", None)


def infer_from_logits(node: Any) -> bool:
    """``from_logits`` as the output layer implies: softmax or sigmoid -> false, else true."""
    return output_activation(node) not in PROBABILITY_ACTIVATIONS


def resolved_compile(cfg: Any) -> dict[str, Any]:
    """The compile settings of a config with ``from_logits`` resolved.

    When ``compile.from_logits`` is not written, it follows the output layer (see
    :func:`infer_from_logits`); the builder compiles with this and the trainer writes
    it into the run's ``config.yaml``.

    Args:
        cfg: a :class:`cnnbuild.config.ModelConfig`.

    Returns:
        ``{"optimizer": ..., "loss": ..., "from_logits": bool, "metrics": [...]}``.
    """
    settings = cfg.compile.model_dump()
    if settings["from_logits"] is None:
        node = None if cfg.output == "input" else cfg.node(cfg.output)
        settings["from_logits"] = infer_from_logits(node)
    return settings
