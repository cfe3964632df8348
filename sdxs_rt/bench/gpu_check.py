"""The ONE prepared GPU script: environment, correctness on CUDA, then `bench --preset full`.

    python -m sdxs_rt.bench.gpu_check [--preset full] [--skip-bench]

Writes gpu_check.json and bench-<preset>.json to $OUT (or the current folder) and prints the
tables. Budget: within 8 minutes on one modern GPU (most of it building the 2.26B random model
and running the card's reference loop); the exit code is 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def out_dir() -> Path:
    folder = Path(os.environ.get("OUT") or ".")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def environment_report() -> dict[str, Any]:
    import torch

    from sdxs_rt.bench.report import environment

    env = environment("cuda")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            memory_gib=round(props.total_memory / 2**30, 1),
            capability=f"{props.major}.{props.minor}",
        )
    env["cuda_available"] = torch.cuda.is_available()
    return env


def folded_vs_unfolded(model: Path) -> dict[str, Any]:
    """The folded U-Net (single-token cross-attention as a constant) against the stock one."""
    import torch

    from sdxs_rt.backends.torch.unet import TorchUNet
    from sdxs_rt.backends.torch.weights import read_config

    unet_dir = model / "unet"
    weights = next(iter(sorted(unet_dir.glob("*.safetensors"))))
    config = read_config(unet_dir / "config.json")
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, config["in_channels"], 48, 48, generator=gen).cuda()
    context = torch.randn(2, 1, config["cross_attention_dim"], generator=gen).cuda()
    outs = []
    for fold in (False, True):
        unet = TorchUNet.load(unet_dir, weights, "cuda", torch.float16, fold=fold)
        outs.append(unet(sample, 500.0, context).float())
        del unet
        torch.cuda.empty_cache()
    diff = (outs[0] - outs[1]).abs().max().item()
    scale = outs[0].abs().max().item()
    return {
        "check": "folded vs unfolded U-Net (fp16, cuda)",
        "max_abs_diff": diff,
        "output_scale": scale,
        "ok": diff <= 2e-2 * max(1.0, scale),
    }


def fp16_vs_fp32_reference(model: Path, size: int, steps: int) -> dict[str, Any]:
    """sdxs-rt fp16 on CUDA against the card's algorithm in fp32 on CUDA: PSNR of the images."""
    import numpy as np
    import torch

    from sdxs_rt.bench.reference import CardRun, card_image
    from sdxs_rt.bench.runner import psnr
    from sdxs_rt.bench.worker_paths import NEGATIVE, PROMPT
    from sdxs_rt.pipeline import Pipeline

    run = CardRun(PROMPT, NEGATIVE, 1234, steps, size, 5.5, "cuda", torch.float32)
    reference = card_image(model, run).image
    torch.cuda.empty_cache()
    pipe = Pipeline.from_pretrained(str(model), device="cuda", dtype="fp16")
    image = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=steps,
        guidance_scale=5.5,
        width=size,
        height=size,
        seed=1234,
    ).images[0]
    value = psnr(np.asarray(image), reference)
    return {
        "check": f"sdxs-rt fp16 vs card fp32 ({size}px, {steps} steps, cuda)",
        "psnr_db": value,
        "ok": value >= 35.0,
    }


def run_checks(preset: str) -> list[dict[str, Any]]:
    from sdxs_rt.bench.presets import get_preset
    from sdxs_rt.bench.runner import BenchConfig, bench_cache, ensure_model

    model = ensure_model(get_preset(preset), bench_cache(BenchConfig(preset=preset)))
    checks = []
    for name, check in (
        ("fold", lambda: folded_vs_unfolded(model)),
        ("fp16", lambda: fp16_vs_fp32_reference(model, 576, 8)),
    ):
        tick = time.perf_counter()
        try:
            result = check()
        except Exception as exc:  # report and go on: the bench still runs
            result = {"check": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}
        result["seconds"] = round(time.perf_counter() - tick, 1)
        print(json.dumps(result), flush=True)
        checks.append(result)
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdxs_rt.bench.gpu_check")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    env = environment_report()
    print(json.dumps(env), flush=True)
    if not env["cuda_available"]:
        print("gpu_check: no CUDA device visible", file=sys.stderr)
        return 1
    checks = run_checks(args.preset)
    report = {"environment": env, "checks": checks}
    (out_dir() / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    status = 0 if all(c["ok"] for c in checks) else 1
    if not args.skip_bench:
        status |= _bench(args.preset)
    print(f"gpu_check: done in {time.perf_counter() - started:.0f} s", flush=True)
    return status


def _bench(preset: str) -> int:
    from sdxs_rt.bench.command import main as bench_main

    json_out = out_dir() / f"bench-{preset}.json"
    # a path (torch.compile, say) that overruns is reported as failed, not allowed to eat the budget
    args = ["--preset", preset, "--device", "cuda", "--json-out", str(json_out), "--timeout", "150"]
    return bench_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
