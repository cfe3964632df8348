"""One torch module per exported graph, each with the fixed signature of `sdxs_rt.graphs`.

The exporter traces these wrappers, so their `forward` arguments are the graph inputs in order
and their single tensor result is the graph output. They are always built in float32: fp16
graphs are converted from the float32 graph afterwards (see `fp16.py`), so the export source
is the same for both precisions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from sdxs_rt.backends.torch.image_encoder import load_vision_tower
from sdxs_rt.backends.torch.text_encoder import NativeTextEncoder, RemoteCodeTextEncoder
from sdxs_rt.backends.torch.unet import fold_cross_attention, use_sdpa_attention
from sdxs_rt.backends.torch.weights import load_diffusers_module
from sdxs_rt.errors import ModelFormatError
from sdxs_rt.image_encoder_files import ImageEncoderFiles
from sdxs_rt.loading import ModelFiles
from sdxs_rt.text_encoder_files import TextEncoderFiles

EXPORT_DEVICE = torch.device("cpu")  # tracing and the parity reference run on the CPU


@dataclass(frozen=True)
class ExportSource:
    """Where the graphs come from: the model, its text encoder and how to load it, and the
    text encoder's vision tower (None: it has none, and no image_encoder graph is made)."""

    model: ModelFiles
    text_encoder: TextEncoderFiles
    trust_remote_code: bool = False
    fold_cross_attention: bool = True  # False only to compare against the unfolded graph
    image_encoder: ImageEncoderFiles | None = None


class TextEncoderGraph(nn.Module):
    """(input_ids, attention_mask) -> text_embeds: XLM-R tower, CLS pooling, projection."""

    def __init__(self, tower: nn.Module, projection: nn.Module) -> None:
        super().__init__()
        self.tower = tower
        self.projection = projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(input_ids=input_ids, attention_mask=attention_mask)
        return self.projection(hidden.last_hidden_state[:, 0])


class RemoteCodeTextEncoderGraph(nn.Module):
    """(input_ids, attention_mask) -> text_embeds through the checkpoint's own `encode_texts`."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embeds = self.model.encode_texts(input_ids, attention_mask)  # type: ignore[operator]
        return embeds[:, 0] if embeds.ndim == 3 else embeds  # (B, 1, D) -> (B, D)


class UNetGraph(nn.Module):
    """(sample, timestep [batch] float32, encoder_hidden_states [batch, 1, D]) -> out_sample."""

    def __init__(self, unet: Any) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]


class VAEDecoderGraph(nn.Module):
    """Unscaled latents -> images in [-1, 1]; the runtime applies scaling and shift itself."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latent_sample: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latent_sample, return_dict=False)[0]


class VAEEncoderGraph(nn.Module):
    """Images in [-1, 1] -> the mean of the latent distribution (unscaled), for img2img."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(sample, return_dict=False)[0].mean


class ImageEncoderGraph(nn.Module):
    """pixel_values (prepared as the preprocessor says) -> image_embeds: SigLIP's pooled output
    (the attention-pooling head), not normalised, as `sdxs_rt.components.ImageEncoder`."""

    def __init__(self, tower: nn.Module) -> None:
        super().__init__()
        self.tower = tower

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.tower(pixel_values=pixel_values).pooler_output


def _image_encoder_graph(source: ExportSource) -> nn.Module:
    if source.image_encoder is None:
        raise ModelFormatError(
            f"the text encoder {source.text_encoder.name} has no vision tower to export"
        )
    return ImageEncoderGraph(load_vision_tower(source.image_encoder))


def load_graph_module(name: str, source: ExportSource) -> nn.Module:
    """The float32 wrapper of graph `name`, in eval mode with gradients off."""
    loaders = {
        "text_encoder": _text_encoder_graph,
        "unet": _unet_graph,
        "vae_decoder": lambda s: VAEDecoderGraph(_vae(s.model)),
        "vae_encoder": lambda s: VAEEncoderGraph(_vae(s.model)),
        "image_encoder": _image_encoder_graph,
    }
    module = loaders[name](source)
    module.eval()
    module.requires_grad_(False)
    return module


def _text_encoder_graph(source: ExportSource) -> nn.Module:
    if source.trust_remote_code:
        remote = RemoteCodeTextEncoder.load(source.text_encoder, EXPORT_DEVICE, torch.float32)
        return RemoteCodeTextEncoderGraph(remote.model)
    native = NativeTextEncoder.load(source.text_encoder, EXPORT_DEVICE, torch.float32)
    return TextEncoderGraph(native.tower, native.projection)


def _unet_graph(source: ExportSource) -> nn.Module:
    files = source.model
    unet = load_diffusers_module(
        UNet2DConditionModel, files.unet_config, files.unet_weights, EXPORT_DEVICE, torch.float32
    )
    use_sdpa_attention(unet)  # one attention kernel the exporter knows (opset >= 14)
    if source.fold_cross_attention:
        fold_cross_attention(unet)  # MODEL.md fact 1: no q/k projections or attention for ctx
    return UNetGraph(unet)


def _vae(files: ModelFiles) -> Any:
    return load_diffusers_module(
        AutoencoderKL, files.vae_config, files.vae_weights, EXPORT_DEVICE, torch.float32
    )
