"""Text from users and files is data, never markup.

Concept names, prompts, paths and edit-file metadata reach three kinds of output: ``rich`` (which
reads ``[...]`` as markup and raises on an unbalanced ``[/]``), the terminal (which obeys ANSI escape
sequences: a file could recolour or rewrite the user's screen) and HTML pages. Two rules:

* at the edge, :func:`check_user_text` refuses what no concept name or prompt needs — bytes that are
  not UTF-8 (Python hands them over as lone surrogates), lone surrogates, control characters — before
  any model loads, naming the argument;
* on the way out, :func:`shown` (for ``rich``) and :func:`plain` (for ``print``) show every control,
  surrogate and bidirectional-override character as a visible escape (``\\x1b``, ``\\ud800``,
  ``\\u202e``), and :func:`shown` also escapes rich markup, so any string prints as the characters it
  holds. HTML pages use ``html.escape`` on the :func:`plain` form.
"""

from __future__ import annotations

import unicodedata

from rich.markup import escape as _escape_markup

from .errors import EraseKitError

__all__ = ["UserTextError", "text_problem", "check_user_text", "plain", "plain_lines", "shown"]

# Format characters that reorder or hide text on a terminal (Trojan Source, CVE-2021-42574).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class UserTextError(EraseKitError):
    """Text given on the command line (or read from a file) that erasekit will not take as a name or prompt."""


def _unsafe(ch: str) -> bool:
    """A character shown escaped: C0/C1 controls and DEL (Cc), surrogates (Cs), bidirectional controls."""
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI


def _escaped(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, carried by surrogateescape: shown as that byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def plain(value: object) -> str:
    """``str(value)`` with every control, surrogate and bidi-control character written as a visible escape."""
    s = str(value)
    return "".join(_escaped(ch) if _unsafe(ch) else ch for ch in s) if any(map(_unsafe, s)) else s


def plain_lines(value: object) -> str:
    """:func:`plain` line by line: for messages of erasekit's own that span lines (their line breaks kept)
    and quote user text (whose controls are escaped)."""
    return "\n".join(plain(line) for line in str(value).split("\n"))


def shown(value: object) -> str:
    """:func:`plain`, then rich markup escaped: safe to pass to ``rich`` anywhere it reads markup."""
    return _escape_markup(plain(value))


def text_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a concept name or prompt, or None.

    Lone surrogates in the U+DC80–U+DCFF range are how Python's ``surrogateescape`` carries argument
    bytes that were not UTF-8; any other lone surrogate cannot be encoded at all.
    """
    for i, ch in enumerate(value):
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:
            return f"byte 0x{code - 0xDC00:02x} at position {i} is not valid UTF-8"
        if 0xD800 <= code <= 0xDFFF:
            return f"a lone surrogate {_escaped(ch)} at position {i} (not encodable text)"
        if unicodedata.category(ch) == "Cc":
            return f"a control character {_escaped(ch)} at position {i}"
        if ch in _BIDI:
            return f"a bidirectional control {_escaped(ch)} at position {i} (it reorders what terminals show)"
    return None


def check_user_text(what: str, value: str) -> str:
    """``value`` if it is acceptable text, else :class:`UserTextError` naming ``what`` (e.g. ``--erase``)."""
    problem = text_problem(value)
    if problem:
        raise UserTextError(
            f"{what} '{plain(value)}': {problem}; give it as plain UTF-8 text without control characters"
        )
    return value
