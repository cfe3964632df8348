"""Live previews of the built-in demo model: its shipped map shows the colours the image gets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdxs_rt_desktop.fit_preview import FIT_SEED, demo_prompts
from sdxs_rt_desktop.preview import (
    LatentPreviewer,
    LatentProjection,
    fit_projection,
    shipped_dir,
)

from sdxs_rt.dev.demo.data import COLOURS
from sdxs_rt.pipeline import ImageEvent, Pipeline, StepEvent

PROMPT = "a red circle on a blue background"
SEED = 0  # not among the fit's seeds (FIT_SEED and on)
STEPS = 8


@pytest.fixture(scope="module")
def demo_pipe() -> Pipeline:
    return Pipeline.from_pretrained(None)


@pytest.fixture(scope="module")
def last_step_and_image(demo_pipe: Pipeline) -> tuple[np.ndarray, np.ndarray]:
    """The x0 estimate of the last step (what the last preview shows) and the saved image."""
    denoised, image = None, None
    for event in demo_pipe.generate(PROMPT, seed=SEED, num_inference_steps=STEPS,
                                    width=64, height=64):  # fmt: skip
        if isinstance(event, StepEvent):
            denoised = event.denoised
        elif isinstance(event, ImageEvent):
            image = np.asarray(event.image, dtype=np.float32) / 255
    assert denoised is not None and image is not None
    return np.asarray(demo_pipe.components.ops.to_host(denoised))[0], image


def region_colours(rgb: np.ndarray, shape_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean colour of the shape and of the background."""
    return rgb[shape_mask].mean(axis=0), rgb[~shape_mask].mean(axis=0)


def nearest_colour_name(rgb: np.ndarray) -> str:
    names = list(COLOURS)
    palette = np.asarray([COLOURS[n] for n in names], dtype=np.float32) / 255
    return names[int(np.argmin(np.linalg.norm(palette - rgb, axis=1)))]


def preview_pixels(projection: LatentProjection, latents: np.ndarray) -> np.ndarray:
    """(64, 64, 3) floats: the projection upscaled by 8 in nearest-neighbour cells."""
    return projection.apply(latents).repeat(8, axis=0).repeat(8, axis=1)


def test_the_demo_model_ships_its_preview_map(demo_pipe: Pipeline, tmp_path: Path) -> None:
    previewer = LatentPreviewer(demo_pipe, cache_dir=tmp_path)
    assert previewer.shipped_path.parent == shipped_dir() and previewer.shipped_path.is_file()
    assert previewer.projection.weights.shape == (16, 3)
    assert previewer.projection.fit_r2 > 0.7  # 0.78 when fitted
    assert list(tmp_path.iterdir()) == []  # nothing fitted, nothing cached
    assert len(demo_prompts()) == 90 and FIT_SEED > SEED


def test_preview_colours_match_the_final_image(
    demo_pipe: Pipeline, last_step_and_image: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """Measured (seed 0, 8 steps, CPU): shape (0.97, 0.01, 0.05) and background (0.01, 0.00, 0.98)
    in the image. The shipped map previews them as (0.91, 0.33, 0.18) and (0.17, 0.08, 0.83):
    mean errors 0.17 and 0.13 per channel, and 0.145 per pixel over the whole picture. The fit on
    random latents (used before the map shipped) previewed (0.73, 0.91, 0.59) and (0.25, 0.10,
    0.18), a pale green shape on dark purple: errors 0.56 and 0.38, and 0.42 per pixel."""
    latents, image = last_step_and_image
    red, blue = (np.asarray(COLOURS[n], dtype=np.float32) / 255 for n in ("red", "blue"))
    shape_mask = np.linalg.norm(image - red, axis=-1) < np.linalg.norm(image - blue, axis=-1)
    assert 0.1 < shape_mask.mean() < 0.6  # the image shows a circle on a background
    final_shape, final_background = region_colours(image, shape_mask)
    assert nearest_colour_name(final_shape) == "red"
    assert nearest_colour_name(final_background) == "blue"

    shipped = LatentPreviewer(demo_pipe, cache_dir=tmp_path).projection
    shape, background = region_colours(preview_pixels(shipped, latents), shape_mask)
    assert (nearest_colour_name(shape), nearest_colour_name(background)) == ("red", "blue")
    shape_error = float(np.abs(shape - final_shape).mean())
    background_error = float(np.abs(background - final_background).mean())
    print(f"shipped map: shape error {shape_error:.3f}, background error {background_error:.3f}")
    assert shape_error < 0.25 and background_error < 0.25

    generic = fit_projection(demo_pipe)  # what previews showed before the map shipped
    pixel_error = float(np.abs(preview_pixels(shipped, latents) - image).mean())
    generic_error = float(np.abs(preview_pixels(generic, latents) - image).mean())
    print(f"mean pixel error: shipped map {pixel_error:.3f}, random-latent fit {generic_error:.3f}")
    assert pixel_error < 0.5 * generic_error
