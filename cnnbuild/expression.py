"""Template arithmetic: ``$filters * 4``, ``($width + 1) // 2``, without ``eval``.

A template value that holds ``$`` is a parameter (``$filters``, any type) or an integer
expression over integer parameters with ``+ - * //`` and parentheses, read by a tiny
recursive-descent parser whose depth is bounded. A layer's ``name`` is the one place
text is built instead: ``conv_dw_$id``, ``${stage}_${id}`` (:func:`interpolate`).
"""

from __future__ import annotations

import re
from typing import Any

from cnnbuild.errors import suggest
from cnnbuild.schema.types import is_int

MAX_NESTING = 32
MAX_EXPRESSION = 200
_TOKEN = re.compile(r"\s*(?:(\d+)|\$([A-Za-z_][A-Za-z0-9_]*)|(//|[-+*()]))")


class ExpressionError(ValueError):
    """A bad template value; ``offset`` is the character of the text it is about."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def evaluate(text: str, params: dict[str, Any]) -> Any:
    """The value of a template string: ``$name``, or integer arithmetic on parameters.

    ``$filters * 4``, ``($width + 1) // 2``, ``-$n``: integers and ``$name`` of integer
    parameters, with ``+ - * //`` and parentheses. A tiny parser, never ``eval``.

    Args:
        text: the string written in the template.
        params: the parameters of this use of the template.

    Returns:
        The parameter's value for a plain ``$name`` (any type), else an integer.

    Raises:
        ExpressionError: with the offset of the offending character.
    """
    whole = re.fullmatch(r"\s*\$([A-Za-z_][A-Za-z0-9_]*)\s*", text)
    if whole:
        return _param(whole.group(1), params, text.index("$"))
    if len(text) > MAX_EXPRESSION:
        raise ExpressionError(f"an expression is at most {MAX_EXPRESSION} characters", 0)
    tokens: list[tuple[str, Any, int]] = []
    pos = 0
    while pos < len(text.rstrip()):
        m = _TOKEN.match(text, pos)
        if not m:
            at = len(text) - len(text[pos:].lstrip())
            raise ExpressionError(
                f"unexpected {text[at]!r} in {text!r}: template arithmetic takes integers, "
                "$parameters, + - * // and parentheses",
                at,
            )
        start = m.start(m.lastindex) - (m.group(2) is not None)
        if m.group(1) is not None:
            tokens.append(("int", int(m.group(1)), start))
        elif m.group(2) is not None:
            value = _param(m.group(2), params, start)
            if not is_int(value):
                raise ExpressionError(
                    f"${m.group(2)} is {value!r}; arithmetic needs an integer parameter", start
                )
            tokens.append(("int", value, start))
        else:
            tokens.append(("op", m.group(3), start))
        pos = m.end()
    return _Parser(text, tokens).run()


_NAME_PARAM = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(text: str, params: dict[str, Any]) -> str:
    """A templated layer name: each ``$name`` or ``${name}`` replaced by the parameter's
    text (a string or an integer parameter).

    >>> interpolate("conv_dw_$id", {"id": 3})
    'conv_dw_3'
    >>> interpolate("${stage}_${id}_relu", {"stage": "s1", "id": 2})
    's1_2_relu'

    Raises:
        ExpressionError: an unknown parameter, one that is not text or an integer, or a
            ``$`` that starts no parameter; with the offset of the character.
    """
    parts = []
    pos = 0
    for m in _NAME_PARAM.finditer(text):
        stray = text.find("$", pos, m.start())
        if stray >= 0:
            break
        name = m.group(1) or m.group(2)
        value = _param(name, params, m.start())
        if not (isinstance(value, str) or is_int(value)):
            raise ExpressionError(
                f"${name} is {value!r}; a name takes text or integer parameters", m.start()
            )
        parts += [text[pos : m.start()], str(value)]
        pos = m.end()
    stray = text.find("$", pos)
    if stray >= 0:
        raise ExpressionError(
            f"unexpected '$' in the name {text!r}: write $param or ${{param}}", stray
        )
    return "".join(parts) + text[pos:]


def _param(name: str, params: dict[str, Any], offset: int) -> Any:
    if name not in params:
        raise ExpressionError(f"unknown template parameter ${name}{suggest(name, params)}", offset)
    return params[name]


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'//') unary)* ;
    unary := '-' unary | INT | '(' expr ')'."""

    def __init__(self, text: str, tokens: list[tuple[str, Any, int]]) -> None:
        self.text = text
        self.tokens = tokens
        self.i = 0
        self.depth = 0

    def run(self) -> int:
        value = self.expr()
        if self.i < len(self.tokens):
            raise self.error("expected an operator")
        return value

    def error(self, what: str) -> ExpressionError:
        at = self.tokens[self.i][2] if self.i < len(self.tokens) else len(self.text.rstrip())
        return ExpressionError(f"{what} at character {at + 1} of {self.text!r}", at)

    def peek(self) -> Any:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def expr(self) -> int:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.peek()
            self.i += 1
            right = self.term()
            value = value + right if op == "+" else value - right
        return value

    def term(self) -> int:
        value = self.unary()
        while self.peek() in ("*", "//"):
            op, at = self.peek(), self.i
            self.i += 1
            right = self.unary()
            if op == "*":
                value *= right
            elif right == 0:
                self.i = at
                raise self.error("division by zero")
            else:
                value //= right
        return value

    def unary(self) -> int:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error("too deeply nested")
        try:
            if self.i >= len(self.tokens):
                raise self.error("expected a number or $parameter")
            kind, value, _ = self.tokens[self.i]
            if value == "-":
                self.i += 1
                return -self.unary()
            if value == "(":
                self.i += 1
                inner = self.expr()
                if self.peek() != ")":
                    raise self.error("expected ')'")
                self.i += 1
                return inner
            if kind != "int":
                raise self.error("expected a number or $parameter")
            self.i += 1
            return value
        finally:
            self.depth -= 1
