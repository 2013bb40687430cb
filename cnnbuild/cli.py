"""The ``cnnbuild`` command line: thin Typer commands over the core modules.

Exit codes: 0 ok, 1 invalid input or failed run, 2 usage error.
"""

from __future__ import annotations

import functools
import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from cnnbuild.backend import STRATEGIES, exit_process, missing_hint, require_train
from cnnbuild.cli_help import LOOK, SHIP, TRAIN, WRITE, Command, Group
from cnnbuild.errors import EXIT_INVALID, CnnbuildError, ConfigError, UsageError, WriteError
from cnnbuild.escape import rich, terminal

app = typer.Typer(
    cls=Group,
    name="cnnbuild",
    help="Describe a CNN in YAML; validate it in CI, trace every shape, build and train it.\n\n"
    "Exit codes: 0 ok, 1 invalid input or failed run, 2 usage error, 130 a run stopped by "
    "SIGINT or SIGTERM (saved; resume it with --resume).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, highlight=False, width=None if stream.isatty() else 160)


def _notes(findings: list) -> None:
    """Findings on stderr; for a view, the lint findings of a model that builds."""
    from cnnbuild.findings_format import text_lines

    if not findings:
        return
    err = _console(stderr=True)
    for line in text_lines(findings, color=err.is_terminal):
        err.print(line, highlight=False, markup=err.is_terminal, soft_wrap=True)


def _fail(exc: CnnbuildError) -> None:
    _notes(exc.findings)
    if not exc.findings or not isinstance(exc, ConfigError):
        err = _console(stderr=True)
        message = "\n".join(terminal(line) for line in exc.message.split("\n"))
        err.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)


def handled(fn):
    """Turn :class:`CnnbuildError` into a message and its exit code (never a traceback).

    An :class:`OSError` that reaches a command (a full disk, a read-only folder, a path
    under a file) is the same :class:`~cnnbuild.errors.WriteError` every command raises:
    the path, what happened and what to do, exit 1.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CnnbuildError as exc:
            _fail(exc)
            raise typer.Exit(exc.exit_code) from None
        except ModuleNotFoundError as exc:
            error = _missing_module(exc)
            _fail(error)
            raise typer.Exit(error.exit_code) from None
        except OSError as exc:
            from cnnbuild.io import os_error_message

            error = WriteError(os_error_message(exc))
            _fail(error)
            raise typer.Exit(error.exit_code) from None

    return wrapper


def _missing_module(exc: ModuleNotFoundError) -> UsageError:
    """A package of an extra missing in the light install: the install hint, exit 2. A
    missing module of cnnbuild itself is a bug, so its traceback stays."""
    top = (exc.name or "").split(".")[0]
    if not top or top == "cnnbuild":
        raise exc
    return UsageError(missing_hint("this command", [top]))


class Format(str, Enum):
    text = "text"
    json = "json"
    github = "github"
    sarif = "sarif"
    markdown = "markdown"


Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show TensorFlow's start-up messages.")
]
ConfigArg = Annotated[Path, typer.Argument(help="A model config (YAML).", show_default=False)]


@app.command(cls=Command, rich_help_panel=WRITE)
@handled
def validate(
    paths: Annotated[
        list[str], typer.Argument(help="Config files, directories or globs.", show_default=False)
    ],
    fmt: Annotated[Format, typer.Option("--format", "-f", help="Output format.")] = Format.text,
    ignore: Annotated[
        list[str], typer.Option("--ignore", help="Skip a rule (repeatable).", show_default=False)
    ] = [],  # noqa: B006
    strict: Annotated[bool, typer.Option("--strict", help="Warnings fail too.")] = False,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Compare each config with its version at this git revision; apply "
            "budget.growth limits.",
            show_default=False,
        ),
    ] = None,
    max_chars: Annotated[
        int,
        typer.Option(
            "--max-chars",
            min=0,
            help="With --format markdown: cut at a row to at most this many characters "
            "(GitHub's limit for a comment); 0: no limit.",
        ),
    ] = 65_536,
) -> None:
    """Before training and in CI: check configs without TensorFlow (schema, shapes, parameters,
    lint rules).

    Prints FILE:LINE:COL: severity: message [RULE]. Exit 1 when a finding fails.
    """
    from cnnbuild import findings_format
    from cnnbuild.checks import ignore_problem
    from cnnbuild.validate import check_file, expand_paths

    for rid in ignore:
        if (problem := ignore_problem(rid)) is not None:
            raise UsageError(f"--ignore {rid}: {problem}")
    files, findings = expand_paths(paths)
    review = None if baseline is None else _baseline(baseline, frozenset(ignore))
    reviews = []
    for file in files:
        checked = check_file(file, frozenset(ignore))
        findings.extend(checked[2])
        if review is not None:
            reviews.append(review(file, checked))
            findings.extend(reviews[-1].findings)
    if baseline is not None:
        reviews += _removed(baseline, paths)
        findings.extend(f for r in reviews if r.status == "removed" for f in r.findings)
    failing = {"error", "warning"} if strict else {"error"}
    failed = any(f.severity in failing for f in findings)
    out = _console()
    if fmt is Format.markdown:
        from cnnbuild.review import baseline_markdown

        sys.stdout.write(baseline_markdown(reviews, findings, baseline, max_chars or None))
    elif fmt is Format.text:
        if baseline is not None:
            from cnnbuild.review import baseline_lines

            render_lines = baseline_lines(reviews, baseline)
            for line in render_lines:
                out.print(line, highlight=False, markup=False, soft_wrap=True)
        findings_format.print_text(out, findings, len(files))
    else:
        render = {
            "json": findings_format.to_json,
            "github": findings_format.to_github,
            "sarif": findings_format.to_sarif,
        }[fmt.value]
        text = render(findings)
        if text:
            print(text)
    raise typer.Exit(EXIT_INVALID if failed else 0)


def _baseline(ref: str, ignore: frozenset[str]):
    """``validate --baseline REF``: a function comparing a checked config with its
    version at REF (the revision and the repository are checked first)."""
    from cnnbuild.review import repo_root, review_against, verify_ref

    verify_ref(ref)
    top = repo_root()
    return functools.partial(review_against, ref=ref, top=top, ignore=ignore)


def _removed(ref: str, paths: list[str]):
    """``validate --baseline REF``: the configs under ``paths`` deleted since REF."""
    from cnnbuild.review import removed_since, repo_root

    return removed_since(ref, paths, repo_root())


class DiffFormat(str, Enum):
    text = "text"
    json = "json"
    markdown = "markdown"


@app.command(cls=Command, rich_help_panel=WRITE)
@handled
def diff(
    old: Annotated[
        str,
        typer.Argument(
            help="The old config: a file, REF:PATH, a .keras file or a run directory.",
            show_default=False,
        ),
    ],
    new: Annotated[
        str,
        typer.Argument(
            help="The new config: a file, REF:PATH, a .keras file or a run directory.",
            show_default=False,
        ),
    ],
    fmt: Annotated[
        DiffFormat, typer.Option("--format", "-f", help="Output format.")
    ] = DiffFormat.text,
) -> None:
    """When reviewing a change: compare two models without TensorFlow (layers added, removed
    or changed, totals).

    Totals are old -> new. REF:PATH reads a file at a git revision (git show REF:PATH); a
    .keras file or a run directory is imported first.

    Exit 0 when both sides load, 1 when one is invalid, 2 for usage errors.
    """
    from cnnbuild.review import compare, diff_markdown, diff_tables

    _, old_trace = _diff_side(old)
    _, new_trace = _diff_side(new)
    result = compare(old_trace, new_trace, old, new)
    if fmt is DiffFormat.json:
        print(json.dumps(result, indent=2))
    elif fmt is DiffFormat.markdown:
        sys.stdout.write(diff_markdown(result))
    else:
        out = _console()
        for table in diff_tables(result):
            out.print(table)


def _diff_side(spec: str):
    """One side of ``diff``: a saved model (imported first) or a config file or REF:PATH."""
    from cnnbuild.importer import APPLICATIONS, open_config

    path = Path(spec)
    saved = path.suffix == ".keras" and path.is_file() or (path / "model.keras").is_file()
    if saved or spec.startswith(APPLICATIONS):
        return open_config(spec)
    from cnnbuild.review import load_side

    return load_side(spec)


@app.command(cls=Command, rich_help_panel=WRITE)
@handled
def summary(
    config: ConfigArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    static: Annotated[
        bool, typer.Option("--static", help="Use the static engine; no TensorFlow.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """To see what a model costs: each layer's output shape, parameters and MACs, with totals
    and memory.

    CONFIG may also be a .keras file or a run directory: it is imported first.
    """
    from cnnbuild import render
    from cnnbuild.importer import open_config

    cfg, tr = open_config(config)
    _notes(cfg.findings)
    if static:
        data = tr.summary_dict()
    else:
        from cnnbuild.builder import build_model, keras_module, keras_summary

        keras_module(verbose)
        data = keras_summary(cfg, build_model(cfg, compile=False))
        data = {**data, **tr.figures(data["total_params"])}
    if as_json:
        print(json.dumps(data, indent=2))
        return
    out = _console()
    scopes = {r.node.name: r.node.scope for r in tr.rows}
    out.print(render.summary_table(data, scopes, "the static engine" if static else "Keras"))
    render.print_lines(out, render.summary_footer(data, tr.activation_bytes))


class GradMode(str, Enum):
    training = "training"
    inference = "inference"


@app.command(cls=Command, rich_help_panel=WRITE)
@handled
def trace(
    config: ConfigArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    run: Annotated[
        bool, typer.Option("--run", help="Also run a real forward pass in Keras and compare.")
    ] = False,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the random batch for --run or --grads, 0 to 4294967295 (default 0).",
            min=0,
            max=2**32 - 1,
            show_default=False,
        ),
    ] = None,
    verbose: Verbose = False,
    grads: Annotated[
        bool,
        typer.Option("--grads", help="Run a forward and a backward pass; per-layer gradients."),
    ] = False,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="With --grads: weights of a run directory or .keras file.", show_default=False
        ),
    ] = None,
    data: Annotated[
        bool,
        typer.Option(
            "--data",
            help="With --grads: a batch of the dataset (the run's own with --weights RUN_DIR, "
            "else the config's).",
        ),
    ] = False,
    mode: Annotated[
        GradMode | None,
        typer.Option(
            help="With --grads: training (default: what the optimizer sees) or inference.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """When a shape surprises you: the shape trace, layer by layer, with the arithmetic of
    every spatial size.

    CONFIG may also be a .keras file or a run directory: it is imported first.
    """
    from cnnbuild import render
    from cnnbuild.importer import open_config

    if run and grads:
        raise UsageError(
            "--run and --grads are two different passes; run them one at a time: "
            "`trace CONFIG --run`, then `trace CONFIG --grads`"
        )
    if seed is not None and not (run or grads):
        raise UsageError("--seed goes with --run or --grads (the seed of their random batch)")
    seed = seed or 0
    cfg, tr = open_config(config)
    _notes(cfg.findings)
    if grads or weights is not None or data or mode is not None:
        mode_name = (mode or GradMode.training).value
        return _trace_grads(cfg, tr, grads, weights, data, seed, mode_name, as_json, verbose)
    real, fed = None, None
    if run:
        from cnnbuild.builder import keras_module
        from cnnbuild.probe import forward_stats

        keras_module(verbose)
        real, fed = forward_stats(cfg, seed=seed)
    if as_json:
        data = render.trace_dict(tr)
        if real is not None:
            data["real_input"] = fed
            for layer in data["layers"]:
                layer["real"] = real.get(layer["name"])
        print(json.dumps(data, indent=2))
    else:
        out = _console()
        if fed is not None:
            out.print(f"forward pass: {fed}", highlight=False, soft_wrap=True)
        out.print(render.trace_table(tr, real))
        render.print_lines(out, render.figure_lines(tr.figures()))
    if real is not None:
        bad = [
            r.node.name
            for r in tr.rows
            if r.node.name in real and tuple(real[r.node.name]["shape"]) != r.shape
        ]
        if bad:
            raise CnnbuildError("Keras and the static trace disagree on " + ", ".join(bad))


@app.command(cls=Command, rich_help_panel=SHIP)
@handled
def build(
    config: ConfigArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to save (.keras); default NAME.keras."),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """To get the Keras model without training: build and compile it, and save it in the
    native .keras format."""
    from cnnbuild.builder import build_model, keras_module
    from cnnbuild.io import os_errors, save_model
    from cnnbuild.validate import load_traced

    cfg, _ = load_traced(config)
    _notes(cfg.findings)
    target = output or Path(f"{cfg.name}.keras")
    if target.suffix != ".keras" or target.is_dir():
        raise UsageError(f"--output must be a file ending in .keras; received {str(target)!r}")
    from cnnbuild.runs import apply_init

    keras_module(verbose)
    model = build_model(cfg)
    report = apply_init(model, cfg)
    for line in report.message().splitlines() if report is not None else ():
        _console().print(rich(line), highlight=False)
    model.optimizer.build(model.trainable_variables)  # saved with its (zero) state
    with os_errors(target):
        save_model(model, target)
    _console().print(f"saved {cfg.name} ({model.count_params():,} parameters) to {rich(target)}")


def _input_shape(value: str | None) -> tuple | None:
    if value is None:
        return None
    parts = value.replace("x", ",").split(",")
    # ASCII digits only: str.isdigit also takes "²", which int() refuses
    if len(parts) != 3 or not all(re.fullmatch(r"\s*0*[1-9][0-9]*\s*", p) for p in parts):
        raise UsageError(
            f"--input-shape takes HEIGHT,WIDTH,CHANNELS (e.g. 96,96,3); received {value!r}"
        )
    return tuple(int(p) for p in parts)


@app.command("import", cls=Command, rich_help_panel=SHIP)
@handled
def import_model(
    source: Annotated[
        str,
        typer.Argument(
            help="A .keras file, a run directory, or keras.applications.NAME.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to write the YAML; default: print it."),
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(help="For keras.applications: HEIGHT,WIDTH,CHANNELS.", show_default=False),
    ] = None,
    classes: Annotated[
        int, typer.Option(help="For keras.applications: classes of the top.", min=1)
    ] = 1000,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --output.")] = False,
    weights: Annotated[
        str | None,
        typer.Option(
            help="For keras.applications: imagenet gives the backbone without its top, a new "
            "Dense(--classes) head, init: and freeze: (the backbone frozen).",
            show_default=False,
        ),
    ] = None,
    preprocessing: Annotated[
        bool,
        typer.Option(
            help="With --weights: put the application's preprocess_input in the model "
            "(--no-preprocessing: the bare network)."
        ),
    ] = True,
    verbose: Verbose = False,
) -> None:
    """To start from an existing Keras model: write its config, with the same layers, names
    and arguments.

    Exit 1, with one line per unsupported layer class or argument, when cnnbuild cannot
    express the model exactly.
    """
    from cnnbuild.importer import APPLICATIONS, import_text, pretrained_notes, pretrained_text
    from cnnbuild.io import check_output, os_errors, write_text
    from cnnbuild.schema.blocks import BLOCK_KINDS
    from cnnbuild.validate import load_traced

    if output is not None:
        check_output(output, force)
    shape = _input_shape(input_shape)
    if source.startswith(APPLICATIONS):
        from cnnbuild.builder import keras_module

        keras_module(verbose)
    if weights is not None and not source.startswith(APPLICATIONS):
        raise UsageError(f"--weights is for keras.applications.NAME; received {source!r}")
    notes: list[str] = []
    if weights is None:
        text = import_text(source, shape, classes)
    else:
        text, done = pretrained_text(source, weights, shape, classes, preprocessing)
        notes = pretrained_notes(done, preprocessing)
    if output is None:
        sys.stdout.write(text)
        return
    check_output(output, force)  # again: the import took a while
    with os_errors(output):
        write_text(output, text)
    cfg, tr = load_traced(output)
    written = ", ".join(f"{text.count(f'- {kind}:')} {kind}" for kind in BLOCK_KINDS)
    templates = len(cfg.doc.data.get("blocks") or {})
    _console().print(
        f"imported {cfg.name}: {len(cfg.nodes)} layers, {tr.total_params:,} parameters, to "
        f"{rich(output)} (written with {written} blocks and {templates} templates)"
    )
    for note in notes:
        _console().print(f"  {rich(note)}")


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


StrategyChoice = Enum(
    "StrategyChoice", {name.replace("-", "_"): name for name in STRATEGIES}, type=str
)


@app.command(cls=Command, rich_help_panel=TRAIN)
@handled
def train(
    ctx: typer.Context,
    config: Annotated[
        Path | None,
        typer.Argument(help="A model config (YAML); optional with --resume.", show_default=False),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Total epochs.", show_default=False)] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per batch.", show_default=False)
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="cifar10, cifar100, shapes, npz:PATH or folder:PATH.", show_default=False
        ),
    ] = None,
    data_dir: Annotated[
        str | None,
        typer.Option(
            help="A local CIFAR copy: the .tar.gz or the extracted folder.", show_default=False
        ),
    ] = None,
    device: Annotated[
        DeviceChoice | None, typer.Option(help="auto, cpu or gpu.", show_default=False)
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed for repeatable runs, 0 to 4294967295.",
            min=0,
            max=2**32 - 1,
            show_default=False,
        ),
    ] = None,
    validation_split: Annotated[
        float | None, typer.Option(help="Fraction held out for validation.", show_default=False)
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use at most N train and N test images.", show_default=False)
    ] = None,
    mixed_precision: Annotated[
        bool | None,
        typer.Option(
            "--mixed-precision/--no-mixed-precision",
            help="mixed_float16 on a GPU, mixed_bfloat16 on a CPU (default: on a GPU, and "
            "on a CPU with native bf16: AVX512-BF16 or AMX).",
            show_default=False,
        ),
    ] = None,
    xla: Annotated[
        bool | None,
        typer.Option(
            "--xla/--no-xla", help="XLA jit_compile (default: on a GPU).", show_default=False
        ),
    ] = None,
    steps_per_execution: Annotated[
        int | None,
        typer.Option(
            help="Batches per compiled call (default 32 on GPU; on CPU 8, or 1 past 50 layers).",
            show_default=False,
        ),
    ] = None,
    tensorboard: Annotated[
        bool | None,
        typer.Option(
            "--tensorboard/--no-tensorboard", help="TensorBoard logs under tb/.", show_default=False
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run directory (default runs/NAME-YYYYmmdd-HHMMSS).", show_default=False),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue a run from its last completed epoch.", show_default=False),
    ] = None,
    strategy: Annotated[
        StrategyChoice | None,
        typer.Option(
            help="auto, one, mirrored (all GPUs) or multi-worker (reads TF_CONFIG).",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Start N local multi-worker processes on 127.0.0.1.", show_default=False
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Once a config validates: train it (default dataset CIFAR-10), evaluate it, and fill a run
    directory.

    Flags override the config's train: section; the run records the resolved values.
    """
    require_train("train")
    if workers is not None:
        raise typer.Exit(_launch_workers(ctx, workers, config, out, seed))
    from cnnbuild.insight.hooks import training_hooks
    from cnnbuild.train import stdout_console
    from cnnbuild.train import train as run_training

    overrides = {
        "epochs": epochs,
        "batch_size": batch_size,
        "dataset": dataset,
        "data_dir": data_dir,
        "device": device.value if device else None,
        "seed": seed,
        "validation_split": validation_split,
        "limit": limit,
        "mixed_precision": mixed_precision,
        "jit_compile": xla,
        "steps_per_execution": steps_per_execution,
        "tensorboard": tensorboard,
        "strategy": strategy.value if strategy else None,
    }
    run_training(
        config,
        overrides,
        out=out,
        resume=resume,
        console=stdout_console(),
        verbose=verbose,
        hooks=training_hooks(),
    )


class EvalSplit(str, Enum):
    all = "all"
    test = "test"


@app.command(cls=Command, rich_help_panel=TRAIN)
@handled
def evaluate(
    target: Annotated[
        Path, typer.Argument(help="A run directory or a .keras model.", show_default=False)
    ],
    dataset: Annotated[
        str | None,
        typer.Option(
            help="cifar10, cifar100, shapes, npz:PATH or folder:PATH (default: the run's); "
            "every image of a folder is a test image (see --split).",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option(help="A local CIFAR copy.", show_default=False)
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Use at most N test images.", show_default=False)
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per batch.", show_default=False)
    ] = None,
    split: Annotated[
        EvalSplit | None,
        typer.Option(
            help="all: every image of --dataset (a folder is a test set; default with "
            "--dataset). test: the test split the run trained with (default without).",
            show_default=False,
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """After training, or on other data: test loss, accuracy and per-class accuracy of a
    trained model, and its confusion matrix.

    Models load with Keras' safe_mode on.

    For a folder dataset, evaluation.json names the file of every mistake.
    """
    require_train("evaluate")
    from cnnbuild.train import evaluate as run_evaluation
    from cnnbuild.train import print_evaluation, stdout_console

    console = stdout_console()
    result = run_evaluation(
        target,
        dataset=dataset,
        data_dir=data_dir,
        limit=limit,
        batch_size=batch_size,
        split=split.value if split else None,
        console=console,
        verbose=verbose,
    )
    print_evaluation(console, result)


@app.command(cls=Command, rich_help_panel=WRITE)
@handled
def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to a file instead.")
    ] = None,
) -> None:
    """For editors and CI tools: print the JSON Schema (draft-07) of the config format."""
    from cnnbuild.io import os_errors, write_text
    from cnnbuild.schema.jsonschema import json_schema_text

    text = json_schema_text()
    if output is None:
        sys.stdout.write(text)
        return
    if output.is_dir():
        raise UsageError(f"--output {output}: is a folder; give a file path")
    with os_errors(output):
        write_text(output, text)


@app.command(cls=Command, rich_help_panel=LOOK)
@handled
def show(
    target: Annotated[
        Path, typer.Argument(help="A run directory or a .keras model.", show_default=False)
    ],
    images: Annotated[
        list[Path], typer.Argument(help="Image files (PNG, JPEG...).", show_default=False)
    ],
    layer: Annotated[
        str | None,
        typer.Option(help="One convolution layer (default: all of them).", show_default=False),
    ] = None,
    class_name: Annotated[
        str | None,
        typer.Option("--class", help="Grad-CAM for this class (default: the predicted one)."),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Predictions to list per image.")] = 3,
    cam: Annotated[
        str, typer.Option(help="hires (gradient x activation) or grad (classic Grad-CAM).")
    ] = "hires",
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Folder for the PNGs (default RUN_DIR/show/).", show_default=False
        ),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """To see what a trained model looks at in your images: feature maps, first-layer filters,
    Grad-CAM, top-k."""
    from cnnbuild.builder import keras_module

    keras_module(verbose)  # first: the light install is told how to get TensorFlow
    from cnnbuild.insight.show import show as run_show

    result = run_show(
        target,
        images,
        layer=layer,
        class_name=class_name,
        top=top,
        out_dir=out,
        cam=cam,
        verbose=verbose,
    )
    console = _console()
    for item in result["images"]:
        ranked = "  ".join(f"{rich(name)} {p:.1%}" for name, p in item["top"])
        console.print(f"{rich(item['image'])}: {ranked}", highlight=False)
    console.print(f"filters, feature maps and Grad-CAM in {rich(result['out_dir'])}/")


@app.command(cls=Command, rich_help_panel=LOOK)
@handled
def plot(
    config: ConfigArg,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="model.svg, model.png or model.dot."),
    ] = Path("model.svg"),
    engine: Annotated[
        str,
        typer.Option(
            help="auto (Keras plot_model when Graphviz is installed), keras, matplotlib or dot."
        ),
    ] = "auto",
    verbose: Verbose = False,
) -> None:
    """For a picture of the architecture: blocks, branches, each layer with its output shape."""
    from cnnbuild.insight.diagram import plot as draw
    from cnnbuild.validate import load_config

    message = draw(load_config(config), output, engine=engine, verbose=verbose)
    _console().print(rich(message), highlight=False, soft_wrap=True)


@app.command(cls=Command, rich_help_panel=LOOK)
@handled
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.", show_default=False)],
    verbose: Verbose = False,
) -> None:
    """To read a run at a glance: rebuild its report.html (config, curves, gradient flow,
    Grad-CAM, mistakes)."""
    from cnnbuild.builder import keras_module

    keras_module(verbose)  # first: the light install is told how to get TensorFlow
    from cnnbuild.insight.run_report import write_report

    path = write_report(run_dir, verbose=verbose)
    _console().print(f"wrote {rich(path)}", highlight=False)


def _trace_grads(cfg, tr, grads, weights, data, seed, mode, as_json, verbose) -> None:
    """``trace --grads``: gradients per layer (see cnnbuild.insight.grads)."""
    from cnnbuild import render
    from cnnbuild.builder import keras_module

    if not grads:
        raise UsageError("--weights, --data and --mode go with --grads")
    keras_module(verbose)  # first: the light install is told how to get TensorFlow
    from cnnbuild.insight.grads import grads_table, trace_grads

    result = trace_grads(cfg, seed=seed, weights=weights, data=data, mode=mode, verbose=verbose)
    if as_json:
        out = render.trace_dict(tr)
        out["grads"] = {k: v for k, v in result.items() if k != "layers"}
        for layer in out["layers"]:
            row = result["layers"].get(layer["name"])
            layer.update(row.to_dict() if row else {})
        print(json.dumps(out, indent=2))
        return
    _console().print(grads_table(result, {r.node.name: r.shape for r in tr.rows}))


# -- predict, export, layers, --version (issue 11) --------------------------------------


def _version(value: bool) -> None:
    if value:
        from cnnbuild import __version__

        print(f"cnnbuild {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Describe a CNN in YAML; validate it in CI, trace every shape, build and train it."""


class PredictFormat(str, Enum):
    table = "table"
    json = "json"
    csv = "csv"


@app.command(cls=Command, rich_help_panel=SHIP)
@handled
def predict(
    target: Annotated[
        Path,
        typer.Argument(
            help="A run directory, a .keras model, or an exported .onnx, .tflite or "
            "SavedModel folder.",
            show_default=False,
        ),
    ],
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Image files, folders or globs (PNG, JPEG, BMP, GIF).", show_default=False
        ),
    ],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes per image.")] = 3,
    fmt: Annotated[
        PredictFormat, typer.Option("--format", "-f", help="Output format.")
    ] = PredictFormat.table,
    batch_size: Annotated[int, typer.Option(help="Images per batch.")] = 64,
    verbose: Verbose = False,
) -> None:
    """To classify images with a trained model: top-k classes of image files, with the run's
    class names and probabilities.

    An exported .onnx, .tflite or SavedModel runs with its own runtime and class names.

    Images are resized (bilinear) to the model's input size. Exit 1 if any file failed.
    """
    from cnnbuild.predict import csv_lines, predict, table

    result = predict(target, paths, top_k=top_k, batch_size=batch_size, verbose=verbose)
    if fmt is PredictFormat.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif fmt is PredictFormat.csv:
        print("\n".join(csv_lines(result)))
    else:
        _console().print(table(result))
        if result.resized:
            _console().print(f"{result.resized} image(s) resized to {result.input_shape[:2]}")
    if result.failed:
        err = _console(stderr=True)
        for file, reason in result.failed:
            line = f"error: {terminal(file)}: {terminal(reason)}"
            err.print(line, highlight=False, markup=False, soft_wrap=True)
        err.print(f"{len(result.failed)} file(s) failed", highlight=False)
        raise typer.Exit(EXIT_INVALID)


class ExportFormat(str, Enum):
    saved_model = "saved_model"
    litert = "litert"
    onnx = "onnx"


@app.command(cls=Command, rich_help_panel=SHIP)
@handled
def export(
    target: Annotated[
        Path, typer.Argument(help="A run directory or a .keras model.", show_default=False)
    ],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="The artefact's format.")],
    int8: Annotated[
        bool, typer.Option("--int8", help="LiteRT with int8 weights, activations, input, output.")
    ] = False,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write (default RUN/export/, or NAME-export/ beside a .keras file).",
            show_default=False,
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset of the test images (default: the run's; for a bare .keras file, "
            "random raw pixels of its input shape): cifar10, shapes, npz:PATH...",
            show_default=False,
        ),
    ] = None,
    images: Annotated[int, typer.Option(help="Test images to verify with.")] = 128,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an earlier export at the output.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the verification as JSON.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """To deploy a trained model: export the inference function to SavedModel, LiteRT or ONNX,
    verify the file with its own runtime, then move it into place (a failed one is not
    written).

    An existing output is replaced only with --force and only when it is an earlier export
    (a file of the format, or a SavedModel folder with its cnnbuild_export.json).

    Exit 1 when the outputs differ from Keras beyond the tolerance (float: 1e-4 x the
    largest output, at least 1e-4) or int8 top-1 agreement is below 98%.
    """
    from cnnbuild.export import export as run_export
    from cnnbuild.export import report_lines

    result = run_export(
        target,
        fmt.value,
        output=output,
        int8=int8,
        data=data,
        images=images,
        force=force,
        verbose=verbose,
        quiet=as_json or not sys.stderr.isatty(),
    )
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        render_lines = report_lines(result)
        out = _console()
        for line in render_lines:
            out.print(terminal(line), highlight=False, markup=False, soft_wrap=True)
    if not result.passed:
        raise typer.Exit(EXIT_INVALID)


@app.command(cls=Command, rich_help_panel=WRITE)
@handled
def layers(
    name: Annotated[
        str | None, typer.Argument(help="One layer: show its arguments.", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """While writing a config: the supported layers (name, group, description), or one layer's
    arguments with types, defaults and allowed ranges."""
    from cnnbuild.layers_doc import arg_table, layer_detail, layer_list, layer_table, lookup

    if name is None:
        rows = layer_list()
        if as_json:
            print(json.dumps(rows, indent=2))
        else:
            _console().print(layer_table(rows))
        return
    detail = layer_detail(lookup(name))
    if as_json:
        print(json.dumps(detail, indent=2))
    else:
        _console().print(arg_table(detail))


@app.command(cls=Command, rich_help_panel=TRAIN)
@handled
def tune(
    config: ConfigArg,
    trials: Annotated[
        int | None,
        typer.Option(help="Trials in the whole study (default: tune.trials).", show_default=False),
    ] = None,
    study: Annotated[
        str | None,
        typer.Option(help="Study name (default: the config's name).", show_default=False),
    ] = None,
    storage: Annotated[
        str | None,
        typer.Option(
            help="Optuna storage URL, shared by every process of the study "
            "(default: study.db, SQLite, in the study folder).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Study folder (default runs/tune/STUDY).", show_default=False),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """To search hyperparameters: run the config's tune: space with Optuna; write best.yaml,
    trials.csv and plots.

    Resumable (run it again) and parallel: processes on one --storage share the study.
    """
    from cnnbuild.tune import open_study, require, run_study

    require()  # first: the light install is told how to get TensorFlow and Optuna
    s = open_study(
        config,
        study=study,
        storage=storage,
        out=out,
        trials=trials,
        console=_console(),
        verbose=verbose,
    )
    run_study(s)


def _launch_workers(
    ctx: typer.Context, workers: int, config: Path | None, out: Path | None, seed: int | None
) -> int:
    """``train --workers N``: the same train command as N local multi-worker processes,
    with one run directory and one seed for all (a relaunch reuses the run's seed)."""
    import random

    from cnnbuild.distribute import launch_local
    from cnnbuild.train.rundir import RunDir
    from cnnbuild.validate import load_config

    if config is None or ctx.params.get("resume") is not None:
        raise UsageError("--workers: give a CONFIG (no --resume); a relaunch is the same command")
    if ctx.params.get("strategy") not in (None, StrategyChoice.multi_worker):
        raise UsageError("--workers starts multi-worker processes; drop --strategy")
    if out is None:
        made = RunDir.create(None, load_config(config).name)
        made.close()  # an empty runs/NAME-STAMP folder: the chief fills it
        out = made.path
    if seed is None:
        state = RunDir(out).read_state() if out.is_dir() else None
        seed = state.seed if state is not None else random.SystemRandom().randrange(2**31)
    args = [str(config), "--out", str(out), "--seed", str(seed)]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in ("config", "out", "seed", "workers", "strategy", "resume"):
            continue
        if value is None or (param.is_flag and value == param.default):
            continue
        if param.is_flag:
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value.value if isinstance(value, Enum) else value)]
    return launch_local(args, workers)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        exit_process(130)
    except SystemExit as done:
        exit_process(done.code)
    exit_process(0)
