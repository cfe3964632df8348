"""Assemble the torch backend's components from a model folder or hub id."""

from __future__ import annotations

import logging
from typing import Any

import torch

from sdxs_rt.backends.torch.ops import TorchOps, resolve_device, resolve_dtype
from sdxs_rt.backends.torch.text_encoder import load_text_encoder
from sdxs_rt.backends.torch.unet import TorchUNet
from sdxs_rt.backends.torch.vae import TorchVAEDecoder, latent_scaling_from_config
from sdxs_rt.components import Components
from sdxs_rt.errors import OutOfMemoryError
from sdxs_rt.loading import model_hash, resolve_model, resolve_text_encoder

logger = logging.getLogger(__name__)


class Float32Embeddings:
    """Text embeddings leave the encoder in float32 on the U-Net's device (cast once there)."""

    def __init__(self, encoder: Any, device: torch.device) -> None:
        self.encoder = encoder
        self.device = device
        self.width = encoder.width

    def __call__(self, prompts: Any) -> torch.Tensor:
        return self.encoder(prompts).to(self.device, torch.float32)


def load_components(
    model: str | None,
    *,
    text_encoder: str | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    variant: str | None = None,
    trust_remote_code: bool = False,
) -> Components:
    files = resolve_model(model, variant)
    encoder_files = resolve_text_encoder(text_encoder, files)
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    try:
        unet = TorchUNet.load(files.unet_dir, files.unet_weights, torch_device, dtype)
        vae = TorchVAEDecoder.load(files.vae_dir, files.vae_weights, torch_device, dtype)
        encoder = load_text_encoder(encoder_files, torch_device, dtype, trust_remote_code)
    except torch.OutOfMemoryError:
        raise OutOfMemoryError(
            f"the model does not fit in the memory of {torch_device}; try --precision fp16"
        ) from None
    latent_channels = int(files.unet_config["in_channels"])
    return Components(
        text_encoder=Float32Embeddings(encoder, torch_device),
        unet=unet,
        vae_decoder=vae,
        ops=TorchOps(torch_device, torch.float32),
        scheduler_config=files.scheduler_config,
        latent_scaling=latent_scaling_from_config(files.vae_config, latent_channels),
        latent_channels=latent_channels,
        vae_scale_factor=2 ** (len(files.vae_config["block_out_channels"]) - 1),
        info={
            "backend": "torch",
            "device": str(torch_device),
            "precision": precision,
            "model": files.name,
            "model_hash": model_hash(files.unet_weights),
            "text_encoder": encoder_files.name,
            "variant": variant,
            "folded_cross_attention_blocks": unet.folded_blocks,
        },
    )
