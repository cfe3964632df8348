"""The image size follows the model, as `sdxs-rt generate` starts at the model's own size.

At start, and whenever the model changes, GenerationState takes the model's native size (its
U-Net's sample_size times the VAE's scale: 64 px for the built-in demo model, 576 for SDXS).
`size_model` records which model that size was set for and is saved with it, so a size the user
picks is kept across restarts until the model changes; settings from before this existed have
no `size_model` and start at the model's size.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from sdxs_rt_desktop.state import GenerationState, ModelState

from sdxs_rt.errors import SdxsError
from sdxs_rt.loading import native_image_size, resolve_model

BUILT_IN = "built-in"  # size_model of the packaged model (ModelState.model is "" for it)


def native_size(spec: str) -> tuple[int, int] | None:
    """(width, height) from the model's configs; "" is the built-in model. None where they
    cannot be read here: a hub id (resolving one may download, not on the GUI thread), or a
    folder that is no diffusers model (an ONNX export, a path half typed)."""
    if spec and not Path(spec).expanduser().is_dir():
        return None
    try:
        return native_image_size(resolve_model(spec or None))
    except (SdxsError, OSError, ValueError):
        return None


def follow_model_size(generation: GenerationState, model: ModelState, *_: Any) -> bool:
    """Set the chosen model's own size unless the size was already set for that model."""
    key = model.model or BUILT_IN
    if generation.size_model == key:
        return False
    size = native_size(model.model)
    if size is None:
        return False  # the size says nothing about this model: leave the user's
    generation.update(width=size[0], height=size[1], size_model=key)
    return True


def keep_size_with_model(generation: GenerationState, model: ModelState) -> None:
    """Follow the model now (the window's start) and on every change of model."""
    follow_model_size(generation, model)
    model.model_changed.connect(partial(follow_model_size, generation, model))
