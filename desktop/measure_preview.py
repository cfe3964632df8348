"""Measure what live previews cost against a sampler step (the issue's bar: at most 5%).

    python -m sdxs_rt_desktop.measure_preview [--size 576] [--steps 10] [--model DIR] ...

Runs the same generation twice, without previews and with a preview after every step, and prints
the median step time of each, the median cost of one preview (projection + upscale to a QImage,
as the worker does it) and its share of a step.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sdxs_rt_desktop.preview import LatentPreviewer
from sdxs_rt_desktop.worker import as_generator

from sdxs_rt.params import GenerationParams
from sdxs_rt.pipeline import Pipeline, StepEvent

BAR = 0.05  # a preview may cost at most 5% of a step


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the built-in one)")
    parser.add_argument("--backend", default="torch")
    parser.add_argument("--device", default=None)
    parser.add_argument("--precision", default=None)
    parser.add_argument("--size", type=int, default=576)
    parser.add_argument("--steps", type=int, default=10)
    return parser.parse_args(argv)


def step_times(
    pipe: Pipeline, params: GenerationParams, on_step: Callable[[StepEvent], Any]
) -> tuple[list[float], list[float]]:
    """Wall time between consecutive steps (the consumer's work included), and on_step's time."""
    gaps: list[float] = []
    costs: list[float] = []
    last = None
    events = as_generator(pipe.generate(params=params))
    for event in events:
        if not isinstance(event, StepEvent):
            continue
        now = time.perf_counter()
        if last is not None:
            gaps.append(now - last)
        on_step(event)
        costs.append(time.perf_counter() - now)
        last = now
        if event.step + 1 == params.num_inference_steps:
            break  # the decode is not what we measure
    events.close()
    return gaps, costs


def median_ms(values: list[float]) -> float:
    return 1000 * statistics.median(values) if values else float("nan")


def map_source(previewer: LatentPreviewer) -> Path:
    """Where the previewer's map came from (the shipped file wins, as in `projection`)."""
    return previewer.shipped_path if previewer.shipped_path.is_file() else previewer.cache_path


def measure(args: argparse.Namespace) -> dict[str, Any]:
    pipe = Pipeline.from_pretrained(
        args.model, backend=args.backend, device=args.device, dtype=args.precision
    )
    previewer = LatentPreviewer(pipe)
    started = time.perf_counter()
    _ = previewer.projection
    fit_ms = 1000 * (time.perf_counter() - started)
    params = GenerationParams(prompt="a lighthouse at dusk", width=args.size, height=args.size,
                              num_inference_steps=args.steps, seed=0)  # fmt: skip
    step_times(pipe, params, lambda event: None)  # warm-up (first-call allocations)
    plain, _ = step_times(pipe, params, lambda event: None)
    with_preview, costs = step_times(pipe, params, lambda e: previewer.to_qimage(e.denoised))
    _, numpy_costs = step_times(pipe, params, lambda e: previewer.to_rgb(e.denoised))
    return {
        "pipe": pipe,
        "fit_ms": fit_ms,
        "cache": map_source(previewer),
        "step_ms": median_ms(plain),
        "step_with_preview_ms": median_ms(with_preview),
        "preview_ms": median_ms(costs),
        "numpy_preview_ms": median_ms(numpy_costs),
    }


def report(args: argparse.Namespace, m: dict[str, Any]) -> str:
    info = m["pipe"].info
    share = m["preview_ms"] / m["step_ms"]
    rows = [
        ("median step, no preview", f"{m['step_ms']:9.2f} ms"),
        ("median step, preview every step", f"{m['step_with_preview_ms']:9.2f} ms"),
        ("one preview (project + Qt smooth x8)", f"{m['preview_ms']:9.2f} ms  {share:6.2%}"),
        ("one preview (project + numpy nearest x8)", f"{m['numpy_preview_ms']:9.2f} ms"),
        ("one-time map (shipped, cached or fitted)", f"{m['fit_ms']:9.1f} ms"),
    ]
    title = (
        f"preview cost: {info.get('model')} on {info.get('backend')} {info.get('device')}, "
        f"{args.size}x{args.size}, {args.steps} steps per run"
    )
    lines = [title, *(f"  {name:<42}{value}" for name, value in rows)]
    verdict = "within" if share <= BAR else "OVER"
    lines.append(f"  {verdict} the bar of {BAR:.0%} of a step; map from {m['cache']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(report(args, measure(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
