"""`sdxs-rt merge-lora MODEL LORA[:SCALE] -o OUT`: a model folder with a LoRA baked in.

A merged folder loads like any model, so it can be exported to ONNX / TensorRT, which cannot
apply LoRAs at run time. torch and the merge code are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "merge-lora",
        help="write a copy of a model with a LoRA merged into its U-Net weights",
        description="Copy a diffusers-format model to OUT with a LoRA (diffusers/peft "
        "safetensors) merged into the U-Net; each weight file keeps its precision.",
        epilog="example: sdxs-rt merge-lora AiArtLab/sdxs style.safetensors:0.8 -o sdxs-style",
    )
    p.add_argument("model", metavar="MODEL", help="diffusers-format folder or hub id")
    p.add_argument("lora", metavar="LORA[:SCALE]", help="LoRA file, optionally with a scale")
    p.add_argument(
        "--revision",
        default=None,
        metavar="REV",
        help="hub revision (branch, tag or commit) of MODEL; pin a commit for reproducible runs",
    )
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="new model folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no log line")


def run(args: argparse.Namespace) -> int:
    from sdxs_rt.backends.torch.lora import parse_lora_spec
    from sdxs_rt.training.lora import merge_lora_into_folder

    spec = parse_lora_spec(args.lora)
    out = merge_lora_into_folder(
        args.model, spec.path, spec.scale, Path(args.output), revision=args.revision
    )
    if not args.quiet:
        print(f"merged {spec.path.name} (scale {spec.scale:g}) into {out}", file=sys.stderr)
    return 0
