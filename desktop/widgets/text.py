"""How messages look: one sentence, errors in red."""

from __future__ import annotations

ERROR_STYLE = "color: #c62828;"


def as_sentence(text: str) -> str:
    """'width 500 is not a multiple of 64' -> 'Width 500 is not a multiple of 64.'"""
    text = text.strip()
    if not text:
        return ""
    ending = "" if text[-1] in ".!?" else "."
    return text[0].upper() + text[1:] + ending
