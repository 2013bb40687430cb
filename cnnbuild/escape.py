"""One escaping function per place a name or a path is shown to a person.

Names come from users and from files (config names, layer names, class names, image
file names): any of them may hold markup, control characters or bytes that are not
UTF-8. Each output has its own hazards:

- the terminal: escape sequences and control characters (``\\x1b[2J``), line separators
  (U+2028), and file names that are not UTF-8 (Python holds their bytes as lone
  surrogates, which a strict UTF-8 stdout refuses): :func:`terminal` shows them as
  ``\\xNN`` / ``\\uNNNN``;
- rich markup (``mk[/]/x.png``, ``[draft]``): :func:`rich`;
- matplotlib text, where ``$...$`` is mathtext (``price_$1_to_$5``): :func:`mathtext`;
- Graphviz DOT strings (a ``"`` or a trailing ``\\``): :func:`dot`;
- CSV cells that a spreadsheet would run as a formula (``=1+2``): :func:`csv_cell`;
- Markdown table cells (a ``|`` ends the cell, ``<x>`` is read as HTML): :func:`markdown_cell`.
- GitHub markdown (a PR comment, a job summary), where a name could close a code span,
  open an HTML comment (``<!--``), start a new line (``\r``), make a link or an
  ``@mention``: :func:`md_code` puts every text a user controls in a code span that
  cannot be closed.

HTML is escaped by the report's template engine (Jinja2 with autoescape).
"""

from __future__ import annotations

import os
import re

_BACKTICKS = re.compile(r"`+")
_RICH_TAG = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _visible(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def terminal(text: object) -> str:
    """``text`` with every character a terminal would act on, or cannot encode, made visible.

    Printable characters (letters of any script, digits, punctuation, the space) are kept;
    control characters, line and paragraph separators, format characters (bidirectional
    overrides) and lone surrogates become ``\\xNN``, ``\\uNNNN`` escapes.

    >>> terminal("a\\x1b[31mb\\u2028c")
    'a\\\\x1b[31mb\\\\u2028c'
    """
    text = os.fspath(text) if isinstance(text, os.PathLike) else str(text)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    return "".join(ch if ch == " " or ch.isprintable() else _visible(ch) for ch in text)


def rich(text: object) -> str:
    """``text`` for a rich console with markup on: :func:`terminal`, then every ``[`` that
    rich would read as a tag escaped (and the backslashes before it doubled), so that
    ``mk[/]/x.png`` and ``[draft]`` print as written.

    Rich's own ``markup.escape`` also doubles a trailing backslash, which then prints
    twice unless a tag follows; the fragments here are never followed by a tag.
    """
    return _RICH_TAG.sub(lambda m: f"{m[1]}{m[1]}\\{m[2]}", terminal(text))


def mathtext(text: object) -> str:
    """``text`` for matplotlib: every ``$`` escaped so no mathtext is parsed."""
    return terminal(text).replace("$", r"\$")


def dot(text: object) -> str:
    """``text`` for the inside of a double-quoted Graphviz DOT string.

    Backslashes are doubled (a trailing ``\\`` would escape the closing quote), quotes
    escaped, and line breaks made visible.
    """
    return terminal(text).replace("\\", "\\\\").replace('"', '\\"')


def csv_cell(text: object) -> str:
    """``text`` for a CSV cell: :func:`terminal` (so a U+2028 or a newline cannot start a
    new row in any reader), and a leading ``= + - @`` (a spreadsheet formula) neutralised
    with a ``'`` before it, as OWASP advises."""
    text = terminal(text)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


_MARKDOWN = {"&": "&amp;", "<": "&lt;", ">": "&gt;"} | {c: f"&#{ord(c)};" for c in "|\\`*_[]"}


def markdown_cell(text: object, code: bool = False) -> str:
    """``text`` for a Markdown table cell, shown as written: on one line; HTML's ``& < >``
    as entities (``<bool>`` would be an unknown tag); ``|`` (it ends the cell) and what
    Markdown would read as markup (``\\ ` * _ [ ]``) as character references, which
    Markdown leaves alone even inside ``<code>``. ``code`` wraps it in ``<code>``.
    """
    text = "".join(_MARKDOWN.get(c, c) for c in terminal(" ".join(str(text).split())))
    return f"<code>{text}</code>" if code else text


def md_code(text: object) -> str:
    """``text`` as one GitHub markdown code span that nothing inside can close or break.

    :func:`terminal` first (no CR, LF or other control character, no byte that is not
    UTF-8), then ``|`` escaped (GitHub splits table cells on it even inside a code span),
    then a fence one backtick longer than the longest run of backticks inside, padded with
    spaces when the text starts or ends with a backtick or a space. Inside a code span
    ``<!--``, ``[link](url)`` and ``@org/team`` are shown as written, never acted on.

    >>> md_code("a`b")
    '``a`b``'
    """
    text = terminal(text).replace("|", "\\|")
    fence = "`" * (1 + max((len(m) for m in _BACKTICKS.findall(text)), default=0))
    pad = " " if not text or text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"
