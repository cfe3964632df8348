"""`sdxs-rt info`: show the generation metadata stored in an image, or replay it (`--replay`)."""

from __future__ import annotations

import argparse

from sdxs_rt.backend_table import ALL_PRECISIONS, BACKEND_NAMES

INFO_EXAMPLES = """examples:
  sdxs-rt info out/00001-42.png                  # the A1111 parameters and the replay record
  sdxs-rt info out/00001-42.png --json
  sdxs-rt info out/00001-42.png --replay         # draw it again and compare the pixels
  sdxs-rt info out/00001-42.png --replay --inputs photos/ --device cuda

--replay exits 0 when the pixels are identical, 7 when they differ; 3 when an input image,
LoRA or model cannot be found (inputs are found by their SHA-256 in --inputs DIR).
"""

# Flags that only --replay reads, with what they replace.
REPLAY_ONLY = ("inputs", "model", "text_encoder", "backend", "device", "precision")


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "info",
        help="show the generation metadata of an image, or replay it",
        description="Read the parameters stored in a PNG (A1111 'parameters' and sdxs_rt chunk); "
        "with --replay, draw the image again from them and compare the pixels.",
        epilog=INFO_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", help="a PNG file")
    p.add_argument("--json", action="store_true", help="print JSON")
    replay = p.add_argument_group("replay", "draw the image again from its sdxs_rt record")
    replay.add_argument(
        "--replay", action="store_true", help="replay the image and compare its pixels"
    )
    replay.add_argument(
        "--inputs",
        metavar="DIR",
        help="folder holding the init image, mask and LoRA files, found by hash "
        "(default: the image's folder)",
    )
    replay.add_argument("--model", help="load this model instead of the recorded one")
    replay.add_argument("--text-encoder", help="load this text encoder instead of the model's")
    replay.add_argument("--backend", choices=BACKEND_NAMES, help="default: the recorded one")
    replay.add_argument("--device", help="default: the recorded one")
    replay.add_argument("--precision", choices=ALL_PRECISIONS, help="default: the recorded one")


def run(args: argparse.Namespace) -> int:
    if args.replay:
        return run_replay(args)
    given = [name for name in REPLAY_ONLY if getattr(args, name) is not None]
    if given:
        from sdxs_rt.errors import UsageError

        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UsageError(f"{flags} apply to --replay only")
    import json

    from sdxs_rt.metadata import describe_image, format_description

    description = describe_image(args.image)
    if args.json:
        print(json.dumps(description, ensure_ascii=False, indent=2))
    else:
        print(format_description(description))
    return 0


def run_replay(args: argparse.Namespace) -> int:
    import json
    import sys

    from sdxs_rt.errors import EXIT_OK, EXIT_REPLAY_DIFFERS
    from sdxs_rt.pipeline import Pipeline
    from sdxs_rt.replay import ReplayOptions, prepare_replay, replay

    options = ReplayOptions(
        inputs_dir=args.inputs,
        model=args.model,
        text_encoder=args.text_encoder,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
    )
    job = prepare_replay(args.image, options)
    print(
        f"replaying {args.image}: seed {job.record.seed}, {job.record.steps} steps", file=sys.stderr
    )
    result = replay(Pipeline.from_pretrained(**job.load), job)
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"path": args.image, **result.comparison.as_dict()}))
    else:
        print(result.comparison.summary())
    return EXIT_OK if result.comparison.identical else EXIT_REPLAY_DIFFERS
