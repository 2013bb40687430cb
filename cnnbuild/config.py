"""Located YAML -> a typed model config: its sections and its flat graph of nodes.

The sections (``compile``, ``train``, ``lint``, ``budget``, ``tune``) are pydantic models;
the layers expand in :mod:`cnnbuild.expand` into a flat list of :class:`Node`. Every
problem becomes a :class:`~cnnbuild.errors.Finding` pointing at the YAML; nothing here
raises on bad input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cnnbuild.errors import Finding, from_pydantic, suggest
from cnnbuild.expand import INPUT, Node, expand
from cnnbuild.schema.sections import (
    BudgetConfig,
    CompileConfig,
    FreezeRange,
    InitConfig,
    LintConfig,
    TrainConfig,
)
from cnnbuild.schema.tune import TuneSection
from cnnbuild.schema.types import is_int
from cnnbuild.source import Document

__all__ = ["INPUT", "NAME_RULE", "TOP_KEYS", "ModelConfig", "Node", "from_document"]

# A model name becomes a TensorFlow name scope (first character [A-Za-z0-9.], then
# [A-Za-z0-9_.\\/>-]), a Keras name (no `/`) and part of file names (NAME.keras,
# runs/NAME-...): the layer-name rule (schema.types) without its leading `_`, which a root
# name scope refuses: letters, digits, `_`, `.` and `-`, starting with a letter.
NAME_RULE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,99}")

INPUT_SCALING_MODES = ("auto", "none")
"""``auto``: an image model without its own scaling gets ``Rescaling(1/255)`` named
``input_scaling`` (see :func:`cnnbuild.expand.expand`); ``none``: inputs as they are."""

TOP_KEYS = (
    "name",
    "description",
    "input",
    "input_scaling",
    "layers",
    "blocks",
    "init",
    "freeze",
    "compile",
    "train",
    "lint",
    "budget",
    "tune",
)


@dataclass
class ModelConfig:
    """A parsed, schema-checked config (shapes are checked by :mod:`cnnbuild.trace`)."""

    file: str
    doc: Document
    name: str
    input_shape: tuple
    nodes: list[Node]
    output: str
    compile: CompileConfig
    train: TrainConfig
    lint: LintConfig
    findings: list[Finding] = field(default_factory=list)
    tune: TuneSection | None = None  # the search space of `cnnbuild tune` (cnnbuild.tune)
    budget: BudgetConfig = field(default_factory=BudgetConfig)  # the `budget` rule's limits
    input_scaling: str = "auto"  # one of INPUT_SCALING_MODES
    init: InitConfig | None = None  # where the starting weights come from
    freeze: FreezeRange | None = None  # the layers frozen (phases may say otherwise)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    @property
    def frozen(self) -> set[str]:
        """The names of the layers frozen when training starts (see :func:`frozen_names`)."""
        phases = self.train.phases
        return frozen_names(self, phases[0].freeze if phases else None)


def frozen_names(cfg: ModelConfig, freeze: FreezeRange | None = None) -> set[str]:
    """The layers frozen under ``freeze`` (``None``: the config's ``freeze:``), by name:
    those written ``trainable: false`` (or in a block or template use that is), and the
    range ``freeze`` names, in the model's order (the input first)."""
    out = {n.name for n in cfg.nodes if n.frozen}
    spec = cfg.freeze if freeze is None else freeze
    if spec is None or spec.empty:
        return out
    names = [n.name for n in cfg.nodes]
    index = {name: i for i, name in enumerate(names)}
    lo = 0 if spec.until is not None else index.get(spec.start)
    last = spec.until if spec.until is not None else spec.to
    hi = len(names) - 1 if last is None else index.get(last)
    if lo is None or hi is None:
        return out
    return out | set(names[lo : hi + 1])


def _freeze_findings(
    doc: Document, nodes: list[Node], spec: FreezeRange | None, path: tuple
) -> list[Finding]:
    """Names in a ``freeze:`` that no layer has (with a "did you mean"), and a range
    that runs backwards."""
    if spec is None:
        return []
    names = [n.name for n in nodes]
    findings = []
    for key, name in (("until", spec.until), ("from", spec.start), ("to", spec.to)):
        if name is not None and name not in names:
            findings.append(
                doc.finding(
                    (*path, key),
                    f"no layer is named {name!r}{suggest(name, names)}",
                )
            )
    if spec.start in names and spec.to in names and names.index(spec.to) < names.index(spec.start):
        message = f"freeze: {spec.to!r} comes before {spec.start!r} in the model; swap them"
        findings.append(doc.finding(path, message))
    return findings


def _phase_findings(doc: Document, data: dict, train: TrainConfig) -> list[Finding]:
    """``train.epochs`` given beside ``train.phases`` must be their sum."""
    raw = data.get("train")
    if not train.phases or not isinstance(raw, dict) or "epochs" not in raw:
        return []
    total = sum(p.epochs for p in train.phases)
    if train.epochs == total:
        return []
    message = (
        f"train.epochs is {train.epochs} but the phases add up to {total} epochs "
        f"({' + '.join(str(p.epochs) for p in train.phases)}); write {total} or leave "
        "epochs out"
    )
    return [doc.finding(("train", "epochs"), message)]


def _parse_input(doc: Document, raw: Any, findings: list[Finding]) -> tuple | None:
    ok = (
        isinstance(raw, list)
        and len(raw) == 3
        and all(v is None or (is_int(v) and v > 0) for v in raw[:2])
        and is_int(raw[2])
        and raw[2] > 0
    )
    if not ok:
        findings.append(
            doc.finding(
                ("input",),
                "input must be [height, width, channels]: "
                "positive integers (height and width may be "
                f"null); received {raw!r}",
            )
        )
        return None
    return tuple(raw)


def _valid_part(model: type[BaseModel], raw: dict) -> Any:
    """``model`` from the keys of ``raw`` that are valid on their own."""
    good = {}
    for name, value in raw.items():
        try:
            model(**{name: value})
        except (ValidationError, TypeError):
            continue
        good[name] = value
    return model(**good)


def _parse_input_scaling(doc: Document, data: dict, findings: list[Finding]) -> str:
    raw = data.get("input_scaling", "auto")
    if raw in INPUT_SCALING_MODES:
        return raw
    hint = " (write none, not null)" if raw is None else ""
    findings.append(
        doc.finding(
            ("input_scaling",),
            "input_scaling must be 'auto' (add Rescaling(1/255) unless the model scales its "
            f"inputs) or 'none' (take inputs as they are); received {raw!r}{hint}",
        )
    )
    return "auto"


def _section(
    doc: Document,
    data: dict,
    key: str,
    model: type[BaseModel],
    findings: list[Finding],
    partial: bool = False,
) -> Any:
    """The section ``key`` as ``model``; on errors, the defaults (or with ``partial``,
    the keys that are valid, so a typo in one limit does not hide the others)."""
    raw = data.get(key)
    if raw is None:
        return model()
    if not isinstance(raw, dict):
        findings.append(doc.finding((key,), f"{key} must be a mapping; received {raw!r}"))
        return model()
    try:
        return model(**raw)
    except ValidationError as exc:
        findings.extend(from_pydantic(doc, exc, (key,), raw, f"`{key}`", model.model_fields))
        return _valid_part(model, raw) if partial else model()
    except TypeError:
        findings.append(doc.finding((key,), f"the keys of {key} must be strings"))
    return model()


def _not_a_mapping(doc: Document, data: Any, parsed_with_findings: bool) -> list[Finding]:
    """What to say about a document that is not a mapping (empty, or a list, a number...)."""
    if data is None:
        if parsed_with_findings:  # the YAML error says it already
            return []
        message = "the file is empty; expected a mapping with `input:` and `layers:`"
        return [doc.finding((), message, rule="yaml")]
    message = f"a config is a mapping with `input:` and `layers:`; received a {type(data).__name__}"
    return [doc.finding((), message)]


def _top_keys(doc: Document, data: dict) -> list[Finding]:
    """Unknown top-level keys (with a suggestion) and missing ``input:``/``layers:``."""
    findings = [
        doc.finding(
            (key,),
            f"unknown key {key!r}{suggest(str(key), TOP_KEYS)}; expected one "
            f"of {', '.join(TOP_KEYS)}",
            prefer="key",
        )
        for key in data
        if key not in TOP_KEYS
    ]
    for key in ("input", "layers"):
        if key not in data:
            findings.append(doc.finding((), f"missing `{key}:`", prefer="key"))
    return findings


def _init_section(doc: Document, data: dict, findings: list[Finding]) -> InitConfig | None:
    """``init: {from: SOURCE}``; ``None`` without it or when it does not validate."""
    raw = data.get("init")
    if "init" not in data:
        return None
    if not isinstance(raw, dict):
        findings.append(doc.finding(("init",), f"init must be a mapping; received {raw!r}"))
        return None
    try:
        return InitConfig(**raw)
    except ValidationError as exc:
        fields = InitConfig.model_fields
        findings.extend(from_pydantic(doc, exc, ("init",), raw, "`init`", fields))
    except TypeError:
        findings.append(doc.finding(("init",), "the keys of init must be strings"))
    return None


def _freeze_section(doc: Document, data: dict, findings: list[Finding]) -> FreezeRange | None:
    """The top-level ``freeze:`` (``none``, ``{until: NAME}``, ``{from: A, to: B}``)."""
    if "freeze" not in data:
        return None
    raw = data["freeze"]
    if raw == "none":
        return FreezeRange()
    if not isinstance(raw, dict):
        message = f"freeze is `none`, `{{until: NAME}}` or `{{from: A, to: B}}`; received {raw!r}"
        findings.append(doc.finding(("freeze",), message))
        return None
    return _section(doc, data, "freeze", FreezeRange, findings)


def model_name(text: str) -> str:
    """``text`` made a name :data:`NAME_RULE` takes: every other character becomes ``_``,
    and ``model_`` goes in front when it does not start with a letter.

    >>> model_name("mobilenetv2_1.00_224"), model_name("-1"), model_name("my net")
    ('mobilenetv2_1.00_224', 'model_-1', 'my_net')
    """
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
    return (stem if re.match(r"[A-Za-z]", stem) else f"model_{stem}")[:100]


def _name(doc: Document, data: dict, findings: list[Finding]) -> str:
    """The model's name, checked against :data:`NAME_RULE`; without a ``name:``, the file's
    stem made one (:func:`model_name`)."""
    default = model_name(Path(doc.file).stem)
    name = data.get("name", default)
    if not isinstance(name, str) or not name:
        findings.append(doc.finding(("name",), f"name must be a string; received {name!r}"))
        return default
    if NAME_RULE.fullmatch(name) is None:
        findings.append(
            doc.finding(
                ("name",),
                f"{name!r} is not a valid model name; use letters, digits, `_`, `.` and `-`, "
                "starting with a letter, at most 100 characters (TensorFlow name scopes, "
                "Keras names and file names take these)",
            )
        )
    return name


def from_document(doc: Document) -> ModelConfig | None:
    """Check a parsed document and expand its layers into nodes.

    Returns:
        The config with ``findings`` (possibly errors), or ``None`` when the document is
        not even a mapping.
    """
    findings = list(doc.findings)
    data = doc.data
    if not isinstance(data, dict):
        doc.findings = findings + _not_a_mapping(doc, data, bool(findings))
        return None
    findings += _top_keys(doc, data)
    name = _name(doc, data, findings)
    input_shape = _parse_input(doc, data.get("input"), findings) if "input" in data else None
    scaling = _parse_input_scaling(doc, data, findings)
    compile_cfg = _section(doc, data, "compile", CompileConfig, findings)
    train_cfg = _section(doc, data, "train", TrainConfig, findings)
    lint_cfg = _section(doc, data, "lint", LintConfig, findings)
    budget_cfg = _section(doc, data, "budget", BudgetConfig, findings, partial=True)
    tune_cfg = _section(doc, data, "tune", TuneSection, findings) if "tune" in data else None
    init_cfg = _init_section(doc, data, findings)
    freeze = _freeze_section(doc, data, findings)
    findings += _phase_findings(doc, data, train_cfg)
    nodes: list[Node] = []
    output = INPUT
    if "layers" in data:
        layers = data["layers"]
        if isinstance(layers, list) and not layers:
            findings.append(
                doc.finding(("layers",), "layers is empty; a model needs at least one layer")
            )
        image = input_shape is not None and len(input_shape) == 3 and scaling == "auto"
        nodes, output = expand(doc, layers, data.get("blocks"), findings, image)
        findings += _freeze_findings(doc, nodes, freeze, ("freeze",))
        for i, phase in enumerate(train_cfg.phases or ()):
            findings += _freeze_findings(doc, nodes, phase.freeze, ("train", "phases", i, "freeze"))
    return ModelConfig(
        doc.file,
        doc,
        name,
        input_shape or (None, None, None),
        nodes,
        output,
        compile_cfg,
        train_cfg,
        lint_cfg,
        findings,
        tune=tune_cfg,
        budget=budget_cfg,
        input_scaling=scaling,
        init=init_cfg,
        freeze=freeze,
    )
