"""The generator loop: prompts -> embeddings -> sampler steps -> decoded images.

The pipeline is handed its components (DESIGN.md) and never asks which backend it has.
`generate()` yields a `StepEvent` after every sampler step and an `ImageEvent` per finished
image; stopping the iteration (or `cancel()`, from any thread) means nothing more is decoded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from PIL import Image

from sdxs_rt import backend_table, image_inputs
from sdxs_rt.backend_table import DEFAULT_BACKEND, import_backend
from sdxs_rt.components import (
    Array,
    Components,
    require_image_encoder,
)
from sdxs_rt.conditioning import (
    Condition,
    PartCache,
    condition_at,
    condition_schedule,
    interpolate_conditions,
)
from sdxs_rt.errors import UsageError
from sdxs_rt.guidance import ScheduledGuidance
from sdxs_rt.hub import check_revision
from sdxs_rt.images import to_pil_images
from sdxs_rt.latents import blend_known_region, scale_latents, unscale_latents, upscale_latents
from sdxs_rt.params import GenerationParams
from sdxs_rt.plan import (
    GenerationPlan,
    HiresPass,
    ImageInputs,
    ImagePrompt,
    ModelFacts,
    PromptPlan,
    make_plan,
)
from sdxs_rt.prompt_syntax import WeightedPart, parse_prompt
from sdxs_rt.rng import BatchNoise, slerp
from sdxs_rt.sampler_schedule import SamplerSchedule
from sdxs_rt.samplers import sample
from sdxs_rt.scheduler_table import scheduler_for_config
from sdxs_rt.schedules import SchedulerConfig


@dataclass(frozen=True)
class StepEvent:
    plan: GenerationPlan  # the resolved request this step belongs to
    image_index: int  # index of the first image of the batch being sampled
    seeds: tuple[int, ...]
    step: int  # 0-based
    total_steps: int
    timestep: float
    latents: Array
    denoised: Array
    seconds: float  # wall time of this step


@dataclass(frozen=True)
class ImageEvent:
    plan: GenerationPlan
    index: int
    seed: int
    image: Image.Image
    timings: dict[str, float]


@dataclass
class GenerationResult:
    plan: GenerationPlan | None = None
    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cancelled: bool = False


class Pipeline:
    """SDXS text-to-image with classifier-free guidance and native schedulers."""

    def __init__(self, components: Components) -> None:
        self.components = components
        self.scheduler_config = SchedulerConfig.from_dict(components.scheduler_config)
        self.default_scheduler = scheduler_for_config(components.scheduler_config)
        self._parts = PartCache()  # encoded prompt parts (texts, image prompts), bounded
        self._cancel = threading.Event()

    @classmethod
    def from_pretrained(
        cls,
        model: str | None = None,
        *,
        text_encoder: str | None = None,
        backend: str = DEFAULT_BACKEND,
        device: str | None = None,
        dtype: str | None = None,
        variant: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        backend_options: dict[str, Any] | None = None,
    ) -> Pipeline:
        """Load a model: for torch a diffusers-format folder or hub id (None: the built-in
        default model); for onnx and tensorrt a folder written by `sdxs-rt export onnx`.
        `revision` (a branch, tag or commit of a hub id) is refused for local folders.

        `device` and `dtype` default per backend (`backend_table`: `default_device`,
        `default_precision`); `backend_options` go to the backend's `load_components`
        (torch: `fast=FastPathOptions`, `loras=`, `low_vram=`).
        """
        entry = backend_table.backend(backend)  # unknown: a UsageError listing the choices
        check_revision(model, revision)
        module = import_backend(entry.name)
        components = module.load_components(
            model,
            text_encoder=text_encoder,
            device=device or entry.default_device,
            precision=dtype or entry.default_precision,
            variant=variant,
            revision=revision,
            trust_remote_code=trust_remote_code,
            **(backend_options or {}),
        )
        return cls(components)

    @property
    def info(self) -> dict[str, Any]:
        return self.components.info

    def cancel(self) -> None:
        """Stop the running generation before its next step; safe from any thread."""
        self._cancel.set()

    def encode_prompt(self, prompt: str) -> Array:
        """A whole text's vector (1, D), as the text encoder gives it (cached)."""
        return self._parts.get(("text", prompt), lambda: self.components.text_encoder([prompt]))

    def decode(self, latents: Array) -> list[Image.Image]:
        """Model latents (B, C, h, w) -> PIL images, the model card's way."""
        c = self.components
        decoded = c.vae_decoder(unscale_latents(latents, c.latent_scaling, c.ops))
        return to_pil_images(c.ops.to_host(decoded))

    def encode_image(self, image: Image.Image) -> Array:
        """An RGB image -> model latents (1, C, h, w): the posterior mean, scaled as the card."""
        c = self.components
        if c.vae_encoder is None:
            raise UsageError(self.no_encoder_reason())
        pixels = c.ops.from_host(image_inputs.image_to_array(image))
        return scale_latents(c.vae_encoder(pixels), c.latent_scaling, c.ops)

    def no_encoder_reason(self) -> str:
        reason = self.components.info.get("vae_encoder_unavailable")
        reason = reason or "it has no VAE encoder"
        return f"this model cannot encode images (init image, hires fix through pixels): {reason}"

    @property
    def model_facts(self) -> ModelFacts:
        c = self.components
        return ModelFacts(
            native_size=c.native_size,
            scheduler_config=self.scheduler_config,
            default_scheduler=self.default_scheduler,
            latent_channels=c.latent_channels,
            vae_scale_factor=c.vae_scale_factor,
        )

    def plan(self, params: GenerationParams) -> GenerationPlan:
        """Resolve a request once: defaults, seeds, schedule, sizes and prepared image inputs."""
        needs_encoder = params.init_image is not None or (
            params.hires_scale is not None and params.hires_upscaler != "latent"
        )
        if needs_encoder and self.components.vae_encoder is None:
            raise UsageError(self.no_encoder_reason())
        return make_plan(params, self.model_facts)

    def generate(
        self, prompt: str = "", *, plan: GenerationPlan | None = None, **kwargs: Any
    ) -> Iterator[StepEvent | ImageEvent]:
        """Step-by-step form: yields a StepEvent per step and an ImageEvent per image.

        Give `params=GenerationParams(...)`, keyword parameters, or a `plan` made by `plan()`.
        """
        if plan is None:
            params = kwargs.pop("params", None) or GenerationParams(prompt=prompt, **kwargs)
            plan = self.plan(params)
        self._cancel.clear()
        try:
            yield from self._generate(plan)
        finally:
            self._cancel.clear()

    def __call__(self, prompt: str = "", **kwargs: Any) -> GenerationResult:
        params = kwargs.pop("params", None) or GenerationParams(prompt=prompt, **kwargs)
        plan = self.plan(params)
        result = GenerationResult(plan=plan)
        start = time.perf_counter()
        for event in self.generate(plan=plan):
            if isinstance(event, ImageEvent):
                result.images.append(event.image)
                result.seeds.append(event.seed)
                for key, value in event.timings.items():
                    result.timings[key] = result.timings.get(key, 0.0) + value
        result.cancelled = len(result.images) < plan.params.num_images
        result.timings["total"] = time.perf_counter() - start
        return result

    def _generate(self, plan: GenerationPlan) -> Iterator[StepEvent | ImageEvent]:
        params = plan.params
        started = time.perf_counter()
        passes = [len(plan.schedule)] + ([] if plan.hires is None else [len(plan.hires.schedule)])
        conditions = [self._conditions(plan, steps) for steps in passes]
        init = None if plan.inputs is None else self._init_latents(plan.inputs)
        prepare_seconds = time.perf_counter() - started
        for first in range(0, params.num_images, params.batch_size):
            seeds = plan.seeds[first : first + params.batch_size]
            batch = _Batch(first, seeds, prepare_seconds if first == 0 else 0.0)
            yield from self._generate_batch(plan, batch, conditions, init)
            if self._cancel.is_set():
                return

    def _conditions(self, plan: GenerationPlan, steps: int) -> _Conditions:
        """The prompt's (and the negative's) condition vectors over a pass of `steps` steps;
        for a latent walk's frame, slerped towards the target keyframe's (sdxs_rt.walk)."""
        params = plan.params
        prompts = plan.prompts or PromptPlan(
            parse_prompt(params.prompt), parse_prompt(params.negative_prompt)
        )
        conditions = self._prompt_conditions(prompts, steps, params.guidance_scale)
        if plan.walk is None:
            return conditions
        target = self._prompt_conditions(plan.walk.prompts, steps, params.guidance_scale)
        return conditions.toward(target, plan.walk.t, self._slerp)

    def _prompt_conditions(self, prompts: PromptPlan, steps: int, guidance: float) -> _Conditions:
        images = {name: image for image in prompts.image_prompts for name in image.names}
        encode = partial(self.encode_part, images)
        cond = condition_schedule(prompts.prompt, steps, prompts.refs, encode)
        uncond = None
        if guidance > 1.0:  # at <= 1 only the conditional branch runs
            uncond = condition_schedule(prompts.negative, steps, (), encode)
        return _Conditions(cond, uncond)

    def _slerp(self, low: Array, high: Array, t: float) -> Array:
        """Spherical interpolation of two condition vectors, on the host in float64 (rng.slerp)."""
        ops = self.components.ops
        return ops.from_host(slerp(ops.to_host(low), ops.to_host(high), t))

    def encode_part(self, images: Mapping[str, ImagePrompt], part: WeightedPart) -> Array:
        """One blend part's vector (1, D), from the cache when it was encoded before."""
        kind, key = part.key
        if kind == "text":
            return self._parts.get(part.key, lambda: self.components.text_encoder([key]))
        image = images[key]
        encoder = require_image_encoder(self.components)
        return self._parts.get(("image", image.digest.sha256), lambda: encoder([image.image]))

    def _init_latents(self, inputs: ImageInputs) -> _InitLatents:
        ops = self.components.ops
        clean = self.encode_image(inputs.init)
        if inputs.mask is None:
            return _InitLatents(clean, None)
        weights = image_inputs.latent_mask(inputs.mask, self.components.vae_scale_factor)
        return _InitLatents(clean, ops.from_host(weights))

    def _generate_batch(
        self,
        plan: GenerationPlan,
        batch: _Batch,
        conditions: list[_Conditions],
        init: _InitLatents | None,
    ) -> Iterator[StepEvent | ImageEvent]:
        c = self.components
        size = len(batch.seeds)
        clean = None if init is None else c.ops.concat([init.latents] * size)
        first_pass = _Pass(plan.schedule, plan.latent_shape, 0, conditions[0])
        mask = None if init is None else init.mask
        latents = yield from self._sample(plan, first_pass, batch, clean, mask)
        if latents is not None and plan.hires is not None:
            hires = plan.hires
            upscaled = self._upscale(latents, hires)
            first_step = len(plan.schedule)
            second = _Pass(hires.schedule, hires.latent_shape, first_step, conditions[1])
            latents = yield from self._sample(plan, second, batch, upscaled, None)
        if latents is None or self._cancel.is_set():
            return
        yield from self._decode(plan, latents, batch)

    def _sample(
        self,
        plan: GenerationPlan,
        run: _Pass,
        batch: _Batch,
        clean: Array | None,
        mask: Array | None,
    ) -> Generator[StepEvent, None, Array | None]:
        """One sampling pass from noise (clean None) or from noised `clean` latents; the final
        latents, or None when cancelled. Each pass draws its own stream: the image's seed at
        this pass's latent shape (the noise contract of sdxs_rt.rng)."""
        ops = self.components.ops
        schedule = run.schedule
        variations = [plan.variation_for(batch.first + i) for i in range(len(batch.seeds))]
        noise = BatchNoise(batch.seeds, run.latent_shape, variations)
        first_noise = ops.from_host(noise.draw())
        c = self.components
        model = ScheduledGuidance(
            c.unet, run.conditions.at, len(batch.seeds), plan.params.guidance_scale, ops
        )
        hooks = [model.after_step]
        if clean is None:
            latents = schedule.start_latents(first_noise)
        else:
            latents = schedule.noised(clean, first_noise)
            if mask is not None:
                hooks.append(blend_known_region(schedule, clean, first_noise, mask))
        draw = lambda: ops.from_host(noise.draw())  # noqa: E731
        tick = time.perf_counter()
        for step in sample(schedule, model, latents, draw, ops, after_step=_chain(hooks)):
            if self._cancel.is_set():
                return None
            now = time.perf_counter()
            batch.sampling_seconds += now - tick
            yield StepEvent(
                plan, batch.first, batch.seeds, run.first_step + step.index, plan.total_steps,
                step.timestep, step.latents, step.denoised, now - tick,
            )  # fmt: skip
            latents, tick = step.latents, time.perf_counter()
        return None if self._cancel.is_set() else latents

    def _upscale(self, latents: Array, hires: HiresPass) -> Array:
        """The first pass's latents at the hires size: through pixels, or in latent space."""
        c = self.components
        width, height = hires.size
        if hires.upscaler == "latent":
            host = upscale_latents(c.ops.to_host(latents), hires.latent_shape[1:])
            return c.ops.from_host(host)
        images = [
            image.resize((width, height), Image.Resampling.LANCZOS)
            for image in self.decode(latents)
        ]
        return c.ops.concat([self.encode_image(image) for image in images])

    def _decode(self, plan: GenerationPlan, latents: Array, batch: _Batch) -> Iterator[ImageEvent]:
        started = time.perf_counter()
        images = [self._finish(plan, image) for image in self.decode(latents)]
        decode_seconds = time.perf_counter() - started
        share = 1.0 / len(images)  # timings are per batch: split them evenly per image
        for offset, (seed, image) in enumerate(zip(batch.seeds, images, strict=True)):
            timings = {
                "text_encode": batch.prepare_seconds * share,
                "sampling": batch.sampling_seconds * share,
                "decode": decode_seconds * share,
            }
            yield ImageEvent(plan, batch.first + offset, seed, image, timings)

    @staticmethod
    def _finish(plan: GenerationPlan, image: Image.Image) -> Image.Image:
        """Paste the original pixels back outside the feathered mask, when asked to."""
        inputs = plan.inputs
        if inputs is None or inputs.mask is None or not inputs.paste_back:
            return image
        return image_inputs.paste_back(image, inputs.init, inputs.mask)


@dataclass
class _Batch:
    first: int
    seeds: tuple[int, ...]
    prepare_seconds: float  # prompt (and init image) encoding, charged to the first batch
    sampling_seconds: float = 0.0


@dataclass(frozen=True)
class _Conditions:
    cond: list[Condition]
    uncond: list[Condition] | None

    def at(self, step: int) -> tuple[Array, Array | None]:
        uncond = None if self.uncond is None else condition_at(self.uncond, step)
        return condition_at(self.cond, step), uncond

    def toward(self, other: _Conditions, t: float, mix: Any) -> _Conditions:
        """Each vector mixed with `other`'s at `t`: a latent walk's frame."""
        cond = interpolate_conditions(self.cond, other.cond, t, mix)
        if self.uncond is None or other.uncond is None:
            return _Conditions(cond, None)
        return _Conditions(cond, interpolate_conditions(self.uncond, other.uncond, t, mix))


@dataclass(frozen=True)
class _Pass:
    schedule: SamplerSchedule
    latent_shape: tuple[int, int, int]
    first_step: int  # the StepEvent index of its first step (a hires pass follows the first)
    conditions: _Conditions


def _chain(hooks: list[Any]) -> Any:
    def after_step(index: int, x: Array) -> Array:
        for hook in hooks:
            x = hook(index, x)
        return x

    return after_step


@dataclass(frozen=True)
class _InitLatents:
    latents: Array  # (1, C, h, w) model latents of the init image
    mask: Array | None  # (1, 1, h, w) repaint weights on the latent grid
