"""Latent walks: frames between keyframes, each frame one ordinary generation (`sdxs-rt walk`).

A keyframe is a prompt (any prompt syntax: blends, schedules, `<image:N>`), its image prompts
and a seed. Between keyframes A and B, `frames_between` = N frames sit at t = j / (N + 1),
j = 1..N, and each is one request (`walk_frames` builds them, `GenerationParams` fields only):

- its condition vector is the spherical interpolation (slerp) from A's to B's at t, each
  computed by the ordinary conditioning code (`GenerationParams.walk_to`, a `WalkTarget`; with
  a prompt schedule, at every step from the two vectors that hold at that step); its negative
  likewise, from A's negative to B's;
- its initial noise is the slerp from A's seed's first draw to B's seed's first draw at t:
  exactly A1111's variation seed (seed A, variation seed B, strength t; left out when the two
  seeds are equal), so every later draw (ancestral samplers) is A's seed's.

So a frame's PNG records everything that drew it (`walk_prompt`, `walk_t` beside the variation
fields) and `sdxs-rt info FRAME --replay` draws it again alone. The keyframes themselves are
drawn as plain requests, so the first and last frames are exactly the images `generate` draws
for them. With seeds that differ and an ancestral sampler (DDPM, the SDXS default, or Euler a),
the frames just before keyframe B still add A's per-step noise, so the last step into B is a
little larger than the others; one seed for every keyframe (the default) has no such seam.

Why slerp and not lerp: the straight line between two vectors is shorter than either
(for the demo model's "red circle" and "blue circle" vectors, about 34.5 long and 46 degrees
apart, the midpoint of a lerp is about 8% shorter), and for Gaussian noise much more so (two
independent draws are nearly orthogonal, so the midpoint has about 71% of the norm the
sampler expects, which washes the image out). Slerp keeps the length and moves along the
arc, the choice A1111's variation seeds and most latent-walk scripts make for noise; using
the same `sdxs_rt.rng.slerp` for the conditions keeps every frame's vector about as long as the
text encoder's own outputs (the demo model's are all 34 to 35 long), where the U-Net was
trained. Vectors of different lengths (image prompts' differ from texts') follow slerp's usual
formula, which moves the length smoothly from one to the other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image, features

from sdxs_rt.errors import OutputExistsError, UsageError
from sdxs_rt.images import exists_message, make_parent, open_temp, publish_exclusive, sync_folder
from sdxs_rt.params import GenerationParams, ImageInput, WalkTarget
from sdxs_rt.pipeline import ImageEvent, Pipeline, StepEvent
from sdxs_rt.plan import GenerationPlan
from sdxs_rt.rng import random_seed

ANIMATION_FORMATS = {"webp": "WEBP", "gif": "GIF"}  # --animation name -> Pillow's format
MAX_FPS = 50.0  # GIF stores 10 ms delays and browsers slow anything under 20 ms down


@dataclass(frozen=True)
class Keyframe:
    """A stop of the walk: a prompt, its image prompts and a seed."""

    prompt: str
    seed: int | None = None  # None: the walk's seed (the same for every keyframe)
    negative_prompt: str | None = None  # None: the walk's negative prompt
    image_prompts: tuple[tuple[ImageInput, float], ...] = ()


@dataclass(frozen=True)
class WalkFrame:
    """One frame of a walk: the request that draws it, and where it lies."""

    index: int  # 0-based over the whole walk
    keyframe: int  # the keyframe it leaves (0-based); t = 0: that keyframe itself
    t: float
    params: GenerationParams


@dataclass(frozen=True)
class FrameEvent:
    """A finished frame."""

    frame: WalkFrame
    plan: GenerationPlan
    image: Image.Image
    timings: dict[str, float]


def walk_frames(
    keyframes: Sequence[Keyframe | str], frames_between: int, params: GenerationParams
) -> list[WalkFrame]:
    """Every frame's request, checked: the keyframes and the frames between each pair.

    `params` holds what all frames share (steps, guidance, size, sampler, negative prompt,
    the seed of keyframes that name none); its prompt is not used.
    """
    keys = [Keyframe(k) if isinstance(k, str) else k for k in keyframes]
    check_walk(keys, frames_between, params)
    shared = random_seed() if params.seed is None else params.seed
    alone = [_keyframe_params(key, shared, params) for key in keys]
    frames: list[WalkFrame] = []
    for k, start in enumerate(alone):
        frames.append(WalkFrame(len(frames), k, 0.0, start))
        if k + 1 == len(alone):
            break
        for j in range(1, frames_between + 1):
            t = j / (frames_between + 1)
            frames.append(WalkFrame(len(frames), k, t, between(start, alone[k + 1], t)))
    for frame in frames:
        frame.params.validate()
    return frames


def check_walk(keys: Sequence[Keyframe], frames_between: int, params: GenerationParams) -> None:
    """The walk's own refusals, one sentence each (the frames' parameters are checked after)."""
    if len(keys) < 2:
        raise UsageError(f"a walk needs at least 2 keyframes, got {len(keys)}")
    if not isinstance(frames_between, int) or isinstance(frames_between, bool):
        raise UsageError(f"frames between keyframes must be a whole number, got {frames_between!r}")
    if frames_between < 1:
        raise UsageError(f"frames between keyframes must be at least 1, got {frames_between}")
    if params.num_images != 1 or params.batch_size != 1:
        raise UsageError("a walk draws one image per frame: leave num_images and batch_size at 1")
    if params.variation_seed is not None or params.walk_to is not None:
        raise UsageError("a walk sets each frame's variation seed and walk target itself")
    if params.image_prompts:
        raise UsageError("give image prompts per keyframe (Keyframe.image_prompts)")


def _keyframe_params(key: Keyframe, shared_seed: int, params: GenerationParams) -> GenerationParams:
    negative = params.negative_prompt if key.negative_prompt is None else key.negative_prompt
    return replace(
        params,
        prompt=key.prompt,
        negative_prompt=negative,
        image_prompts=tuple(key.image_prompts),
        seed=shared_seed if key.seed is None else key.seed,
    )


def between(start: GenerationParams, end: GenerationParams, t: float) -> GenerationParams:
    """The request of the frame at `t` from keyframe `start` to keyframe `end`."""
    target = WalkTarget(end.prompt, t, end.negative_prompt, end.image_prompts)
    if end.seed == start.seed:  # the same first draw: nothing to slerp
        return replace(start, walk_to=target)
    return replace(start, walk_to=target, variation_seed=end.seed, variation_strength=t)


# ---------------------------------------------------------------- drawing


def plan_frames(pipe: Pipeline, frames: Sequence[WalkFrame]) -> list[GenerationPlan]:
    """Every frame planned (inputs loaded and checked) before the first one is drawn."""
    return [pipe.plan(frame.params) for frame in frames]


def render(
    pipe: Pipeline, frames: Sequence[WalkFrame], plans: Sequence[GenerationPlan]
) -> Iterator[StepEvent | FrameEvent]:
    """Draw the frames in order: a StepEvent per sampler step and a FrameEvent per frame.
    Stops after a frame that was cancelled (`pipe.cancel()`)."""
    for frame, plan in zip(frames, plans, strict=True):
        finished = False
        for event in pipe.generate(plan=plan):
            if isinstance(event, ImageEvent):
                finished = True
                yield FrameEvent(frame, plan, event.image, event.timings)
            else:
                yield event
        if not finished:
            return


def walk(
    pipe: Pipeline,
    keyframes: Sequence[Keyframe | str],
    frames_between: int,
    **params: Any,
) -> Iterator[FrameEvent]:
    """Draw a walk: yields each frame, keyframes included, in order.

    `params` are the `GenerationParams` fields all frames share (`num_inference_steps`,
    `guidance_scale`, `width`, `height`, `scheduler`, `negative_prompt`, `seed`, ...).
    """
    frames = walk_frames(keyframes, frames_between, GenerationParams(prompt="", **params))
    plans = plan_frames(pipe, frames)
    for event in render(pipe, frames, plans):
        if isinstance(event, FrameEvent):
            yield event


# ---------------------------------------------------------------- the animation


def check_animation(kind: str, fps: float) -> None:
    """`kind` one of ANIMATION_FORMATS that this Pillow can write, `fps` in (0, MAX_FPS]."""
    if kind not in ANIMATION_FORMATS:
        choices = ", ".join(ANIMATION_FORMATS)
        raise UsageError(f"unknown animation format {kind!r}; choose one of: {choices}")
    if kind == "webp" and not features.check("webp"):
        raise UsageError("this Pillow was built without WebP; use the gif animation instead")
    if not isinstance(fps, (int, float)) or not 0 < fps <= MAX_FPS:
        raise UsageError(f"frames per second must be a number in (0, {MAX_FPS:g}], got {fps!r}")


def save_animation(
    images: Sequence[Image.Image],
    path: str | os.PathLike[str],
    fps: float,
    overwrite: bool = False,
) -> Path:
    """An animated WebP (lossless) or GIF of `images`, looping, written atomically like the
    PNGs. Both formats fold a frame identical to the one before it into that one's time."""
    path = Path(path)
    kind = path.suffix.lower().lstrip(".")
    check_animation(kind, fps)
    if not images:
        raise UsageError("an animation needs at least one frame")
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(exists_message(path))
    make_parent(path)
    fd, temp = open_temp(path)
    first, *rest = images
    options = {"lossless": True} if kind == "webp" else {}
    try:
        with os.fdopen(fd, "wb") as handle:
            first.save(
                handle,
                format=ANIMATION_FORMATS[kind],
                save_all=True,
                append_images=rest,
                duration=round(1000 / fps),
                loop=0,
                **options,
            )
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            publish_exclusive(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    sync_folder(path.parent)
    return path
