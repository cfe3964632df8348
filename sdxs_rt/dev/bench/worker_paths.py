"""What one benchmark subprocess does: load one path, warm up, time it, report memory.

Timings per phase: text encoding, median sampler step, VAE decode, total. On CUDA the only
synchronisations are at phase boundaries, so there a step's time is sampling / steps.
"""

from __future__ import annotations

import inspect
import statistics
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sdxs_rt.dev.bench.runner import Job

PROMPT, NEGATIVE = "a red circle on a white background", ""


class Skipped(Exception):
    """This path is not available on this machine / in this version."""


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cuda_peak_mb(device: str, reserved: bool = False) -> float | None:
    """Peak CUDA memory of this process in MiB: allocated by tensors, or `reserved` by torch's
    caching allocator (closer to what nvidia-smi shows, less the CUDA context)."""
    if not device.startswith("cuda"):
        return None
    import torch

    peak = torch.cuda.max_memory_reserved() if reserved else torch.cuda.max_memory_allocated()
    return peak / 2**20


def run_job(job: Job) -> dict[str, Any]:
    row: dict[str, Any] = {"path": job.path, "device": job.device}
    try:
        started = time.perf_counter()
        runner = _reference if job.path == "reference" else _sdxs
        image, measured = runner(job, row)
        row.update(measured)
        row["wall_with_load"] = time.perf_counter() - started
        row["image_file"] = str(Path(job.out_dir) / f"image-{job.path}.npy")
        np.save(row["image_file"], image)
        row["status"] = "ok"
    except Skipped as exc:
        row.update(status="skipped", reason=str(exc))
    except Exception as exc:  # a failing path is a row that says why, not a dead benchmark
        row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
        row["traceback"] = traceback.format_exc(limit=4)
    row["peak_rss_mb"] = peak_rss_mb()
    row["cuda_max_allocated_mb"] = _safe_cuda_peak(job.device)
    row["cuda_max_reserved_mb"] = _safe_cuda_peak(job.device, reserved=True)
    return row


def _safe_cuda_peak(device: str, reserved: bool = False) -> float | None:
    try:
        return cuda_peak_mb(device, reserved)
    except Exception:
        return None


def _step_stat(device: str, step_seconds: list[float], sampling: float, steps: int) -> float:
    if device.startswith("cuda") or not step_seconds:
        return sampling / max(1, steps)
    return statistics.median(step_seconds)


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return min(runs, key=lambda run: run["total"])


# --- the model card's algorithm --------------------------------------------------------


def _reference(job: Job, row: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    import torch

    from sdxs_rt.dev.bench.reference import CardRun, load_card_model, run_card

    dtype = torch.float16 if job.device.startswith("cuda") else torch.float32  # the card's
    row["precision"] = "fp16" if dtype == torch.float16 else "fp32"
    tick = time.perf_counter()
    parts = load_card_model(Path(job.model), job.device, dtype)
    row["load"] = time.perf_counter() - tick
    run = CardRun(PROMPT, NEGATIVE, job.seed, job.steps, job.size, job.guidance, job.device, dtype)
    tick = time.perf_counter()
    for _ in range(job.warmup):
        run_card(parts, CardRun(**{**run.__dict__, "steps": min(2, job.steps)}))
    row["warmup"] = time.perf_counter() - tick
    runs, image = [], np.zeros(0)
    for _ in range(job.repeat):
        result = run_card(parts, run)
        image = result.image
        timings = dict(result.timings)
        timings["step_median"] = _step_stat(
            job.device, result.step_seconds, timings["sampling"], job.steps
        )
        runs.append(timings)
    return image, _best(runs)


# --- sdxs-rt paths ---------------------------------------------------------------------


def _load_pipeline(job: Job, row: dict[str, Any]) -> Any:
    from sdxs_rt.pipeline import Pipeline, import_backend

    if job.path == "onnx":
        _ensure_onnx(job)
        row["precision"] = "fp32"
        return Pipeline.from_pretrained(job.onnx_dir, backend="onnx", device=job.device)
    from sdxs_rt.dev.bench.runner import PATH_PRECISION, TORCH_OPTIONS

    default = "fp16" if job.device.startswith("cuda") else "fp32"
    precision = PATH_PRECISION.get(job.path, default)
    row["precision"] = precision
    options = TORCH_OPTIONS[job.path]
    load = import_backend("torch").load_components
    if options and not job.device.startswith("cuda"):
        raise Skipped(f"{job.path} is a CUDA-only path")
    extra = {"fast": _fast_options(options)} if "fast" in inspect.signature(load).parameters else {}
    if options and not extra:
        raise Skipped("the torch backend has no GPU fast path (`fast=` option) yet")
    row["fast_path"] = options
    components = load(
        job.model, device=job.device, precision=precision, variant=job.variant, **extra
    )
    return Pipeline(components)


def _fast_options(options: dict[str, Any]) -> Any:
    """Explicit options (all off for the plain path), so SDXS_RT_* variables change nothing."""
    from sdxs_rt.backends.torch.fast import FastPathOptions

    return FastPathOptions(**options)


def _ensure_onnx(job: Job) -> None:
    """Export the model to ONNX once (cached beside the model; a partial export never counts)."""
    folder = Path(job.onnx_dir)
    if (folder / "manifest.json").is_file():
        return
    try:
        from sdxs_rt_export.onnx_export import export_onnx
    except ImportError:
        try:
            from export.onnx_export import export_onnx  # a source checkout, not installed
        except ImportError as exc:
            raise Skipped(f"the ONNX exporter is not installed ({exc})") from None
    partial = folder.with_name(folder.name + ".partial")
    export_onnx(job.model, partial, precision="fp32", variant=job.variant, trust_remote_code=True)
    partial.rename(folder)


def _sdxs(job: Job, row: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    tick = time.perf_counter()
    pipe = _load_pipeline(job, row)
    row["load"] = time.perf_counter() - tick
    kwargs = {
        "negative_prompt": NEGATIVE,
        "guidance_scale": job.guidance,
        "width": job.size,
        "height": job.size,
        "seed": job.seed,
    }
    tick = time.perf_counter()
    for _ in range(job.warmup):  # where torch.compile compiles and CUDA graphs are captured
        pipe(PROMPT, num_inference_steps=min(2, job.steps), **kwargs)
    row["warmup"] = time.perf_counter() - tick
    runs, image = [], np.zeros(0)
    for _ in range(job.repeat):
        image, timings = _timed_generate(pipe, job, kwargs)
        runs.append(timings)
    return image, _best(runs)


def _timed_generate(pipe: Any, job: Job, kwargs: dict[str, Any]) -> tuple[np.ndarray, dict]:
    from sdxs_rt.pipeline import ImageEvent, StepEvent

    step_seconds: list[float] = []
    timings: dict[str, float] = {}
    image = np.zeros(0)
    started = time.perf_counter()
    for event in pipe.generate(PROMPT, num_inference_steps=job.steps, **kwargs):
        if isinstance(event, StepEvent):
            step_seconds.append(event.seconds)
        elif isinstance(event, ImageEvent):
            image, timings = np.asarray(event.image), dict(event.timings)
    timings["total"] = time.perf_counter() - started
    timings["step_median"] = _step_stat(job.device, step_seconds, timings["sampling"], job.steps)
    return image, timings
