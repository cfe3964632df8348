"""The benchmark's outputs: a plain-text table for stdout and a JSON file with every number."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

COLUMNS = (
    ("path", "path", "{}"),
    ("precision", "prec", "{}"),
    ("text_encode", "text s", "{:.3f}"),
    ("step_median", "step s", "{:.3f}"),
    ("decode", "decode s", "{:.3f}"),
    ("total", "total s", "{:.2f}"),
    ("peak_rss_mb", "RSS MiB", "{:.0f}"),
    ("cuda_max_allocated_mb", "CUDA MiB", "{:.0f}"),
    ("speedup_step_median", "step x", "{:.2f}"),
    ("speedup_total", "total x", "{:.2f}"),
    ("psnr_db", "PSNR dB", "{:.1f}"),
)


def _cell(row: dict[str, Any], key: str, fmt: str) -> str:
    value = row.get(key)
    if value is None:
        return "-"
    try:
        return fmt.format(value)
    except (TypeError, ValueError):
        return str(value)


def format_table(result: dict[str, Any]) -> str:
    """Aligned text table, one line per path; skipped/failed paths say why."""
    header = [title for _key, title, _fmt in COLUMNS]
    lines: list[list[str]] = []
    notes: list[str] = []
    for row in result["rows"]:
        if row.get("status") != "ok":
            notes.append(f"  {row['path']}: {row.get('status')} - {row.get('reason', '')}")
            continue
        lines.append([_cell(row, key, fmt) for key, _title, fmt in COLUMNS])
    widths = [max(len(c) for c in column) for column in zip(header, *lines, strict=False)]
    render = [
        "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True))
        for line in [header, *lines]
    ]
    title = (
        f"sdxs-rt bench: preset {result['preset']}, {result['size']}x{result['size']}, "
        f"{result['steps']} steps, seed {result['seed']}, {machine_name(result)}"
    )
    footer = ["ratios: reference time / path time (> 1: faster than the model card's algorithm)"]
    return "\n".join([title, *render, *notes, *footer])


def machine_name(result: dict[str, Any]) -> str:
    env = result.get("environment", {})
    return str(env.get("gpu") or env.get("cpu") or platform.processor() or "unknown machine")


def environment(device: str) -> dict[str, Any]:
    """Machine, versions, date and commit, recorded with every result."""
    import torch

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": _git_commit(),
        "cpu": _cpu_model(),
        "cpu_count": _cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": device,
        "loadavg_1_5_15": _load_average(),  # other work on the machine skews CPU timings
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def _load_average() -> list[float] | None:
    import os

    try:
        return [round(value, 2) for value in os.getloadavg()]
    except OSError:
        return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def write_json(result: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return path
