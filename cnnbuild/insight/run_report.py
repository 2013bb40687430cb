"""``report.html``: one self-contained page about a run (images embedded as base64 PNG,
inline CSS, no JavaScript, nothing fetched from the network).

It holds the config, the summary table, the curves, the confusion matrix, the gradient
flow per layer over the epochs, feature maps and Grad-CAM for a few test images, and the
test images the model got wrong with the most confidence.

A run directory may come from someone else, so everything read from it is untrusted:

- the page is rendered by Jinja2 with autoescape on: every value is text, never markup;
- numbers from ``gradients.json`` and ``metrics.json`` are checked as numbers (anything
  else is shown as text, and left out of the chart);
- images are read only as regular PNG files directly inside the run directory, opened
  without following a symbolic link (a symlinked ``curves.png`` is skipped with a note).
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from cnnbuild.errors import UsageError
from cnnbuild.escape import mathtext
from cnnbuild.io import FileRefused, os_errors, write_text
from cnnbuild.io import read_regular as read_bounded

REPORT = "report.html"
EXAMPLES = 4
MISTAKES = 8
FLOW_EPOCHS = 6  # lines of the gradient-flow chart
FLOW_TICKS = 40  # layer names on its axis
MAX_IMAGE_BYTES = 32 * 1024 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

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
.scroll{max-height:560px;overflow:auto}.card img{max-height:240px;width:auto}
"""


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ name }}: cnnbuild run report</title><style>{{ style }}</style></head><body>
<h1>{{ name }}</h1>
<p class="muted">{{ headline }}</p>
<h2>Config</h2><pre class="scroll">{{ config_text }}</pre>
<h2>Summary</h2><div class="scroll">
<table><tr><th>Layer</th><th>Type</th><th>Output shape</th><th>Params</th><th>MACs</th></tr>
{% for row in summary.rows %}<tr><td>{{ row.name }}</td><td>{{ row.type }}</td>
<td>{{ row.shape }}</td><td class="n">{{ row.params }}</td><td class="n">{{ row.macs }}</td></tr>
{% endfor %}<tr><th>Total</th><th></th><th></th><th class="n">{{ summary.params }}</th>
<th class="n">{{ summary.macs }}</th></tr></table></div>
{% for figure in figures %}<h2>{{ figure.title }}</h2>
{% if figure.uri %}<img src="{{ figure.uri }}" alt="{{ figure.title }}">
{% else %}<p class="muted">{{ figure.note }}</p>{% endif %}
{% endfor %}<h2>Gradient flow</h2>
{% if flow is none %}<p class="muted">no gradients.json in this run</p>
{% else %}{% if flow.uri %}<img src="{{ flow.uri }}" alt="gradient norms per layer over the epochs">
{% endif %}{% for w in flow.warnings %}
<p class="warn">warning (epoch {{ w.epoch }}): {{ w.text }}</p>
{% endfor %}<p>Epoch {{ flow.epoch }}, on a fixed batch of {{ flow.batch }} training images
({{ flow.objective }}).</p>
<div class="scroll"><table><tr><th>Layer</th><th>|dL/d out|</th><th>weight gradient norms</th>
<th>dead ReLU units</th></tr>
{% for row in flow.rows %}<tr><td>{{ row.name }}</td><td class="n">{{ row.out }}</td>
<td>{{ row.weights }}</td><td class="n">{{ row.dead }}</td></tr>
{% endfor %}</table></div>{% endif %}
{% if examples %}<h2>Feature maps and Grad-CAM</h2><p>Feature maps of {{ examples.first }};
heat map of {{ examples.last }} for the predicted class (HiResCAM: gradient times activation
at each position, the element-wise form of Grad-CAM).</p>
{% for card in examples.cards %}<div class="cards"><div class="card">
<img src="{{ card.image }}" alt="{{ card.name }}"><p>{{ card.caption }}</p></div>
<div class="card"><img src="{{ card.cam }}" alt="Grad-CAM"><p>heat map (HiResCAM)</p></div>
<div class="card"><img src="{{ card.maps }}" alt="feature maps"><p>{{ examples.first }}</p>
</div></div>
{% endfor %}{% endif %}<h2>Most confidently misclassified</h2>
{% if not mistakes %}<p>no test image is misclassified</p>
{% else %}<div class="cards">{% for card in mistakes %}<div class="card">
<img src="{{ card.image }}" alt="{{ card.caption }}"><p>{{ card.caption }}</p></div>
{% endfor %}</div>{% endif %}
</body></html>
"""


def _uri(blob: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(blob).decode("ascii")


def png_uri(array: Any) -> str:
    """A ``data:`` URI of an image array (uint8)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format="PNG")
    return _uri(buf.getvalue())


def read_regular(path: Path, limit: int) -> tuple[bytes | None, str]:
    """The bytes of ``path`` when it is a regular file of at most ``limit`` bytes, opened
    with ``O_NOFOLLOW`` (a symbolic link is refused); else None and why it was skipped."""
    try:
        return read_bounded(path, limit, follow=False), ""
    except FileRefused as exc:
        if exc.missing:
            return None, f"no {path.name} in this run"
        if exc.os_error is not None:
            return None, f"{path.name} skipped: {exc} (only a regular file is read)"
        if exc.size is not None:
            return None, f"{path.name} skipped: {exc.size:,} bytes (limit {limit:,})"
        return None, f"{path.name} skipped: {exc}"


def run_png(run_dir: Path, name: str) -> tuple[str | None, str]:
    """A PNG file of the run directory as a data URI, or None and why it was skipped.

    Only a regular file directly inside ``run_dir`` is read (:func:`read_regular`: no
    symbolic link, so no file outside the run ends up in the page), at most
    :data:`MAX_IMAGE_BYTES`, and starting with the PNG signature.
    """
    blob, note = read_regular(run_dir / name, MAX_IMAGE_BYTES)
    if blob is None:
        return None, note
    if not blob.startswith(PNG_MAGIC):
        return None, f"{name} skipped: not a PNG file"
    return _uri(blob), ""


def _figure_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return _uri(buf.getvalue())


def number(value: Any) -> float | None:
    """``value`` as a float when it is a JSON number (not a bool, not a string), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def shown(value: Any, spec: str = ".3g") -> str:
    """A number formatted with ``spec``; anything else as its JSON text (escaped later)."""
    x = number(value)
    if x is None:
        return "" if value is None else f"not a number: {json.dumps(value)[:80]}"
    if spec == "d" and x.is_integer():
        return f"{int(x)}"
    return f"{x:{spec}}" if math.isfinite(x) else str(x)


def _entries(grads: dict) -> tuple[list[str], list[dict]]:
    """The layer names and the epoch records of ``gradients.json``, malformed parts dropped."""
    names = [str(n) for n in grads.get("layers") or [] if isinstance(n, (str, int))]
    epochs = [e for e in grads.get("epochs") or [] if isinstance(e, dict)]
    for e in epochs:
        if not isinstance(e.get("layers"), dict):
            e["layers"] = {}
    return names, epochs


def _layer(epoch: dict, name: str) -> dict:
    entry = epoch["layers"].get(name)
    return entry if isinstance(entry, dict) else {}


def _top_weight(entry: dict) -> float:
    """The largest weight-gradient norm of a layer's entry; NaN without weights."""
    norms = entry.get("weight_grad_norms")
    values = [number(v) for v in (norms.values() if isinstance(norms, dict) else [])]
    return max((v for v in values if v is not None), default=np.nan)


def flow_epochs(count: int) -> list[int]:
    """Which of ``count`` epochs the chart draws: at most :data:`FLOW_EPOCHS`, the first
    and the last among them, evenly spaced."""
    return sorted({int(round(k)) for k in np.linspace(0, count - 1, min(FLOW_EPOCHS, count))})


def flow_figure(grads: dict) -> str | None:
    """Gradient norms along the network (layers on the x axis, log scale), one line per
    drawn epoch (:func:`flow_epochs`), as a data URI.

    The figure has a fixed size whatever the depth: at most :data:`FLOW_TICKS` layer
    names label the axis, and the legend names epochs, never layers. Only numbers are
    plotted, and layer names are text (no mathtext).
    """
    names, epochs = _entries(grads)
    epochs = [e for e in epochs if number(e.get("epoch")) is not None]
    if not epochs:
        return None
    from cnnbuild.charts import pyplot

    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    xs = np.arange(len(names))
    drawn = [False, False]  # a log axis needs a positive value
    for k in flow_epochs(len(epochs)):
        label = f"epoch {shown(epochs[k]['epoch'], 'd')}"
        tops = np.array([_top_weight(_layer(epochs[k], n)) for n in names], dtype=float)
        outs = [number(_layer(epochs[k], n).get("output_grad_norm")) for n in names]
        outs = np.array([np.nan if v is None else v for v in outs], dtype=float)
        for row, ys in enumerate((tops, outs)):
            kept = np.isfinite(ys) & (ys > 0)
            axes[row].plot(xs[kept], ys[kept], "-o", ms=2, lw=1, label=label)
            drawn[row] |= bool(kept.any())
    for ax, title in zip(axes, ("largest weight-gradient norm per layer",
                                "norm of dL/d(output) per layer"), strict=True):  # fmt: skip
        if drawn[0 if ax is axes[0] else 1]:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    thresholds = grads.get("thresholds")
    vanishing = number(thresholds.get("vanishing")) if isinstance(thresholds, dict) else None
    if vanishing is not None and vanishing > 0:
        axes[0].axhline(vanishing, color="red", ls=":", lw=1)
    step = max(1, math.ceil(len(names) / FLOW_TICKS))
    ticks = xs[::step]
    axes[1].set_xticks(ticks, [mathtext(names[i][:24]) for i in ticks], rotation=90, fontsize=7)
    axes[1].set_xlabel(f"layer ({len(names)} layers, input to output)")
    axes[0].legend(fontsize=7, loc="upper right")
    uri = _figure_uri(fig)
    plt.close(fig)
    return uri


def flow_context(grads: Any) -> dict | None:
    """The gradient-flow section: the chart, warnings and the last epoch's table."""
    if not isinstance(grads, dict):
        return None
    names, epochs = _entries(grads)
    last = epochs[-1] if epochs else {"layers": {}}
    rows = []
    for name in names:
        entry = _layer(last, name)
        if not entry:
            continue
        norms = entry.get("weight_grad_norms")
        norms = norms if isinstance(norms, dict) else {}
        dead = entry.get("dead_fraction")
        rows.append(
            {
                "name": name,
                "out": shown(entry.get("output_grad_norm")),
                "weights": ", ".join(f"{k} {shown(v)}" for k, v in norms.items()),
                "dead": "" if dead is None else shown(dead, ".0%"),
            }
        )
    warnings = [w for w in grads.get("warnings") or [] if isinstance(w, dict)]
    return {
        "uri": flow_figure(grads),
        "warnings": [
            {"epoch": shown(w.get("epoch"), "d"), "text": str(w.get("text", ""))} for w in warnings
        ],  # fmt: skip
        "epoch": shown(last.get("epoch"), "d"),
        "batch": shown(grads.get("batch"), "d"),
        "objective": str(grads.get("objective", "")),
        "rows": rows,
    }


def _summary(cfg: Any) -> dict:
    from cnnbuild.errors import shape_str
    from cnnbuild.render import human
    from cnnbuild.trace import trace

    data = trace(cfg).to_dict()
    rows = [
        {
            "name": layer["name"],
            "type": layer["type"],
            "shape": shape_str(layer["output_shape"]) if layer["output_shape"] else "?",
            "params": f"{layer['params']:,}",
            "macs": human(layer["macs"]),
        }
        for layer in data["layers"]
    ]
    return {"rows": rows, "params": f"{data['total_params']:,}", "macs": human(data["macs"])}


def _upscale(image: np.ndarray, size: int = 96) -> np.ndarray:
    from cnnbuild.insight.show import scale_factor

    image = image.astype(np.uint8)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    s = scale_factor(min(image.shape[:2]), size)
    return image.repeat(s, axis=0).repeat(s, axis=1)


def _score(value: Any) -> str:
    """A test score, or "none" when the run had no test images."""
    return "none" if value is None else shown(value, ".4f")


def headline(metrics: dict, data: Any, n_test: int) -> str:
    """The line under the title: scores, epochs, dataset, device and status."""
    return (
        f"test accuracy {_score(metrics.get('test_accuracy'))} · test loss "
        f"{_score(metrics.get('test_loss'))} · {shown(metrics.get('epochs', '?'), 'd')} epochs"
        f" · dataset {metrics.get('dataset', data.name)} · {n_test:,} test images · "
        f"device {metrics.get('device_name', '?')} · status {metrics.get('status', '?')}"
    )


def spread(labels: np.ndarray, n: int) -> list[int]:
    """Up to ``n`` indices taken from the classes in turn: the first image of each class,
    then the second of each..., so the examples show different classes."""
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    order: list[int] = []
    for rank in range(max((len(b) for b in by_class), default=0)):
        order += [int(b[rank]) for b in by_class if rank < len(b)]
    return order[:n]


def examples(model: Any, x_test: np.ndarray, picks: list[int], captions: list[str]) -> dict | None:
    """Feature maps of the first convolution and Grad-CAM of the last, for the test
    images ``picks`` (see :func:`spread`)."""
    from cnnbuild.insight.show import conv_layers, feature_grid, gradcam, overlay

    convs = conv_layers(model)
    if not convs or not picks:
        return None
    from cnnbuild.builder import keras_module

    keras = keras_module()
    xs = x_test[picks]
    first = keras.Model(model.input, convs[0].output)
    maps = np.asarray(first(xs, training=False), dtype="float32")
    cams, _, _ = gradcam(model, xs, convs[-1])
    cards = [
        {
            "name": captions[i].split(": ", 1)[0],
            "caption": captions[i],
            "image": png_uri(_upscale(x_test[i])),
            "cam": png_uri(overlay(x_test[i].astype(np.uint8), cams[k])),
            "maps": png_uri(feature_grid(maps[k])),
        }
        for k, i in enumerate(picks)
    ]
    return {"first": convs[0].name, "last": convs[-1].name, "cards": cards}


def mistakes(x_test: np.ndarray, wrong: np.ndarray, captions: list[str]) -> list[dict]:
    """The misclassified test images ``wrong`` (most confident first), as cards."""
    return [
        {"image": png_uri(_upscale(x_test[i])), "caption": captions[i]} for i in wrong[:MISTAKES]
    ]


def image_name(data: Any, i: int) -> str:
    """Test image ``i`` by its file (relative to the dataset's folder) when the data has
    files, else ``test image #i``."""
    files = getattr(data, "test_files", None) or []
    if i < len(files):
        return os.path.relpath(files[i], data.source) if data.source else files[i]
    return f"test image #{i}"


def build_html(
    run_dir: Path,
    model: Any,
    cfg: Any,
    data: Any,
    batch_size: int = 256,
    outputs: np.ndarray | None = None,
) -> str:
    """The page's HTML text (see the module docstring); ``outputs``: the model's outputs
    on ``data.x_test`` when the caller has them (training's test evaluation), else the
    model predicts them."""
    import jinja2

    from cnnbuild.insight.show import Loaded, probabilities
    from cnnbuild.runs import output_kind

    metrics = _read_json(run_dir / "metrics.json")
    metrics = metrics if isinstance(metrics, dict) else {}
    names = [str(n) for n in data.class_names]
    target = Loaded(model, cfg, names, run_dir, output_kind(model, cfg).probabilities)
    x_test = np.asarray(data.x_test, dtype="float32")
    probs = np.zeros((0, len(names)))
    if len(x_test):
        if outputs is None or len(outputs) != len(x_test):
            outputs = model.predict(x_test, batch_size=batch_size, verbose=0)
        probs = probabilities(target, outputs)
    predicted = probs.argmax(axis=1)
    captions = [
        f"{image_name(data, i)}: true {names[t]}, predicted {names[p]} ({probs[i, p]:.2f})"
        for i, (t, p) in enumerate(zip(data.y_test, predicted, strict=False))
    ]
    wrong = np.flatnonzero(predicted != data.y_test)
    wrong = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")]
    figures = []
    for title, file in (("Curves", "curves.png"), ("Confusion matrix", "confusion.png")):
        uri, note = run_png(run_dir, file)
        if uri or "skipped" in note:
            figures.append({"title": title, "uri": uri, "note": note})
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(
        name=cfg.name,
        style=STYLE,
        headline=headline(metrics, data, len(x_test)),
        config_text=(read_regular(run_dir / "config.yaml", MAX_IMAGE_BYTES)[0] or b"").decode(
            "utf-8", "replace"
        ),
        summary=_summary(cfg),
        figures=figures,
        flow=flow_context(_read_json(run_dir / "gradients.json")),
        examples=examples(model, x_test, spread(data.y_test[: len(probs)], EXAMPLES), captions),
        mistakes=mistakes(x_test, wrong, captions),
    )


def _read_json(path: Path) -> Any:
    blob, _ = read_regular(path, MAX_IMAGE_BYTES)
    try:
        return None if blob is None else json.loads(blob.decode("utf-8"))
    except ValueError:
        return None


def write_report(
    run_dir: Path,
    *,
    model: Any = None,
    cfg: Any = None,
    data: Any = None,
    outputs: np.ndarray | None = None,
    verbose: bool = False,
) -> Path:
    """Write ``run_dir/report.html``; what is not given is loaded from the run directory
    (``outputs``, the model's outputs on the test images, is predicted when not given).

    Raises:
        UsageError: ``run_dir`` is not a run directory.
        WriteError: the page cannot be written (disk full, read-only).
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
    text = build_html(run_dir, model, cfg, data, outputs=outputs)
    with os_errors(path):
        write_text(path, text)
    return path
