"""The `sdxs-rt export onnx` command: its arguments and how it runs.

Nothing heavy at import time (no torch, no onnx): `sdxs-rt --help` imports this module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  sdxs-rt export onnx --model AiArtLab/sdxs --out sdxs-onnx
  sdxs-rt export onnx --model ./sdxs --text-encoder visheratin/mexma-siglip \\
      --precision fp16 --out sdxs-onnx-fp16
  sdxs-rt generate --backend onnx --model sdxs-onnx "a red fox in the snow"

Every graph is checked against PyTorch before it is written (fp32: relative error <= 1e-4;
fp16: PSNR >= 35 dB); a rerun skips the graphs that are already up to date.
"""


def add_export_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of `sdxs-rt export onnx` (the caller creates the subparser)."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    parser.add_argument(
        "--model",
        default=None,
        help="diffusers-format model folder or hub repo id (default: the packaged tiny model)",
    )
    parser.add_argument(
        "--text-encoder",
        default=None,
        help="text encoder folder or hub repo id (default: the model's text_encoder/, "
        "else visheratin/mexma-siglip)",
    )
    parser.add_argument(
        "-o", "--out", required=True, type=Path, help="folder for the graphs and manifest.json"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "fp16"),
        default="fp32",
        help="graph precision; fp16 keeps inputs/outputs, the time embedding and the "
        "normalisations in float32 (default: fp32)",
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset, 17..20 (default: 17)")
    parser.add_argument(
        "--variant", choices=("fp16",), default=None, help="read the model's *.fp16 weight files"
    )
    parser.add_argument(
        "--revision",
        default=None,
        metavar="REV",
        help="hub revision (branch, tag or commit) of --model; pin a commit for reproducible runs",
    )
    parser.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load the text encoder with the Python code shipped in its repo; this RUNS CODE "
        "downloaded from the hub (default: the native loader, no remote code)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def run_export_onnx(args: argparse.Namespace) -> int:
    """Run the export; SdxsError subclasses propagate to the CLI, which maps exit codes."""
    from .onnx_export import export_onnx

    manifest = export_onnx(
        args.model,
        Path(args.out),
        text_encoder=args.text_encoder,
        precision=args.precision,
        opset=args.opset,
        variant=args.variant,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        progress=None if args.quiet else _print_to_stderr,
    )
    print(Path(args.out))  # stdout: the folder to pass to `generate --backend onnx --model`
    if not args.quiet:
        graphs = ", ".join(f"{n} ({e.precision})" for n, e in manifest.graphs.items())
        _print_to_stderr(f"exported {graphs}")
    return 0


def _print_to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
