"""The README's pictures of each generation mode, drawn by the built-in demo model.

    python -m sdxs_rt.dev.demo.pictures docs/modes

writes one PNG per mode (input and output side by side, enlarged 3x with nearest-neighbour
so the 64-px pixels stay visible) and prints the command line that made each output. Fixed
seeds: running it again gives the same pictures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from sdxs_rt.pipeline import Pipeline

ZOOM = 3
GAP = 8
STEPS = 20
SOURCE_PROMPT = "a red circle on a blue background"


@dataclass(frozen=True)
class Mode:
    name: str
    cli: str  # the equivalent command line, for the README
    params: Callable[[Image.Image, Image.Image], dict[str, Any]]  # (source, mask) -> kwargs


# Modes shown next to the plain prompts they mix, instead of next to the source image.
SIDE_BY_SIDE_WITH: dict[str, list[dict[str, Any]]] = {
    "blend": [
        {"prompt": "a red circle on a white background", "seed": 4},
        {"prompt": "a blue circle on a white background", "seed": 4},
    ],
    "schedule": [
        {"prompt": "a red circle on a white background", "seed": 4},
        {"prompt": "a blue circle on a white background", "seed": 4},
    ],
}


def left_half_mask(size: tuple[int, int]) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((0, 0, size[0] // 2 - 1, size[1] - 1), fill=255)
    return mask


MODES = (
    Mode(
        "img2img",
        'sdxs-rt generate "a red square on a blue background" --init-image source.png '
        "--strength 0.6 --seed 2",
        lambda source, mask: {
            "prompt": "a red square on a blue background",
            "init_image": source,
            "strength": 0.6,
            "seed": 2,
        },
    ),
    Mode(
        "inpaint",
        'sdxs-rt generate "a red circle on a green background" --init-image source.png '
        "--mask left-half.png --strength 1 --seed 3",
        lambda source, mask: {
            "prompt": "a red circle on a green background",
            "init_image": source,
            "mask": mask,
            "strength": 1.0,
            "seed": 3,
        },
    ),
    Mode(
        "outpaint",
        f'sdxs-rt generate "{SOURCE_PROMPT}" --init-image source.png --outpaint 64,0,0,0 --seed 4',
        lambda source, mask: {
            "prompt": SOURCE_PROMPT,
            "init_image": source,
            "outpaint": (64, 0, 0, 0),
            "seed": 4,
        },
    ),
    Mode(
        "hires",
        f'sdxs-rt generate "{SOURCE_PROMPT}" --hires-scale 2 --seed 1',
        lambda source, mask: {"prompt": SOURCE_PROMPT, "hires_scale": 2.0, "seed": 1},
    ),
    Mode(
        "blend",
        'sdxs-rt generate "a red circle on a white background::1 a blue circle on a white '
        'background::1" --seed 4',
        lambda source, mask: {
            "prompt": "a red circle on a white background::1 a blue circle on a white "
            "background::1",
            "seed": 4,
        },
    ),
    Mode(
        "schedule",
        'sdxs-rt generate "a [red:blue:0.5] circle on a white background" --seed 4',
        lambda source, mask: {"prompt": "a [red:blue:0.5] circle on a white background", "seed": 4},
    ),
    Mode(
        "variation",
        f'sdxs-rt generate "{SOURCE_PROMPT}" --seed 1 --variation-seed 7 --variation-strength 0.5',
        lambda source, mask: {
            "prompt": SOURCE_PROMPT,
            "seed": 1,
            "variation_seed": 7,
            "variation_strength": 0.5,
        },
    ),
)


def side_by_side(*images: Image.Image) -> Image.Image:
    """The images enlarged ZOOM times, left to right on white, bottoms aligned."""
    big = [
        i.convert("RGB").resize((i.width * ZOOM, i.height * ZOOM), Image.Resampling.NEAREST)
        for i in images
    ]
    width = sum(i.width for i in big) + GAP * (len(big) - 1)
    height = max(i.height for i in big)
    canvas = Image.new("RGB", (width, height), "white")
    x = 0
    for image in big:
        canvas.paste(image, (x, height - image.height))
        x += image.width + GAP
    return canvas


def make_pictures(folder: Path) -> list[tuple[str, str]]:
    pipe = Pipeline.from_pretrained(None)
    source = pipe(SOURCE_PROMPT, seed=1, num_inference_steps=STEPS).images[0]
    mask = left_half_mask(source.size)
    folder.mkdir(parents=True, exist_ok=True)
    source.save(folder / "source.png")
    made = [("source", f'sdxs-rt generate "{SOURCE_PROMPT}" --seed 1 -o source.png')]
    for mode in MODES:
        result = pipe(num_inference_steps=STEPS, **mode.params(source, mask)).images[0]
        inputs = [source, mask.convert("RGB")] if mode.name == "inpaint" else [source]
        if mode.name in SIDE_BY_SIDE_WITH:
            inputs = [
                pipe(num_inference_steps=STEPS, **extra).images[0]
                for extra in SIDE_BY_SIDE_WITH[mode.name]
            ]
        side_by_side(*inputs, result).save(folder / f"{mode.name}.png")
        made.append((mode.name, mode.cli))
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    for name, cli in make_pictures(args.folder):
        print(f"{name}: {cli}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
