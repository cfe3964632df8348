"""How messages look: one sentence, errors in red, warnings in amber, hints in grey."""

from __future__ import annotations

ERROR_STYLE = "color: #c62828;"
WARNING_STYLE = "color: #9a6700;"  # what the library warns about; the run goes on
HINT_STYLE = "color: palette(mid);"


def as_sentence(text: str) -> str:
    """'width 500 is not a multiple of 64' -> 'Width 500 is not a multiple of 64.'

    A message that starts with a file name or hub id ('cat.png has no ...') keeps its case.
    """
    text = text.strip()
    if not text:
        return ""
    first_word = text.split(maxsplit=1)[0].rstrip(":,;")
    if first_word.isalpha():
        text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."
