"""Evaluation on a test set: a run's best model or a bare ``.keras`` file, checked against
the data before anything runs; loss, accuracy, per-class accuracy and the confusion matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from cnnbuild.backend import keras_module
from cnnbuild.builder import make_loss
from cnnbuild.catalog import one_hot_classes
from cnnbuild.data import Data
from cnnbuild.errors import DataError, UsageError, shape_str
from cnnbuild.io import os_errors, write_json
from cnnbuild.runs import (
    Target,
    class_names,
    load_data,
    load_model,
    open_target,
    output_dir,
    output_kind,
    resolve_train,
)
from cnnbuild.train.settings import (
    check_data,
    stdout_console,
)
from cnnbuild.validate import load_config


def check_bare_model(model: Any, path: Path, data: Data) -> None:
    """Refuse a model that cannot score the data: inputs, output rank and units, image size
    and channels.

    Raises:
        DataError: naming what the model has and what the data has.
    """
    where = f"{path}"
    if len(model.inputs) != 1:
        raise DataError(
            f"{where}: the model takes {len(model.inputs)} inputs; evaluate feeds one batch "
            f"of images of shape {shape_str(data.image_shape)}"
        )
    if len(model.outputs) != 1:
        raise DataError(
            f"{where}: the model has {len(model.outputs)} outputs; evaluate scores one "
            "output of class scores"
        )
    want = tuple(model.inputs[0].shape[1:])
    have = data.image_shape
    if len(want) != len(have) or any(
        w is not None and w != h for w, h in zip(want, have, strict=False)
    ):
        raise DataError(
            f"{where}: the model takes images of shape {shape_str(want)} but dataset "
            f"{data.name} has images of shape {shape_str(have)}"
        )
    out = tuple(model.outputs[0].shape[1:])
    if len(out) != 1 or out[0] is None:
        raise DataError(
            f"{where}: the model's output has shape {shape_str(out)}; evaluate needs one "
            f"score per class, (units,), for dataset {data.name} ({data.num_classes} classes)"
        )
    units = int(out[0])
    if units == 1 and data.num_classes != 2:
        raise DataError(
            f"{where}: the model has 1 output unit (a binary classifier) but dataset "
            f"{data.name} has {data.num_classes} classes"
        )
    if units != 1 and units != data.num_classes:
        raise DataError(
            f"{where}: the model has {units} output units but dataset {data.name} has "
            f"{data.num_classes} classes"
        )


def evaluate_model(
    model: Any,
    data: Data,
    batch_size: int,
    one_hot: int | None,
    out_dir: Path,
    title: str,
) -> tuple[dict, np.ndarray]:
    """Test loss, accuracy, per-class accuracy; writes ``confusion.png`` into ``out_dir``.

    One output unit is a binary classifier: its score is thresholded at 0.5 when the
    output layer applies a sigmoid (a probability), else at 0.0 (a logit).

    Returns:
        The record (JSON-ready) and the model's outputs on the test images, in order
        (the run's report shows them without predicting again).
    """
    from cnnbuild.charts import confusion
    from cnnbuild.data.pipeline import make_pipeline

    ds = make_pipeline(
        data.x_test,
        data.y_test,
        batch_size=batch_size,
        training=False,
        one_hot=one_hot,
    )
    scores = model.evaluate(ds, verbose=0, return_dict=True)
    outputs = np.asarray(model.predict(ds, verbose=0), dtype=np.float32)
    if outputs.ndim == 2 and outputs.shape[1] > 1:
        predicted = outputs.argmax(axis=1)
    else:
        threshold = 0.5 if output_kind(model).activation == "sigmoid" else 0.0
        predicted = (outputs.reshape(-1) > threshold).astype(int)
    n = data.num_classes
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (data.y_test, np.clip(predicted, 0, n - 1)), 1)
    confusion(matrix, data.class_names, out_dir / "confusion.png", title)
    totals = matrix.sum(axis=1)
    per_class = {
        name: (round(float(matrix[i, i] / totals[i]), 4) if totals[i] else None)
        for i, name in enumerate(data.class_names)
    }
    accuracy = float(np.trace(matrix) / max(matrix.sum(), 1))
    result = {
        "loss": float(scores.get("loss", float("nan"))),
        "accuracy": round(accuracy, 4),
        "per_class": per_class,
        "confusion": matrix.tolist(),
    }
    if data.test_files:
        result["mistakes"] = mistakes(data, predicted)
    return result, outputs


def mistakes(data: Data, predicted: np.ndarray) -> list[dict]:
    """Every wrongly classified test image of a dataset with files: its file, its class
    and the class the model gave it."""
    names = data.class_names
    return [
        {"file": file, "label": names[int(y)], "predicted": names[int(min(p, len(names) - 1))]}
        for file, y, p in zip(data.test_files, data.y_test, predicted, strict=True)
        if int(y) != int(p)
    ]


def check_class_names(opened: Target, data: Data) -> None:
    """Refuse a folder whose class folders are not the run's classes, in the run's order.

    Raises:
        DataError: naming both lists.
    """
    if opened.run_dir is None or not data.test_files:
        return
    names = class_names(opened, data.num_classes)
    if names == [f"class{i}" for i in range(data.num_classes)]:
        return  # the run does not say (no metrics.json)
    if names != data.class_names:
        raise DataError(
            f"{data.source}: its class folders are {', '.join(data.class_names)} but the run "
            f"{opened.run_dir} was trained on {', '.join(names)}; name the class folders "
            "after the run's classes"
        )


def _bare_loss(keras: Any, model: Any) -> Any:
    """The loss of a bare model: binary or sparse categorical cross-entropy, on
    probabilities when its output layer says so, else on logits."""
    outputs = output_kind(model)
    if outputs.binary:
        return keras.losses.BinaryCrossentropy(from_logits=outputs.activation != "sigmoid")
    return keras.losses.SparseCategoricalCrossentropy(from_logits=outputs.activation != "softmax")


def evaluate(
    target: Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    split: str | None = None,
    console: Console | None = None,
    verbose: bool = False,
) -> dict:
    """Evaluate a run directory's best model (or a .keras file) on a test set.

    ``split`` is ``all`` (the default with ``dataset``: every image of a folder, an npz's
    ``x_test``, CIFAR's test set) or ``test`` (the default without: the test split the run
    trained with, ``train.test_split`` of a folder).

    Writes ``evaluation.json`` and ``confusion.png`` into ``<run>/evaluate/`` (or
    ``<model>-evaluate/`` beside a .keras file), never over the run's own files.

    Raises:
        UsageError: the target is neither a run directory nor a .keras file, or is a bare
            .keras file and no ``dataset`` is given.
        DataError: the model does not fit the data, or the data has no test images.
    """
    console = console or stdout_console()
    opened = open_target(target)
    cfg, model_path, out_dir = opened.config, opened.model_path, output_dir(opened, "evaluate")
    if opened.run_dir is not None and cfg is None:
        cfg = load_config(opened.run_dir / "config.yaml")  # says that it is missing
    if opened.run_dir is None and dataset is None:
        raise UsageError(
            f"{target}: a bare .keras file has no dataset; give --dataset (cifar10, "
            "cifar100, shapes, npz:PATH or folder:PATH) for the test images"
        )
    split = split or ("all" if dataset else "test")
    if split not in ("all", "test"):
        raise UsageError(f"--split must be all or test; received {split!r}")
    if split == "all" and dataset is None:
        raise UsageError(
            "--split all goes with --dataset: the run's own dataset holds its training images"
        )
    keras = keras_module(verbose)
    model = load_model(model_path)
    overrides = {"dataset": dataset, "data_dir": data_dir, "limit": limit, "batch_size": batch_size}
    settings = resolve_train(cfg, overrides)
    if len(model.inputs) != 1:
        raise DataError(
            f"{model_path}: the model takes {len(model.inputs)} inputs; evaluate feeds one "
            "batch of images"
        )
    shape = tuple(model.inputs[0].shape[1:])
    data = load_data(shape, settings, quiet=not console.is_terminal, whole=split == "all")
    if not len(data.x_test):
        raise DataError(f"dataset {data.name}: no test images to evaluate on")
    check_class_names(opened, data)
    if cfg is not None:
        check_data(cfg, data)
        loss = make_loss(cfg)
        one_hot = one_hot_classes(cfg.compile.loss, data.num_classes)
    else:
        check_bare_model(model, model_path, data)
        loss = _bare_loss(keras, model)
        one_hot = None
    model.compile(loss=loss)
    with os_errors(out_dir):
        result, _ = evaluate_model(
            model, data, settings.batch_size, one_hot, out_dir, f"{model_path} on {data.name}"
        )
        result.update(
            model=str(model_path), dataset=data.name, split=split, test_images=len(data.x_test)
        )
        write_json(out_dir / "evaluation.json", result)
    return result


def print_evaluation(console: Console, result: dict) -> None:
    from rich.table import Table

    from cnnbuild.escape import rich

    console.print(
        f"{rich(result['model'])} on {rich(result['dataset'])} ({result['test_images']:,} test "
        f"images): test accuracy {result['accuracy']:.4f}  test loss "
        f"{result['loss']:.4f}",
        highlight=False,
    )
    table = Table(title="per-class accuracy")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("images", justify="right")
    for i, (name, acc) in enumerate(result["per_class"].items()):
        table.add_row(
            rich(name), "-" if acc is None else f"{acc:.4f}", f"{sum(result['confusion'][i]):,}"
        )
    console.print(table)
    wrong = result.get("mistakes", [])
    for item in wrong[:10]:
        console.print(
            f"mistake: {rich(item['file'])}: {rich(item['label'])} taken for "
            f"{rich(item['predicted'])}",
            highlight=False,
        )
    if len(wrong) > 10:
        console.print(f"... {len(wrong) - 10} more mistakes in evaluation.json", highlight=False)
