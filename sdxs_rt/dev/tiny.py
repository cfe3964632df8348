"""Tiny random-weight SDXS checkpoints in the real on-disk diffusers layout, built offline.

Tests, demos and benchmarks need a model that loads through exactly the same code paths as the
real `AiArtLab/sdxs` (configs, folder names, weight variants, both text-encoder layouts) but
builds in seconds and weighs about 55 MB (47 MB of it the text encoder file, whose vision
tower is as wide as the real one). Same seed -> same files, byte for byte.

    python -m sdxs_rt.dev.tiny OUT_DIR [--seed N] [--unet-folder sdxs] [--variant fp16] ...
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Literal

from sdxs_rt.dev.tiny_files import (
    LATENT_CHANNELS,
    TEXT_EMBED_DIM,
    perturb_zero_tensors,
    save_tensors,
    seeded,
    write_json,
)
from sdxs_rt.dev.tiny_mexma import (
    MEXMA_SIGLIP_CONFIG,
    MEXMA_SIGLIP_EARLIER_CONFIG,
    REMOTE_CODE_FILE,
    TINY_TEXT_WIDTH,
    remote_code_source,
    text_config,
    text_encoder_tensors,
    vision_config,
    write_mexma_siglip,
    write_text_encoder,
    write_text_encoder_files,
)
from sdxs_rt.dev.tiny_tokenizer_files import build_tokenizer, write_tokenizer

# The builders' public names, importable from here as before the split into tiny_* modules.
__all__ = [
    "LATENT_CHANNELS",
    "MEXMA_SIGLIP_CONFIG",
    "MEXMA_SIGLIP_EARLIER_CONFIG",
    "REMOTE_CODE_FILE",
    "TEXT_EMBED_DIM",
    "TINY_TEXT_WIDTH",
    "build_tiny_model",
    "build_tiny_text_encoder",
    "build_tokenizer",
    "model_index",
    "remote_code_source",
    "save_tensors",
    "scheduler_config",
    "seeded",
    "text_config",
    "text_encoder_tensors",
    "unet_kwargs",
    "vae_kwargs",
    "vision_config",
    "write_json",
    "write_mexma_siglip",
    "write_text_encoder",
    "write_text_encoder_files",
    "write_tokenizer",
]


# --- diffusers components ---------------------------------------------------------------


def unet_kwargs() -> dict[str, Any]:
    """The SDXS U-Net shape (4 cross-attention levels, 1152-wide context) scaled down."""
    return {
        "sample_size": 72,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "down_block_types": ["CrossAttnDownBlock2D"] * 4,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D"] * 4,
        "block_out_channels": [8, 16, 16, 24],
        "layers_per_block": 1,
        "transformer_layers_per_block": [1, 1, 2, 1],
        "attention_head_dim": [1, 2, 2, 3],  # legacy name: diffusers reads it as the head count
        "cross_attention_dim": TEXT_EMBED_DIM,
        "norm_num_groups": 8,
        "use_linear_projection": True,
    }


def vae_kwargs(latent_norm: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [8, 8, 16, 16],
        "layers_per_block": 1,
        "latent_channels": LATENT_CHANNELS,
        "norm_num_groups": 4,
        "sample_size": 576,
        "scaling_factor": 1.5,
    }
    if latent_norm == "shift":
        kwargs["shift_factor"] = 0.1
    elif latent_norm == "mean_std":
        kwargs["latents_mean"] = [round(0.05 * (i - 8), 3) for i in range(LATENT_CHANNELS)]
        kwargs["latents_std"] = [round(0.8 + 0.025 * i, 3) for i in range(LATENT_CHANNELS)]
    else:
        raise ValueError(f"latent_norm must be 'shift' or 'mean_std', not {latent_norm!r}")
    return kwargs


def scheduler_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """DDPM as SD-style models ship it; overrides may replace anything, `_class_name` included."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )
    # `_use_default_values` is a set turned list: its order changes between runs, so drop it.
    config = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    config = {"_class_name": "DDPMScheduler", "_diffusers_version": _diffusers_version(), **config}
    config.update(overrides or {})
    return config


def _write_diffusers_model(model: Any, folder: Path, variant: str | None, seed: int) -> None:
    perturb_zero_tensors(model, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(str(folder))
    tensors = model.state_dict()
    stem = "diffusion_pytorch_model"
    if variant == "fp16":
        tensors = {k: v.half() for k, v in tensors.items()}
        stem += ".fp16"
    elif variant is not None:
        raise ValueError(f"variant must be None or 'fp16', not {variant!r}")
    save_tensors(tensors, folder / f"{stem}.safetensors")


def write_unet(
    folder: Path, seed: int, variant: str | None, widths: list[int] | None = None
) -> None:
    from diffusers import UNet2DConditionModel

    kwargs = unet_kwargs()
    if widths is not None:
        kwargs["block_out_channels"] = widths
    with seeded(seed):
        unet = UNet2DConditionModel(**kwargs)
    _write_diffusers_model(unet, folder, variant, seed)


def write_vae(folder: Path, seed: int, variant: str | None, latent_norm: str) -> None:
    from diffusers import AutoencoderKL

    with seeded(seed):
        vae = AutoencoderKL(**vae_kwargs(latent_norm))
    _write_diffusers_model(vae, folder, variant, seed)


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


def model_index(unet_folder: str) -> dict[str, Any]:
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        unet_folder: ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "AutoModel"],
        "tokenizer": ["transformers", "XLMRobertaTokenizerFast"],
    }


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    unet_folder: Literal["unet", "sdxs"] = "unet",
    variant: str | None = None,
    latent_norm: Literal["shift", "mean_std"] = "shift",
    scheduler_overrides: dict[str, Any] | None = None,
    remote_code: bool = False,
    second_unet: bool = True,
) -> Path:
    """Write a tiny SDXS-format model to `out_dir` and return its path.

    As `AiArtLab/sdxs` is published: model_index.json naming `unet/`, and beside it a second,
    different U-Net in `sdxs/` (with `second_unet`; unused, so a loader that took it would
    give other images). The text encoder in `text_encoder/` has the published Mexma-SigLIP
    layout (`remote_code`: with the latest revision's auto_map and the stand-in code)."""
    if unet_folder not in ("unet", "sdxs"):
        raise ValueError(f"unet_folder must be 'unet' or 'sdxs', not {unet_folder!r}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    # Distinct seeds per component: changing one component never reshuffles another.
    write_unet(root / unet_folder, seed * 10 + 1, variant)
    if second_unet and unet_folder == "unet":
        write_unet(root / "sdxs", seed * 10 + 4, variant, widths=[8, 16, 24, 24])
    write_vae(root / "vae", seed * 10 + 2, variant, latent_norm)
    (root / "scheduler").mkdir(exist_ok=True)
    write_json(root / "scheduler" / "scheduler_config.json", scheduler_config(scheduler_overrides))
    tokenizer = build_tokenizer()
    write_text_encoder(root / "text_encoder", tokenizer, seed * 10 + 3, remote_code)
    write_tokenizer(tokenizer, root / "tokenizer")
    write_json(root / "model_index.json", model_index(unet_folder))
    return root


def build_tiny_text_encoder(
    out_dir: str | Path, *, seed: int = 3, remote_code: bool = True
) -> Path:
    """A tiny stand-in for the `visheratin/mexma-siglip` repo (the card's text encoder)."""
    root = Path(out_dir)
    write_text_encoder(root, build_tokenizer(), seed, remote_code)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sdxs_rt.dev.tiny", description="Build a tiny random-weight SDXS model."
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unet-folder", choices=("unet", "sdxs"), default="unet")
    parser.add_argument("--variant", choices=("fp16",), default=None)
    parser.add_argument("--latent-norm", choices=("shift", "mean_std"), default="shift")
    parser.add_argument("--remote-code", action="store_true", help="also write remote code")
    args = parser.parse_args(argv)
    path = build_tiny_model(
        args.out_dir,
        seed=args.seed,
        unet_folder=args.unet_folder,
        variant=args.variant,
        latent_norm=args.latent_norm,
        remote_code=args.remote_code,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
