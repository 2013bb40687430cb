"""The layer registry: one entry per layer kind, with its schema, shape rule and role.

A layer kind is registered once here; validation, the static engine, the JSON Schema,
the builder and the tests all read this table, so a new layer is covered everywhere the
moment it is added.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnbuild import shapes
from cnnbuild.schema import layers as L


@dataclass(frozen=True)
class LayerKind:
    """Everything cnnbuild knows about one Keras layer class.

    Attributes:
        name: the Keras class name, also the YAML key.
        args: the pydantic model of its arguments.
        rule: the static shape rule.
        group: for the README and the rules: conv, pool, dense, norm, ...
        merge: takes a list of inputs (Add, Concatenate, Multiply).
        linear: computes an affine map of its input (for the no-nonlinearity rule).
        augment: a random augmentation layer (active only in training).
        doc: one line for the README's table.
    """

    name: str
    args: type[L.LayerArgs]
    rule: shapes.Rule
    group: str
    doc: str
    merge: bool = False
    augment: bool = False

    @property
    def snake(self) -> str:
        """Keras' automatic layer-name stem (``to_snake_case``): ``Conv2D`` -> ``conv2d``."""
        import re

        name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", self.name)
        return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


REGISTRY: dict[str, LayerKind] = {}


def register(name: str, rule: shapes.Rule, group: str, doc: str, **kw: bool) -> LayerKind:
    kind = LayerKind(name, L.args_model(name), rule, group, doc, **kw)
    REGISTRY[name] = kind
    return kind


register("Conv2D", shapes.conv2d, "conv", "2-D convolution (groups, dilation)")
register(
    "DepthwiseConv2D",
    shapes.depthwise_conv2d,
    "conv",
    "one filter per input channel (depth_multiplier)",
)
register("SeparableConv2D", shapes.separable_conv2d, "conv", "depthwise then 1x1 pointwise")
register("MaxPooling2D", shapes.pooling2d, "pool", "max over each window")
register("AveragePooling2D", shapes.pooling2d, "pool", "mean over each window")
register("GlobalAveragePooling2D", shapes.global_pooling2d, "pool", "mean over height and width")
register("GlobalMaxPooling2D", shapes.global_pooling2d, "pool", "max over height and width")
register("Flatten", shapes.flatten, "reshape", "to one axis")
register("ZeroPadding2D", shapes.zero_padding2d, "reshape", "pad height and width with zeros")
register("Cropping2D", shapes.cropping2d, "reshape", "crop height and width")
register("Dense", shapes.dense, "dense", "fully connected, on the last axis")
register("Dropout", shapes.identity, "regularize", "drops units in training")
register(
    "SpatialDropout2D",
    shapes.spatial_dropout2d,
    "regularize",
    "drops whole feature maps in training",
)
register(
    "BatchNormalization",
    shapes.batch_norm,
    "norm",
    "normalise over the batch; 2 trainable + 2 moving values per channel",
)
register("LayerNormalization", shapes.layer_norm, "norm", "normalise over the given axes")
register("Activation", shapes.identity, "activation", "any Keras activation by name")
register("ReLU", shapes.identity, "activation", "ReLU with max_value, negative_slope, threshold")
register("Rescaling", shapes.identity, "preprocess", "x * scale + offset")
register("Resizing", shapes.resize_to, "preprocess", "resize images to height x width")
register("RandomFlip", shapes.image_identity, "augment", "random flips", augment=True)
register("RandomTranslation", shapes.image_identity, "augment", "random shifts", augment=True)
register(
    "RandomCrop",
    shapes.resize_to,
    "augment",
    "random crop to height x width (centre crop at inference)",
    augment=True,
)
register("RandomRotation", shapes.image_identity, "augment", "random rotations", augment=True)
register("RandomZoom", shapes.image_identity, "augment", "random zoom", augment=True)
register("RandomContrast", shapes.image_identity, "augment", "random contrast", augment=True)
register("Add", shapes.elementwise, "merge", "sum of its inputs (residual connections)", merge=True)
register(
    "Multiply",
    shapes.elementwise,
    "merge",
    "product of its inputs, broadcasting 1-sized axes (squeeze-and-excitation)",
    merge=True,
)
register("Concatenate", shapes.concatenate, "merge", "join its inputs along `axis`", merge=True)

LINEAR_GROUPS = frozenset({"conv", "dense"})
