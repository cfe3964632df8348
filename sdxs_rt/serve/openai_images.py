"""OpenAI's `POST /v1/images/generations`, as its official client sends it.

Standard fields: `prompt`, `model` (optional; must name the loaded model), `n`, `size` ("WxH"
in multiples of 64, or "auto" for the model's own size), `response_format` ("b64_json", the
default here, or "url": a link to /v1/jobs/{id}/images/{index}.png, valid while the job's
result is kept), `quality`, `style` and `user` (accepted, ignored). Extension fields (send them
with the client's `extra_body`): `negative_prompt`, `seed`, `steps`, `guidance_scale`,
`sampler` (our sampler names). Unknown fields are refused, as OpenAI does.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sdxs_rt.errors import UsageError
from sdxs_rt.infotext import format_parameters
from sdxs_rt.params import GenerationParams
from sdxs_rt.serve.http_errors import JobCancelled
from sdxs_rt.serve.image_codec import png_base64
from sdxs_rt.serve.models import check_model_name
from sdxs_rt.serve.runtime import ServerRuntime, runtime_of

router = APIRouter(prefix="/v1/images", tags=["OpenAI"])
SIZE = re.compile(r"^([0-9]{1,5})x([0-9]{1,5})$")


class ImageGenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=32000)
    model: str | None = None
    n: int = 1
    size: str | None = "auto"
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    quality: str | None = None
    style: str | None = None
    user: str | None = None
    # extensions
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    sampler: str | None = None


def size_of(value: str | None) -> tuple[int | None, int | None]:
    if value in (None, "", "auto"):
        return None, None
    match = SIZE.match(value)
    if match is None:
        raise UsageError(f"size {value[:40]!r} must be WIDTHxHEIGHT (e.g. 576x576) or auto")
    return int(match.group(1)), int(match.group(2))


def params_of(req: ImageGenerationRequest, runtime: ServerRuntime) -> GenerationParams:
    check_model_name(req.model, runtime.model_title, runtime.config.models_dir)
    width, height = size_of(req.size)
    fields: dict[str, Any] = {
        "prompt": req.prompt,
        "negative_prompt": req.negative_prompt,
        "width": width,
        "height": height,
        "seed": req.seed,
        "num_images": req.n,
        "scheduler": req.sampler,
    }
    if req.steps is not None:
        fields["num_inference_steps"] = req.steps
    if req.guidance_scale is not None:
        fields["guidance_scale"] = req.guidance_scale
    params = GenerationParams(**fields)
    runtime.config.limits.check(params)
    return params


@router.post("/generations")
async def generations(req: ImageGenerationRequest, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    done = await runtime.generate(params_of(req, runtime), request, previews=False)
    data = []
    for index, (image, record) in enumerate(zip(done.result.images, done.records, strict=True)):
        item: dict[str, Any] = {
            "revised_prompt": None,
            "seed": done.result.seeds[index],
            "infotext": format_parameters(record),
        }
        if req.response_format == "url":
            item["url"] = str(request.url_for("job_image", job_id=done.job.id, index=index))
        else:
            item["b64_json"] = png_base64(image, record)
        data.append(item)
    if len(data) < req.n:
        raise JobCancelled("the request was cancelled before all its images were drawn")
    return {"created": int(time.time()), "data": data}
