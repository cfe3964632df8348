"""`sdxs-rt export tensorrt` and `sdxs-rt engine list|build|clear`: parsers and runners.

Nothing heavy at import time (`--help` stays fast): TensorRT is imported when a build starts,
and torch is never needed here.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from sdxs_rt.graphs import SizeProfile

ENGINE_EXAMPLES = """examples:
  sdxs-rt engine build --model sdxs-onnx                  # fp16, 320..768 px per side, batch 1
  sdxs-rt engine build --model sdxs-onnx --max-size 1024 --max-batch 4   # about 15 GB (estimate)
  sdxs-rt engine list --json
  sdxs-rt engine clear --model-hash 1a2b3c                # a model's engines; no hash: all
"""

PRECISION_CHOICES = ("fp16", "fp32")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The build options shared by `export tensorrt` and `engine build`."""
    sizes = SizeProfile()
    parser.add_argument(
        "--model", required=True, metavar="EXPORTED_DIR", help="a folder from 'sdxs-rt export onnx'"
    )
    parser.add_argument(
        "--min-size",
        type=int,
        default=sizes.min_size,
        help=f"smallest side in px (default {sizes.min_size})",
    )
    parser.add_argument(
        "--opt-size",
        type=int,
        default=None,
        help=f"side tuned for in px (default {sizes.opt_size})",
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=sizes.max_size,
        help=f"largest side in px (default {sizes.max_size})",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=sizes.max_batch,
        help=f"largest batch of images (default {sizes.max_batch}, which fits 8 GB cards; the "
        "U-Net's is twice that, for guidance)",
    )
    parser.add_argument(
        "--precision", choices=PRECISION_CHOICES, default="fp16", help="default fp16"
    )
    parser.add_argument(
        "--workspace-gb", type=float, default=None, help="cap TensorRT's scratch GPU memory (GiB)"
    )
    parser.add_argument("--force", action="store_true", help="rebuild engines already cached")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """The `engine` command with its actions list, build and clear."""
    parser = commands.add_parser(
        "engine",
        help="build, list or clear TensorRT engines",
        description="TensorRT engines are per-machine caches built from exported ONNX graphs.",
        epilog=ENGINE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = parser.add_subparsers(dest="engine_command", metavar="ACTION")
    add_engine_arguments(
        actions.add_parser("build", help="build the engines of an exported folder")
    )
    listing = actions.add_parser("list", help="list the cached engines")
    listing.add_argument("--json", action="store_true", help="print JSON")
    clearing = actions.add_parser("clear", help="remove cached engines")
    clearing.add_argument(
        "--model-hash", default=None, help="only this model's engines (a prefix of its hash)"
    )


def run_export_tensorrt(args: argparse.Namespace) -> int:
    from sdxs_rt.backends.tensorrt.builder import build_engines

    profile = profile_from_args(args)
    printer = None if args.quiet else ProgressPrinter(sys.stderr)
    workspace = int(args.workspace_gb * (1 << 30)) if args.workspace_gb else None
    paths = build_engines(args.model, profile, args.precision, args.force, printer, workspace)
    for path in paths:
        print(path)
    if not args.quiet:
        print(f"the engines cover {profile.describe()}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    from sdxs_rt.errors import UsageError

    if args.engine_command == "build":
        return run_export_tensorrt(args)
    if args.engine_command == "list":
        return list_command(args)
    if args.engine_command == "clear":
        return clear_command(args)
    raise UsageError("choose an action: sdxs-rt engine list, build or clear")


def profile_from_args(args: argparse.Namespace) -> SizeProfile:
    from sdxs_rt.backends.tensorrt.profile import check_profile

    opt_size = args.opt_size
    if opt_size is None:  # the default, moved inside the range asked for
        opt_size = min(max(SizeProfile().opt_size, args.min_size), args.max_size)
    profile = SizeProfile(
        min_size=args.min_size, opt_size=opt_size, max_size=args.max_size, max_batch=args.max_batch
    )
    return check_profile(profile)


def list_command(args: argparse.Namespace) -> int:
    from sdxs_rt.backends.tensorrt.cache import engine_cache_dir, list_engines

    rows = [engine_row(engine) for engine in list_engines()]
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    elif rows:
        print(format_table(rows))
    else:
        print(f"no engines in {engine_cache_dir()}", file=sys.stderr)
    return 0


def clear_command(args: argparse.Namespace) -> int:
    from sdxs_rt.backends.tensorrt.cache import ENGINE_SUFFIX, clear_engines, engine_cache_dir

    removed = clear_engines(args.model_hash)
    count = sum(1 for path in removed if path.suffix == ENGINE_SUFFIX)
    print(f"removed {count} engine(s) from {engine_cache_dir()}", file=sys.stderr)
    return 0


def engine_row(engine: Any) -> dict[str, Any]:
    """One cached engine as a flat dict (the JSON of `engine list --json`)."""
    from sdxs_rt.backends.tensorrt.build_mode import LEGACY_WEAKLY_TYPED

    sidecar, key = engine.sidecar, engine.sidecar.get("key", {})
    environment = sidecar.get("environment", {})
    return {
        "key": engine.digest,
        "graph": engine.graph,
        "model": sidecar.get("model", {}).get("name", ""),
        "model_hash": sidecar.get("model", {}).get("hash", ""),
        "onnx_sha256": key.get("onnx_sha256", ""),
        "precision": key.get("precision", ""),
        "build_mode": key.get("build_mode", LEGACY_WEAKLY_TYPED),
        "profile": key.get("profile", {}),
        "tensorrt_version": key.get("tensorrt_version", ""),
        "gpu": environment.get("gpu_name") or "",
        "compute_capability": key.get("compute_capability", ""),
        "os": key.get("os", ""),
        "size_bytes": engine.size_bytes,
        "built_at": sidecar.get("built_at", ""),
        "path": str(engine.engine_path),
    }


TABLE_COLUMNS = ("KEY", "GRAPH", "MODEL HASH", "PRECISION", "PROFILE", "TRT", "GPU", "SIZE", "DATE")


def format_table(rows: list[dict[str, Any]]) -> str:
    cells = [TABLE_COLUMNS, *(_table_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    )


def _table_cells(row: dict[str, Any]) -> tuple[str, ...]:
    profile = row["profile"]
    sizes = f"{profile.get('min_size')}-{profile.get('max_size')}px b{profile.get('min_batch')}-"
    return (
        row["key"],
        row["graph"],
        row["model_hash"] or "-",
        row["precision"],
        f"{sizes}{profile.get('max_batch')}",
        row["tensorrt_version"],
        f"{row['gpu'] or '-'} (sm {row['compute_capability']})",
        human_size(row["size_bytes"]),
        row["built_at"][:16].replace("T", " ") or "-",
    )


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


class ProgressPrinter:
    """Build progress on stderr: one line per engine and top-level phase; steps on a TTY."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.top_phases: dict[str, int] = {}  # top-level phase -> its number of steps

    def __call__(self, event: Any) -> None:
        if event.kind == "skip":
            self._line(f"{event.graph}: in the cache: {event.path} (--force rebuilds it)")
        elif event.kind == "start":
            self._line(f"{event.graph}: building the TensorRT engine (this takes a while)")
        elif event.kind == "done":
            self._line(f"{event.graph}: wrote {event.path}")
        elif event.kind == "note":
            self._line(f"{event.graph}: {event.message}")
        elif event.kind == "phase_start" and event.parent is None:
            self.top_phases[event.phase] = event.total
            self._line(f"{event.graph}: {event.phase}")
        elif event.kind == "step" and self.tty and event.phase in self.top_phases:
            total = self.top_phases[event.phase]
            self.stream.write(f"\r{event.graph}: {event.phase} {event.step + 1}/{total}")
            self.stream.flush()
        elif event.kind == "phase_finish" and event.phase in self.top_phases:
            del self.top_phases[event.phase]
            self._end_step_line()

    def _end_step_line(self) -> None:
        if self.tty:
            self.stream.write("\n")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
