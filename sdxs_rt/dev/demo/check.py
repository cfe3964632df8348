"""Check demo-model pictures against their prompts by measuring colours from pixels.

`measure` finds the background colour (dominant named colour of the border pixels) and the
shape colour (dominant named colour among the non-background pixels inside the border).
Pixels far from every named colour count as unclear; when no colour dominates, the
answer is None, so noise or muddled pictures fail the check.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image

from sdxs_rt.dev.demo.data import BORDER, COLOURS, Combination

COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
_PALETTE = np.array([COLOURS[name] for name in COLOUR_NAMES], dtype=np.float32)

MAX_DISTANCE = 80.0  # farther than this from every named colour: unclear pixel
DOMINANT_SHARE = 0.6  # share of the classified pixels the winning colour needs
MIN_SHAPE_SHARE = 0.02  # the shape must cover at least this share of the interior
UNCLEAR = -1


def _pixels(image: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if array.ndim != 3 or array.shape[2] < 3:
        raise ValueError("expected an RGB image")
    return array[..., :3].astype(np.float32)


def _labels(pixels: np.ndarray) -> np.ndarray:
    """Index of the nearest named colour per pixel, or UNCLEAR when none is close."""
    distances = np.linalg.norm(pixels[..., None, :] - _PALETTE, axis=-1)
    labels = distances.argmin(axis=-1)
    return np.where(distances.min(axis=-1) <= MAX_DISTANCE, labels, UNCLEAR)


def _dominant(labels: np.ndarray, min_count: int = 1) -> int | None:
    """Winning colour index among `labels` (UNCLEAR counts against it), or None."""
    if labels.size == 0:
        return None
    counts = np.bincount(labels[labels != UNCLEAR], minlength=len(COLOUR_NAMES))
    best = int(counts.argmax())
    if counts[best] < min_count or counts[best] < DOMINANT_SHARE * labels.size:
        return None
    return best


def _border_mask(height: int, width: int, band: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[:band, :] = mask[-band:, :] = True
    mask[:, :band] = mask[:, -band:] = True
    return mask


def _band(height: int, width: int) -> int:
    return max(1, min(BORDER, min(height, width) // 8))


def measure(image: Image.Image | np.ndarray) -> tuple[str | None, str | None]:
    """(shape_colour, background_colour) names read from pixels; None where unclear."""
    labels = _labels(_pixels(image))
    height, width = labels.shape
    band = _band(height, width)
    background = _dominant(labels[_border_mask(height, width, band)])
    if background is None:
        return None, None
    interior = labels[band:-band, band:-band]
    foreground = interior[interior != background]
    min_count = max(1, int(MIN_SHAPE_SHARE * interior.size))
    shape = _dominant(foreground, min_count=min_count)
    shape_name = None if shape is None else COLOUR_NAMES[shape]
    return shape_name, COLOUR_NAMES[background]


def matches(image: Image.Image | np.ndarray, combo: Combination) -> bool:
    """Whether the measured shape and background colours are the combination's."""
    return measure(image) == (combo.colour, combo.background)


def _shape_mask(image: Image.Image | np.ndarray) -> np.ndarray | None:
    """Pixels closer to the shape colour than to the background colour."""
    shape, background = measure(image)
    if shape is None or background is None:
        return None
    pixels = _pixels(image)
    to_shape = np.linalg.norm(pixels - np.array(COLOURS[shape], np.float32), axis=-1)
    to_background = np.linalg.norm(pixels - np.array(COLOURS[background], np.float32), axis=-1)
    return to_shape < to_background


def fill_ratio(image: Image.Image | np.ndarray) -> float | None:
    """Shape area divided by its bounding-box area, or None when no shape is found."""
    mask = _shape_mask(image)
    if mask is None or not mask.any():
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    box = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)
    return float(mask.sum()) / float(box)


def shape_guess(image: Image.Image | np.ndarray) -> str | None:
    """Best-effort shape from the fill ratio: square ~1.0, circle ~0.785, triangle ~0.5."""
    ratio = fill_ratio(image)
    if ratio is None:
        return None
    if ratio > 0.9:
        return "square"
    if ratio > 0.64:
        return "circle"
    return "triangle"


def accuracy(images_and_combos: Iterable[tuple[Image.Image | np.ndarray, Combination]]) -> float:
    """Share of (image, combination) pairs whose colours match; 0.0 for no pairs."""
    results = [matches(image, combo) for image, combo in images_and_combos]
    return sum(results) / len(results) if results else 0.0
