"""`sdxs-rt`: the command-line tool. Heavy imports (numpy, torch, ...) happen only inside commands,
so `sdxs-rt --help` stays fast and never imports torch.

This module assembles the top-level parser from the command modules (each owns its parser,
`add_parser(commands)`, and its runner, `run(args) -> int`), dispatches to them, and turns
errors into one line and an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from sdxs_rt import __version__
from sdxs_rt.errors import (
    EXIT_INTERRUPTED,
    EXIT_OUT_OF_MEMORY,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    SdxsError,
)

# command name -> its module, in the order `sdxs-rt --help` lists them
COMMANDS = {
    "generate": "sdxs_rt.commands.generate",
    "walk": "sdxs_rt.commands.walk",
    "serve": "sdxs_rt.commands.serve",
    "info": "sdxs_rt.commands.info",
    "check": "sdxs_rt.commands.check",
    "export": "sdxs_rt.commands.export",
    "engine": "sdxs_rt.commands.engine",
    "bench": "sdxs_rt.commands.bench",
    "train": "sdxs_rt.commands.train",
    "merge-lora": "sdxs_rt.commands.merge_lora",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdxs-rt",
        description="Fast inference runtime for the SDXS text-to-image model.",
        epilog="run 'sdxs-rt generate --help' for generation options",
    )
    parser.add_argument("--version", action="version", version=f"sdxs-rt {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS.values():
        importlib.import_module(module).add_parser(commands)
    return parser


def dispatch(args: argparse.Namespace) -> int:
    module = COMMANDS.get(args.command or "")
    if module is None:
        build_parser().print_help(sys.stderr)
        return EXIT_USAGE
    code: int = importlib.import_module(module).run(args)
    return code


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
