"""Located YAML -> a typed model config: its sections and its flat graph of nodes.

The sections (``compile``, ``train``, ``lint``, ``tune``) are pydantic models; the layers expand
in :mod:`cnnbuild.expand` into a flat list of :class:`Node`. Every problem becomes a
:class:`~cnnbuild.errors.Finding` pointing at the YAML; nothing here raises on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cnnbuild.errors import Finding, from_pydantic, suggest
from cnnbuild.expand import INPUT, Node, expand
from cnnbuild.schema.sections import CompileConfig, LintConfig, TrainConfig
from cnnbuild.schema.tune import TuneSection
from cnnbuild.schema.types import is_int
from cnnbuild.source import Document

__all__ = ["INPUT", "TOP_KEYS", "ModelConfig", "Node", "from_document"]

TOP_KEYS = (
    "name",
    "description",
    "input",
    "layers",
    "blocks",
    "compile",
    "train",
    "lint",
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

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


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


def _section(
    doc: Document, data: dict, key: str, model: type[BaseModel], findings: list[Finding]
) -> Any:
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
    name = data.get("name", Path(doc.file).stem)
    if not isinstance(name, str) or not name:
        findings.append(doc.finding(("name",), f"name must be a string; received {name!r}"))
        name = Path(doc.file).stem
    input_shape = _parse_input(doc, data.get("input"), findings) if "input" in data else None
    compile_cfg = _section(doc, data, "compile", CompileConfig, findings)
    train_cfg = _section(doc, data, "train", TrainConfig, findings)
    lint_cfg = _section(doc, data, "lint", LintConfig, findings)
    tune_cfg = _section(doc, data, "tune", TuneSection, findings) if "tune" in data else None
    nodes: list[Node] = []
    output = INPUT
    if "layers" in data:
        layers = data["layers"]
        if isinstance(layers, list) and not layers:
            findings.append(
                doc.finding(("layers",), "layers is empty; a model needs at least one layer")
            )
        image = input_shape is not None and len(input_shape) == 3
        nodes, output = expand(doc, layers, data.get("blocks"), findings, image)
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
    )
