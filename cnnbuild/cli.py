"""The ``cnnbuild`` command line: thin Typer commands over the core modules.

Exit codes: 0 ok, 1 invalid input or failed run, 2 usage error.
"""

from __future__ import annotations

import functools
import json
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from cnnbuild.errors import EXIT_INVALID, CnnbuildError, ConfigError, UsageError

app = typer.Typer(
    name="cnnbuild",
    help="Describe a CNN in YAML; validate it in CI, trace every shape, build and train it.\n\n"
    "Exit codes: 0 ok, 1 invalid input or failed run, 2 usage error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    return Console(file=stream, highlight=False, width=None if stream.isatty() else 160)


def _fail(exc: CnnbuildError) -> None:
    from cnnbuild.report import text_lines

    err = _console(stderr=True)
    for line in text_lines(exc.findings, color=err.is_terminal):
        err.print(line, highlight=False, markup=err.is_terminal, soft_wrap=True)
    if not exc.findings or not isinstance(exc, ConfigError):
        err.print(Text.assemble(("error:", "bold red"), " ", exc.message), soft_wrap=True)


def handled(fn):
    """Turn :class:`CnnbuildError` into a message and its exit code (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CnnbuildError as exc:
            _fail(exc)
            raise typer.Exit(exc.exit_code) from None

    return wrapper


class Format(str, Enum):
    text = "text"
    json = "json"
    github = "github"
    sarif = "sarif"


Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show TensorFlow's start-up messages.")
]
ConfigArg = Annotated[Path, typer.Argument(help="A model config (YAML).", show_default=False)]


@app.command()
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
) -> None:
    """Check configs without TensorFlow: schema, shapes, parameters and lint rules.

    Prints FILE:LINE:COL: severity: message [RULE]. Exit 1 when a finding fails.
    """
    from cnnbuild import report
    from cnnbuild.checks import RULES
    from cnnbuild.validate import check_file, expand_paths

    for rid in ignore:
        if rid not in RULES or not RULES[rid].ignorable:
            raise UsageError(
                f"--ignore {rid}: not a lint rule id; rules: "
                + ", ".join(r.id for r in RULES.values() if r.ignorable)
            )
    files, findings = expand_paths(paths)
    for file in files:
        findings.extend(check_file(file, frozenset(ignore))[2])
    failing = {"error", "warning"} if strict else {"error"}
    failed = any(f.severity in failing for f in findings)
    out = _console()
    if fmt is Format.text:
        report.print_text(out, findings, len(files))
    else:
        render = {"json": report.to_json, "github": report.to_github, "sarif": report.to_sarif}[
            fmt.value
        ]
        text = render(findings)
        if text:
            print(text)
    raise typer.Exit(EXIT_INVALID if failed else 0)


@app.command()
@handled
def summary(
    config: ConfigArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    static: Annotated[
        bool, typer.Option("--static", help="Use the static engine; no TensorFlow.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Each layer's output shape, parameters and MACs, with totals and memory."""
    from cnnbuild import render
    from cnnbuild.validate import load_traced

    cfg, tr = load_traced(config)
    if static:
        data = tr.to_dict()
    else:
        from cnnbuild.builder import build_model, keras_module, keras_summary

        keras_module(verbose)
        data = keras_summary(cfg, build_model(cfg, compile=False))
    if as_json:
        print(json.dumps(data, indent=2))
        return
    out = _console()
    scopes = {r.node.name: r.node.scope for r in tr.rows}
    out.print(
        render.summary_table(
            data, scopes, tr.activation_bytes, "the static engine" if static else "Keras"
        )
    )
    render.print_lines(out, render.summary_footer(data, tr.activation_bytes))


@app.command()
@handled
def trace(
    config: ConfigArg,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    run: Annotated[
        bool, typer.Option("--run", help="Also run a real forward pass in Keras and compare.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the random batch for --run.")] = 0,
    verbose: Verbose = False,
) -> None:
    """The shape trace, layer by layer, with the arithmetic of every spatial size."""
    from cnnbuild import render
    from cnnbuild.validate import load_traced

    cfg, tr = load_traced(config)
    real = None
    if run:
        from cnnbuild.builder import keras_module
        from cnnbuild.probe import forward_stats

        keras_module(verbose)
        real = forward_stats(cfg, seed=seed)
    if as_json:
        data = render.trace_dict(tr)
        if real is not None:
            for layer in data["layers"]:
                layer["real"] = real.get(layer["name"])
        print(json.dumps(data, indent=2))
    else:
        out = _console()
        out.print(render.trace_table(tr, real))
        for f in cfg.findings:
            out.print(f.format(), highlight=False, markup=False)
    if real is not None:
        bad = [
            r.node.name
            for r in tr.rows
            if r.node.name in real and tuple(real[r.node.name]["shape"]) != r.shape
        ]
        if bad:
            raise CnnbuildError("Keras and the static trace disagree on " + ", ".join(bad))


@app.command()
@handled
def build(
    config: ConfigArg,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Where to save (.keras); default NAME.keras."),
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Build and compile the Keras model and save it in the native .keras format."""
    from cnnbuild.builder import build_model, keras_module
    from cnnbuild.io import save_model
    from cnnbuild.validate import load_config

    cfg = load_config(config)
    target = output or Path(f"{cfg.name}.keras")
    if target.suffix != ".keras":
        raise UsageError(f"--output must end in .keras; received {str(target)!r}")
    keras_module(verbose)
    model = build_model(cfg)
    model.optimizer.build(model.trainable_variables)  # saved with its (zero) state
    save_model(model, target)
    _console().print(f"saved {cfg.name} ({model.count_params():,} parameters) to {target}")


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class StrategyChoice(str, Enum):
    auto = "auto"
    one = "one"
    mirrored = "mirrored"
    multi_worker = "multi-worker"


@app.command()
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
        int | None, typer.Option(help="Seed for repeatable runs.", show_default=False)
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
            help="Batches per compiled call (default 8 on CPU, 32 on GPU).", show_default=False
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
    """Train a config (default dataset CIFAR-10), evaluate it, and fill a run directory.

    Flags override the config's train: section; the run records the resolved values.
    """
    if workers is not None:
        raise typer.Exit(_launch_workers(ctx, workers, config, out, seed))
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
        config, overrides, out=out, resume=resume, console=stdout_console(), verbose=verbose
    )


@app.command()
@handled
def evaluate(
    target: Annotated[
        Path, typer.Argument(help="A run directory or a .keras model.", show_default=False)
    ],
    dataset: Annotated[
        str | None,
        typer.Option(
            help="cifar10, cifar100, shapes, npz:PATH or folder:PATH (default: the run's).",
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
    verbose: Verbose = False,
) -> None:
    """Test loss, accuracy and per-class accuracy of a trained model, and its confusion matrix.

    Models load with Keras' safe_mode on.
    """
    from cnnbuild.train import evaluate as run_evaluation
    from cnnbuild.train import print_evaluation, stdout_console

    console = stdout_console()
    result = run_evaluation(
        target,
        dataset=dataset,
        data_dir=data_dir,
        limit=limit,
        batch_size=batch_size,
        console=console,
        verbose=verbose,
    )
    print_evaluation(console, result)


@app.command()
@handled
def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to a file instead.")
    ] = None,
) -> None:
    """Print the JSON Schema (draft-07) of the config format, for editors."""
    from cnnbuild.io import write_text
    from cnnbuild.schema.jsonschema import json_schema_text

    text = json_schema_text()
    if output is None:
        sys.stdout.write(text)
    else:
        write_text(output, text)


def _launch_workers(
    ctx: typer.Context, workers: int, config: Path | None, out: Path | None, seed: int | None
) -> int:
    """``train --workers N``: the same train command as N local multi-worker processes,
    with one run directory and one seed for all (a relaunch reuses the run's seed)."""
    import random

    from cnnbuild.distribute import launch_local
    from cnnbuild.train import new_run_dir
    from cnnbuild.validate import load_config

    if config is None or ctx.params.get("resume") is not None:
        raise UsageError("--workers: give a CONFIG (no --resume); a relaunch is the same command")
    if ctx.params.get("strategy") not in (None, StrategyChoice.multi_worker):
        raise UsageError("--workers starts multi-worker processes; drop --strategy")
    if out is None:
        out = new_run_dir(load_config(config), None)
    if seed is None:
        state = out / "state.json"
        seed = (
            json.loads(state.read_text())["seed"]
            if state.is_file()
            else random.SystemRandom().randrange(2**31)
        )
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
        sys.exit(130)
