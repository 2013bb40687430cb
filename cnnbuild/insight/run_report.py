"""``report.html``: one self-contained page about a run (images embedded as base64 PNG,
inline CSS, no JavaScript, nothing fetched from the network).

It holds the config, the summary table, the curves, the confusion matrix, the gradient
flow per layer over the epochs, feature maps and Grad-CAM for a few test images, and the
test images the model got wrong with the most confidence.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from cnnbuild.errors import UsageError
from cnnbuild.io import write_text

REPORT = "report.html"
EXAMPLES = 4
MISTAKES = 8

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;
max-width:1100px;padding:0 1em;color:#222;background:#fff}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.25em .6em}
th{background:#f4f4f4;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}
img{max-width:100%;image-rendering:pixelated}.muted{color:#666}
.cards{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ddd;padding:.5em;
border-radius:4px}.card p{margin:.3em 0;font-size:.9em}.warn{color:#a50}
"""


def png_uri(array_or_path: Any) -> str:
    """A ``data:`` URI of a PNG file or of an image array (uint8)."""
    if isinstance(array_or_path, Path):
        blob = array_or_path.read_bytes()
    else:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.asarray(array_or_path, dtype=np.uint8)).save(buf, format="PNG")
        blob = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(blob).decode("ascii")


def _img(src: str, alt: str) -> str:
    return f'<img src="{src}" alt="{html.escape(alt)}">'


def _figure_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def flow_figure(grads: dict) -> str | None:
    """Gradient norms per layer over the epochs (log scale), as a data URI."""
    epochs = grads.get("epochs") or []
    if not epochs:
        return None
    from cnnbuild.charts import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    xs = [e["epoch"] for e in epochs]
    for name in grads["layers"]:
        weights = [e["layers"].get(name, {}).get("weight_grad_norms", {}) for e in epochs]
        if any(weights):
            axes[0].plot(xs, [max(w.values(), default=np.nan) for w in weights], "-o", label=name)
        outs = [e["layers"].get(name, {}).get("output_grad_norm", np.nan) for e in epochs]
        axes[1].plot(xs, outs, "-o", label=name, markersize=3)
    titles = ("largest weight-gradient norm per layer", "norm of dL/d(output) per layer")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].axhline(grads["thresholds"]["vanishing"], color="red", ls=":", lw=1)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    uri = _figure_uri(fig)
    plt.close(fig)
    return uri


def _summary_table(cfg: Any) -> str:
    from cnnbuild.errors import shape_str
    from cnnbuild.render import human
    from cnnbuild.trace import trace

    data = trace(cfg).to_dict()
    rows = "".join(
        f"<tr><td>{html.escape(layer['name'])}</td><td>{layer['type']}</td>"
        f"<td>{shape_str(layer['output_shape']) if layer['output_shape'] else '?'}</td>"
        f'<td class="n">{layer["params"]:,}</td><td class="n">{human(layer["macs"])}</td></tr>'
        for layer in data["layers"]
    )
    return (
        "<table><tr><th>Layer</th><th>Type</th><th>Output shape</th><th>Params</th>"
        f"<th>MACs</th></tr>{rows}<tr><th>Total</th><th></th><th></th>"
        f'<th class="n">{data["total_params"]:,}</th><th class="n">{human(data["macs"])}</th>'
        "</tr></table>"
    )


def _flow_table(grads: dict) -> str:
    last = grads["epochs"][-1]
    rows = []
    for name in grads["layers"]:
        entry = last["layers"].get(name)
        if entry is None:
            continue
        weights = ", ".join(f"{k} {v:.3g}" for k, v in entry["weight_grad_norms"].items())
        dead = "" if entry["dead_fraction"] is None else f"{entry['dead_fraction']:.0%}"
        rows.append(
            f'<tr><td>{html.escape(name)}</td><td class="n">{entry["output_grad_norm"]:.3g}</td>'
            f'<td>{weights}</td><td class="n">{dead}</td></tr>'
        )
    return (
        f"<p>Epoch {last['epoch']}, on a fixed batch of {grads['batch']} training images "
        f"({html.escape(grads['objective'])}).</p><table><tr><th>Layer</th>"
        "<th>|dL/d out|</th><th>weight gradient norms</th><th>dead ReLU units</th></tr>"
        + "".join(rows)
        + "</table>"
    )


def _upscale(image: np.ndarray, size: int = 96) -> np.ndarray:
    from cnnbuild.insight.show import scale_factor

    image = image.astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    s = scale_factor(min(image.shape[:2]), size)
    return image.repeat(s, axis=0).repeat(s, axis=1)


def _score(value: float | None) -> str:
    """A test score, or "none" when the run had no test images."""
    return "none" if value is None else f"{value:.4f}"


def build_html(run_dir: Path, model: Any, cfg: Any, data: Any, batch_size: int = 256) -> str:
    """The page's HTML text (see the module docstring)."""
    from cnnbuild.insight.show import (
        Loaded,
        conv_layers,
        feature_grid,
        gradcam,
        overlay,
        probabilities,
    )

    name = cfg.name
    metrics = _read_json(run_dir / "metrics.json") or {}
    grads = _read_json(run_dir / "gradients.json")
    config_text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    names = list(data.class_names)
    from cnnbuild.runs import output_kind

    target = Loaded(model, cfg, names, run_dir, output_kind(model, cfg).probabilities)
    x_test = np.asarray(data.x_test, dtype="float32")
    if len(x_test):
        probs = probabilities(target, model.predict(x_test, batch_size=batch_size, verbose=0))
    else:
        probs = np.zeros((0, len(names)))
    predicted = probs.argmax(axis=1)
    parts = [
        f"<h1>{html.escape(name)}</h1>",
        '<p class="muted">'
        + html.escape(
            f"test accuracy {_score(metrics.get('test_accuracy'))} · test loss "
            f"{_score(metrics.get('test_loss'))} · {metrics.get('epochs', '?')} epochs"
            f" · dataset {metrics.get('dataset', data.name)} · {len(x_test):,} test images · "
            f"device {metrics.get('device_name', '?')} · status {metrics.get('status', '?')}"
        )
        + "</p>",
        "<h2>Config</h2><pre>" + html.escape(config_text) + "</pre>",
        "<h2>Summary</h2>" + _summary_table(cfg),
    ]
    for title, file in (("Curves", "curves.png"), ("Confusion matrix", "confusion.png")):
        if (run_dir / file).is_file():
            parts.append(f"<h2>{title}</h2>" + _img(png_uri(run_dir / file), title))
    parts.append("<h2>Gradient flow</h2>")
    uri = flow_figure(grads) if grads else None
    if uri is None:
        parts.append('<p class="muted">no gradients.json in this run</p>')
    else:
        parts.append(_img(uri, "gradient norms per layer over the epochs"))
        parts += [
            f'<p class="warn">warning (epoch {w["epoch"]}): {html.escape(w["text"])}</p>'
            for w in grads.get("warnings", [])
        ]
        parts.append(_flow_table(grads))
    convs = conv_layers(model)
    if convs and len(x_test):
        from cnnbuild.builder import keras_module

        keras = keras_module()
        n = min(EXAMPLES, len(x_test))
        first = keras.Model(model.input, convs[0].output)
        maps = np.asarray(first(x_test[:n], training=False), dtype="float32")
        cams, _, _ = gradcam(model, x_test[:n], convs[-1])
        parts.append(
            f"<h2>Feature maps and Grad-CAM</h2><p>Feature maps of {convs[0].name}; heat map "
            f"of {convs[-1].name} for the predicted class (HiResCAM: gradient times "
            "activation at each position, the element-wise form of Grad-CAM).</p>"
        )
        for i in range(n):
            caption = (
                f"test image {i}: true {names[data.y_test[i]]}, predicted "
                f"{names[predicted[i]]} ({probs[i, predicted[i]]:.2f})"
            )
            parts.append(
                '<div class="cards"><div class="card">'
                + _img(png_uri(_upscale(x_test[i])), f"test image {i}")
                + f"<p>{html.escape(caption)}</p></div>"
                + '<div class="card">'
                + _img(png_uri(overlay(x_test[i].astype(np.uint8), cams[i])), "Grad-CAM")
                + "<p>heat map (HiResCAM)</p></div>"
                + '<div class="card">'
                + _img(png_uri(feature_grid(maps[i])), "feature maps")
                + f"<p>{convs[0].name}</p></div></div>"
            )
    parts.append("<h2>Most confidently misclassified</h2>")
    wrong = np.flatnonzero(predicted != data.y_test)
    if not len(wrong):
        parts.append("<p>no test image is misclassified</p>")
    else:
        order = wrong[np.argsort(-probs[wrong, predicted[wrong]])][:MISTAKES]
        cards = []
        for i in order:
            caption = (
                f"#{i}: true {names[data.y_test[i]]}, predicted {names[predicted[i]]} "
                f"({probs[i, predicted[i]]:.2f})"
            )
            cards.append(
                '<div class="card">'
                + _img(png_uri(_upscale(x_test[i])), caption)
                + f"<p>{html.escape(caption)}</p></div>"
            )
        parts.append('<div class="cards">' + "".join(cards) + "</div>")
    body = "\n".join(parts)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(name)}: cnnbuild run report</title><style>{STYLE}</style>"
        f"</head><body>\n{body}\n</body></html>\n"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_report(
    run_dir: Path, *, model: Any = None, cfg: Any = None, data: Any = None, verbose: bool = False
) -> Path:
    """Write ``run_dir/report.html``; what is not given is loaded from the run directory.

    Raises:
        UsageError: ``run_dir`` is not a run directory.
    """
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "model.keras").is_file():
        raise UsageError(
            f"{run_dir}: not a finished run directory (it needs config.yaml and model.keras)"
        )
    from cnnbuild.builder import keras_module

    keras_module(verbose)
    if cfg is None:
        from cnnbuild.validate import load_config

        cfg = load_config(run_dir / "config.yaml")
    if model is None:
        from cnnbuild.runs import load_model

        model = load_model(run_dir / "model.keras")
    if data is None:
        from cnnbuild.runs import load_data, resolve_train

        data = load_data(cfg.input_shape, resolve_train(cfg, {}), quiet=True)
    path = run_dir / REPORT
    write_text(path, build_html(run_dir, model, cfg, data))
    return path
