"""Generation parameters and their validation: one clear sentence per bad value."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

from sdxs_rt.errors import UsageError
from sdxs_rt.rng import MAX_SEED

if TYPE_CHECKING:
    from PIL import Image

# An image input: a file path or an already opened PIL image.
ImageInput = Union[str, "os.PathLike[str]", "Image.Image"]

SIZE_STEP = 64
MAX_SIDE = 4096  # 4096 px is already ~50x the trained area; larger is a typo, not a wish


@dataclass(frozen=True)
class WalkTarget:
    """The keyframe a latent-walk frame moves towards (sdxs_rt.walk).

    The frame's condition vectors, the prompt's and the negative's, are the spherical
    interpolation from the request's own (t = 0) to this target's (t = 1), each computed by the
    same conditioning code (blends, schedules, image prompts). The noise moves with the
    request's variation seed and strength, which a walk sets to the target's seed and `t`.
    """

    prompt: str
    t: float
    negative_prompt: str = ""
    image_prompts: tuple[tuple[ImageInput, float], ...] = ()


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int = 40
    guidance_scale: float = 5.5
    # None: the init image's size (rounded down to a multiple of 64) plus any outpainting,
    # else the model's native size.
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    scheduler: str | None = None  # None: the model's own scheduler
    num_images: int = 1
    batch_size: int = 1
    # Image to image: the init image, resized to the output size by `resize_mode` (see
    # sdxs_rt.image_inputs), noised to `strength` (None: 0.75, or 1.0 when outpainting).
    init_image: ImageInput | None = None
    strength: float | None = None
    resize_mode: str = "crop"
    # Inpainting: white = repaint; feathered by `mask_blur` px; original pixels pasted back.
    mask: ImageInput | None = None
    mask_blur: int = 4
    paste_back: bool = True
    outpaint: tuple[int, int, int, int] | None = None  # left, right, top, bottom, in px
    variation_seed: int | None = None
    variation_strength: float = 0.0
    # Hires fix (text to image only): draw at width x height, upscale by `hires_scale` with
    # `hires_upscaler` ("lanczos": decode, resize the pixels, encode; "latent": resize the
    # latents), then an img2img pass of `hires_steps` (None: the same steps) at `hires_strength`.
    hires_scale: float | None = None
    hires_strength: float = 0.5
    hires_steps: int | None = None
    hires_upscaler: str = "lanczos"
    # Image prompts through the vision tower, each (image, weight): blend parts beside the
    # prompt's own (sdxs_rt.conditioning); `<image:N>` in the prompt places the N-th.
    image_prompts: tuple[tuple[ImageInput, float], ...] = ()
    # A latent walk's frame (sdxs_rt.walk): the conditions slerped towards another keyframe's.
    walk_to: WalkTarget | None = None

    def validate(self) -> GenerationParams:
        for name, value in (("width", self.width), ("height", self.height)):
            if value is not None:
                check_size(name, value)
        check_steps(self.num_inference_steps)
        check_guidance(self.guidance_scale)
        check_seed(self.seed, self.num_images)
        check_positive("number of images", self.num_images)
        check_positive("batch size", self.batch_size)
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise UsageError("the prompt and the negative prompt must be strings")
        check_image_options(self)
        check_variation(self.variation_seed, self.variation_strength, self.num_images)
        check_hires(self)
        check_image_prompts(self.image_prompts)
        check_walk_to(self.walk_to)
        return self


def check_image_options(params: GenerationParams) -> None:
    """What needs an init image, and the numbers that have a range."""
    if params.init_image is None:
        for given, flag in ((params.mask, "a mask"), (params.outpaint, "outpainting")):
            if given is not None:
                raise UsageError(f"{flag} needs an init image")
        if params.strength is not None:
            raise UsageError("a strength needs an init image")
    strength = params.strength
    if strength is not None and not (_is_number(strength) and 0 < strength <= 1):
        raise UsageError(f"strength must be a number in (0, 1], got {strength!r}")
    blur = params.mask_blur
    if not isinstance(blur, int) or isinstance(blur, bool) or blur < 0:
        raise UsageError(f"mask blur must be a whole number of pixels >= 0, got {blur!r}")


def check_walk_to(target: object) -> None:
    if target is None:
        return
    if not isinstance(target, WalkTarget):
        raise UsageError(f"walk_to must be a WalkTarget, got {target!r}")
    if not isinstance(target.prompt, str) or not isinstance(target.negative_prompt, str):
        raise UsageError("the walk target's prompt and negative prompt must be strings")
    if not (_is_number(target.t) and 0 <= target.t <= 1):
        raise UsageError(f"walk t must be a number in [0, 1], got {target.t!r}")
    check_image_prompts(target.image_prompts)


def check_image_prompts(image_prompts: object) -> None:
    if not isinstance(image_prompts, (tuple, list)):
        raise UsageError("image prompts must be a list of (image, weight) pairs")
    for entry in image_prompts:
        if not isinstance(entry, (tuple, list)) or len(entry) != 2 or not _is_number(entry[1]):
            raise UsageError(f"an image prompt must be an (image, weight) pair, got {entry!r}")


HIRES_UPSCALERS = ("lanczos", "latent")
MAX_HIRES_SCALE = 4.0


def check_hires(params: GenerationParams) -> None:
    if params.hires_scale is None:
        return
    scale = params.hires_scale
    if not (_is_number(scale) and 1 < scale <= MAX_HIRES_SCALE):
        raise UsageError(f"hires scale must be a number in (1, {MAX_HIRES_SCALE:g}], got {scale!r}")
    if params.init_image is not None:
        raise UsageError(
            "hires fix is for text to image; with an init image, ask for the size you want"
        )
    strength = params.hires_strength
    if not (_is_number(strength) and 0 < strength <= 1):
        raise UsageError(f"hires strength must be a number in (0, 1], got {strength!r}")
    if params.hires_steps is not None:
        check_steps(params.hires_steps)
    if params.hires_upscaler not in HIRES_UPSCALERS:
        raise UsageError(
            f"unknown hires upscaler {params.hires_upscaler!r}; "
            f"choose one of: {', '.join(HIRES_UPSCALERS)}"
        )


def check_variation(seed: int | None, strength: float, count: int) -> None:
    if not (_is_number(strength) and 0 <= strength <= 1):
        raise UsageError(f"variation strength must be a number in [0, 1], got {strength!r}")
    if seed is None:
        if strength:
            raise UsageError("a variation strength needs a variation seed")
        return
    # Not check_seed: its message names the seed and offers -1 (random), which is refused here.
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"variation seed must be a whole number >= 0, got {seed!r}")
    count = max(count, 1)
    if seed + count - 1 > MAX_SEED:
        raise UsageError(
            f"variation seed {seed} is too large for {count} images; the most is "
            f"{MAX_SEED - count + 1}"
        )


def _is_number(value: object) -> bool:
    real = isinstance(value, (int, float)) and not isinstance(value, bool)
    return real and math.isfinite(value)  # type: ignore[arg-type]


def nearest_sizes(value: int) -> list[int]:
    below = max(SIZE_STEP, value // SIZE_STEP * SIZE_STEP)
    above = min(MAX_SIDE, below + SIZE_STEP)
    return sorted({below, above})


def check_size(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{name} must be a whole number of pixels, got {value!r}")
    if value <= 0:
        raise UsageError(f"{name} must be positive, got {value}")
    if value > MAX_SIDE:
        raise UsageError(f"{name} {value} is too large; the most sdxs-rt accepts is {MAX_SIDE}")
    if value % SIZE_STEP:
        options = " or ".join(str(v) for v in nearest_sizes(value))
        raise UsageError(
            f"{name} {value} is not a multiple of {SIZE_STEP}; nearest valid: {options}"
        )


def check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise UsageError(f"steps must be a positive whole number, got {steps!r}")


def check_guidance(scale: float) -> None:
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise UsageError(f"guidance scale must be a finite number >= 0, got {scale!r}")


def check_seed(seed: int | None, count: int) -> None:
    if seed is None:
        return
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"seed must be a whole number >= 0 (or -1 for random), got {seed!r}")
    if seed + max(count, 1) - 1 > MAX_SEED:
        if count > 1:
            raise UsageError(
                f"seed {seed} is too large for {count} images (seeds {seed} to "
                f"{seed + count - 1}); the last seed can be at most {MAX_SEED}"
            )
        raise UsageError(f"seed {seed} is too large; the most is {MAX_SEED}")


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UsageError(f"{name} must be a positive whole number, got {value!r}")
