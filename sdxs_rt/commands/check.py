"""`sdxs-rt check MODEL`: what generate would use and why, from configs and headers only.

Reads no tensor data (seconds even for the real multi-GB files, offline on what is cached);
`--deep` then loads the text encoder twice (native and its own code) to compare them. The
parser is built without heavy imports: `sdxs-rt --help` stays fast and torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from sdxs_rt.errors import DeviceError, SdxsError, UsageError

if TYPE_CHECKING:  # the parser must not pay for the report's imports
    from sdxs_rt.model_report import ModelReport

DEEP_PROMPTS = ("кот", "a red circle on a blue background", "")

CHECK_EXAMPLES = """examples:
  sdxs-rt check AiArtLab/sdxs --variant fp16          # what generate would use, and why
  sdxs-rt check ./my-model --text-encoder ./mexma-siglip --json
  sdxs-rt check ./my-model --deep --trust-remote-code  # native vs the checkpoint's own code
"""


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "check",
        help="check a model's files without loading its weights",
        description="Read a model's configs and safetensors headers (no weights) and say what "
        "'sdxs-rt generate' would use and why; every problem found is listed, and the exit "
        "code is non-zero if generate would refuse the files.",
        epilog=CHECK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="diffusers-format folder or hub id (default: the built-in demo model)",
    )
    p.add_argument(
        "--text-encoder",
        default=None,
        help="text encoder folder or hub id (default: as generate picks it)",
    )
    p.add_argument("--variant", choices=("fp16",), default=None, help="the fp16 weight files")
    p.add_argument("--revision", default=None, metavar="REV", help="hub revision of MODEL")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--deep",
        action="store_true",
        help="also load the text encoder natively and with its own code, and compare them "
        f"on {len(DEEP_PROMPTS)} prompts (needs --trust-remote-code)",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="allow --deep to RUN THE CODE DOWNLOADED WITH THE TEXT ENCODER on your machine",
    )


def run(args: argparse.Namespace) -> int:
    from sdxs_rt.model_report import build_report

    if args.deep and not args.trust_remote_code:
        raise UsageError(
            "--deep runs the text encoder's own code from the hub, so it needs "
            "--trust-remote-code as well"
        )
    report = build_report(args.model, args.text_encoder, args.variant, args.revision)
    if args.deep and report.resolved:
        run_deep(report)
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    elif not report.resolved:
        print(f"sdxs-rt: error: {report.errors[0].message}", file=sys.stderr)
    else:
        from sdxs_rt.model_report_text import format_report

        print(format_report(report))
    return report.exit_code


def run_deep(report: ModelReport) -> None:
    """Fill `report.deep` (or add the problem that stopped the comparison)."""
    from sdxs_rt.model_report import Problem

    files = report.encoder_files
    if files is None or files.layout is None:
        report.notes.append("deep check skipped: no text encoder the native loader can read")
        return
    try:
        from sdxs_rt.backends.torch.text_compare import WHAT, compare_text_paths
    except ModuleNotFoundError as exc:
        raise DeviceError(
            f"--deep needs the Python package {exc.name!r}; "
            "install it with: pip install 'sdxs-rt[torch]'"
        ) from None
    try:
        differences = compare_text_paths(files, DEEP_PROMPTS)
    except SdxsError as exc:
        report.errors.append(Problem(str(exc), exc.exit_code))
        return
    report.deep = {
        "what": WHAT,
        "per_prompt": differences,
        "max_abs_difference": max(differences.values()),
    }
