"""Checks that run in the GUI thread before anything loads, and the jobs they make."""

from __future__ import annotations

from pathlib import Path

from sdxs_rt_desktop.prompt_check import check_prompt_syntax
from sdxs_rt_desktop.state import GenerationState, ModelState
from sdxs_rt_desktop.worker import LoadRequest, WalkJob

from sdxs_rt.backend_table import find_backend, import_backend
from sdxs_rt.errors import SdxsError, UsageError
from sdxs_rt.images import check_folder_writable
from sdxs_rt.params import GenerationParams
from sdxs_rt.walk import Keyframe, check_animation, check_walk


def load_request(model: ModelState) -> LoadRequest:
    return LoadRequest(*model.key())


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise UsageError("the prompt is empty; type what the image should show")


def check_prompts(generation: GenerationState, model: ModelState) -> None:
    """Before loading: an empty prompt, malformed syntax in either prompt, an `<image:N>` with no
    such image prompt, and image prompts that the loaded model is known not to take."""
    check_prompt(generation.prompt)
    for text in (generation.prompt, generation.negative_prompt):
        check_prompt_syntax(text, generation.image_prompts)
    if generation.image_prompts and (error := model.image_prompt_error()):
        raise UsageError(error)


def has_fixed_sizes(backend: object) -> bool:
    """Engines built for a size profile (TensorRT): only certain sizes run."""
    entry = find_backend(backend)
    return entry is not None and entry.fixed_sizes


def engine_sizes(model: ModelState) -> str:
    """TensorRT: the sizes the folder's built engines cover, from its manifest ("" otherwise)."""
    if not has_fixed_sizes(model.backend) or not model.model:
        return ""
    try:
        text: str = import_backend(model.backend).engine_sizes(model.model)
    except SdxsError:  # the plugin's own dependencies missing: the load will say so
        return ""
    return text


def check_engine_sizes(model: ModelState, params: GenerationParams) -> None:
    """Refuse a size outside the TensorRT engines' profile before anything loads (a size taken
    from the input image is known once planned: the worker checks it then)."""
    if params.width is None or params.height is None:
        return
    if has_fixed_sizes(model.backend) and model.model:
        plugin = import_backend(model.backend)
        plugin.check_size_for_model(model.model, params.width, params.height, params.batch_size)


def walk_job(
    generation: GenerationState,
    model: ModelState,
    history_dir: Path,
    keyframes: tuple[Keyframe, ...],
    frames_between: int,
    animation: str,
    fps: float,
) -> WalkJob:
    """A latent walk's job from the Generation settings, everything checked before loading."""
    if error := generation.size_error():
        raise UsageError(error)
    for number, key in enumerate(keyframes, 1):
        if not key.prompt.strip():
            raise UsageError(f"keyframe {number}'s prompt is empty")
        check_prompt_syntax(key.prompt, ())
    check_prompt_syntax(generation.negative_prompt, ())
    params = GenerationParams(
        prompt="",
        negative_prompt=generation.negative_prompt,
        num_inference_steps=generation.steps,
        guidance_scale=generation.guidance,
        width=generation.width,
        height=generation.height,
        seed=keyframes[0].seed if keyframes else None,
        scheduler=generation.scheduler or None,
    )
    check_walk(keyframes, frames_between, params)
    if animation:
        check_animation(animation, fps)
    check_folder_writable(history_dir)
    check_engine_sizes(model, params)
    return WalkJob(keyframes, frames_between, params, load_request(model), history_dir,
                   animation, fps, generation.strip_metadata)  # fmt: skip
