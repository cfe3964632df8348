"""The torch backend's low-VRAM mode: SDXS at 576x576, batch 1, fp16 within about 6 GB.

The U-Net's weights (2.26B x 2 B = 4.53 GB in fp16) stay on the GPU: streaming them in for
every step would cost far more than the step. Everything else makes room for them:

- the text encoder (a 0.56B-parameter tower, 1.12 GB) waits on the CPU and visits the GPU only
  to encode a prompt it has not seen recently (`fast.OffloadedTextEncoder`);
- the VAE waits on the CPU as well and visits the GPU only to decode or, for img2img, to encode
  (`ParkedVAEDecoder`, `ParkedVAEEncoder`: one AutoencoderKL, back on the CPU after either);
- the VAE decodes and encodes in 256-px tiles (3 x 3 at 576 px), about a fifth of a whole
  image's activations; tiled encoding is diffusers' blended tiles, an approximation of the
  whole-image latents near the seams (tests/test_vae_encoder.py measures it);
- the allocator's cached blocks go back to the driver between phases (after encoding, before
  and after decoding), so one phase's cache never sits under the next phase's tensors.

Off CUDA nothing is parked (there is nowhere to park to) and only the tiling remains. The peak
estimate, component by component, is in README.md; it has not been measured on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sdxs_rt.backends.torch.fast import FastPathOptions
from sdxs_rt.backends.torch.vae import (
    TorchVAEDecoder,
    TorchVAEEncoder,
    VAEPart,
    release_cached_memory,
)

LOW_VRAM_TILE_SIZE = 256  # px per VAE tile side (32 latent pixels)
CPU = torch.device("cpu")


@dataclass(frozen=True)
class MemoryLayout:
    """Where the parts wait between uses, in which memory format, and how the VAE decodes and
    encodes."""

    offload_text_encoder: bool = False
    park_vae: bool = False
    vae_tiled: bool | None = None  # None: whole images, tiles only after an out-of-memory
    vae_tile_size: int | None = None  # px; None: diffusers' default (the config's sample_size)
    channels_last: bool = False

    @classmethod
    def choose(cls, fast: FastPathOptions | None, low_vram: bool) -> MemoryLayout:
        """The low-VRAM mode on top of whatever the fast-path options ask."""
        fast = fast or FastPathOptions()
        if not low_vram:
            return cls(fast.offload_text_encoder, channels_last=fast.channels_last)
        return cls(True, True, True, LOW_VRAM_TILE_SIZE, fast.channels_last)

    def low_vram_info(self, device: torch.device) -> dict[str, Any]:
        """For `Components.info["low_vram"]`: what the mode really does on `device`."""
        parks = device.type == "cuda"
        return {
            "text_encoder_parked_on_cpu": self.offload_text_encoder and parks,
            "vae_parked_on_cpu": self.park_vae and parks,
            "vae_tile_size": self.vae_tile_size,
        }


class ParkedVAEPart:
    """A VAE part (decoder or encoder) whose weights wait on the CPU and visit the GPU only for
    a call. The allocator's cache goes back to the driver before the call (the sampling's
    activations) and after (the VAE's), so the two phases do not stack."""

    def __init__(self, part: VAEPart, *, active: bool | None = None) -> None:
        self.part = part
        self.device = part.device
        self.active = self.device.type == "cuda" if active is None else active
        self._move(CPU)

    def __call__(self, array: torch.Tensor) -> torch.Tensor:
        release_cached_memory(self.device)
        self._move(self.device)
        try:
            return self.part(array)
        finally:
            self._move(CPU)
            release_cached_memory(self.device)

    def _move(self, device: torch.device) -> None:
        if self.active:
            nn.Module.to(self.part.vae, device)  # ModelMixin.to warns needlessly


class ParkedVAEDecoder(ParkedVAEPart):
    """`sdxs_rt.components.VAEDecoder`, parked on the CPU between decodes."""

    def __init__(self, decoder: TorchVAEDecoder, *, active: bool | None = None) -> None:
        super().__init__(decoder, active=active)
        self.decoder = decoder


class ParkedVAEEncoder(ParkedVAEPart):
    """`sdxs_rt.components.VAEEncoder`, parked on the CPU between encodes: the same weights as
    the parked decoder (one AutoencoderKL), so encoding, too, never leaves the VAE on the GPU."""

    def __init__(self, encoder: TorchVAEEncoder, *, active: bool | None = None) -> None:
        super().__init__(encoder, active=active)
        self.encoder = encoder
