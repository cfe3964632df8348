"""The image prompts of a session, as `GenerationState.image_prompts` holds them (no widgets).

An entry is (path, weight): an image file sent through the text encoder's vision tower and
blended with the prompt at that weight (`GenerationParams.image_prompts`). Entries are tuples,
so that the state's setter sees a real change and every edit makes a new value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ImagePromptEntry = tuple[str, float]

DEFAULT_WEIGHT = 1.0
MIN_WEIGHT, MAX_WEIGHT = -2.0, 2.0  # what the sliders offer; a negative weight subtracts
IMAGE_PROMPTS_NOT_RESTORED = (
    "the image prompts are not restored; add them again under Image prompts"
)


def image_prompt_entries(value: Iterable[Any]) -> tuple[ImagePromptEntry, ...]:
    """((path, weight), ...) from any sequence of pairs (the state property's `kind`)."""
    return tuple((str(path), float(weight)) for path, weight in value)


def added(
    entries: Sequence[ImagePromptEntry], paths: Iterable[str], weight: float = DEFAULT_WEIGHT
) -> tuple[ImagePromptEntry, ...]:
    """`entries` and then `paths` at `weight` (the same file twice is two image prompts)."""
    return (*entries, *((str(path), float(weight)) for path in paths))


def without(entries: Sequence[ImagePromptEntry], index: int) -> tuple[ImagePromptEntry, ...]:
    return tuple(entry for i, entry in enumerate(entries) if i != index)


def with_weight(
    entries: Sequence[ImagePromptEntry], index: int, weight: float
) -> tuple[ImagePromptEntry, ...]:
    return tuple(
        (path, float(weight)) if i == index else (path, w) for i, (path, w) in enumerate(entries)
    )


def image_names(entries: Sequence[ImagePromptEntry]) -> frozenset[str]:
    """What `<image:NAME>` may call the entries: each one's position (1 for the first) and its
    file's stem, as the library names them (sdxs_rt.plan)."""
    positions = (str(index + 1) for index in range(len(entries)))
    return frozenset((*positions, *(Path(path).stem for path, _ in entries)))


def placeholder(index: int) -> str:
    """`<image:2>`: how the prompt places the entry at `index` (0-based)."""
    return f"<image:{index + 1}>"


def not_restored_note(record: dict[str, Any]) -> str:
    """'Reuse all': a record's image prompts are digests, not files, so they are not restored."""
    return IMAGE_PROMPTS_NOT_RESTORED if record.get("image_prompts") else ""
