"""The subset of A1111's web API that clients use, with A1111's field names and defaults.

One table maps A1111's request fields onto GenerationParams; the rest of each request is
checked: a field we cannot honour with a value other than A1111's default is refused (400)
rather than silently ignored. Fields we accept and ignore: A1111's sampler knobs that have no
counterpart here (eta, s_churn, ...), `inpaint_full_res` (the whole picture is always
inpainted), `inpainting_fill` (the masked area always starts from the noised input, A1111's
"original"), `save_images` (the server's --output-dir decides), `do_not_save_*`.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sdxs_rt import __version__
from sdxs_rt.errors import UsageError
from sdxs_rt.infotext import format_parameters
from sdxs_rt.params import GenerationParams
from sdxs_rt.scheduler_table import SAMPLERS, entry_for, scheduler_for_label
from sdxs_rt.serve.config import Limits
from sdxs_rt.serve.image_codec import decode_image, png_base64
from sdxs_rt.serve.models import check_model_name, served_models
from sdxs_rt.serve.runtime import ServerRuntime, runtime_of

router = APIRouter(prefix="/sdapi/v1", tags=["A1111"])

# A1111 request field -> GenerationParams field, for the fields that carry over as they are.
FIELDS = {
    "prompt": "prompt",
    "negative_prompt": "negative_prompt",
    "steps": "num_inference_steps",
    "cfg_scale": "guidance_scale",
    "width": "width",
    "height": "height",
    "batch_size": "batch_size",
    "subseed_strength": "variation_strength",
}
# A1111's img2img resize_mode numbers; 2 (resize and fill) and 3 (latent upscale) are not here.
RESIZE_MODES = {0: "stretch", 1: "crop"}
HIRES_UPSCALERS = {"latent": "latent", "lanczos": "lanczos", "": "lanczos", "none": "lanczos"}
# Fields refused unless they hold A1111's default (or an empty value).
UNSUPPORTED = (
    "restore_faces",
    "tiling",
    "script_name",
    "styles",
    "alwayson_scripts",
    "hr_resize_x",
    "hr_resize_y",
    "hr_checkpoint_name",
    "hr_sampler_name",
    "hr_prompt",
    "hr_negative_prompt",
    "refiner_checkpoint",
    "firstphase_width",
    "firstphase_height",
)
SEED_RESIZE_DEFAULTS = (-1, 0)


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str = "Euler"
    scheduler: str | None = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    denoising_strength: float | None = None
    override_settings: dict[str, Any] | None = None
    script_name: str | None = None
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    send_images: bool = True
    save_images: bool = False
    refiner_checkpoint: str | None = None
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    firstphase_width: int = 0
    firstphase_height: int = 0


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(default_factory=list)
    resize_mode: int = 0
    denoising_strength: float | None = 0.75
    mask: str | None = None
    mask_blur: int | None = None
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    inpainting_mask_invert: int = 0
    include_init_images: bool = False


class ImagesResponse(BaseModel):
    images: list[str]
    parameters: dict[str, Any]
    info: str


# -- requests -> GenerationParams ----------------------------------------------------------


def refuse_unsupported(req: Txt2ImgRequest) -> None:
    defaults = type(req).model_fields
    for name in UNSUPPORTED:
        value = getattr(req, name)
        if value and value != defaults[name].default:
            raise UsageError(f"{name} is not supported by sdxs-rt; leave it at A1111's default")
    for name in ("seed_resize_from_h", "seed_resize_from_w"):
        if getattr(req, name) not in SEED_RESIZE_DEFAULTS:
            raise UsageError(f"{name} is not supported by sdxs-rt; leave it at -1")


def scheduler_of(req: Txt2ImgRequest) -> str:
    label = req.sampler_name or req.sampler_index
    name = scheduler_for_label(label, req.scheduler or "")
    if name is None and label in {entry.name for entry in SAMPLERS}:
        name = label  # our own names work too
    if name is None:
        known = ", ".join(entry.label for entry in SAMPLERS)
        raise UsageError(
            f"unknown sampler {label[:60]!r} (schedule {req.scheduler!r}); use one of: {known}"
        )
    return name


def seed_of(value: int) -> int | None:
    return None if value == -1 else value


def common_fields(req: Txt2ImgRequest, runtime: ServerRuntime) -> dict[str, Any]:
    refuse_unsupported(req)
    settings = req.override_settings or {}
    check_model_name(
        settings.get("sd_model_checkpoint"), runtime.model_title, runtime.config.models_dir
    )
    fields = {ours: getattr(req, theirs) for theirs, ours in FIELDS.items()}
    fields["seed"] = seed_of(req.seed)
    fields["scheduler"] = scheduler_of(req)
    if req.n_iter < 1 or req.batch_size < 1:
        raise UsageError("batch_size and n_iter must be at least 1")
    fields["num_images"] = req.batch_size * req.n_iter
    if req.subseed_strength > 0:
        fields["variation_seed"] = seed_of(req.subseed)
    return fields


def txt2img_params(req: Txt2ImgRequest, runtime: ServerRuntime) -> GenerationParams:
    fields = common_fields(req, runtime)
    if req.enable_hr:
        upscaler = (req.hr_upscaler or "").strip().lower()
        if upscaler not in HIRES_UPSCALERS:
            raise UsageError(f"hr_upscaler {req.hr_upscaler!r} is not here; use Latent or Lanczos")
        fields.update(
            hires_scale=req.hr_scale,
            hires_upscaler=HIRES_UPSCALERS[upscaler],
            hires_steps=req.hr_second_pass_steps or None,
            hires_strength=0.7 if req.denoising_strength is None else req.denoising_strength,
        )
    return checked(GenerationParams(**fields), runtime.config.limits)


def img2img_params(req: Img2ImgRequest, runtime: ServerRuntime) -> GenerationParams:
    fields = common_fields(req, runtime)
    limits = runtime.config.limits
    if not req.init_images:
        raise UsageError("init_images is empty; send one base64-encoded image")
    if req.resize_mode not in RESIZE_MODES:
        raise UsageError(
            f"resize_mode {req.resize_mode} is not here; use 0 (just resize) or 1 (crop and resize)"
        )
    fields["init_image"] = decode_image(
        req.init_images[0], "init_images[0]", limits.max_input_pixels
    )
    fields["resize_mode"] = RESIZE_MODES[req.resize_mode]
    fields["strength"] = req.denoising_strength
    if req.mask:
        mask = decode_image(req.mask, "mask", limits.max_input_pixels).convert("L")
        if req.inpainting_mask_invert:
            from PIL import ImageOps

            mask = ImageOps.invert(mask)
        fields["mask"] = mask
        fields["mask_blur"] = req.mask_blur if req.mask_blur is not None else req.mask_blur_x
    return checked(GenerationParams(**fields), limits)


def checked(params: GenerationParams, limits: Limits) -> GenerationParams:
    limits.check(params)
    return params


# -- endpoints -----------------------------------------------------------------------------


@router.post("/txt2img", response_model=ImagesResponse)
async def txt2img(req: Txt2ImgRequest, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    return await run(req, txt2img_params(req, runtime), request)


@router.post("/img2img", response_model=ImagesResponse)
async def img2img(req: Img2ImgRequest, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    return await run(req, img2img_params(req, runtime), request)


async def run(req: Txt2ImgRequest, params: GenerationParams, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    done = await runtime.generate(params, request, previews=True)
    images = [
        png_base64(image, record)
        for image, record in zip(done.result.images, done.records, strict=True)
    ]
    infotexts = [format_parameters(record) for record in done.records]
    return {
        "images": images if req.send_images else [],
        "parameters": req.model_dump(exclude={"init_images", "mask"}),
        "info": json.dumps(info(runtime, done.job.plan, infotexts, done.result.seeds)),
    }


def info(
    runtime: ServerRuntime, plan: Any, infotexts: list[str], seeds: list[int]
) -> dict[str, Any]:
    """A1111's `info` JSON (the fields its clients read)."""
    params = plan.params
    width, height = plan.output_size
    all_seeds = seeds or list(plan.seeds)
    return {
        "prompt": params.prompt,
        "all_prompts": [params.prompt] * len(all_seeds),
        "negative_prompt": params.negative_prompt,
        "all_negative_prompts": [params.negative_prompt] * len(all_seeds),
        "seed": all_seeds[0] if all_seeds else -1,
        "all_seeds": all_seeds,
        "subseed": params.variation_seed if params.variation_seed is not None else -1,
        "subseed_strength": params.variation_strength,
        "width": width,
        "height": height,
        "sampler_name": entry_for(plan.scheduler).label,
        "cfg_scale": params.guidance_scale,
        "steps": params.num_inference_steps,
        "batch_size": params.batch_size,
        "denoising_strength": params.strength,
        "sd_model_name": runtime.model_title,
        "sd_model_hash": runtime.pipe.info.get("model_hash"),
        "infotexts": infotexts,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"),
        "interrupted": len(seeds) < len(list(plan.seeds)),
        "version": f"sdxs-rt {__version__}",
    }


@router.get("/progress")
async def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
    runtime = runtime_of(request)
    running = runtime.queue.running
    live = runtime.live(running.id) if running is not None else None
    pending = len(runtime.queue.pending())
    fraction = live.step / live.total_steps if live and live.total_steps else 0.0
    elapsed = time.monotonic() - live.started if live else 0.0
    image = live.preview if live and not skip_current_image else None
    return {
        "progress": fraction,
        "eta_relative": elapsed / fraction - elapsed if fraction > 0 else 0.0,
        "state": {
            "skipped": False,
            "interrupted": False,
            "job": running.id if running is not None else "",
            "job_count": pending + (1 if running is not None else 0),
            "job_timestamp": "0",
            "job_no": 0,
            "sampling_step": live.step if live else 0,
            "sampling_steps": live.total_steps if live else 0,
        },
        "current_image": png_base64(image) if image is not None else None,
        "textinfo": None,
    }


@router.post("/interrupt")
async def interrupt(request: Request) -> dict[str, Any]:
    """Stops the running job before its next step (A1111: the current generation)."""
    runtime = runtime_of(request)
    running = runtime.queue.running
    if running is not None:
        runtime.queue.cancel(running.id)
    return {}


@router.post("/skip")
async def skip(request: Request) -> dict[str, Any]:
    return await interrupt(request)


@router.get("/options")
async def get_options(request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    return {
        "sd_model_checkpoint": runtime.model_title,
        "samples_format": "png",
        "show_progress_every_n_steps": runtime.config.preview_every or -1,
        "live_previews_enable": bool(runtime.config.preview_every),
    }


@router.post("/options")
async def set_options(options: dict[str, Any], request: Request) -> None:
    """Only `sd_model_checkpoint` is read: it must name the loaded model (no switching)."""
    runtime = runtime_of(request)
    name = options.get("sd_model_checkpoint")
    if name is not None and not isinstance(name, str):
        raise UsageError("sd_model_checkpoint must be a model name")
    check_model_name(name, runtime.model_title, runtime.config.models_dir)


@router.get("/samplers")
async def samplers() -> list[dict[str, Any]]:
    return [{"name": entry.label, "aliases": [entry.name], "options": {}} for entry in SAMPLERS]


@router.get("/schedulers")
async def schedulers() -> list[dict[str, Any]]:
    return [
        {"name": "automatic", "label": "Automatic", "aliases": None},
        {"name": "karras", "label": "Karras", "aliases": None},
    ]


@router.get("/sd-models")
async def sd_models(request: Request) -> list[dict[str, Any]]:
    runtime = runtime_of(request)
    models = []
    for entry in served_models(runtime.model_title, runtime.config.models_dir):
        model_hash = runtime.pipe.info.get("model_hash") if entry.loaded else None
        models.append(
            {
                "title": f"{entry.name} [{model_hash}]" if model_hash else entry.name,
                "model_name": entry.name,
                "hash": model_hash,
                "sha256": None,
                "filename": entry.name,  # a name, never a path on this machine
                "config": None,
            }
        )
    return models
