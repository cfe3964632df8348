"""From parsed prompts to the condition vectors the U-Net sees, step by step.

SDXS conditions on one pooled vector, so a blend is a weighted sum of its parts' vectors and a
prompt schedule is a switch between vectors at step boundaries: no extra U-Net passes. Each
part (a text, or an image prompt through the vision tower) is encoded once and kept in a small
cache keyed by its text or its image's digest. A plain prompt is encoded exactly as before:
one call of the text encoder on the whole text.

Image prompts given beside the prompt (`image_prompts=[(image, weight)]`, `--image-prompt`) are
blend parts too: they join the prompt's parts with their own weights, and the sum is divided by
all positive weights together (sdxs_rt.prompt_syntax's rule). `<image:NAME>` inside the prompt
places one at a chosen weight instead (NAME: its position, 1 for the first, or its file's
stem); an image named in the prompt is not added a second time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from sdxs_rt.components import Array
from sdxs_rt.errors import UsageError
from sdxs_rt.prompt_syntax import PromptProgram, WeightedPart

CACHE_SIZE = 256  # encoded parts kept per pipeline: a long desktop session stays bounded


@dataclass(frozen=True)
class Condition:
    """One vector (1, D) and the last step (1-based, of its pass) it holds for."""

    until_step: int
    vector: Array


class PartCache:
    """Encoded parts by key, least recently used dropped first."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], Array] = OrderedDict()

    def get(self, key: tuple[str, str], encode: Callable[[], Array]) -> Array:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = encode()
        self._items[key] = value
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


@dataclass(frozen=True)
class ImagePromptRef:
    """An image prompt as the conditioning sees it: a cache key (its digest) and a weight."""

    names: tuple[str, ...]  # what `<image:NAME>` may call it
    digest: str
    weight: float


def condition_schedule(
    program: PromptProgram,
    steps: int,
    images: Sequence[ImagePromptRef],
    encode: Callable[[WeightedPart], Array],
) -> list[Condition]:
    """The condition vectors of a pass of `steps` steps, one per run of equal parts."""
    conditions: list[Condition] = []
    for segment in program.segments(steps):
        parts = with_image_prompts(program, segment.parts, images)
        conditions.append(Condition(segment.until_step, blend(parts, encode)))
    return conditions


def with_image_prompts(
    program: PromptProgram, parts: tuple[WeightedPart, ...], images: Sequence[ImagePromptRef]
) -> tuple[WeightedPart, ...]:
    """The prompt's parts with the image prompts it does not name, renormalised together."""
    named = {p.image for p in parts if p.image is not None}
    extra = [image for image in images if not named & set(image.names)]
    if not extra:
        return parts
    prompt_total = (
        sum(p.weight for p in program.parts if p.weight > 0) if not program.is_plain else 1.0
    )
    raw = [(p.weight * prompt_total, p) for p in parts]
    raw += [(image.weight, WeightedPart(image.weight, image=image.names[0])) for image in extra]
    total = sum(weight for weight, _ in raw if weight > 0)
    if total <= 0:
        raise UsageError("the prompt and image prompts have no weight above 0 between them")
    return tuple(
        WeightedPart(weight / total, text=part.text, image=part.image)
        for weight, part in raw
        if weight != 0
    )


def blend(parts: Sequence[WeightedPart], encode: Callable[[WeightedPart], Array]) -> Array:
    """sum(weight * vector); a single part of weight 1 is its vector untouched."""
    if len(parts) == 1 and parts[0].weight == 1.0:
        return encode(parts[0])
    total: Array | None = None
    for part in parts:
        term = encode(part) * float(part.weight)
        total = term if total is None else total + term
    assert total is not None
    return total


def condition_at(conditions: Sequence[Condition], step: int) -> Array:
    """The vector for 1-based `step`."""
    for condition in conditions:
        if step <= condition.until_step:
            return condition.vector
    return conditions[-1].vector


def interpolate_conditions(
    a: Sequence[Condition],
    b: Sequence[Condition],
    t: float,
    mix: Callable[[Array, Array, float], Array],
) -> list[Condition]:
    """A latent walk's frame: `mix(a's vector, b's vector, t)` at every step (the pipeline mixes
    by slerp), one condition per run of steps where neither schedule switches. t = 0 and t = 1
    keep a's and b's own vectors, and a vector both share (the same cached part) stays as it is,
    so those images equal the keyframes' own."""
    if t == 0:
        return list(a)
    if t == 1:
        return list(b)
    mixed: dict[tuple[int, int], Array] = {}
    conditions = []
    for end in sorted({condition.until_step for condition in (*a, *b)}):
        low, high = condition_at(a, end), condition_at(b, end)
        key = (id(low), id(high))  # both alive in `a` and `b`: ids stay unique
        if key not in mixed:
            mixed[key] = low if low is high else mix(low, high, t)
        conditions.append(Condition(end, mixed[key]))
    return conditions


def resolve_image_names(program: PromptProgram, names: Collection[str]) -> None:
    """Refuse `<image:NAME>` that names none of the image prompts' `names`, before anything
    is encoded (the desktop checks a prompt as it is typed with this too)."""
    for part in program.parts:
        if part.image is not None and part.image not in names:
            known = ", ".join(sorted(names)) or "none were given"
            raise UsageError(
                f"the prompt names <image:{part.image}>, but no image prompt is called that "
                f"(image prompts are named by position or file stem: {known})"
            )
