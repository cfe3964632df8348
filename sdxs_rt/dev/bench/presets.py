"""Benchmark presets: random-weight SDXS-format models of three sizes, built like `dev.tiny`.

- `tiny`: the test model of `sdxs_rt.dev.tiny` (seconds; a CI smoke check).
- `cpu-small`: the card's U-Net topology (4 cross-attention levels, 2 layers per block,
  [4, 6, 8, 10] transformer layers) at half the channel widths, the card's 16-channel VAE,
  a reduced XLM-R-shaped text tower, 384x384, 8 steps.
- `full`: the card's layout (about 2.26B U-Net parameters), 576x576, 40 steps, an
  XLM-R-large-shaped text tower (1024 wide, 24 layers, 16 heads, vocab 250002); for a GPU.

Heads: the card says "1152/48=24 attention heads", i.e. heads of width 48 (24 of them at the
1152-wide context). We keep the head width at 48 at every level, so `attention_head_dim`
(diffusers' legacy field, read as the head COUNT) is channels // 48: [8, 12, 16, 20] at full
width, [4, 6, 8, 10] at half width. The FLOP count does not depend on this choice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxs_rt.dev import tiny

HEAD_WIDTH = 48
CARD_CHANNELS = (384, 576, 768, 960)
XLM_R_LARGE = {
    "hidden_size": 1024,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "intermediate_size": 4096,
    "vocab_size": 250002,
}
# cpu-small text tower: XLM-R's layout at half width and a third of the depth, with the
# tokenizer's own small vocabulary. Padded to 512 tokens (as the card does) it encodes a
# prompt in about a second on two cores, where XLM-R-large takes 4.6 s (MODEL.md, fact 2).
SMALL_TEXT_TOWER = {
    "hidden_size": 512,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "intermediate_size": 2048,
    "vocab_size": None,  # None: the tokenizer's vocabulary size
}
TINY_TEXT_TOWER = {
    "hidden_size": 128,  # tiny.TINY_TEXT_WIDTH: heads are 64 wide, as the native loader derives
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 256,
    "vocab_size": None,
}


@dataclass(frozen=True)
class Preset:
    name: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    size: int
    steps: int
    variant: str | None = None  # weight-file variant written ("fp16" halves the files)
    notes: str = ""
    guidance: float = 5.5
    extra: dict[str, Any] = field(default_factory=dict)


def card_unet_kwargs(scale: float = 1.0) -> dict[str, Any]:
    """The card's U-Net layout, channel widths multiplied by `scale`."""
    channels = [int(c * scale) for c in CARD_CHANNELS]
    return {
        "sample_size": 72,
        "in_channels": tiny.LATENT_CHANNELS,
        "out_channels": tiny.LATENT_CHANNELS,
        "down_block_types": ["CrossAttnDownBlock2D"] * 4,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D"] * 4,
        "block_out_channels": channels,
        "layers_per_block": 2,
        "transformer_layers_per_block": [4, 6, 8, 10],
        "attention_head_dim": [c // HEAD_WIDTH for c in channels],
        "cross_attention_dim": tiny.TEXT_EMBED_DIM,
        "norm_num_groups": 32,
        "use_linear_projection": True,
    }


def card_vae_kwargs() -> dict[str, Any]:
    """16-channel 8x AuraDiffusion-style VAE: SDXL-like widths, scaling + shift latents."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": tiny.LATENT_CHANNELS,
        "norm_num_groups": 32,
        "sample_size": 576,
        "scaling_factor": 1.5,
        "shift_factor": 0.1,
    }


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        tiny.unet_kwargs(),
        tiny.vae_kwargs("shift"),
        TINY_TEXT_TOWER,
        128,
        4,
        notes="the sdxs_rt.dev.tiny test model",
    ),
    "cpu-small": Preset(
        "cpu-small",
        card_unet_kwargs(0.5),
        card_vae_kwargs(),
        SMALL_TEXT_TOWER,
        384,
        8,
        notes="card topology at half width; 512x8-layer text tower",
    ),
    "full": Preset(
        "full",
        card_unet_kwargs(1.0),
        card_vae_kwargs(),
        XLM_R_LARGE,
        576,
        40,
        variant="fp16",
        notes="card layout (~2.26B U-Net params), XLM-R-large text tower",
    ),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def count_parameters(kwargs: dict[str, Any], cls_name: str = "UNet2DConditionModel") -> int:
    """Parameters of a diffusers model built on the meta device (no memory, no time)."""
    import diffusers
    import torch

    with torch.device("meta"):
        model = getattr(diffusers, cls_name)(**kwargs)
    return sum(p.numel() for p in model.parameters())


def text_config(preset: Preset, tokenizer_vocab: int) -> dict[str, Any]:
    config = tiny.text_config(tokenizer_vocab)
    tower = dict(preset.text)
    config.update({k: v for k, v in tower.items() if v is not None})
    if preset.name != "tiny":
        config["initializer_range"] = 0.02  # XLM-R's own; 0.2 only makes tiny towers lively
    return config


def _write_text_encoder(folder: Path, preset: Preset, tokenizer: Any, seed: int) -> None:
    """As `tiny.write_text_encoder(remote_code=True)` (the published Mexma-SigLIP layout), with
    the preset's text tower shape; the vision tower stays tiny (the text path never reads it)."""
    config_text = text_config(preset, tokenizer.get_vocab_size())
    tensors = tiny.text_encoder_tensors(config_text, seed)
    # keep the projected vector at the tiny model's scale whatever the tower width
    tensors["text_projector.weight"] *= (tiny.TINY_TEXT_WIDTH / config_text["hidden_size"]) ** 0.5
    tiny.write_mexma_siglip(folder, tokenizer, config_text, tensors, remote_code=True)


def build_preset_model(preset: Preset, root: Path, seed: int = 0) -> Path:
    """Write the preset's random-weight model (remote-code text encoder) to `root`."""
    if preset.name == "tiny":
        return tiny.build_tiny_model(root, seed=seed, remote_code=True, variant=preset.variant)
    from diffusers import AutoencoderKL, UNet2DConditionModel

    root.mkdir(parents=True, exist_ok=True)
    for folder, cls, kwargs, part in (
        ("unet", UNet2DConditionModel, preset.unet, 1),
        ("vae", AutoencoderKL, preset.vae, 2),
    ):
        with tiny.seeded(seed * 10 + part):
            model = cls(**kwargs)
        tiny._write_diffusers_model(model, root / folder, preset.variant, seed * 10 + part)
        del model
    (root / "scheduler").mkdir(exist_ok=True)
    tiny.write_json(root / "scheduler" / "scheduler_config.json", tiny.scheduler_config())
    tokenizer = tiny.build_tokenizer()
    _write_text_encoder(root / "text_encoder", preset, tokenizer, seed * 10 + 3)
    tiny.write_tokenizer(tokenizer, root / "tokenizer")
    tiny.write_json(root / "model_index.json", tiny.model_index("unet"))
    return root
