"""Procedural dataset for the built-in demo model: simple shapes in named colours.

Pictures show one shape (circle, square, triangle) in a named colour on a plain background
of another named colour, captioned in English and Russian, e.g. "a red circle on a blue
background" / "красный круг на синем фоне". Everything is deterministic given a seed.
Only numpy and Pillow are used so the recipe runs without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")

# RGB values kept far apart (pairwise distance >= 255) so pixels classify unambiguously.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}

LANGUAGES: tuple[str, ...] = ("en", "ru")

# Russian nouns with their grammatical gender ("m", "f", "n").
RU_SHAPES: dict[str, tuple[str, str]] = {
    "circle": ("круг", "m"),
    "square": ("квадрат", "m"),
    "triangle": ("треугольник", "m"),
}

# Russian adjective forms: nominative by gender, plus the masculine prepositional used
# in "на ... фоне" ("on a ... background").
RU_COLOURS: dict[str, dict[str, str]] = {
    "red": {"m": "красный", "f": "красная", "n": "красное", "prep": "красном"},
    "green": {"m": "зелёный", "f": "зелёная", "n": "зелёное", "prep": "зелёном"},
    "blue": {"m": "синий", "f": "синяя", "n": "синее", "prep": "синем"},
    "yellow": {"m": "жёлтый", "f": "жёлтая", "n": "жёлтое", "prep": "жёлтом"},
    "white": {"m": "белый", "f": "белая", "n": "белое", "prep": "белом"},
    "black": {"m": "чёрный", "f": "чёрная", "n": "чёрное", "prep": "чёрном"},
}

SUPERSAMPLE = 4
BORDER = 3  # pixels at the edge that always show the background


@dataclass(frozen=True, order=True)
class Combination:
    """One shape/colour/background triple; the shape colour differs from the background."""

    shape: str
    colour: str
    background: str

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}")
        for name in (self.colour, self.background):
            if name not in COLOURS:
                raise ValueError(f"unknown colour {name!r}")
        if self.colour == self.background:
            raise ValueError("shape colour must differ from the background colour")


def all_combinations() -> list[Combination]:
    """Every valid combination, in a fixed order."""
    return [
        Combination(shape, colour, background)
        for shape in SHAPES
        for colour in COLOURS
        for background in COLOURS
        if colour != background
    ]


def _covers_everything(combos: list[Combination]) -> bool:
    return (
        {c.shape for c in combos} == set(SHAPES)
        and {c.colour for c in combos} == set(COLOURS)
        and {c.background for c in combos} == set(COLOURS)
    )


def split_combinations(
    seed: int = 0, held_out_fraction: float = 0.15
) -> tuple[list[Combination], list[Combination]]:
    """Deterministically split combinations into (train, held_out).

    The training part always contains every shape, every colour and every background, so
    held-out combinations are novel arrangements of known parts.
    """
    if not 0.0 <= held_out_fraction < 1.0:
        raise ValueError("held_out_fraction must be in [0, 1)")
    combos = all_combinations()
    target = int(np.ceil(held_out_fraction * len(combos)))
    order = np.random.default_rng(seed).permutation(len(combos))
    held: set[Combination] = set()
    for index in order:
        if len(held) >= target:
            break
        candidate = combos[int(index)]
        remaining = [c for c in combos if c not in held and c != candidate]
        if _covers_everything(remaining):
            held.add(candidate)
    train = [c for c in combos if c not in held]
    return train, sorted(held)


def caption(combo: Combination, language: str = "en") -> str:
    """Caption for a combination in English ("en") or Russian ("ru")."""
    if language == "en":
        return f"a {combo.colour} {combo.shape} on a {combo.background} background"
    if language == "ru":
        noun, gender = RU_SHAPES[combo.shape]
        adjective = RU_COLOURS[combo.colour][gender]
        return f"{adjective} {noun} на {RU_COLOURS[combo.background]['prep']} фоне"
    raise ValueError(f"unsupported language {language!r}")


def _shape_box(size: int, rng: np.random.Generator) -> tuple[int, int, int]:
    """Random (left, top, side) of the shape's square bounding box, inside the border."""
    usable = size - 2 * BORDER
    side = int(rng.integers(int(usable * 0.45), int(usable * 0.8) + 1))
    left = BORDER + int(rng.integers(0, usable - side + 1))
    top = BORDER + int(rng.integers(0, usable - side + 1))
    return left, top, side


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, ...], fill: tuple[int, int, int]
) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    else:
        draw.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)


def render(
    combo: Combination, size: int = 64, seed: int = 0, antialias: bool = True
) -> Image.Image:
    """Draw the combination as an RGB image with a shape of random size and position."""
    if size < 16:
        raise ValueError("size must be at least 16 pixels")
    left, top, side = _shape_box(size, np.random.default_rng(seed))
    scale = SUPERSAMPLE if antialias else 1
    image = Image.new("RGB", (size * scale, size * scale), COLOURS[combo.background])
    box = (left * scale, top * scale, (left + side) * scale - 1, (top + side) * scale - 1)
    _draw_shape(ImageDraw.Draw(image), combo.shape, box, COLOURS[combo.colour])
    if antialias:
        image = image.resize((size, size), Image.Resampling.BOX)
    return image


def write_dataset(
    folder: str | Path,
    combos: list[Combination],
    images_per_combo: int = 4,
    size: int = 64,
    seed: int = 0,
    languages: tuple[str, ...] = LANGUAGES,
) -> list[dict[str, str]]:
    """Write PNGs, same-name .txt captions and metadata.jsonl; returns the metadata rows.

    Each image gets one caption in a seeded random language. Output is byte-identical for
    the same arguments.
    """
    if not languages:
        raise ValueError("at least one language is required")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, str]] = []
    for combo in combos:
        for _ in range(images_per_combo):
            image_seed = int(rng.integers(0, 2**31 - 1))
            language = languages[int(rng.integers(0, len(languages)))]
            name = f"{len(rows):05d}"
            text = caption(combo, language)
            render(combo, size, image_seed).save(out / f"{name}.png", format="PNG")
            (out / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
            rows.append({"file_name": f"{name}.png", "text": text})
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return rows
