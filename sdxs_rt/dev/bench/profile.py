"""Where a sampler step's time goes: `torch.profiler` over U-Net calls of the torch path.

    python -m sdxs_rt.dev.bench.profile --preset cpu-small [--device cpu] [--steps 2]

Groups the ops by self time into conv/GEMM, attention, norms and other (on CUDA the gap
between summed kernel time and wall time is the launch/idle gap).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

GROUPS = (
    ("conv/GEMM", ("conv", "mm", "addmm", "matmul", "linear", "bmm", "baddbmm", "mkldnn")),
    ("attention", ("attention", "softmax", "sdpa", "flash")),
    ("norms", ("norm",)),
)


def group_of(name: str) -> str:
    lowered = name.lower()
    for group, keys in GROUPS:
        if any(key in lowered for key in keys):
            return group
    return "other"


def profile_unet(preset: str, device: str, calls: int) -> tuple[list[Any], float]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from sdxs_rt.dev.bench.presets import get_preset
    from sdxs_rt.dev.bench.runner import BenchConfig, bench_cache, ensure_model
    from sdxs_rt.pipeline import Pipeline

    spec = get_preset(preset)
    model = ensure_model(spec, bench_cache(BenchConfig(preset=preset)))
    pipe = Pipeline.from_pretrained(str(model), device=device)
    unet, size = pipe.components.unet, spec.size // 8
    sample = torch.randn(2, 16, size, size, device=device)
    context = pipe.components.text_encoder(["", "a red circle"])[:, None]
    unet(sample, 500.0, context)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device != "cpu" else [])
    tick = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(calls):
            unet(sample, 500.0, context)
    wall = (time.perf_counter() - tick) / calls
    return list(prof.key_averages()), wall


def summarize(events: list[Any], wall: float, calls: int, top: int = 12) -> str:
    rows = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) / 1e6 / calls
    groups: dict[str, float] = {}
    for event in rows:
        seconds = event.self_cpu_time_total / 1e6 / calls
        groups[group_of(event.key)] = groups.get(group_of(event.key), 0.0) + seconds
    lines = [f"U-Net call (CFG batch 2): {wall:.3f} s wall, {total:.3f} s summed op self time"]
    for group, seconds in sorted(groups.items(), key=lambda item: -item[1]):
        lines.append(f"  {group:10s} {seconds:8.3f} s  {100 * seconds / total:5.1f} %")
    lines.append(f"top {top} ops by self time:")
    for event in rows[:top]:
        seconds = event.self_cpu_time_total / 1e6 / calls
        lines.append(f"  {event.key:40s} {seconds:8.3f} s  {group_of(event.key)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdxs_rt.dev.bench.profile")
    parser.add_argument("--preset", default="cpu-small")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=2, help="U-Net calls profiled")
    args = parser.parse_args(argv)
    events, wall = profile_unet(args.preset, args.device, args.steps)
    print(summarize(events, wall, args.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
