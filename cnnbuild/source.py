"""YAML text -> plain values plus the line and column of every key and value.

Only PyYAML's ``SafeLoader`` machinery is used: the document is *composed* into nodes
(no object is constructed), then walked here. Scalars are built with the safe
constructor, so a Python tag or any unknown tag is a finding, never code. The walk
also records duplicate keys (which loaders silently collapse), bounds the expanded
size of aliases ("billion laughs") and the nesting depth.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnbuild.errors import Finding, Position
from cnnbuild.io import FileRefused, read_regular

MAX_NODES = 200_000
MAX_DEPTH = 64
MAX_BYTES = 2_000_000

PathKey = tuple  # tuple[str | int, ...]

_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"


@dataclass
class Document:
    """A parsed YAML document.

    Attributes:
        file: the path as the user gave it.
        data: the plain value (dicts, lists, str, int, float, bool, None).
        keys: position of each mapping key, by path.
        values: position of each value, by path.
        findings: problems found while reading (syntax, duplicate keys, limits).
        lines: the source lines, for showing context.
    """

    file: str
    data: Any = None
    keys: dict[PathKey, Position] = field(default_factory=dict)
    values: dict[PathKey, Position] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)

    def locate(self, path: PathKey, prefer: str = "value") -> Position:
        """Return the position of ``path``, or of its nearest recorded parent.

        A missing key has no position of its own, so it points at the mapping that
        should hold it (rendercv's habit).

        Args:
            path: the location, e.g. ``("layers", 3, "Conv2D", "strides")``.
            prefer: ``"key"`` to point at the key, ``"value"`` at the value.
        """
        path = tuple(path)
        while True:
            first, second = (
                (self.keys, self.values) if prefer == "key" else (self.values, self.keys)
            )
            if path in first:
                return first[path]
            if path in second:
                return second[path]
            if not path:
                return Position(1, 1)
            path = path[:-1]

    def finding(
        self,
        path: PathKey,
        message: str,
        *,
        rule: str = "schema",
        severity: str = "error",
        hint: str = "",
        prefer: str = "value",
        path_text: str | None = None,
    ) -> Finding:
        """Make a finding that points at ``path`` in this document."""
        pos = self.locate(path, prefer)
        return Finding(
            file=self.file,
            line=pos.line,
            column=pos.column,
            end_line=pos.end_line,
            end_column=pos.end_column,
            severity=severity,
            rule=rule,
            message=message,
            path=format_path(path) if path_text is None else path_text,
            hint=hint,
        )


def format_path(path: PathKey) -> str:
    """``("layers", 3, "Conv2D", "strides")`` -> ``layers[3].Conv2D.strides``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _pos(node: yaml.Node) -> Position:
    start, end = node.start_mark, node.end_mark
    return Position(start.line + 1, start.column + 1, end.line + 1, end.column + 1)


class _TooBig(Exception):
    def __init__(self, node: yaml.Node, what: str) -> None:
        super().__init__(what)
        self.node = node
        self.what = what


class _Walker:
    def __init__(self, doc: Document, loader: yaml.SafeLoader) -> None:
        self.doc = doc
        self.loader = loader
        self.count = 0

    def walk(self, node: yaml.Node, path: PathKey, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _TooBig(
                node, f"the document expands to more than {MAX_NODES} values (an alias bomb?)"
            )
        if depth > MAX_DEPTH:
            raise _TooBig(node, f"the document nests deeper than {MAX_DEPTH} levels")
        self.doc.values.setdefault(path, _pos(node))
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ_TAG:
                raise yaml.constructor.ConstructorError(
                    None, None, f"tag {node.tag!r} is not allowed", node.start_mark
                )
            return [self.walk(item, (*path, i), depth + 1) for i, item in enumerate(node.value)]
        return self._scalar(node)

    def _scalar(self, node: yaml.Node) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except ValueError as exc:  # int("9" * 5000): Python's integer-string limit
            if "digits" not in str(exc):
                raise
            raise _TooBig(
                node, f"a number of {len(node.value)} characters, beyond any value a config takes"
            ) from None

    def _mapping(self, node: yaml.MappingNode, path: PathKey, depth: int) -> dict:
        if node.tag != _MAP_TAG:
            raise yaml.constructor.ConstructorError(
                None, None, f"tag {node.tag!r} is not allowed", node.start_mark
            )
        self.loader.flatten_mapping(node)  # resolve `<<` merge keys, as SafeLoader does
        out: dict = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    "a mapping key must be a plain value, not a list or mapping",
                    key_node.start_mark,
                )
            key = self._scalar(key_node)
            child = (*path, key)
            if key in out:
                first = self.doc.keys[child]
                self.doc.findings.append(
                    Finding(
                        file=self.doc.file,
                        line=key_node.start_mark.line + 1,
                        column=key_node.start_mark.column + 1,
                        severity="error",
                        rule="duplicate-key",
                        message=f"duplicate key {key!r}: it was already set on line {first.line}, "
                        "and YAML loaders silently keep only the last value",
                        path=format_path(child),
                        hint="remove or rename one of them",
                    )
                )
            self.doc.keys[child] = _pos(key_node)
            self.doc.values.pop(child, None)
            out[key] = self.walk(value_node, child, depth + 1)
        return out


def _line_col(text: str | bytes, offset: int) -> tuple[int, int]:
    """1-based line and column of a character (or byte) offset."""
    newline = "\n" if isinstance(text, str) else b"\n"
    return text.count(newline, 0, offset) + 1, offset - (text.rfind(newline, 0, offset) + 1) + 1


def parse_text(text: str, file: str = "<string>") -> Document:
    """Parse YAML text into a :class:`Document`; problems become findings.

    Args:
        text: the YAML source.
        file: the name to report in findings.

    Returns:
        The document. ``doc.data`` is ``None`` when the text could not be read.
    """
    doc = Document(file=file, lines=text.splitlines())
    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        doc.findings.append(
            Finding(
                file,
                line,
                col,
                "error",
                "yaml",
                f"invalid YAML: unacceptable character #x{exc.character:04x}"
                ": control characters are not allowed",
            )
        )
        return doc
    try:
        node = loader.get_single_node()
        if node is None:
            doc.findings.append(
                Finding(
                    file,
                    1,
                    1,
                    "error",
                    "yaml",
                    "the file is empty; expected a mapping with `input:` and `layers:`",
                )
            )
            return doc
        doc.data = _Walker(doc, loader).walk(node, (), 0)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or "invalid YAML"
        if exc.context:
            problem = f"{exc.context}: {problem}" if "found" in problem else problem
        doc.findings.append(Finding(file, line, col, "error", "yaml", f"invalid YAML: {problem}"))
        doc.data = None
    except yaml.YAMLError as exc:
        doc.findings.append(Finding(file, 1, 1, "error", "yaml", f"invalid YAML: {exc}"))
        doc.data = None
    except _TooBig as exc:
        pos = _pos(exc.node)
        doc.findings.append(
            Finding(file, pos.line, pos.column, "error", "yaml", f"refusing to read: {exc.what}")
        )
        doc.data = None
    except RecursionError:
        doc.findings.append(
            Finding(file, 1, 1, "error", "yaml", "refusing to read: the document nests too deeply")
        )
        doc.data = None
    finally:
        loader.dispose()
    return doc


def _refused(file: str, message: str, rule: str = "io") -> Document:
    doc = Document(file=file)
    doc.findings.append(Finding(file, 0, 0, "error", rule, message))
    return doc


def read_document(path: str | Path) -> Document:
    """Read and parse one YAML file; an unreadable file becomes a finding.

    The file is checked before a byte is read: something that is not a regular file
    (``/dev/zero``, a FIFO, a socket) is refused without opening it, and a file larger
    than :data:`MAX_BYTES` is refused without reading it. The read itself is bounded
    too, in case the file grows in between.

    Args:
        path: the file to read.
    """
    file = str(path)
    try:
        raw = read_regular(path, MAX_BYTES)
    except FileRefused as exc:
        if exc.size is not None:
            return _refused(file, _too_big(exc.size), "yaml")
        if exc.os_error is not None:
            return _refused(file, f"cannot read the file: {exc}")
        return _refused(
            file,
            "not a regular file (a device, a pipe or a socket); "
            "give the path of a YAML config file",
        )
    return parse_bytes(raw, file)


def parse_bytes(raw: bytes, file: str) -> Document:
    """Decode (UTF-8) and parse the bytes of a config; problems become findings.

    Args:
        raw: the file's content, read with a bound (at most ``MAX_BYTES + 1`` bytes).
        file: the name to report in findings (a path, or ``REF:PATH`` for a git revision).
    """
    if len(raw) > MAX_BYTES:
        return _refused(file, _too_big(len(raw)), "yaml")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        doc = Document(file=file)
        line, col = _line_col(raw, exc.start)
        doc.findings.append(
            Finding(
                file,
                line,
                col,
                "error",
                "yaml",
                f"the file is not UTF-8 text: byte 0x{raw[exc.start]:02x} at offset {exc.start}",
            )
        )
        return doc
    return parse_text(text, file)


def _too_big(size: int) -> str:
    return f"the file is {size} bytes; a model config is at most {MAX_BYTES} bytes"
