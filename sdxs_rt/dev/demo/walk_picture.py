"""The README's latent-walk animation, drawn by the built-in demo model.

    python -m sdxs_rt.dev.demo.walk_picture docs/walk.gif

draws the walk of `COMMAND` (fixed seed: running it again gives the same picture) and writes
it as a looping GIF enlarged 3x with nearest-neighbour, so the 64-px pixels stay visible.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image

from sdxs_rt.pipeline import Pipeline
from sdxs_rt.walk import save_animation, walk

ZOOM = 3
KEYFRAMES = (
    "a red circle on a white background",
    "a blue circle on a white background",
    "a blue square on a yellow background",
)
FRAMES_BETWEEN = 8
SEED = 4
STEPS = 20
FPS = 8.0
COMMAND = (
    "sdxs-rt walk " + " ".join(f'"{prompt}"' for prompt in KEYFRAMES)
    + f" --frames {FRAMES_BETWEEN} --seeds {SEED} --steps {STEPS} --animation gif --fps {FPS:g}"
)  # fmt: skip


def make_walk(path: Path) -> str:
    """Draw the walk, write the enlarged animation at `path`; the command line that draws it."""
    pipe = Pipeline.from_pretrained(None)
    frames = walk(pipe, KEYFRAMES, FRAMES_BETWEEN, seed=SEED, num_inference_steps=STEPS)
    images = [
        event.image.resize(
            (event.image.width * ZOOM, event.image.height * ZOOM), Image.Resampling.NEAREST
        )
        for event in frames
    ]
    save_animation(images, path, FPS, overwrite=True)
    return COMMAND


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path, help="the animation to write (.gif or .webp)")
    args = parser.parse_args(argv)
    print(f"{args.path}: {make_walk(args.path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
