"""Names made safe to print to a terminal or show in the app: control characters written as escapes.

A file name may hold any character but "/" and NUL. Printed raw, an ESC sequence in one rewrites the terminal (moves
the cursor, retitles the window, hides the lines before it), a newline or carriage return forges a line of output,
a bidi override reverses what follows, and an undecodable byte (kept by Python as a lone surrogate) makes `print`
raise. `printable` escapes all of these the way `repr` would and leaves every other character as it is.
"""

from __future__ import annotations

import re

# C0 and C1 controls, DEL, line/paragraph separators, bidi embeddings/overrides/isolates, lone surrogates.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: object, lines: bool = False) -> str:
    """`str(text)` with every control, bidi-override and undecodable character escaped (`\\x1b`, `\\n`,
    `\\u202e`); the result holds nothing a terminal would interpret. `lines=True` keeps line breaks (for a
    message of several lines whose names were escaped already)."""
    escape = _escape_keeping_lines if lines else _escape
    return _UNSAFE.sub(escape, str(text))


def _escape_keeping_lines(match: re.Match[str]) -> str:
    return "\n" if match.group() == "\n" else _escape(match)
