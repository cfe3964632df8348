"""Assemble the torch backend's components from a model folder or hub id."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from sdxs_rt.backends.torch.fast import (
    FastPathOptions,
    OffloadedTextEncoder,
    accelerate_unet,
    use_channels_last,
)
from sdxs_rt.backends.torch.image_encoder import load_image_encoder
from sdxs_rt.backends.torch.lora import LoraSpec, parse_lora_spec
from sdxs_rt.backends.torch.low_vram import MemoryLayout, ParkedVAEDecoder, ParkedVAEEncoder
from sdxs_rt.backends.torch.ops import TorchOps, resolve_device, resolve_dtype
from sdxs_rt.backends.torch.text_encoder import load_text_encoder
from sdxs_rt.backends.torch.unet import TorchUNet
from sdxs_rt.backends.torch.vae import (
    TorchVAEDecoder,
    TorchVAEEncoder,
    latent_scaling_from_config,
)
from sdxs_rt.components import Components, latent_scaling_note
from sdxs_rt.errors import OutOfMemoryError
from sdxs_rt.loading import ModelFiles, model_hash, native_image_size, resolve_model
from sdxs_rt.text_encoder_files import TextEncoderFiles, check_text_width, resolve_text_encoder

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
    revision: str | None = None,
    trust_remote_code: bool = False,
    fast: FastPathOptions | None = None,
    loras: Sequence[LoraSpec | str] = (),
    low_vram: bool = False,
) -> Components:
    """`fast`: the GPU fast path (see `fast.FastPathOptions`); None reads the SDXS_RT_CUDA_GRAPHS,
    SDXS_RT_COMPILE, SDXS_RT_CHANNELS_LAST and SDXS_RT_OFFLOAD_TEXT_ENCODER variables, and
    without any of them set loads the plain eager model. `loras`: LoRA files (`LoraSpec`s or
    "FILE:SCALE" strings) merged into the U-Net weights at load time. `revision`: the hub
    branch, tag or commit of `model` (the text encoder's own repo is not pinned by it).
    `low_vram`: the small-card mode of `low_vram.py` (text encoder and VAE parked on the CPU
    between uses, VAE decoded and encoded in tiles; the U-Net stays on the GPU). The VAE encoder
    (img2img) shares the decoder's AutoencoderKL: always available here. The image encoder
    (image prompts) is the text encoder's SigLIP vision tower, read on the first image prompt
    (parked on the CPU between uses in low-VRAM mode); without one, `image_encoder` is None and
    info["image_encoder_unavailable"] says why."""
    fast = fast if fast is not None else FastPathOptions.from_env()
    layout = MemoryLayout.choose(fast, low_vram)
    lora_specs = [parse_lora_spec(spec) for spec in loras]
    files = resolve_model(model, variant, revision)
    encoder_files = resolve_text_encoder(text_encoder, files)
    check_text_width(encoder_files, files)  # before any weight is read
    torch_device = resolve_device(device)
    dtype = resolve_dtype(precision, torch_device)
    try:
        encoder, unet, (vae_decoder, vae_encoder) = _load_models(
            files, encoder_files, torch_device, dtype, trust_remote_code, layout, lora_specs
        )
    except torch.OutOfMemoryError:
        raise OutOfMemoryError(
            f"the model does not fit in the memory of {torch_device}; try --precision fp16"
        ) from None
    width = encoder_files.layout.width if encoder_files.layout else files.cross_attention_dim
    image_encoder, no_image_encoder = load_image_encoder(
        encoder_files, width, torch_device, dtype, park=layout.offload_text_encoder
    )
    latent_channels = int(files.unet_config["in_channels"])
    info: dict[str, Any] = {
        "backend": "torch",
        "device": str(torch_device),
        "precision": precision,
        "model": files.name,
        "model_hash": model_hash(files.unet_weights),
        "text_encoder": encoder_files.name,
        "variant": variant,
        "revision": files.revision,
        "folded_cross_attention_blocks": unet.folded_blocks,
        "skipped": load_notes(files, encoder_files),
    }
    if no_image_encoder:
        info["image_encoder_unavailable"] = no_image_encoder
    if unet.lora_info:
        info["loras"] = unet.lora_info
    if fast is not None:
        info["fast_path"] = fast.info(torch_device)
    if low_vram:
        info["low_vram"] = layout.low_vram_info(torch_device)
    return Components(
        text_encoder=Float32Embeddings(encoder, torch_device),
        unet=accelerate_unet(unet, fast) if fast is not None else unet,
        vae_decoder=vae_decoder,
        vae_encoder=vae_encoder,
        image_encoder=image_encoder,
        ops=TorchOps(torch_device, torch.float32, pinned_staging=fast is not None),
        scheduler_config=files.scheduler_config,
        latent_scaling=latent_scaling_from_config(files.vae_config, latent_channels),
        latent_channels=latent_channels,
        vae_scale_factor=2 ** (len(files.vae_config["block_out_channels"]) - 1),
        native_size=native_image_size(files),
        info=info,
    )


def load_notes(files: ModelFiles, encoder_files: TextEncoderFiles) -> list[str]:
    """What the model holds but this run does not use or understand: one line each."""
    vae_note = latent_scaling_note(files.vae_config)
    return [*files.skipped, *encoder_files.skipped, *([vae_note] if vae_note else [])]


def _load_models(
    files: ModelFiles,
    encoder_files: TextEncoderFiles,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool,
    layout: MemoryLayout,
    loras: Sequence[LoraSpec],
) -> tuple[Any, TorchUNet, tuple[Any, Any]]:
    """(text encoder, U-Net, (VAE decoder, VAE encoder)). With the offload on, the text encoder is
    loaded first and parked on the CPU at once, so it never shares the GPU with the U-Net at
    load time."""
    encoder: Any = None
    if layout.offload_text_encoder:
        encoder = load_text_encoder(encoder_files, device, dtype, trust_remote_code)
        encoder = OffloadedTextEncoder(encoder, device)
    unet = TorchUNet.load(
        files.unet_dir, files.unet_weights, device, dtype, config=files.unet_config, loras=loras
    )
    vae = TorchVAEDecoder.load(
        files.vae_dir,
        files.vae_weights,
        device,
        dtype,
        tiled=layout.vae_tiled,
        config=files.vae_config,
        tile_size=layout.vae_tile_size,
    )
    if layout.channels_last:
        use_channels_last(vae.vae)
    if encoder is None:
        encoder = load_text_encoder(encoder_files, device, dtype, trust_remote_code)
    return encoder, unet, vae_parts(vae, layout.park_vae)


def vae_parts(decoder: TorchVAEDecoder, park: bool) -> tuple[Any, Any]:
    """(decoder, encoder) over one AutoencoderKL, parked on the CPU between uses when `park`."""
    encoder = TorchVAEEncoder.sharing(decoder)  # before parking: it runs where the decoder runs
    if park:
        return ParkedVAEDecoder(decoder), ParkedVAEEncoder(encoder)
    return decoder, encoder
