"""The torch VAE decoder (diffusers AutoencoderKL) and the latent scaling read from its config.

Half-precision VAEs can overflow to NaN/inf: the decoder then upcasts itself to float32 once
and for all. A decode that runs out of memory is retried tile by tile.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import nn

from sdxs_rt.backends.torch.weights import load_diffusers_module, read_config
from sdxs_rt.components import latent_scaling_from_config
from sdxs_rt.errors import OutOfMemoryError, SdxsError

logger = logging.getLogger(__name__)

__all__ = ["TorchVAEDecoder", "VAEDecodeError", "latent_scaling_from_config"]


class VAEDecodeError(SdxsError):
    """The VAE produced NaN or infinite pixels even in float32."""


class TorchVAEDecoder:
    """`sdxs_rt.components.VAEDecoder`: unscaled latents -> float32 images in [-1, 1].

    `tiled`: None decodes whole images and falls back to tiles on out-of-memory; True always
    decodes in tiles; False never does (out-of-memory is then an error at once).
    `tile_size`: the tiles' side in pixels (None: diffusers' default, the config's sample_size).
    """

    def __init__(
        self, vae: AutoencoderKL, *, tiled: bool | None = None, tile_size: int | None = None
    ) -> None:
        self.vae = vae
        self.device = vae.device
        self.tiled = tiled
        self.used_tiling = False  # whether the last decode went tile by tile
        self.upcast = False  # whether NaN/inf made us switch the VAE to float32
        if tile_size is not None:
            self._set_tile_size(tile_size)

    @classmethod
    def load(
        cls,
        vae_dir: Path,
        weights: Path,
        device: torch.device | str,
        dtype: torch.dtype,
        tiled: bool | None = None,
        config: dict[str, Any] | None = None,
        tile_size: int | None = None,
    ) -> TorchVAEDecoder:
        """`config`: the already-read config.json (read from `vae_dir` when None)."""
        config = config or read_config(Path(vae_dir) / "config.json")
        vae = load_diffusers_module(AutoencoderKL, config, Path(weights), device, dtype)
        return cls(vae, tiled=tiled, tile_size=tile_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def tile_size(self) -> int:
        """The side in pixels of the tiles a tiled decode uses."""
        return int(self.vae.tile_sample_min_size)

    def _set_tile_size(self, pixels: int) -> None:
        # diffusers' tiled_decode reads both: the latent tile is the pixel tile over the VAE's
        # downscaling factor (8 for SDXS)
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if pixels < factor or pixels % factor:
            raise ValueError(f"VAE tiles must be a multiple of {factor} px, not {pixels}")
        self.vae.tile_sample_min_size = pixels
        self.vae.tile_latent_min_size = pixels // factor

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            images = self._decode(latents)
            if not _all_finite(images) and self.dtype != torch.float32:
                logger.warning(
                    "the %s VAE decoded NaN/inf pixels; decoding in float32 from now on",
                    str(self.dtype).removeprefix("torch."),
                )
                nn.Module.to(self.vae, torch.float32)  # ModelMixin.to warns needlessly
                self.upcast = True
                images = self._decode(latents)
            if not _all_finite(images):
                raise VAEDecodeError(
                    "the VAE decoded NaN or infinite pixels even in float32; "
                    "the latents or the VAE weights are broken"
                )
            return images.float()

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.dtype)
        self.used_tiling = False
        if self.tiled:
            return self._decode_tiles(z)
        try:
            return self.vae.decode(z).sample
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            if self.tiled is False:
                raise OutOfMemoryError(_oom_message(z, "tiled decoding is turned off")) from err
            logger.warning("the VAE ran out of memory on %s; retrying tile by tile", tuple(z.shape))
        # retry outside the except block, so the failed attempt's frames and tensors are freed
        release_cached_memory(self.device)
        try:
            return self._decode_tiles(z)
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            raise OutOfMemoryError(_oom_message(z, "even tile by tile")) from err

    def _decode_tiles(self, z: torch.Tensor) -> torch.Tensor:
        # one image at a time as well: tiles bound the memory of one image, not of the batch
        self.used_tiling = True
        return torch.cat([self.vae.tiled_decode(item).sample for item in z.split(1)])


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's torch.OutOfMemoryError, or a RuntimeError that says so (MPS, CPU allocators)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _oom_message(z: torch.Tensor, how: str) -> str:
    height, width = z.shape[-2] * 8, z.shape[-1] * 8
    return (
        f"the VAE ran out of device memory decoding {z.shape[0]} image(s) of "
        f"{width}x{height} ({how}); use a smaller size or batch, or another device"
    )


def release_cached_memory(device: torch.device) -> None:
    """The caching allocator's free blocks back to the driver (CUDA only; elsewhere nothing)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _all_finite(images: torch.Tensor) -> bool:
    return bool(torch.isfinite(images).all())
