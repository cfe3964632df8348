"""`sdxs-rt generate`: validate everything cheap first, then load, sample, save atomically."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdxs_rt.backend_table import backend, import_backend, names_with, names_without
from sdxs_rt.commands.generate import PARAM_FLAGS
from sdxs_rt.errors import SdxsError, UsageError
from sdxs_rt.image_inputs import check_mask_size, load_image, load_mask, parse_outpaint, steps_kept
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


def plan_jobs(
    args: argparse.Namespace, prompts: list[str], size: tuple[int | None, int | None]
) -> list[Job]:
    """Seeds and output paths for the whole run, decided (and checked) before any model loads."""
    if args.seed is not None and args.seed < -1:
        raise UsageError(f"seed must be a whole number >= 0 (or -1 for random), got {args.seed}")
    per_prompt = args.batch_size * args.count
    first_seed = random_seed() if args.seed in (None, -1) else args.seed
    base = GenerationParams(
        prompt=prompts[0],
        width=size[0],
        height=size[1],
        seed=first_seed,
        num_images=per_prompt,
        **param_fields(args),
    )
    check_preview_args(args)
    seeds = [first_seed + i for i in range(per_prompt * len(prompts))]
    replace(base, num_images=len(seeds)).validate()  # also checks the last seed fits
    check_image_inputs(base)
    paths = output_paths(args.output, seeds)
    check_outputs(paths, overwrite=args.overwrite)
    return [
        Job(
            replace(base, prompt=prompt, seed=seeds[k * per_prompt]),
            paths[k * per_prompt : (k + 1) * per_prompt],
        )
        for k, prompt in enumerate(prompts)
    ]


def param_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The flags of PARAM_FLAGS as GenerationParams fields (checked there, once)."""
    values = {field: getattr(args, field) for field in PARAM_FLAGS.values()}
    if values["outpaint"] is not None:
        values["outpaint"] = parse_outpaint(values["outpaint"])
    return values


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


def check_preview_args(args: argparse.Namespace) -> None:
    if args.preview_every < 0:
        raise UsageError(f"--preview-every must be >= 0, got {args.preview_every}")
    if args.preview_path and not args.preview_every:
        raise UsageError("--preview-path needs --preview-every N")


def backend_options(args: argparse.Namespace) -> dict[str, Any]:
    """The GPU fast-path flags as the backend's `fast` option, --lora as its `loras` option
    and --low-vram as its `low_vram` option (else none); refused where the table says the
    backend has no such option."""
    options = {**lora_options(args), **low_vram_options(args)}
    wanted = args.cuda_graphs or args.compile or args.channels_last or args.offload_text_encoder
    if not wanted:
        return options
    if not backend(args.backend).fast_path:
        raise UsageError(
            "--cuda-graphs, --compile, --channels-last and --offload-text-encoder "
            f"apply to --backend {' or '.join(names_with('fast_path'))} only"
        )
    from sdxs_rt.backends.torch.fast import FastPathOptions

    fast = FastPathOptions(
        cuda_graphs=args.cuda_graphs,
        compile=args.compile,
        channels_last=args.channels_last,
        offload_text_encoder=args.offload_text_encoder,
    )
    return {**options, "fast": fast}


def low_vram_options(args: argparse.Namespace) -> dict[str, Any]:
    if not getattr(args, "low_vram", False):
        return {}
    entry = backend(args.backend)
    if not entry.low_vram:
        message = f"--low-vram applies to --backend {' or '.join(names_with('low_vram'))} only"
        if entry.fixed_sizes:
            message += (
                f"; {entry.label} engines size their memory by their profile "
                "('sdxs-rt engine build --max-size/--max-batch')"
            )
        raise UsageError(message)
    return {"low_vram": True}


def lora_options(args: argparse.Namespace) -> dict[str, Any]:
    """--lora FILE[:SCALE] -> the torch backend's `loras`, files checked before anything loads."""
    given = getattr(args, "lora", None) or []
    if not given:
        return {}
    if not backend(args.backend).runtime_lora:
        raise UsageError(
            f"--lora applies to --backend {' or '.join(names_with('runtime_lora'))} only; "
            f"for {' or '.join(names_without('runtime_lora'))}, merge the LoRA "
            "with 'sdxs-rt merge-lora MODEL LORA:SCALE -o OUT' and export OUT"
        )
    from sdxs_rt.backends.torch.lora import parse_lora_spec

    specs = [parse_lora_spec(spec) for spec in given]
    for spec in specs:
        if not spec.path.is_file():
            raise UsageError(f"LoRA file {spec.path} does not exist")
    return {"loras": specs}


def load_pipeline(args: argparse.Namespace, sizes: list[tuple[int, int]]) -> Pipeline:
    """Load the model; backends with fixed engine sizes check every size the run samples at."""
    fixed_sizes = backend(args.backend).fixed_sizes
    if fixed_sizes and args.model:
        # Refuse sizes outside the engines' profiles before anything loads.
        plugin = import_backend(args.backend)
        for width, height in sizes:
            plugin.check_size_for_model(args.model, width, height, args.batch_size)
    pipe = Pipeline.from_pretrained(
        args.model,
        backend_options=backend_options(args),
        text_encoder=args.text_encoder,
        backend=args.backend,
        device=args.device,
        dtype=args.precision,
        variant=args.variant,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
    )
    if fixed_sizes:
        for width, height in sizes:
            import_backend(args.backend).check_size(pipe.components, width, height, args.batch_size)
    return pipe


class Reporter:
    """Progress on stderr (a bar only on a TTY), results on stdout with --json."""

    def __init__(self, args: argparse.Namespace, total_steps: int) -> None:
        self.json = args.json
        self.quiet = args.quiet
        self.bar = None
        if not args.quiet and bar_wanted():
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


def save_image(
    args: argparse.Namespace, pipe: Pipeline, job: Job, event: ImageEvent
) -> dict[str, Any]:
    path = job.paths[event.index]
    record = make_record(pipe, event.plan, event.index)
    pnginfo = None if args.no_metadata else png_info(record)
    save_png(event.image, path, pnginfo=pnginfo, overwrite=args.overwrite)
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


def preview_target(args: argparse.Namespace, job: Job) -> Path:
    if args.preview_path:
        return Path(args.preview_path)
    return job.paths[0].with_name("preview.png")


def save_preview(args: argparse.Namespace, pipe: Pipeline, job: Job, event: StepEvent) -> None:
    if not args.preview_every or (event.step + 1) % args.preview_every:
        return
    image = pipe.decode(event.denoised)[0]
    save_png(image, preview_target(args, job), overwrite=True)


def shorten(text: str, limit: int = 70) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def early_sizes(args: argparse.Namespace, params: GenerationParams) -> list[tuple[int, int]]:
    """The sizes the run samples at, by the plan's own rules, before the model loads (for
    engines with fixed sizes): the model's native size is read from its configs, 576 when it
    cannot be (e.g. an exported folder: loading reports real problems later)."""
    try:
        native = native_image_size(resolve_model(args.model, args.variant, args.revision))
    except SdxsError:
        native = DEFAULT_IMAGE_SIZE
    init = params.init_image
    init_size = None if init is None else load_image(init).size  # type: ignore[arg-type]
    width, height = output_size(params, native, init_size)
    if params.hires_scale is None:
        return [(width, height)]
    return [(width, height), hires_size(width, height, params.hires_scale)]


def run_generate(
    args: argparse.Namespace, prompts: list[str], given_size: tuple[int | None, int | None]
) -> int:
    jobs = plan_jobs(args, prompts, given_size)
    pipe = load_pipeline(args, early_sizes(args, jobs[0].params))
    plans = [pipe.plan(job.params) for job in jobs]  # every input checked before any image
    total_steps = sum(p.total_steps * -(-p.params.num_images // p.params.batch_size) for p in plans)
    reporter = Reporter(args, total_steps)
    for line in pipe.components.info.get("skipped", ()):  # parts of the model left aside
        reporter.log(f"note: {line}")
    try:
        for job, plan in zip(jobs, plans, strict=True):
            reporter.log(f"prompt {shorten(plan.params.prompt)!r}, seeds from {plan.seeds[0]}")
            for event in pipe.generate(plan=plan):
                if isinstance(event, StepEvent):
                    reporter.step()
                    save_preview(args, pipe, job, event)
                else:
                    reporter.image(save_image(args, pipe, job, event))
    finally:
        reporter.close()
    return 0
