"""Text the gateway sent, made safe to print on a terminal: no control characters (ANSI escapes, carriage
returns, C1 codes), no bidi overrides or isolates, no zero-width characters."""

from __future__ import annotations

import re

UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f"  # C0 and C1 controls, DEL (ESC starts ANSI sequences)
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidi marks, embeddings, overrides, isolates
    "\u200b-\u200d\u2060\ufeff"  # zero-width space, non-joiner, joiner, word joiner, BOM
    "\u2028\u2029]"  # line and paragraph separators
)


def clean(text: object) -> str:
    """`text` as a string without the characters that could rewrite or disguise what a terminal shows."""
    return UNPRINTABLE.sub("", str(text))
