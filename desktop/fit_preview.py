"""Fit a model's preview map on its own images and ship it with the app.

    python -m sdxs_rt_desktop.fit_preview [--model DIR] [--prompts FILE] [--steps 8]

The runtime fallback in `preview.py` fits on decodes of random normal latents: cheap and generic,
but a trained U-Net's latents look nothing like white noise, and on the demo model that map turns
"a red circle on a blue background" into green blobs on purple. Here the same least squares runs
on the final latents of generated images and the decodes the pipeline makes of them anyway, so
the map learns the colours of the latents a preview really shows. Seeds are fixed and the noise
is the pipeline's seeded PCG64, so a rerun writes the same map (up to float rounding). The
result goes to `preview_maps/<model>-<hash>.json`, which the previewer reads before any cache.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from sdxs_rt_desktop.preview import (
    LatentProjection,
    cache_name,
    pooled_pixels,
    shipped_dir,
    solve_projection,
)

from sdxs_rt.dev.demo.data import all_combinations, caption
from sdxs_rt.loading import native_image_size, resolve_model
from sdxs_rt.pipeline import ImageEvent, Pipeline, StepEvent

FIT_SEED = 1000  # tests measure the map on other seeds
FIT_STEPS = 8


def demo_prompts() -> list[str]:
    """Every shape/colour/background of the demo set once, English and Russian alternating."""
    return [caption(c, ("en", "ru")[i % 2]) for i, c in enumerate(all_combinations())]


def final_latents_and_image(
    pipe: Pipeline, prompt: str, seed: int, steps: int, size: tuple[int, int]
) -> tuple[np.ndarray, Image.Image]:
    """(C, h, w) latents after the last step, and the image the pipeline decoded from them."""
    latents, image = None, None
    for event in pipe.generate(prompt, seed=seed, num_inference_steps=steps,
                               width=size[0], height=size[1]):  # fmt: skip
        if isinstance(event, StepEvent):
            latents = event.latents
        elif isinstance(event, ImageEvent):
            image = event.image
    assert latents is not None and image is not None
    return np.asarray(pipe.components.ops.to_host(latents), dtype=np.float32)[0], image


def fit_on_generations(
    pipe: Pipeline, prompts: Sequence[str], size: tuple[int, int], steps: int = FIT_STEPS
) -> LatentProjection:
    """One image per prompt (seeds FIT_SEED, FIT_SEED + 1, ...), then least squares."""
    pairs = [final_latents_and_image(pipe, p, FIT_SEED + i, steps, size)
             for i, p in enumerate(prompts)]  # fmt: skip
    latents = np.stack([z for z, _ in pairs])
    pooled = pooled_pixels([image for _, image in pairs], pipe.components.vae_scale_factor)
    return solve_projection(latents, pooled)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the built-in one)")
    parser.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="a text file, one prompt a line (default: the demo set's captions)",
    )
    parser.add_argument("--steps", type=int, default=FIT_STEPS)
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for the map (default: the app's preview_maps/)")  # fmt: skip
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    pipe = Pipeline.from_pretrained(args.model, backend="torch", device="cpu", dtype="fp32")
    size = native_image_size(resolve_model(args.model))
    prompts = demo_prompts()
    if args.prompts is not None:
        prompts = [p for p in args.prompts.read_text(encoding="utf-8").splitlines() if p.strip()]
    projection = fit_on_generations(pipe, prompts, size, args.steps)
    target = (args.output or shipped_dir()) / cache_name(pipe.info)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(projection.to_json(indent=1) + "\n", encoding="utf-8")
    print(f"{len(prompts)} images at {size[0]}x{size[1]}, R^2 {projection.fit_r2:.3f}: {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
