"""Text from scene files, paths and other programs, made safe to print on a terminal."""

from __future__ import annotations

import unicodedata

BIDI_OVERRIDES = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Embeddings, overrides and isolates: they reorder what follows them on the line."""


def printable(text: str) -> str:
    """``text`` with control characters (C0, DEL, C1) and bidirectional overrides escaped as
    Python writes them (``\\x1b``, ``\\u202e``): an escape sequence in a prompt or a file
    name cannot retitle, clear or recolour the terminal or write to its clipboard."""
    if text.isprintable():
        return text
    return "".join(ascii(c)[1:-1] if unicodedata.category(c) == "Cc" or c in BIDI_OVERRIDES else c for c in text)
