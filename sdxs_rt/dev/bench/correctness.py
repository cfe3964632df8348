"""The GPU check's correctness checks, written for any device so that a CPU test runs the same code.

- `folded_vs_unfolded`: the U-Net with its single-token cross-attention folded into a constant
  against the stock U-Net, same weights and inputs (MODEL.md, fact 1).
- `sdxs_vs_card`: sdxs-rt's image (fp16 on the GPU) against the model card's algorithm in fp32,
  PSNR of the two uint8 images.

Both load the model exactly as the bench does: the preset's weight variant (`full` writes only
`*.fp16.safetensors`) is passed on, never guessed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

FOLD_TOLERANCE = 2e-2  # fp16 max-abs difference, relative to the output's scale (>= 1)
MIN_PSNR_DB = 35.0


@dataclass(frozen=True)
class CheckSetup:
    model: Path
    variant: str | None  # the preset's weight files: None or "fp16"
    device: str = "cuda"
    precision: str = "fp16"  # sdxs-rt's side; the card's side of `sdxs_vs_card` is always fp32


def folded_vs_unfolded(setup: CheckSetup, side: int = 48) -> dict[str, Any]:
    """Max-abs difference of one CFG-batch U-Net call, folded against unfolded."""
    import torch

    from sdxs_rt.backends.torch.ops import resolve_dtype
    from sdxs_rt.backends.torch.unet import TorchUNet
    from sdxs_rt.backends.torch.weights import read_config
    from sdxs_rt.loading import WEIGHTS_STEM_DIFFUSERS, weights_path

    unet_dir = setup.model / "unet"
    weights = weights_path(unet_dir, WEIGHTS_STEM_DIFFUSERS, setup.variant)
    config = read_config(unet_dir / "config.json")
    gen = torch.Generator().manual_seed(0)
    sample = torch.randn(2, config["in_channels"], side, side, generator=gen)
    context = torch.randn(2, 1, config["cross_attention_dim"], generator=gen)
    dtype = resolve_dtype(setup.precision)
    outs = []
    for fold in (False, True):
        unet = TorchUNet.load(unet_dir, weights, setup.device, dtype, fold=fold)
        with torch.no_grad():
            out = unet(sample.to(setup.device), 500.0, context.to(setup.device))
        outs.append(out.float().cpu())
        del unet
        _empty_cache(setup.device)
    diff = (outs[0] - outs[1]).abs().max().item()
    scale = outs[0].abs().max().item()
    return {
        "check": f"folded vs unfolded U-Net ({setup.precision}, {setup.device})",
        "max_abs_diff": diff,
        "output_scale": scale,
        "ok": diff <= FOLD_TOLERANCE * max(1.0, scale),
    }


def sdxs_vs_card(setup: CheckSetup, size: int, steps: int) -> dict[str, Any]:
    """sdxs-rt at `setup.precision` against the card's algorithm in fp32, same seed and noise."""
    import numpy as np
    import torch

    from sdxs_rt.dev.bench.reference import CardRun, card_image
    from sdxs_rt.dev.bench.runner import psnr
    from sdxs_rt.dev.bench.worker_paths import NEGATIVE, PROMPT
    from sdxs_rt.pipeline import Pipeline

    run = CardRun(PROMPT, NEGATIVE, 1234, steps, size, 5.5, setup.device, torch.float32)
    reference = card_image(setup.model, run).image
    _empty_cache(setup.device)
    pipe = Pipeline.from_pretrained(
        str(setup.model), device=setup.device, dtype=setup.precision, variant=setup.variant
    )
    image = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=steps,
        guidance_scale=run.guidance,
        width=size,
        height=size,
        seed=run.seed,
    ).images[0]
    value = psnr(np.asarray(image), reference)
    where = f"{size}px, {steps} steps, {setup.device}"
    return {
        "check": f"sdxs-rt {setup.precision} vs card fp32 ({where})",
        "psnr_db": value,
        "ok": value >= MIN_PSNR_DB,
    }


def _empty_cache(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
