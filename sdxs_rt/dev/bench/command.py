"""`sdxs-rt bench`: the CLI hooks. No heavy import at module import time.

add_bench_arguments(parser)   # fills an argparse (sub)parser
run_bench(args) -> int        # runs it; exit code 0 when every requested path ran
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PRESET_NAMES = ("tiny", "cpu-small", "full")
PATH_NAMES = ("reference", "torch", "torch-bf16", "torch-cuda-graphs", "torch-compile", "onnx")

BENCH_EXAMPLES = """examples:
  sdxs-rt bench --preset tiny                                  # seconds; a smoke check
  sdxs-rt bench --preset cpu-small --json-out bench-cpu-small.json
  sdxs-rt bench --preset full --device cuda --json-out bench-full.json
  scripts/gpu-check.sh                                         # the whole GPU part, <= 8 min
"""


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=PRESET_NAMES,
        default="tiny",
        help="model size: tiny (CI smoke), cpu-small, full (GPU)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    parser.add_argument("--size", type=int, default=None, help="override the preset's size (px)")
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=PATH_NAMES,
        default=None,
        help="paths to time (default: all available; reference always runs)",
    )
    parser.add_argument(
        "--with-onnx",
        action="store_true",
        help="also export and time ONNX Runtime on big presets (always on tiny)",
    )
    parser.add_argument("--json-out", type=Path, default=None, help="write the results here")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per path (best kept)")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed 2-step runs per path first (default: 1 on CUDA, 0 on CPU)",
    )
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds one path may take before it is reported as failed",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds for all paths together: a path is cut to what is left (compile paths, run "
        "last, get all of it) and one that runs out is reported as over-budget, not failed",
    )
    parser.add_argument(
        "--cache-dir", default=None, help="where built models live (default $SDXS_RT_CACHE/bench)"
    )
    parser.epilog = BENCH_EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the JSON; 1 if a requested path failed
    (skipped and over-budget paths are reported in the table's notes, not failures)."""
    from sdxs_rt.dev.bench.report import environment, format_table, write_json
    from sdxs_rt.dev.bench.runner import BenchConfig, run_bench_rows

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = BenchConfig(
        preset=args.preset,
        device=args.device,
        steps=args.steps,
        size=args.size,
        paths=list(args.paths or []),
        with_onnx=args.with_onnx,
        repeat=args.repeat,
        warmup=args.warmup,
        seed=args.seed,
        cache_dir=args.cache_dir,
        timeout_s=args.timeout,
        budget_s=args.budget,
    )
    result = run_bench_rows(config, log=lambda message: print(message, file=sys.stderr))
    result["environment"] = environment(args.device)
    print(format_table(result))
    if args.json_out:
        print(f"JSON: {write_json(result, args.json_out)}")
    return 1 if any(row.get("status") == "failed" for row in result["rows"]) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdxs_rt.dev.bench.command")
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
