"""The ONE prepared GPU check: preflight, gpu-marked tests, correctness on CUDA, the `full` bench.

    scripts/gpu-check.sh     # the device command: offline install from wheelhouse/, then this
    python -m sdxs_rt.dev.bench.gpu_check [--tests] [--site DIR] [--budget-s 450] [--skip-bench]

Phases, in order (estimates on one H100 in PHASE_ESTIMATES_S, BENCHMARKS.md explains them):
preflight (imports from a fresh interpreter, the installed copy is this tree's code, the gpu
tests collect), then CUDA or the "no CUDA" report (exit 4), the gpu-marked tests, building the
`full` random model, the correctness checks, the bench with what is left of the budget.

Writes gpu_check.json, bench-<preset>.json and pytest-gpu.log to $OUT (or the current folder).
Exit codes: 0 all passed; 1 a test, check or bench path failed; 3 something is not in place
(an import, a stale install, the test files); 4 no CUDA device, everything else verified.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

EXIT_FAILED, EXIT_NOT_IN_PLACE, EXIT_NO_CUDA = 1, 3, 4
REPO = Path(__file__).resolve().parents[3]
# TensorRT is not on the lent GPU machines; `slow` holds a max-autotune compile that the
# bench's torch-compile row covers at full size
GPU_TESTS = "gpu and not tensorrt and not slow"
TESTS_LIMIT_S = 150.0
PATH_LIMIT_S = 120.0  # one eager bench path: fresh process, imports, loading, 40 steps
BENCH_RESERVE_S = 15.0  # kept back from the budget for the bench's own report
# Expected seconds per phase on one H100 (16 cores); the summary prints them beside the actual.
PHASE_ESTIMATES_S = {
    "preflight": 20,
    "gpu tests": 45,
    "build model": 75,
    "checks": 45,
    "bench": 215,  # reference, torch, torch-cuda-graphs ~25 s each; torch-compile ~140 s
}
CHECK_SIZE, CHECK_STEPS = 576, 8


def out_dir() -> Path:
    folder = Path(os.environ.get("OUT") or ".")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Phases:
    """Wall time per phase, kept in the report as they finish."""

    def __init__(self, budget_s: float) -> None:
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        print(f"== {name} (estimate {PHASE_ESTIMATES_S.get(name, '?')} s)", flush=True)
        tick = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = round(time.monotonic() - tick, 1)

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)


# --- preflight ----------------------------------------------------------------------------------


def preflight(site: Path | None, with_tests: bool) -> dict[str, Any]:
    """Everything but the GPU: imports, the installed copy, the gpu-marked tests. The import
    probe and the test collection both start interpreters that import torch: run side by side."""
    from sdxs_rt.dev.bench import preflight as pf

    files = pf.gpu_test_files(REPO) if with_tests else []
    with ThreadPoolExecutor(max_workers=2) as pool:
        imports = pool.submit(pf.import_report)
        collected = pool.submit(pf.collect_tests, REPO, files, GPU_TESTS) if files else None
        result: dict[str, Any] = {"imports": imports.result(), "problems": []}
        tests = collected.result() if collected else {"ids": [], "tail": "no test files"}
    problems: list[str] = result["problems"]
    problems += [f"cannot import {n}: {why}" for n, why in result["imports"]["missing"].items()]
    if site is not None:
        problems += _install_problems(site, result["imports"].get("sdxs_rt_file"))
    if with_tests:
        result["gpu_tests"] = {"files": [str(f.relative_to(REPO)) for f in files], **tests}
        if not tests["ids"]:
            problems.append(f"no test collected for -m '{GPU_TESTS}': {tests['tail']}")
    result["ok"] = not problems
    return result


def _install_problems(site: Path, sdxs_file: str | None) -> list[str]:
    from sdxs_rt.dev.bench.preflight import stale_files

    problems = []
    if sdxs_file and not Path(sdxs_file).resolve().is_relative_to(site.resolve()):
        problems.append(f"sdxs_rt imports from {sdxs_file}, not from the install in {site}")
    stale = stale_files(site, REPO)
    if stale:
        problems.append(
            f"the sdxs-rt wheel was built from another tree ({len(stale)} files differ, e.g. "
            f"{stale[0]}): run scripts/prepare-wheelhouse.sh again"
        )
    return problems


def no_cuda_report(report: dict[str, Any]) -> str:
    cuda = report["cuda"]
    n_tests = len(report["preflight"].get("gpu_tests", {}).get("ids", []))
    return (
        f"gpu_check: NO CUDA: torch {cuda['torch']} (CUDA build {cuda['torch_cuda_build']}) "
        f"sees no CUDA device (nvidia-smi: {cuda['nvidia_smi']}; CUDA_VISIBLE_DEVICES="
        f"{cuda['CUDA_VISIBLE_DEVICES']}). Everything else is in place: "
        f"{len(report['preflight']['imports']['found'])} packages import, "
        f"{n_tests} gpu tests collected. Exit {EXIT_NO_CUDA}."
    )


# --- on CUDA ------------------------------------------------------------------------------------


def run_gpu_tests(log_file: Path) -> dict[str, Any]:
    """`pytest -m GPU_TESTS` on the files that hold gpu tests; the full output goes to a log."""
    from sdxs_rt.dev.bench.preflight import gpu_test_files

    files = [str(f) for f in gpu_test_files(REPO)]
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", GPU_TESTS, *files]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TESTS_LIMIT_S, cwd=REPO)
    except subprocess.TimeoutExpired as exc:
        log_file.write_text(_text(exc.stdout) + _text(exc.stderr))
        return {"ok": False, "summary": f"timed out after {TESTS_LIMIT_S:.0f} s"}
    log_file.write_text(proc.stdout + proc.stderr)
    lines = proc.stdout.strip().splitlines() or [f"pytest exited {proc.returncode}, no output"]
    return {"ok": proc.returncode == 0, "returncode": proc.returncode, "summary": lines[-1]}


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def run_checks(model: Path, variant: str | None) -> list[dict[str, Any]]:
    from sdxs_rt.dev.bench.correctness import CheckSetup, folded_vs_unfolded, sdxs_vs_card

    setup = CheckSetup(model, variant, "cuda", "fp16")
    checks = []
    for name, check in (
        ("fold", lambda: folded_vs_unfolded(setup)),
        ("fp16", lambda: sdxs_vs_card(setup, CHECK_SIZE, CHECK_STEPS)),
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


def run_bench(preset: str, budget_s: float) -> tuple[int, dict[str, Any]]:
    from sdxs_rt.dev.bench.command import main as bench_main

    json_out = out_dir() / f"bench-{preset}.json"
    args = ["--preset", preset, "--device", "cuda", "--json-out", str(json_out)]
    args += ["--timeout", str(PATH_LIMIT_S), "--budget", f"{budget_s:.0f}"]
    status = bench_main(args)
    return status, json.loads(json_out.read_text()) if json_out.is_file() else {}


def peak_vram(bench: dict[str, Any]) -> dict[str, Any]:
    """Peak CUDA memory per bench path (one image, CFG batch 2, the preset's size and dtype)."""
    return {
        row["path"]: {
            "allocated_mib": row.get("cuda_max_allocated_mb"),
            "reserved_mib": row.get("cuda_max_reserved_mb"),
            "precision": row.get("precision"),
            "size": bench.get("size"),
        }
        for row in bench.get("rows", [])
        if row.get("status") == "ok"
    }


# --- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdxs_rt.dev.bench.gpu_check")
    parser.add_argument("--preset", default="full")
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--tests", action="store_true", help="collect and run the gpu tests")
    parser.add_argument("--site", type=Path, help="where sdxs-rt was installed (checked)")
    parser.add_argument("--budget-s", type=float, default=450.0, help="for the whole run")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    phases = Phases(args.budget_s)
    report: dict[str, Any] = {"status": "running", "phases_s": phases.seconds}
    report["phase_estimates_s"] = PHASE_ESTIMATES_S
    try:
        code = _run(args, phases, report)
    except Exception as exc:  # a crashed phase (say, the model build) still leaves a report
        traceback.print_exc()
        report.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        print(summary(report), flush=True)
        code = EXIT_FAILED
    finally:
        _write_report(report)
    return code


def _run(args: argparse.Namespace, phases: Phases, report: dict[str, Any]) -> int:
    from sdxs_rt.dev.bench.preflight import cuda_report
    from sdxs_rt.dev.bench.report import environment

    with phases.phase("preflight"):
        report["preflight"] = preflight(args.site, args.tests)
        report["cuda"] = cuda_report(report["preflight"]["imports"])
    _print_preflight(report["preflight"])
    if not report["preflight"]["ok"]:
        report["status"] = "not in place"
        return EXIT_NOT_IN_PLACE
    if not report["cuda"]["cuda_available"]:
        report["status"] = "no cuda"
        print(no_cuda_report(report), flush=True)
        return EXIT_NO_CUDA
    report["environment"] = {**environment("cuda"), **_gpu_properties()}
    print(json.dumps(report["environment"]), flush=True)
    return _on_cuda(args, phases, report)


def _on_cuda(args: argparse.Namespace, phases: Phases, report: dict[str, Any]) -> int:
    from sdxs_rt.dev.bench.presets import get_preset
    from sdxs_rt.dev.bench.runner import BenchConfig, bench_cache, ensure_model

    failed = False
    if args.tests:
        with phases.phase("gpu tests"):
            report["gpu_tests"] = run_gpu_tests(out_dir() / "pytest-gpu.log")
        print(f"gpu tests: {report['gpu_tests']['summary']}", flush=True)
        failed |= not report["gpu_tests"]["ok"]
    preset = get_preset(args.preset)
    with phases.phase("build model"):
        model = ensure_model(preset, bench_cache(BenchConfig(preset=args.preset)))
    with phases.phase("checks"):
        report["checks"] = run_checks(model, preset.variant)
    failed |= not all(check["ok"] for check in report["checks"])
    if not args.skip_bench:
        with phases.phase("bench"):
            status, bench = run_bench(args.preset, phases.left() - BENCH_RESERVE_S)
        report["bench_file"], report["peak_vram"] = f"bench-{args.preset}.json", peak_vram(bench)
        failed |= status != 0
    report["status"] = "failed" if failed else "passed"
    print(summary(report), flush=True)
    return EXIT_FAILED if failed else 0


def _gpu_properties() -> dict[str, Any]:
    import torch

    props = torch.cuda.get_device_properties(0)
    return {
        "memory_gib": round(props.total_memory / 2**30, 1),
        "capability": f"{props.major}.{props.minor}",
    }


def _print_preflight(result: dict[str, Any]) -> None:
    found = ", ".join(f"{name} {version}" for name, version in result["imports"]["found"].items())
    print(f"preflight: imports: {found}", flush=True)
    print(f"preflight: sdxs_rt from {result['imports'].get('sdxs_rt_file')}", flush=True)
    if "gpu_tests" in result:
        tests = result["gpu_tests"]
        print(f"preflight: {len(tests['ids'])} gpu tests collected from {tests['files']}")
    for problem in result["problems"]:
        print(f"preflight: NOT IN PLACE: {problem}", flush=True)


def summary(report: dict[str, Any]) -> str:
    """The lines the device call's output ends with: phases, checks, tests, peak VRAM, status."""
    lines = ["== summary"]
    for name, seconds in report["phases_s"].items():
        estimate = PHASE_ESTIMATES_S.get(name, "?")
        lines.append(f"phase {name:12s} {seconds:6.1f} s (estimate {estimate} s)")
    for check in report.get("checks", []):
        lines.append(f"check {'ok  ' if check['ok'] else 'FAIL'} {json.dumps(check)}")
    if "gpu_tests" in report:
        lines.append(f"gpu tests: {report['gpu_tests']['summary']}")
    for path, vram in report.get("peak_vram", {}).items():
        lines.append(
            f"peak VRAM {path} ({vram['precision']}, {vram['size']}x{vram['size']}, 1 image): "
            f"{vram['allocated_mib']:.0f} MiB allocated, {vram['reserved_mib']:.0f} MiB reserved"
        )
    if "error" in report:
        lines.append(f"error: {report['error']}")
    lines.append(f"gpu_check: {report['status'].upper()}")
    return "\n".join(lines)


def _write_report(report: dict[str, Any]) -> None:
    path = out_dir() / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
