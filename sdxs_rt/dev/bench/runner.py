"""Time the card's algorithm and every sdxs-rt path on the same random weights, seed and noise.

Each path runs in a fresh subprocess (`python -m sdxs_rt.dev.bench.runner JOB.json`), so peak RSS
and peak CUDA memory belong to that path alone. The parent builds the model once into
`$SDXS_RT_CACHE/bench/<preset>` (reused next run), then compares the rows.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdxs_rt.dev.bench.presets import Preset, build_preset_model, get_preset

SDXS_PATHS = ("torch", "torch-bf16", "torch-cuda-graphs", "torch-compile", "onnx")
ALL_PATHS = ("reference", *SDXS_PATHS)
# `FastPathOptions` fields of the torch backend's GPU fast path (sdxs_rt.backends.torch.fast);
# a path is skipped while the backend has no `fast` option
TORCH_OPTIONS: dict[str, dict[str, Any]] = {
    "torch": {},
    "torch-bf16": {},
    "torch-cuda-graphs": {"cuda_graphs": True},
    "torch-compile": {"compile": "default", "cuda_graphs": True},
}
# Paths whose precision is not the device's default (fp16 on CUDA, fp32 on CPU): bf16 pays off
# on CPUs with AVX-512 BF16 / AMX.
PATH_PRECISION = {"torch-bf16": "bf16"}
# Paths whose first call compiles for minutes: with a time budget they get all that is left of
# it (they run last) instead of the per-path limit, and running out is "over-budget", not a
# failure. A smaller preset would not help: compile time follows the op count, which cpu-small
# shares with full (same 150 transformer layers, half the widths).
COMPILE_PATHS = ("torch-compile",)
MIN_PATH_BUDGET_S = 30.0  # less than this left of the budget: the path is not started
IDENTICAL_PSNR = 100.0  # reported when the images are bit-identical


@dataclass
class BenchConfig:
    preset: str = "tiny"
    device: str = "cpu"
    steps: int | None = None
    size: int | None = None
    paths: list[str] = field(default_factory=list)  # empty: all available
    with_onnx: bool = False
    repeat: int = 1
    warmup: int | None = None  # None: 1 on CUDA, 0 on CPU
    seed: int = 1234
    cache_dir: str | None = None
    timeout_s: float = 3600.0
    budget_s: float | None = None  # all paths together, counted from the first path's start

    def resolved(self) -> tuple[Preset, int, int]:
        preset = get_preset(self.preset)
        return preset, self.steps or preset.steps, self.size or preset.size


@dataclass
class Job:
    path: str
    model: str
    device: str
    steps: int
    size: int
    seed: int
    guidance: float
    repeat: int
    warmup: int
    out_dir: str
    onnx_dir: str = ""
    variant: str | None = None  # the weight files the preset wrote ("fp16": only *.fp16.*)


def bench_cache(config: BenchConfig) -> Path:
    if config.cache_dir:
        return Path(config.cache_dir)
    from sdxs_rt.loading import user_cache_dir

    return user_cache_dir() / "bench"


def ensure_model(preset: Preset, cache: Path) -> Path:
    """The preset's model folder, built once (atomically: a partial build never counts)."""
    root = cache / preset.name
    if (root / "model_index.json").is_file():
        return root
    partial = cache / f"{preset.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    build_preset_model(preset, partial)
    shutil.rmtree(root, ignore_errors=True)
    partial.rename(root)
    return root


def plan_paths(config: BenchConfig) -> list[str]:
    if config.paths:
        unknown = sorted(set(config.paths) - set(ALL_PATHS))
        if unknown:
            raise ValueError(f"unknown path(s) {unknown}; choose from {', '.join(ALL_PATHS)}")
        return ["reference", *[p for p in config.paths if p != "reference"]]
    paths = ["reference", "torch"]
    if config.device.startswith("cuda"):
        paths += ["torch-cuda-graphs", "torch-compile"]
    else:
        paths.append("torch-bf16")
    if config.preset == "tiny" or config.with_onnx:
        paths.append("onnx")
    return paths


def run_bench_rows(config: BenchConfig, log: Any = print) -> dict[str, Any]:
    """Build/reuse the model, run every path in its own process, compare with the reference."""
    preset, steps, size = config.resolved()
    cache = bench_cache(config)
    log(f"model: building or reusing {cache / preset.name}")
    model = ensure_model(preset, cache)
    warmup = config.warmup if config.warmup is not None else int(config.device != "cpu")
    with tempfile.TemporaryDirectory(prefix="sdxs-bench-") as work:
        base = Job(
            "",
            str(model),
            config.device,
            steps,
            size,
            config.seed,
            preset.guidance,
            config.repeat,
            warmup,
            work,
            variant=preset.variant,
        )
        deadline = None if config.budget_s is None else time.monotonic() + config.budget_s
        rows = [
            _run_path(base, path, cache, _PathLimit(config, path, deadline), log)
            for path in plan_paths(config)
        ]
        compare_rows(rows, work)
    for row in rows:
        row.pop("image_file", None)
    return {
        "preset": preset.name,
        "steps": steps,
        "size": size,
        "seed": config.seed,
        "model": str(model),
        "rows": rows,
    }


@dataclass
class _PathLimit:
    """How long one path may run: the per-path limit, cut to what is left of the budget."""

    config: BenchConfig
    path: str
    deadline: float | None  # time.monotonic() at which the budget runs out

    def seconds(self) -> tuple[float, bool]:
        """(limit, whether the budget rather than the per-path limit sets it)"""
        if self.deadline is None:
            return self.config.timeout_s, False
        left = self.deadline - time.monotonic()
        if self.path in COMPILE_PATHS or left < self.config.timeout_s:
            return left, True
        return self.config.timeout_s, False


def _run_path(base: Job, path: str, cache: Path, limit: _PathLimit, log: Any) -> dict[str, Any]:
    job = Job(**{**asdict(base), "path": path})
    if path == "onnx":
        job.onnx_dir = str(cache / f"{limit.config.preset}.onnx-fp32")
    seconds, by_budget = limit.seconds()
    if by_budget and seconds < MIN_PATH_BUDGET_S:
        row = over_budget(path, f"not started: {max(seconds, 0):.0f} s left of the time budget")
    else:
        log(f"path {path}: running in a fresh process (limit {seconds:.0f} s)")
        row = run_in_subprocess(job, seconds)
        if by_budget and row.get("timed_out"):
            row = over_budget(path, f"stopped when the time budget ran out ({seconds:.0f} s)")
    row["limit_s"] = round(seconds, 1)
    log(f"path {path}: {row.get('status')} {row.get('reason', '')}".rstrip())
    return row


def over_budget(path: str, reason: str) -> dict[str, Any]:
    """A row for a path the time budget left no room for: reported, not failed."""
    return {"path": path, "status": "over-budget", "reason": reason}


def run_in_subprocess(job: Job, timeout_s: float) -> dict[str, Any]:
    job_file = Path(job.out_dir) / f"job-{job.path}.json"
    result_file = job_file.with_name(f"result-{job.path}.json")
    job_file.write_text(json.dumps(asdict(job)))
    cmd = [sys.executable, "-m", "sdxs_rt.dev.bench.runner", str(job_file)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        reason = f"timed out after {timeout_s:.0f} s"
        return {"path": job.path, "status": "failed", "reason": reason, "timed_out": True}
    if result_file.is_file():
        return dict(json.loads(result_file.read_text()))
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
    return {"path": job.path, "status": "failed", "reason": " | ".join(tail)}


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of two uint8 images; IDENTICAL_PSNR when they are equal."""
    diff = image.astype(np.float64) - reference.astype(np.float64)
    mse = float(np.mean(diff**2))
    return IDENTICAL_PSNR if mse == 0 else min(IDENTICAL_PSNR, 10 * math.log10(255.0**2 / mse))


def compare_rows(rows: list[dict[str, Any]], work: str) -> None:
    """Add speed ratios (reference / path: > 1 means faster) and PSNR against the reference."""
    ref = rows[0]
    if ref.get("status") != "ok":
        return
    ref_image = np.load(ref["image_file"])
    for row in rows:
        if row.get("status") != "ok":
            continue
        for key in ("step_median", "total", "text_encode", "decode"):
            row[f"speedup_{key}"] = ref[key] / row[key] if row[key] > 0 else None
        image = np.load(row["image_file"])
        row["psnr_db"] = psnr(image, ref_image) if image.shape == ref_image.shape else None


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: run one job file, write `result-<path>.json` beside it."""
    from sdxs_rt.dev.bench import worker_paths

    job_file = Path((argv or sys.argv[1:])[0])
    job = Job(**json.loads(job_file.read_text()))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    row = worker_paths.run_job(job)
    job_file.with_name(f"result-{job.path}.json").write_text(json.dumps(row, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
