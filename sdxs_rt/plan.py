"""A request resolved once: the plan every consumer reads.

`make_plan(params, model)` applies the defaults (seed, sampler, size, strength), fixes the seeds
of every image, builds the sampler's schedule (the img2img slice of it when an init image is
given) and prepares the image inputs. The pipeline runs a plan, its events carry it, and the
CLI, the desktop and the metadata writer read it instead of deciding again.

Size rule (img2img): the requested size is the output size. Without one, it is the init image's
size rounded down to a multiple of 64 plus any outpainting, else the model's native size. The
init image is fitted to the output size less the outpainting (`resize_mode`, see
`image_inputs.fit_to_size`), then the canvas grows by the outpaint amounts. A mask must have
the init image's own size; it is fitted like the image, and the outpainted area joins it.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from sdxs_rt import image_inputs
from sdxs_rt.conditioning import ImagePromptRef, resolve_image_names
from sdxs_rt.errors import UsageError
from sdxs_rt.image_preprocess import load_image_prompt
from sdxs_rt.params import SIZE_STEP, GenerationParams, ImageInput, check_size
from sdxs_rt.prompt_syntax import PromptProgram, parse_prompt
from sdxs_rt.rng import Variation, random_seed, seeds_for
from sdxs_rt.sampler_schedule import SamplerSchedule, build_schedule
from sdxs_rt.scheduler_table import SCHEDULER_NAMES
from sdxs_rt.schedules import SchedulerConfig

DEFAULT_STRENGTH = 0.75  # diffusers' and A1111's img2img default
OUTPAINT_STRENGTH = 1.0  # the new area has nothing worth keeping but a colour


@dataclass(frozen=True)
class ModelFacts:
    """What a plan needs to know of the loaded model."""

    native_size: tuple[int, int]  # (width, height)
    scheduler_config: SchedulerConfig
    default_scheduler: str
    latent_channels: int = 16
    vae_scale_factor: int = 8


@dataclass(frozen=True)
class InputDigest:
    """How metadata names an input: the SHA-256 of its file, or of its pixels when in memory."""

    sha256: str
    source: str  # "file" or "pixels"
    name: str | None = None  # the file name, as a hint; never used to find it

    def as_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "source": self.source, "name": self.name}


@dataclass(frozen=True)
class ImageInputs:
    """The prepared image inputs, at the output size."""

    init: Image.Image  # RGB, fitted and (when outpainting) grown: what the VAE encodes
    strength: float
    mask: Image.Image | None  # "L", feathered; None: repaint everywhere (plain img2img)
    paste_back: bool  # put `init`'s pixels back where the mask is 0 (only with a mask)
    init_digest: InputDigest
    mask_digest: InputDigest | None


@dataclass(frozen=True)
class ImagePrompt:
    """An image prompt, loaded: its pixels, weight, digest and the names `<image:...>` takes."""

    image: Image.Image
    weight: float
    digest: InputDigest
    names: tuple[str, ...]  # its position (1-based) as text, and its file's stem

    @property
    def ref(self) -> ImagePromptRef:
        return ImagePromptRef(self.names, self.digest.sha256, self.weight)


@dataclass(frozen=True)
class PromptPlan:
    """The prompt and negative prompt parsed (blends, schedules), and the image prompts."""

    prompt: PromptProgram
    negative: PromptProgram
    image_prompts: tuple[ImagePrompt, ...] = ()

    @property
    def refs(self) -> tuple[ImagePromptRef, ...]:
        return tuple(image.ref for image in self.image_prompts)


@dataclass(frozen=True)
class WalkPlan:
    """A latent-walk frame's target keyframe, parsed: its prompts and image prompts, and `t`."""

    prompts: PromptPlan
    t: float


@dataclass(frozen=True)
class HiresPass:
    """The second pass of a hires fix: img2img of the upscaled first image at `size`."""

    scale: float
    size: tuple[int, int]  # (width, height), the output size
    upscaler: str  # "lanczos" (pixels, through the VAE) or "latent"
    strength: float
    steps: int  # inference steps of the full schedule it slices
    schedule: SamplerSchedule
    latent_shape: tuple[int, int, int]


@dataclass(frozen=True)
class GenerationPlan:
    params: GenerationParams  # defaults applied: seed, scheduler, width, height, strength
    seeds: tuple[int, ...]  # one per image
    variations: tuple[Variation, ...] | None  # one per image, when a variation seed is given
    schedule: SamplerSchedule  # the steps that run (an img2img slice of the full schedule)
    latent_shape: tuple[int, int, int]  # (C, h, w) of one image
    inputs: ImageInputs | None
    hires: HiresPass | None = None
    prompts: PromptPlan | None = None  # None: a plan made by hand, the prompt taken as plain
    walk: WalkPlan | None = None  # a latent walk's frame: the conditions slerped towards these

    @property
    def scheduler(self) -> str:
        return self.schedule.scheduler

    @property
    def steps_run(self) -> int:
        return len(self.schedule)

    @property
    def total_steps(self) -> int:
        """Sampler steps per batch, both passes of a hires fix counted."""
        return self.steps_run + (0 if self.hires is None else len(self.hires.schedule))

    @property
    def size(self) -> tuple[int, int]:
        """The size of the first pass (the request's); `output_size` is the image's."""
        assert self.params.width is not None and self.params.height is not None
        return self.params.width, self.params.height

    @property
    def output_size(self) -> tuple[int, int]:
        return self.size if self.hires is None else self.hires.size

    def variation_for(self, index: int) -> Variation | None:
        return None if self.variations is None else self.variations[index]


def make_plan(params: GenerationParams, model: ModelFacts) -> GenerationPlan:
    params.validate()
    scheduler = params.scheduler or model.default_scheduler
    if scheduler not in SCHEDULER_NAMES:
        names = ", ".join(SCHEDULER_NAMES)
        raise UsageError(f"unknown scheduler {scheduler!r}; choose one of: {names}")
    seed = random_seed() if params.seed is None else params.seed
    init = None if params.init_image is None else _open(params.init_image, "init image")
    width, height = output_size(params, model.native_size, None if init is None else init[0].size)
    strength = strength_for(params)
    params = replace(
        params, seed=seed, scheduler=scheduler, width=width, height=height, strength=strength
    )
    schedule = build_schedule(scheduler, model.scheduler_config, params.num_inference_steps)
    if strength is not None:
        schedule = schedule.for_strength(strength)
    f = model.vae_scale_factor
    return GenerationPlan(
        params=params,
        seeds=tuple(seeds_for(seed, params.num_images)),
        variations=_variations(params),
        schedule=schedule,
        latent_shape=(model.latent_channels, height // f, width // f),
        inputs=None if init is None else _image_inputs(params, init),
        hires=None if params.hires_scale is None else _hires_pass(params, model),
        prompts=prompt_plan(params),
        walk=walk_plan(params),
    )


def prompt_plan(params: GenerationParams) -> PromptPlan:
    """Parse both prompts and load the image prompts; warn once about what cannot apply."""
    prompt, negative = parse_prompt(params.prompt), parse_prompt(params.negative_prompt)
    images = tuple(
        _image_prompt(i, source, w) for i, (source, w) in enumerate(params.image_prompts)
    )
    by_name = {name: image.ref for image in images for name in image.names}
    for program in (prompt, negative):
        resolve_image_names(program, by_name)
        for note in program.notes:
            warnings.warn(note, stacklevel=3)
    if prompt.stripped_emphasis or negative.stripped_emphasis:
        warnings.warn(
            "emphasis such as (word:1.3), ((word)) or [word] was removed, keeping the words: "
            "SDXS conditions on one pooled vector per prompt, which word weights cannot change",
            stacklevel=3,
        )
    return PromptPlan(prompt, negative, images)


def walk_plan(params: GenerationParams) -> WalkPlan | None:
    """The walk target's prompts, parsed and loaded like the request's own."""
    target = params.walk_to
    if target is None:
        return None
    other = replace(
        params,
        prompt=target.prompt,
        negative_prompt=target.negative_prompt,
        image_prompts=target.image_prompts,
        walk_to=None,
    )
    return WalkPlan(prompt_plan(other), float(target.t))


def _image_prompt(index: int, source: ImageInput, weight: float) -> ImagePrompt:
    names = (str(index + 1),)
    if isinstance(source, Image.Image):
        return ImagePrompt(source, float(weight), pixel_digest(source.convert("RGB")), names)
    image = load_image_prompt(source)
    digest = InputDigest(image_inputs.file_sha256(source), "file", Path(source).name)
    return ImagePrompt(image, float(weight), digest, (*names, Path(source).stem))


def hires_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """Each side times `scale`, to the nearest multiple of 64 (at least one step larger)."""
    sides = (
        max(side + SIZE_STEP, round(side * scale / SIZE_STEP) * SIZE_STEP)
        for side in (width, height)
    )
    return tuple(sides)  # type: ignore[return-value]


def _hires_pass(params: GenerationParams, model: ModelFacts) -> HiresPass:
    assert params.width is not None and params.height is not None
    assert params.hires_scale is not None and params.scheduler is not None
    width, height = hires_size(params.width, params.height, params.hires_scale)
    check_size("hires width", width)
    check_size("hires height", height)
    steps = params.hires_steps or params.num_inference_steps
    full = build_schedule(params.scheduler, model.scheduler_config, steps)
    f = model.vae_scale_factor
    return HiresPass(
        scale=params.hires_scale,
        size=(width, height),
        upscaler=params.hires_upscaler,
        strength=params.hires_strength,
        steps=steps,
        schedule=full.for_strength(params.hires_strength),
        latent_shape=(model.latent_channels, height // f, width // f),
    )


def output_size(
    params: GenerationParams, native: tuple[int, int], init_size: tuple[int, int] | None
) -> tuple[int, int]:
    """The size rule of the module docstring; each side given wins on its own."""
    if params.outpaint is not None:
        # Before the sizes: a bad amount would otherwise be blamed on the width or height.
        if len(params.outpaint) != len(image_inputs.OUTPAINT_SIDES):
            raise UsageError(f"outpaint takes four amounts, got {params.outpaint!r}")
        image_inputs.check_outpaint_amounts(*params.outpaint)
    left, right, top, bottom = params.outpaint or (0, 0, 0, 0)
    if init_size is None:
        default = native
    else:
        default = (
            _round_down(init_size[0]) + left + right,
            _round_down(init_size[1]) + top + bottom,
        )
    width = params.width if params.width is not None else default[0]
    height = params.height if params.height is not None else default[1]
    check_size("width", width)
    check_size("height", height)
    if width - left - right < SIZE_STEP or height - top - bottom < SIZE_STEP:
        raise UsageError(
            f"outpainting {left},{right},{top},{bottom} px leaves less than {SIZE_STEP} px of a "
            f"{width}x{height} image for the init image; give a larger size or smaller amounts"
        )
    return width, height


def _round_down(side: int) -> int:
    return max(SIZE_STEP, side // SIZE_STEP * SIZE_STEP)


def strength_for(params: GenerationParams) -> float | None:
    """The strength a request runs at: its own, else the default; None without an init image."""
    if params.init_image is None:
        return None
    if params.strength is not None:
        return params.strength
    return OUTPAINT_STRENGTH if params.outpaint else DEFAULT_STRENGTH


def _variations(params: GenerationParams) -> tuple[Variation, ...] | None:
    # A1111: the variation seed counts up with the seed, image by image.
    if params.variation_seed is None or not params.variation_strength:
        return None
    seeds = seeds_for(params.variation_seed, params.num_images)
    return tuple(Variation(s, params.variation_strength) for s in seeds)


def _image_inputs(params: GenerationParams, init: tuple[Image.Image, InputDigest]) -> ImageInputs:
    assert params.width is not None and params.height is not None
    assert params.strength is not None
    image, init_digest = init
    left, right, top, bottom = params.outpaint or (0, 0, 0, 0)
    inner = (params.width - left - right, params.height - top - bottom)
    fitted = image_inputs.fit_to_size(image, *inner, params.resize_mode)
    mask, mask_digest = None, None
    if params.mask is not None:
        user_mask, mask_digest = _open(params.mask, "mask")
        image_inputs.check_mask_size(user_mask, image.size)
        mask = image_inputs.fit_to_size(user_mask, *inner, params.resize_mode)
    if params.outpaint:
        fitted, grown = image_inputs.outpaint(fitted, left, right, top, bottom)
        if mask is not None:
            grown.paste(mask, (left, top))
        mask = grown
    if mask is not None:
        mask = image_inputs.blur_mask(mask, params.mask_blur)
    return ImageInputs(
        init=fitted,
        strength=params.strength,
        mask=mask,
        paste_back=params.paste_back and mask is not None,
        init_digest=init_digest,
        mask_digest=mask_digest,
    )


def _open(source: ImageInput, what: str) -> tuple[Image.Image, InputDigest]:
    """A path or a PIL image -> (the image, RGB or "L" for a mask; its digest)."""
    if isinstance(source, Image.Image):  # the same rules as for a file
        image = image_inputs.as_mask(source) if what == "mask" else image_inputs.as_rgb(source)
        return image, pixel_digest(image)
    if what == "mask":
        image = image_inputs.load_mask(source)
    else:
        image = image_inputs.load_image(source, what)
    digest = InputDigest(image_inputs.file_sha256(source), "file", Path(source).name)
    return image, digest


def pixel_digest(image: Image.Image) -> InputDigest:
    """SHA-256 over the mode, the size and the raw pixels of an in-memory image."""
    header = f"{image.mode} {image.width}x{image.height}\n".encode()
    return InputDigest(hashlib.sha256(header + image.tobytes()).hexdigest(), "pixels")
