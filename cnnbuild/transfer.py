"""``init:`` checked statically: the source of the starting weights exists, is a model,
and its layers' weights fit the config's layers of the same name. No TensorFlow: a run
directory's or ``.keras`` file's weights are read with h5py from ``model.weights.h5``,
their layers named from ``config.json``.

The weights themselves are copied by :func:`cnnbuild.runs.apply_init`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import zipfile
from pathlib import Path
from typing import Any

from cnnbuild.config import ModelConfig
from cnnbuild.errors import Finding, shape_str, suggest
from cnnbuild.io import zip_member
from cnnbuild.trace import Trace

APPLICATIONS = (
    "ConvNeXtBase", "ConvNeXtLarge", "ConvNeXtSmall", "ConvNeXtTiny", "ConvNeXtXLarge",
    "DenseNet121", "DenseNet169", "DenseNet201",
    "EfficientNetB0", "EfficientNetB1", "EfficientNetB2", "EfficientNetB3",
    "EfficientNetB4", "EfficientNetB5", "EfficientNetB6", "EfficientNetB7",
    "EfficientNetV2B0", "EfficientNetV2B1", "EfficientNetV2B2", "EfficientNetV2B3",
    "EfficientNetV2L", "EfficientNetV2M", "EfficientNetV2S",
    "InceptionResNetV2", "InceptionV3", "MobileNet", "MobileNetV2",
    "MobileNetV3Large", "MobileNetV3Small", "NASNetLarge", "NASNetMobile",
    "ResNet101", "ResNet101V2", "ResNet152", "ResNet152V2", "ResNet50", "ResNet50V2",
    "VGG16", "VGG19", "Xception",
)  # fmt: skip
"""The models of ``keras.applications`` (Keras 3), which ``init: {from:
keras.applications.NAME, weights: imagenet}`` may name."""

MAX_WEIGHTS_FILE = 4 * 1024**3


def source_path(cfg: ModelConfig) -> Path:
    """The file or folder ``init.from`` names; a relative path is relative to the
    config file's folder."""
    path = Path(cfg.init.source).expanduser()
    return path if path.is_absolute() else Path(cfg.file).parent / path


def model_file(path: Path) -> Path:
    """The ``.keras`` file of a source: a run directory's best model, or the file itself.

    Raises:
        ValueError: the message saying why ``path`` is not a model.
    """
    if path.is_dir():
        best = path / "model.keras"
        if not best.is_file():
            raise ValueError(f"{path} holds no model.keras; is it a run directory?")
        return best
    if not path.exists():
        raise ValueError(f"{path} does not exist")
    if path.suffix != ".keras":
        raise ValueError(f"{path} is neither a run directory nor a .keras file")
    return path


def _snake(name: str) -> str:
    """Keras' ``to_snake_case``: how ``model.weights.h5`` names a layer's group."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    return name


def saved_weight_shapes(path: Path) -> dict[str, list[tuple]]:
    """The weight shapes of each layer of a ``.keras`` file with weights, by layer name.

    Raises:
        ValueError: not a ``.keras`` archive with ``config.json`` and its weights.
    """
    import h5py

    try:
        with open(path, "rb") as file, zipfile.ZipFile(file) as archive:
            tree = json.loads(archive.read("config.json"))
            info = archive.getinfo("model.weights.h5")
            if info.file_size > MAX_WEIGHTS_FILE:
                raise ValueError(f"{path}: its weights declare {info.file_size:,} bytes")
            layers = tree["config"]["layers"]
            # the h5 metadata, read in place: never the weights themselves
            with zip_member(file, archive, info) as member, h5py.File(member, "r") as h5:
                return _shapes_by_name(layers, h5)
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, OSError) as exc:
        raise ValueError(f"{path} is not a .keras model with its weights ({exc})") from None


def _shapes_by_name(layers: list[dict], h5: Any) -> dict[str, list[tuple]]:
    """Layer name -> weight shapes: Keras saves the layers in order, each group named
    after its class in snake case (``conv2d``, ``conv2d_1``...)."""
    group = h5["layers"]
    seen: dict[str, int] = {}
    out: dict[str, list[tuple]] = {}
    for layer in layers:
        if layer.get("class_name") == "InputLayer":
            continue
        stem = _snake(layer["class_name"])
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        key = stem if count == 0 else f"{stem}_{count}"
        if key not in group or "vars" not in group[key]:
            continue
        variables = group[key]["vars"]
        shapes = [tuple(variables[str(i)].shape) for i in range(len(variables))]
        if shapes:
            out[layer["config"]["name"]] = shapes
    return out


def init_findings(cfg: ModelConfig, tr: Trace | None) -> list[Finding]:
    """What ``validate`` says about ``init:``: a source that is missing or not a model,
    and layers whose weights cannot take the source's (unless ``skip_mismatch``)."""
    init = cfg.init
    if init is None:
        return []
    doc = cfg.doc
    where = ("init", "from")
    if init.application is not None:
        if init.application in APPLICATIONS:
            return []
        message = (
            f"keras.applications has no model {init.application!r}"
            f"{suggest(init.application, APPLICATIONS)}"
        )
        return [doc.finding(where, message)]
    try:
        path = model_file(source_path(cfg))
    except ValueError as exc:
        return [doc.finding(where, str(exc))]
    if importlib.util.find_spec("h5py") is None:  # the light install: the source is there
        return []  # and a model; its weights' shapes need the train extra's h5py
    try:
        shapes = saved_weight_shapes(path)
    except ValueError as exc:
        return [doc.finding(where, str(exc))]
    if tr is None or init.skip_mismatch:
        return []
    findings = []
    for row in tr.rows:
        there = shapes.get(row.node.name)
        if there is None or row.out is None:
            continue
        theirs = sum(math.prod(s) for s in there)
        if theirs != row.out.params:
            findings.append(
                doc.finding(
                    row.node.path,
                    f"init: layer {row.node.name!r} holds {row.out.params:,} weights here, "
                    f"but {init.source}'s holds {theirs:,} "
                    f"({', '.join(shape_str(s) for s in there)}); change the layer, or set "
                    "init.skip_mismatch: true to start it afresh",
                    prefer="key",
                )
            )
    return findings
