"""Our own jobs API: submit, list, status, cancel, server-sent events, and the images.

Request fields are the library's `GenerationParams` names (see README, "Serving"), images
base64-encoded. A job runs whether or not anyone listens to its events; its result (and its
image URLs) is kept for --keep-results seconds after it ends.

Events (`GET /v1/jobs/{id}/events`, text/event-stream), each `data` a JSON object:
`status` {"status"}; `progress` {"step", "total_steps", "image_index", "preview"?: base64 PNG};
`image` {"index", "seed", "url"}. The stream ends after the final status.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel, ConfigDict, Field

from sdxs_rt.errors import UsageError
from sdxs_rt.jobs import ImageReady, Job, JobEvent, ProgressEvent, StatusEvent
from sdxs_rt.metadata import make_record
from sdxs_rt.params import GenerationParams
from sdxs_rt.serve.image_codec import decode_image, png_base64, png_bytes
from sdxs_rt.serve.runtime import ServerRuntime, runtime_of

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


class ImagePromptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str  # base64
    weight: float = 1.0


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    scheduler: str | None = None
    num_images: int = 1
    batch_size: int = 1
    init_image: str | None = None
    strength: float | None = None
    resize_mode: Literal["crop", "stretch"] = "crop"
    mask: str | None = None
    mask_blur: int = 4
    paste_back: bool = True
    outpaint: tuple[int, int, int, int] | None = None
    variation_seed: int | None = None
    variation_strength: float = 0.0
    hires_scale: float | None = None
    hires_strength: float = 0.5
    hires_steps: int | None = None
    hires_upscaler: Literal["lanczos", "latent"] = "lanczos"
    image_prompts: list[ImagePromptIn] = Field(default_factory=list)
    # the queue's
    priority: int = Field(default=0, ge=-100, le=100)
    previews: bool = False


IMAGE_FIELDS = ("init_image", "mask")
QUEUE_FIELDS = ("priority", "previews", "image_prompts", *IMAGE_FIELDS)


def params_of(req: JobRequest, runtime: ServerRuntime) -> GenerationParams:
    limits = runtime.config.limits
    fields = {
        name: value
        for name, value in req.model_dump(exclude=set(QUEUE_FIELDS)).items()
        if value is not None or name in ("seed",)
    }
    for name in IMAGE_FIELDS:
        text = getattr(req, name)
        if text is not None:
            fields[name] = decode_image(text, name, limits.max_input_pixels)
    if req.outpaint is not None:
        fields["outpaint"] = tuple(req.outpaint)
    fields["image_prompts"] = tuple(
        (decode_image(p.image, f"image_prompts[{i}].image", limits.max_input_pixels), p.weight)
        for i, p in enumerate(req.image_prompts)
    )
    params = GenerationParams(**fields)
    limits.check(params)
    return params


def summary(runtime: ServerRuntime, job: Job, request: Request) -> dict[str, Any]:
    status = job.status
    live = runtime.live(job.id)
    result = job.result
    images = []
    if result is not None:
        for index, seed in enumerate(result.seeds):
            url = request.url_for("job_image", job_id=job.id, index=index)
            images.append({"index": index, "seed": seed, "url": str(url)})
    return {
        "id": job.id,
        "status": status.value,
        "priority": job.priority,
        "step": live.step if live else None,
        "total_steps": job.plan.total_steps,
        "num_images": job.plan.params.num_images,
        "seeds": list(job.plan.seeds),
        "error": result.error if result is not None else None,
        "images": images,
    }


@router.post("", status_code=202)
async def submit(req: JobRequest, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    job = runtime.submit(params_of(req, runtime), priority=req.priority, previews=req.previews)
    return summary(runtime, job, request)


@router.get("")
async def list_jobs(request: Request) -> list[dict[str, Any]]:
    runtime = runtime_of(request)
    return [summary(runtime, job, request) for job in runtime.queue.jobs()]


@router.get("/{job_id}")
async def status(job_id: str, request: Request) -> dict[str, Any]:
    runtime = runtime_of(request)
    return summary(runtime, runtime.queue.get(job_id), request)


@router.delete("/{job_id}")
async def cancel(job_id: str, request: Request) -> dict[str, Any]:
    """Pending: removed. Running: stops before its next step. Finished: unchanged."""
    runtime = runtime_of(request)
    runtime.queue.cancel(job_id)
    return summary(runtime, runtime.queue.get(job_id), request)


@router.get("/{job_id}/images/{index}.png", name="job_image")
async def image(job_id: str, index: int, request: Request) -> Response:
    runtime = runtime_of(request)
    job = runtime.queue.get(job_id)
    result = runtime.queue.result(job_id)
    if not 0 <= index < len(result.images):
        raise UsageError(f"job {job_id} has no image {index} (it has {len(result.images)})")
    record = make_record(runtime.pipe, job.plan, index)
    return Response(png_bytes(result.images[index], record), media_type="image/png")


def known_job(job_id: str, request: Request) -> Job:
    """The job, or UnknownJob (404) before a stream starts: once it has, the status is sent."""
    return runtime_of(request).queue.get(job_id)


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def events(
    request: Request, job: Annotated[Job, Depends(known_job)]
) -> AsyncIterator[ServerSentEvent]:
    runtime = runtime_of(request)
    listener = runtime.listen(job.id)  # before the snapshot: nothing falls between
    try:
        yield ServerSentEvent(event="status", data={"status": job.status.value})
        if job.status.final:
            return
        while True:
            event = await listener.queue.get()
            yield sse(event, request)
            if isinstance(event, StatusEvent) and event.status.final:
                return
    finally:
        runtime.unlisten(listener)


def sse(event: JobEvent, request: Request) -> ServerSentEvent:
    if isinstance(event, StatusEvent):
        return ServerSentEvent(event="status", data={"status": event.status.value})
    if isinstance(event, ProgressEvent):
        data: dict[str, Any] = {
            "step": event.step + 1,
            "total_steps": event.total_steps,
            "image_index": event.image_index,
        }
        if event.preview:
            data["preview"] = png_base64(event.preview[0])
        return ServerSentEvent(event="progress", data=data)
    assert isinstance(event, ImageReady)
    url = request.url_for("job_image", job_id=event.job_id, index=event.index)
    return ServerSentEvent(
        event="image", data={"index": event.index, "seed": event.seed, "url": str(url)}
    )
