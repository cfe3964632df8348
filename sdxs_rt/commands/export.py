"""`sdxs-rt export onnx|tensorrt`: the exporter (package sdxs_rt_export) and the engine builder."""

from __future__ import annotations

import argparse

from sdxs_rt.commands.engine import add_engine_arguments, run_export_tensorrt
from sdxs_rt.errors import EngineError


def add_export_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    """The exporter's own arguments; a source checkout without it installed still runs."""
    try:
        from sdxs_rt_export.command import add_export_onnx_arguments as add_arguments
    except ModuleNotFoundError:  # `export/` installs as sdxs_rt_export: not installed here
        parser.add_argument("unavailable", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    add_arguments(parser)


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "export",
        help="export the model to ONNX, or build TensorRT engines from the ONNX graphs",
        description="Export the model to ONNX graphs, or build TensorRT engines from them.",
    )
    targets = p.add_subparsers(dest="export_target", metavar="TARGET", required=True)
    add_export_onnx_arguments(
        targets.add_parser(
            "onnx",
            help="torch -> ONNX graphs (checked against PyTorch before they are kept)",
            description="Write text_encoder/, unet/, vae_decoder/, vae_encoder/ ONNX graphs "
            "and manifest.json.",
        )
    )
    add_engine_arguments(
        targets.add_parser(
            "tensorrt",
            help="build TensorRT engines for this GPU from an exported ONNX folder",
            description="Build TensorRT engines (a per-machine cache) from an exported folder.",
        )
    )


def run(args: argparse.Namespace) -> int:
    if args.export_target == "tensorrt":
        return run_export_tensorrt(args)
    if hasattr(args, "unavailable"):
        raise EngineError(
            "the exporter (package sdxs_rt_export) is not installed; "
            "reinstall sdxs-rt with: pip install 'sdxs-rt[torch,onnx]'"
        )
    from sdxs_rt_export.command import run_export_onnx

    code: int = run_export_onnx(args)
    return code
