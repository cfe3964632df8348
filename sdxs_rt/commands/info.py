"""`sdxs-rt info`: show the generation metadata stored in an image."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "info",
        help="show the generation metadata of an image",
        description="Read the parameters stored in a PNG (A1111 'parameters' and sdxs_rt chunk).",
    )
    p.add_argument("image", help="a PNG file")
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    import json

    from sdxs_rt.metadata import describe_image, format_description

    description = describe_image(args.image)
    if args.json:
        print(json.dumps(description, ensure_ascii=False, indent=2))
    else:
        print(format_description(description))
    return 0
