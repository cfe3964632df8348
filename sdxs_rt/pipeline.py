"""The generator loop: prompts -> embeddings -> sampler steps -> decoded images.

The pipeline is handed its components (DESIGN.md) and never asks which backend it has.
`generate()` yields a `StepEvent` after every sampler step and an `ImageEvent` per finished
image; stopping the iteration (or `cancel()`, from any thread) means nothing more is decoded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from sdxs_rt import backend_table
from sdxs_rt.backend_table import DEFAULT_BACKEND, import_backend
from sdxs_rt.components import Array, ArrayOps, Components, LatentScaling
from sdxs_rt.errors import UsageError
from sdxs_rt.guidance import guided_model
from sdxs_rt.hub import check_revision
from sdxs_rt.images import to_pil_images
from sdxs_rt.params import GenerationParams
from sdxs_rt.rng import BatchNoise, random_seed, seeds_for
from sdxs_rt.sampler_schedule import build_schedule
from sdxs_rt.samplers import sample
from sdxs_rt.scheduler_table import SCHEDULER_NAMES, scheduler_for_config
from sdxs_rt.schedules import SchedulerConfig


@dataclass(frozen=True)
class StepEvent:
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
    index: int
    seed: int
    image: Image.Image
    timings: dict[str, float]


@dataclass
class GenerationResult:
    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    cancelled: bool = False


def _per_channel(value: tuple[float, ...] | float, ops: ArrayOps) -> Any:
    if isinstance(value, (int, float)):
        return float(value)
    return ops.from_host(np.asarray(value, dtype=np.float32).reshape(1, -1, 1, 1))


def unscale_latents(latents: Array, scaling: LatentScaling, ops: ArrayOps) -> Array:
    """Model latents -> VAE latents: `z * std / scaling_factor + mean` (per channel)."""
    std, mean = _per_channel(scaling.std, ops), _per_channel(scaling.mean, ops)
    return latents * std / scaling.scaling_factor + mean


def scale_latents(latents: Array, scaling: LatentScaling, ops: ArrayOps) -> Array:
    """VAE latents -> model latents, the inverse: `(z - mean) * scaling_factor / std`."""
    std, mean = _per_channel(scaling.std, ops), _per_channel(scaling.mean, ops)
    return (latents - mean) * scaling.scaling_factor / std


class Pipeline:
    """SDXS text-to-image with classifier-free guidance and native schedulers."""

    def __init__(self, components: Components) -> None:
        self.components = components
        self.scheduler_config = SchedulerConfig.from_dict(components.scheduler_config)
        self.default_scheduler = scheduler_for_config(components.scheduler_config)
        self._negative_cache: dict[str, Array] = {}
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
        return self.components.text_encoder([prompt])

    def encode_negative(self, negative_prompt: str) -> Array:
        # The negative prompt is nearly always the same ("" by default): encode it once.
        if negative_prompt not in self._negative_cache:
            self._negative_cache[negative_prompt] = self.components.text_encoder([negative_prompt])
        return self._negative_cache[negative_prompt]

    def decode(self, latents: Array) -> list[Image.Image]:
        """Model latents (B, C, h, w) -> PIL images, the model card's way."""
        c = self.components
        decoded = c.vae_decoder(unscale_latents(latents, c.latent_scaling, c.ops))
        return to_pil_images(c.ops.to_host(decoded))

    def resolve(self, params: GenerationParams) -> tuple[GenerationParams, str]:
        """Validate, pick the scheduler and fix the seed, so the run can be recorded."""
        params.validate()
        scheduler = params.scheduler or self.default_scheduler
        if scheduler not in SCHEDULER_NAMES:
            names = ", ".join(SCHEDULER_NAMES)
            raise UsageError(f"unknown scheduler {scheduler!r}; choose one of: {names}")
        seed = random_seed() if params.seed is None else params.seed
        resolved = GenerationParams(**{**params.__dict__, "seed": seed, "scheduler": scheduler})
        return resolved, scheduler

    def generate(self, prompt: str = "", **kwargs: Any) -> Iterator[StepEvent | ImageEvent]:
        """Step-by-step form: yields a StepEvent per step and an ImageEvent per image."""
        params = kwargs.pop("params", None) or GenerationParams(prompt=prompt, **kwargs)
        params, scheduler = self.resolve(params)
        self._cancel.clear()
        try:
            yield from self._generate(params, scheduler)
        finally:
            self._cancel.clear()

    def __call__(self, prompt: str = "", **kwargs: Any) -> GenerationResult:
        params = kwargs.pop("params", None) or GenerationParams(prompt=prompt, **kwargs)
        result = GenerationResult()
        start = time.perf_counter()
        for event in self.generate(params=params):
            if isinstance(event, ImageEvent):
                result.images.append(event.image)
                result.seeds.append(event.seed)
                for key, value in event.timings.items():
                    result.timings[key] = result.timings.get(key, 0.0) + value
        result.cancelled = len(result.images) < params.num_images
        result.timings["total"] = time.perf_counter() - start
        return result

    def _generate(
        self, params: GenerationParams, scheduler: str
    ) -> Iterator[StepEvent | ImageEvent]:
        assert params.seed is not None
        started = time.perf_counter()
        cond = self.encode_prompt(params.prompt)
        uncond = None
        if params.guidance_scale > 1.0:
            uncond = self.encode_negative(params.negative_prompt)
        text_seconds = time.perf_counter() - started
        all_seeds = seeds_for(params.seed, params.num_images)
        for first in range(0, params.num_images, params.batch_size):
            seeds = all_seeds[first : first + params.batch_size]
            batch = _Batch(first, tuple(seeds), text_seconds if first == 0 else 0.0)
            yield from self._generate_batch(params, scheduler, batch, cond, uncond)
            if self._cancel.is_set():
                return

    def _generate_batch(
        self,
        params: GenerationParams,
        scheduler: str,
        batch: _Batch,
        cond: Array,
        uncond: Array | None,
    ) -> Iterator[StepEvent | ImageEvent]:
        c = self.components
        ops = c.ops
        size = len(batch.seeds)
        shape = (
            c.latent_channels,
            params.height // c.vae_scale_factor,
            params.width // c.vae_scale_factor,
        )
        noise = BatchNoise(batch.seeds, shape)
        context = _repeat(cond, size, ops)
        uncontext = None if uncond is None else _repeat(uncond, size, ops)
        model = guided_model(c.unet, context, uncontext, params.guidance_scale, ops)
        schedule = build_schedule(scheduler, self.scheduler_config, params.num_inference_steps)
        x_T = schedule.start_latents(ops.from_host(noise.draw()))
        steps = sample(schedule, model, x_T, lambda: ops.from_host(noise.draw()), ops)
        latents, sampling_seconds, tick = x_T, 0.0, time.perf_counter()
        for step in steps:
            if self._cancel.is_set():
                return
            now = time.perf_counter()
            sampling_seconds += now - tick
            yield StepEvent(
                batch.first, batch.seeds, step.index, params.num_inference_steps,
                step.timestep, step.latents, step.denoised, now - tick,
            )  # fmt: skip
            latents, tick = step.latents, time.perf_counter()
        if self._cancel.is_set():
            return
        yield from self._decode(latents, batch, sampling_seconds)

    def _decode(
        self, latents: Array, batch: _Batch, sampling_seconds: float
    ) -> Iterator[ImageEvent]:
        started = time.perf_counter()
        images = self.decode(latents)
        decode_seconds = time.perf_counter() - started
        share = 1.0 / len(images)  # timings are per batch: split them evenly per image
        for offset, (seed, image) in enumerate(zip(batch.seeds, images, strict=True)):
            timings = {
                "text_encode": batch.text_seconds * share,
                "sampling": sampling_seconds * share,
                "decode": decode_seconds * share,
            }
            yield ImageEvent(batch.first + offset, seed, image, timings)


@dataclass(frozen=True)
class _Batch:
    first: int
    seeds: tuple[int, ...]
    text_seconds: float


def _repeat(embedding: Array, count: int, ops: ArrayOps) -> Array:
    """(1, D) pooled embedding -> (count, 1, D) encoder_hidden_states."""
    return ops.concat([embedding] * count)[:, None]
