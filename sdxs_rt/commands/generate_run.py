"""`sdxs-rt generate`: validate everything cheap first, then load, sample, save atomically."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdxs_rt.backend_table import backend, import_backend
from sdxs_rt.commands.generate_options import GenerateOptions, LoadOptions, RunOptions
from sdxs_rt.errors import SdxsError
from sdxs_rt.image_inputs import check_mask_size, load_image, load_mask, steps_kept
from sdxs_rt.images import check_outputs, output_paths, save_png
from sdxs_rt.loading import DEFAULT_IMAGE_SIZE, native_image_size, resolve_model
from sdxs_rt.metadata import ImageRecord, make_record, png_info
from sdxs_rt.params import GenerationParams
from sdxs_rt.pipeline import ImageEvent, Pipeline, StepEvent
from sdxs_rt.plan import hires_size, output_size, strength_for
from sdxs_rt.progress import bar_wanted
from sdxs_rt.rng import random_seed


@dataclass(frozen=True)
class Job:
    """One prompt's share of the run: its parameters and the files its images go to."""

    params: GenerationParams
    paths: list[Path]


def plan_jobs(options: GenerateOptions) -> list[Job]:
    """Seeds and output paths for the whole run, decided (and checked) before any model loads."""
    run = options.run
    per_prompt = options.batch_size * run.count
    first_seed = random_seed() if run.seed is None else run.seed
    base = GenerationParams(
        prompt=options.prompts[0],
        width=options.size[0],
        height=options.size[1],
        seed=first_seed,
        num_images=per_prompt,
        **options.params,
    )
    seeds = [first_seed + i for i in range(per_prompt * len(options.prompts))]
    replace(base, num_images=len(seeds)).validate()  # also checks the last seed fits
    check_image_inputs(base)
    paths = output_paths(run.output, seeds)
    check_outputs(paths, overwrite=run.overwrite)
    return [
        Job(
            replace(
                base,
                prompt=prompt,
                seed=seeds[k * per_prompt],
                variation_seed=_offset(base.variation_seed, k * per_prompt),
            ),
            paths[k * per_prompt : (k + 1) * per_prompt],
        )
        for k, prompt in enumerate(options.prompts)
    ]


def _offset(seed: int | None, by: int) -> int | None:
    # The variation seed counts up with the seed across the whole run, prompt after prompt.
    return None if seed is None else seed + by


def check_image_inputs(params: GenerationParams) -> None:
    """The image-input refusals that need no model, made before it loads (the plan makes them
    again): unreadable files, a mask of another size, a strength that leaves no step."""
    if params.init_image is None:
        return
    init = load_image(params.init_image)  # type: ignore[arg-type]
    if params.mask is not None:
        check_mask_size(load_mask(params.mask), init.size)  # type: ignore[arg-type]
    strength = strength_for(params)
    assert strength is not None
    steps_kept(params.num_inference_steps, strength)


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The backend options a run with these parsed arguments loads with, checked as
    `GenerateOptions.from_args` checks them (for callers holding a Namespace; the run itself
    uses `LoadOptions.backend_options`)."""
    return LoadOptions.from_args(args).backend_options()


def load_pipeline(load: LoadOptions, batch_size: int, sizes: list[tuple[int, int]]) -> Pipeline:
    """Load the model; backends with fixed engine sizes check every size the run samples at."""
    fixed_sizes = backend(load.backend).fixed_sizes
    if fixed_sizes and load.model:
        # Refuse sizes outside the engines' profiles before anything loads.
        plugin = import_backend(load.backend)
        for width, height in sizes:
            plugin.check_size_for_model(load.model, width, height, batch_size)
    pipe = Pipeline.from_pretrained(
        load.model,
        backend_options=load.backend_options(),
        text_encoder=load.text_encoder,
        backend=load.backend,
        device=load.device,
        dtype=load.precision,
        variant=load.variant,
        revision=load.revision,
        trust_remote_code=load.trust_remote_code,
    )
    if fixed_sizes:
        for width, height in sizes:
            import_backend(load.backend).check_size(pipe.components, width, height, batch_size)
    return pipe


class Reporter:
    """Progress on stderr (a bar only on a TTY), results on stdout with --json."""

    def __init__(self, run: RunOptions, total_steps: int) -> None:
        self.json = run.json
        self.quiet = run.quiet
        self.bar = None
        if not run.quiet and bar_wanted():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, unit="step", file=sys.stderr, dynamic_ncols=True)

    def log(self, message: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def image(self, payload: dict[str, Any]) -> None:
        self.log(f"seed {payload['seed']} -> {payload['path']}")
        if self.json:
            print(json.dumps(payload, ensure_ascii=False), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def save_image(run: RunOptions, pipe: Pipeline, job: Job, event: ImageEvent) -> dict[str, Any]:
    path = job.paths[event.index]
    record = make_record(pipe, event.plan, event.index)
    pnginfo = png_info(record) if run.metadata else None
    save_png(event.image, path, pnginfo=pnginfo, overwrite=run.overwrite)
    return {
        "path": str(path),
        "seed": event.seed,
        "prompt": record.prompt,
        "negative_prompt": record.negative_prompt,
        "steps": record.steps,
        "cfg": record.guidance_scale,
        "width": record.image_size[0],
        "height": record.image_size[1],
        "scheduler": record.scheduler,
        "backend": record.backend,
        "device": record.device,
        "precision": record.precision,
        "model": record.model,
        **({"revision": record.revision} if record.revision else {}),
        **({"loras": pipe.info["loras"]} if pipe.info.get("loras") else {}),
        **{key: value for key, value in image_input_record(record).items()},
        "timings": {k: round(v, 4) for k, v in event.timings.items()},
    }


def image_input_record(record: ImageRecord) -> dict[str, Any]:
    """The image-input and variation fields of a record that are set, for --json."""
    names = (
        "strength", "init_image", "mask", "mask_blur", "paste_back", "outpaint", "resize_mode",
        "variation_seed", "variation_strength", "hires_scale", "hires_strength", "hires_steps",
        "hires_upscaler",
    )  # fmt: skip
    return {name: getattr(record, name) for name in names if getattr(record, name) is not None}


def preview_target(run: RunOptions, job: Job) -> Path:
    if run.preview_path:
        return Path(run.preview_path)
    return job.paths[0].with_name("preview.png")


def save_preview(run: RunOptions, pipe: Pipeline, job: Job, event: StepEvent) -> None:
    if not run.preview_every or (event.step + 1) % run.preview_every:
        return
    image = pipe.decode(event.denoised)[0]
    save_png(image, preview_target(run, job), overwrite=True)


def shorten(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def early_sizes(load: LoadOptions, params: GenerationParams) -> list[tuple[int, int]]:
    """The sizes the run samples at, by the plan's own rules, before the model loads (for
    engines with fixed sizes): the model's native size is read from its configs, 576 when it
    cannot be (e.g. an exported folder: loading reports real problems later)."""
    try:
        native = native_image_size(resolve_model(load.model, load.variant, load.revision))
    except SdxsError:
        native = DEFAULT_IMAGE_SIZE
    init = params.init_image
    init_size = None if init is None else load_image(init).size  # type: ignore[arg-type]
    width, height = output_size(params, native, init_size)
    if params.hires_scale is None:
        return [(width, height)]
    return [(width, height), hires_size(width, height, params.hires_scale)]


def run_generate(options: GenerateOptions) -> int:
    """Plan (every file and input checked), load, then sample and save prompt by prompt."""
    jobs = plan_jobs(options)
    sizes = early_sizes(options.load, jobs[0].params)
    pipe = load_pipeline(options.load, options.batch_size, sizes)
    plans = [pipe.plan(job.params) for job in jobs]  # every input checked before any image
    total_steps = sum(p.total_steps * -(-p.params.num_images // p.params.batch_size) for p in plans)
    reporter = Reporter(options.run, total_steps)
    for line in pipe.components.info.get("skipped", ()):  # parts of the model left aside
        reporter.log(f"note: {line}")
    try:
        for job, plan in zip(jobs, plans, strict=True):
            reporter.log(f"prompt {shorten(plan.params.prompt)!r}, seeds from {plan.seeds[0]}")
            for event in pipe.generate(plan=plan):
                if isinstance(event, StepEvent):
                    reporter.step()
                    save_preview(options.run, pipe, job, event)
                else:
                    reporter.image(save_image(options.run, pipe, job, event))
    finally:
        reporter.close()
    return 0
