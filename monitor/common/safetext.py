"""Text from outside (moderators, publishers, bank files) on its way to a terminal or a log.

A newline in a moderator's name forges a second log line; an escape sequence in a reason rewrites the terminal of
whoever reads the log; a bidirectional override makes a name read backwards. Such characters are refused where
text comes in (`forbidden_char`, used by the command parser) and escaped where text goes out (`printable`,
`EscapingFormatter` for the text log).
"""

from __future__ import annotations

import logging
import unicodedata

__all__ = ["EscapingFormatter", "describe_char", "forbidden_char", "printable"]

# Bidirectional embeddings, overrides, isolates and marks: they reorder what a reader sees.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# Control characters (C0, DEL, C1), line and paragraph separators, lone surrogates.
_CATEGORIES = frozenset({"Cc", "Zl", "Zp", "Cs"})


def _bad(c: str) -> bool:
    return c in _BIDI or unicodedata.category(c) in _CATEGORIES


def forbidden_char(text: str) -> tuple[int, str] | None:
    """The position and character of the first control, separator, surrogate or bidi character, or None."""
    for i, c in enumerate(text):
        if _bad(c):
            return i, c
    return None


def describe_char(c: str) -> str:
    """U+001B (ESCAPE): how a refused character is named in an error (never the character itself)."""
    name = unicodedata.name(c, "")
    if not name and unicodedata.category(c) == "Cc":
        name = {"\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\t": "TAB", "\x1b": "ESCAPE", "\x7f": "DELETE"}.get(
            c, "control character")
    return f"U+{ord(c):04X}" + (f" ({name})" if name else "")


def printable(text: str) -> str:
    """text with every such character written as an escape (\\x1b, \\n, \\u202e): one line, inert on a terminal."""
    if forbidden_char(text) is None:
        return text
    out = []
    for c in text:
        if not _bad(c):
            out.append(c)
        elif c in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[c])
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        else:
            out.append(f"\\u{ord(c):04x}")
    return "".join(out)


class EscapingFormatter(logging.Formatter):
    """A text-log formatter whose message part is one line without terminal escapes, whatever it quotes.

    Tracebacks (exc_info, stack_info) keep their line breaks: they come from the code, not from outside."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))
