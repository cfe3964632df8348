"""`sdxs-rt`: the command-line tool. Heavy imports (numpy, torch, ...) happen only inside commands,
so `sdxs-rt --help` stays fast and never imports torch."""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings
from collections.abc import Sequence

from sdxs_rt import __version__
from sdxs_rt.errors import (
    EXIT_INTERRUPTED,
    EXIT_OUT_OF_MEMORY,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    EngineError,
    SdxsError,
    UsageError,
)
from sdxs_rt.train_command import add_train_parser

# Kept in sync with sdxs_rt.samplers.SCHEDULER_NAMES by a test; duplicated here so --help
# does not import the sampling core.
SCHEDULERS = ("ddpm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras")
BACKENDS = ("torch", "onnx", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16")

GENERATE_EXAMPLES = """examples:
  sdxs-rt generate "a red circle on a blue background"          # built-in tiny model, offline
  sdxs-rt generate "кот" --model AiArtLab/sdxs --variant fp16 --device cuda --precision fp16
  sdxs-rt generate -p "a lighthouse at dawn" --seed 42 --count 4 -o "out/{seed}.png"
  sdxs-rt generate --prompt-file prompts.txt --json > results.jsonl
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdxs-rt",
        description="Fast inference runtime for the SDXS text-to-image model.",
        epilog="run 'sdxs-rt generate --help' for generation options",
    )
    parser.add_argument("--version", action="version", version=f"sdxs-rt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_generate_parser(commands)
    add_info_parser(commands)
    add_check_parser(commands)
    add_export_parser(commands)
    add_engine_parser(commands)
    add_bench_parser(commands)
    add_train_parser(commands)
    add_merge_lora_parser(commands)
    return parser


def add_generate_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "generate",
        help="generate images from a prompt",
        description="Generate images from text prompts.",
        epilog=GENERATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("prompt_arg", nargs="?", metavar="PROMPT", help="the prompt")
    p.add_argument("-p", "--prompt", help="the prompt (instead of the positional argument)")
    p.add_argument("--prompt-file", help="a text file with one prompt per line")
    p.add_argument("-n", "--negative-prompt", default="", help='negative prompt (default "")')
    p.add_argument("--steps", type=int, default=40, help="sampling steps (default 40)")
    p.add_argument(
        "--cfg",
        "--guidance-scale",
        dest="cfg",
        type=float,
        default=5.5,
        help="classifier-free guidance scale (default 5.5; <= 1 runs one branch)",
    )
    p.add_argument(
        "--seed", type=int, default=-1, help="seed; -1 or absent: random (always printed)"
    )
    p.add_argument(
        "--width",
        type=int,
        default=None,
        help="width in px, a multiple of 64 (default: the model's, 576 for SDXS)",
    )
    p.add_argument(
        "--height",
        type=int,
        default=None,
        help="height in px, a multiple of 64 (default: the model's, 576 for SDXS)",
    )
    p.add_argument("--size", help="WxH, e.g. 576x448 (instead of --width/--height)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    p.add_argument("--count", type=int, default=1, help="how many batches (default 1)")
    p.add_argument(
        "-o",
        "--output",
        default=None,
        help="file, folder or pattern with {seed}, {index}, {date} (default outputs/)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        default=None,
        help="sampler (default: the model's own scheduler)",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="torch (default); onnx or tensorrt take a folder written by 'sdxs-rt export onnx'",
    )
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda, cuda:N, mps or auto; onnx also tensorrt, dml "
        "(default: cpu; cuda for the tensorrt backend)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default=None,
        help="default: fp32 for torch, the exported graphs' for onnx, fp16 for tensorrt",
    )
    p.add_argument(
        "--model",
        default=None,
        help="diffusers-format folder or hub id (default: the built-in tiny model)",
    )
    p.add_argument(
        "--variant", choices=("fp16",), default=None, help="load the model card's fp16 weight files"
    )
    p.add_argument(
        "--revision",
        default=None,
        metavar="REV",
        help="hub revision (branch, tag or commit) of --model; pin a commit for reproducible runs",
    )
    p.add_argument(
        "--text-encoder",
        default=None,
        help="text encoder folder or hub id (default: the model's own, "
        "else visheratin/mexma-siglip)",
    )
    p.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="load the text encoder with its own Python code from the hub; this RUNS "
        "CODE DOWNLOADED FROM THE HUB on your machine (default: the native loader)",
    )
    p.add_argument(
        "--cuda-graphs",
        action="store_true",
        help="torch on CUDA: capture the U-Net step as a CUDA graph per shape",
    )
    p.add_argument(
        "--compile",
        default=None,
        metavar="MODE",
        help="torch: torch.compile the U-Net (default, reduce-overhead, max-autotune, "
        "max-autotune-no-cudagraphs)",
    )
    p.add_argument(
        "--channels-last", action="store_true", help="torch: channels-last memory format"
    )
    p.add_argument(
        "--offload-text-encoder",
        action="store_true",
        help="torch: keep the text encoder on the CPU except while encoding a new prompt",
    )
    p.add_argument(
        "--low-vram",
        action="store_true",
        help="torch: for small cards (about 6 GB at 576x576 in fp16, estimated): the U-Net stays "
        "on the GPU, the text encoder and VAE wait on the CPU between uses, the VAE decodes in "
        "256-px tiles",
    )
    p.add_argument(
        "--preview-every",
        type=int,
        default=0,
        metavar="N",
        help="write a preview of the image every N steps",
    )
    p.add_argument("--preview-path", default=None, metavar="P", help="where previews go")
    p.add_argument("--no-metadata", action="store_true", help="do not embed generation metadata")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per image on stdout (logs go to stderr)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:SCALE]",
        help="torch: merge a diffusers/peft LoRA file into the U-Net at load time, with "
        "strength SCALE (default 1.0); repeatable",
    )


def add_check_parser(commands: argparse._SubParsersAction) -> None:
    from sdxs_rt.check_command import add_check_parser as add_parser

    add_parser(commands)


def add_merge_lora_parser(commands: argparse._SubParsersAction) -> None:
    from sdxs_rt.lora_command import add_merge_lora_parser as add_parser

    add_parser(commands)


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    from sdxs_rt.bench.command import add_bench_arguments

    add_bench_arguments(
        commands.add_parser(
            "bench",
            help="time the model card's script against every sdxs-rt path on this machine",
            description="Benchmark: the model card's algorithm (the reference) and each sdxs-rt "
            "path, same random weights, seed, steps and size; prints a table, writes JSON.",
        )
    )


def add_engine_parser(commands: argparse._SubParsersAction) -> None:
    from sdxs_rt.backends.tensorrt.commands import add_engine_parser as add_engine_commands

    add_engine_commands(commands)


def add_export_onnx_arguments(parser: argparse.ArgumentParser) -> None:
    """The exporter's own arguments; a source checkout without it installed still runs."""
    try:
        from sdxs_rt_export.command import add_export_onnx_arguments as add_arguments
    except ModuleNotFoundError:  # `export/` installs as sdxs_rt_export: not installed here
        parser.add_argument("unavailable", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        return
    add_arguments(parser)


def add_export_parser(commands: argparse._SubParsersAction) -> None:
    from sdxs_rt.backends.tensorrt.commands import add_engine_arguments

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


def add_info_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "info",
        help="show the generation metadata of an image",
        description="Read the parameters stored in a PNG (A1111 'parameters' and sdxs_rt chunk).",
    )
    p.add_argument("image", help="a PNG file")
    p.add_argument("--json", action="store_true", help="print JSON")


SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


def parse_size(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """--size WxH or --width/--height; the two forms are exclusive. None: the model's size."""
    if args.size is not None:
        if args.width is not None or args.height is not None:
            raise UsageError("give either --size or --width/--height, not both")
        match = SIZE_PATTERN.match(args.size)
        if not match:
            raise UsageError(f"--size must look like 576x448, got {args.size!r}")
        return int(match.group(1)), int(match.group(2))
    return args.width, args.height


def read_prompts(args: argparse.Namespace) -> list[str]:
    given = [v for v in (args.prompt_arg, args.prompt, args.prompt_file) if v is not None]
    if len(given) > 1:
        raise UsageError("give the prompt once: as an argument, with -p, or with --prompt-file")
    if args.prompt_file is not None:
        prompts = _read_prompt_file(args.prompt_file)
    else:
        prompts = [given[0]] if given else []
    if not prompts or not all(p.strip() for p in prompts):
        raise UsageError("the prompt is empty; give one as an argument, with -p or --prompt-file")
    return prompts


def _read_prompt_file(path: str) -> list[str]:
    from sdxs_rt.errors import ModelNotFoundError

    try:
        with open(path, encoding="utf-8") as handle:
            return [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        raise ModelNotFoundError(f"prompt file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read prompt file {path}: {exc}") from None


def run_info(args: argparse.Namespace) -> int:
    import json

    from sdxs_rt.metadata import describe_image, format_description

    description = describe_image(args.image)
    if args.json:
        print(json.dumps(description, ensure_ascii=False, indent=2))
    else:
        print(format_description(description))
    return 0


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "generate":
        from sdxs_rt.generate_command import run_generate

        return run_generate(args, prompts=read_prompts(args), given_size=parse_size(args))
    if args.command == "info":
        return run_info(args)
    if args.command == "check":
        from sdxs_rt.check_command import run_check

        return run_check(args)
    if args.command == "export" and args.export_target == "onnx":
        if hasattr(args, "unavailable"):
            raise EngineError(
                "the exporter (package sdxs_rt_export) is not installed; "
                "reinstall sdxs-rt with: pip install 'sdxs-rt[torch,onnx]'"
            )
        from sdxs_rt_export.command import run_export_onnx

        return run_export_onnx(args)
    if args.command == "export":
        from sdxs_rt.backends.tensorrt.commands import run_export_tensorrt

        return run_export_tensorrt(args)
    if args.command == "train":
        from sdxs_rt.train_command import run_train

        return run_train(args)
    if args.command == "bench":
        from sdxs_rt.bench.command import run_bench

        return run_bench(args)
    if args.command == "engine":
        from sdxs_rt.backends.tensorrt.commands import run_engine

        return run_engine(args)
    if args.command == "merge-lora":
        from sdxs_rt.lora_command import run_merge_lora

        return run_merge_lora(args)
    build_parser().print_help(sys.stderr)
    return EXIT_USAGE


NOISY_LIBRARIES = ("diffusers", "transformers", "huggingface_hub", "bitsandbytes", "accelerate")
VERBOSITY_VARIABLES = ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY", "HF_HUB_VERBOSITY")


def show_warnings_briefly(debug: bool) -> None:
    """Our own warnings as one `sdxs-rt: warning:` line; third-party chatter only with --debug."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"sdxs-rt: warning: {message}\n"
    if not debug:
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"sdxs_rt(\.|$)")
        for noisy in NOISY_LIBRARIES:
            logging.getLogger(noisy).setLevel(logging.ERROR)
        # transformers 5 and diffusers reset their loggers' level from these at import, which
        # comes after this (lazily): without them a model-type notice reaches every run.
        for variable in VERBOSITY_VARIABLES:
            os.environ.setdefault(variable, "error")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or bool(os.environ.get("SDXS_RT_DEBUG"))
    show_warnings_briefly(debug)
    try:
        return dispatch(args)
    except KeyboardInterrupt:
        print("interrupted; finished images were kept", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SdxsError as exc:
        if debug:
            raise
        print(f"sdxs-rt: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except MemoryError as exc:  # torch.OutOfMemoryError subclasses RuntimeError, handled below
        print(f"sdxs-rt: error: out of memory: {exc}", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    except Exception as exc:
        if debug:
            raise
        if type(exc).__name__ == "OutOfMemoryError":
            print(
                "sdxs-rt: error: out of memory; try a smaller size or batch, or --precision fp16",
                file=sys.stderr,
            )
            return EXIT_OUT_OF_MEMORY
        print(
            f"sdxs-rt: unexpected error: {type(exc).__name__}: {exc} "
            "(run with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_UNEXPECTED


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
