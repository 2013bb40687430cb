"""Validate config files: read, schema, static trace, lint. No TensorFlow."""

from __future__ import annotations

import glob
from pathlib import Path

from cnnbuild.checks import RULES, ignored, lint
from cnnbuild.config import ModelConfig, from_document
from cnnbuild.errors import ConfigError, Finding, UsageError
from cnnbuild.search_space import space_findings
from cnnbuild.source import Document, parse_text, read_document
from cnnbuild.trace import Trace, trace
from cnnbuild.transfer import init_findings

YAML_SUFFIXES = (".yaml", ".yml")
SEVERITY_ORDER = {"error": 0, "warning": 1, "info": 2}


def expand_paths(paths: list[str]) -> tuple[list[Path], list[Finding]]:
    """Files, directories (searched recursively for *.yaml / *.yml) and globs.

    Returns:
        ``(files, findings)``: a directory holding no YAML is a finding.

    Raises:
        UsageError: a path that does not exist and matches no glob.
    """
    files: list[Path] = []
    findings: list[Finding] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix in YAML_SUFFIXES and p.is_file() and ".pre-commit" not in p.name
            )
            if not found:
                findings.append(
                    Finding(
                        raw, 0, 0, "error", "io", "no YAML files (*.yaml, *.yml) in this directory"
                    )
                )
            files.extend(found)
        elif path.exists():
            files.append(path)
        elif any(ch in raw for ch in "*?["):
            matched = sorted(Path(p) for p in glob.glob(raw, recursive=True) if Path(p).is_file())
            if not matched:
                raise UsageError(f"no file matches {raw!r}")
            files.extend(matched)
        else:
            raise UsageError(f"no such file or directory: {raw!r}")
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique, findings


def check_file(
    path: str | Path, ignore: frozenset[str] = frozenset(), text: str | None = None
) -> tuple[ModelConfig | None, Trace | None, list[Finding]]:
    """Read, schema-check, trace and lint one config.

    Args:
        path: the config file (with ``text``: the name its findings give).
        ignore: lint rule ids to skip.
        text: the config's YAML, when it is not read from ``path`` (an imported model).

    Returns:
        ``(config, trace, findings)`` sorted by position; ``config`` and ``trace`` are
        ``None`` when the file is not a readable mapping.
    """
    doc = read_document(path) if text is None else parse_text(text, str(path))
    return check_document(doc, ignore)


def check_document(
    doc: Document, ignore: frozenset[str] = frozenset()
) -> tuple[ModelConfig | None, Trace | None, list[Finding]]:
    """:func:`check_file` for a document already read (e.g. from a git revision)."""
    cfg = from_document(doc)
    if cfg is None:
        return None, None, _sorted(doc.findings)
    tr = None
    if cfg.input_shape[2] is not None:
        tr = trace(cfg)
        cfg.findings.extend(tr.findings)
        cfg.findings.extend(_fold(lint(tr, ignore)))
    if cfg.tune is not None:  # the search space of `cnnbuild tune`: paths and corners
        cfg.findings.extend(space_findings(cfg))
    cfg.findings.extend(init_findings(cfg, tr))  # init: the source exists and fits
    skip = ignored(cfg, ignore)  # rules found outside lint (dead-layer) are ignored here
    cfg.findings = _sorted([f for f in cfg.findings if f.rule not in skip])
    return cfg, tr, cfg.findings


def _fold(findings: list[Finding]) -> list[Finding]:
    """One finding per rule and YAML position: a block used 50 times gives one line."""
    groups: dict[tuple, list[Finding]] = {}
    for f in findings:
        groups.setdefault((f.line, f.column, f.rule), []).append(f)
    out = []
    for same in groups.values():
        first = same[0]
        if len(same) > 1:
            first.message += f" (and {len(same) - 1} more from the same line)"
        out.append(first)
    return out


def _sorted(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (f.line, f.column, SEVERITY_ORDER[f.severity]))


def _existing(path: str | Path) -> Path:
    if not Path(path).exists():
        raise UsageError(f"{path}: no such config file")
    return Path(path)


def blocks_build(finding: Finding) -> bool:
    """Whether a finding stops a model from being built (a view still shows the rest).

    Schema, YAML, shape and naming errors do: Keras could not build the model. Lint
    findings never do, whatever their severity: ``validate`` decides pass or fail.
    """
    if finding.severity != "error":
        return False
    spec = RULES.get(finding.rule)
    return spec is None or not spec.lint


def load_traced(path: str | Path, text: str | None = None) -> tuple[ModelConfig, Trace]:
    """Load a config for a view or a build, with its static trace.

    Args:
        path: a YAML config file (with ``text``: the name its findings give).
        text: the config's YAML, when it is not read from ``path`` (an imported model).

    Returns:
        The config and its trace; lint findings (even errors) stay in
        ``config.findings`` for the caller to show as notes.

    Raises:
        ConfigError: carrying every finding, when the model cannot be built.

    Example:
        >>> cfg, tr = load_traced("configs/cifar10_tutorial.yaml")
        >>> cfg.input_shape, tr.output_shape
        ((32, 32, 3), (10,))
    """
    doc = read_document(_existing(path)) if text is None else parse_text(text, str(path))
    return traced(doc)


def traced(doc: Document) -> tuple[ModelConfig, Trace]:
    """:func:`load_traced` for a document already read (e.g. from a git revision).

    Raises:
        ConfigError: carrying every finding, when the model cannot be built.
    """
    cfg, tr, findings = check_document(doc)
    blocking = [f for f in findings if blocks_build(f)]
    if cfg is None or tr is None or blocking:
        errors = [f for f in findings if f.severity == "error"]
        raise ConfigError(f"{doc.file}: {len(errors)} error(s)", findings)
    return cfg, tr


def load_config(path: str | Path) -> ModelConfig:
    """Load a config for training: any error, lint errors included, refuses it.

    Raises:
        ConfigError: carrying every finding, when the config has an error.
    """
    cfg, _, findings = check_file(_existing(path))
    errors = [f for f in findings if f.severity == "error"]
    if cfg is None or errors:
        raise ConfigError(f"{path}: {len(errors)} error(s)", findings)
    return cfg
