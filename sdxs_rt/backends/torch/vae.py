"""The torch VAE decoder and encoder (one diffusers AutoencoderKL) and the latent scaling.

Half-precision VAEs can overflow to NaN/inf: the VAE then upcasts itself to float32 once and for
all. A decode or encode that runs out of memory is retried tile by tile.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import nn

from sdxs_rt.backends.torch.weights import load_diffusers_module, read_config
from sdxs_rt.components import check_encoder_images, latent_scaling_from_config
from sdxs_rt.errors import OutOfMemoryError, SdxsError

logger = logging.getLogger(__name__)

__all__ = [
    "TorchVAEDecoder",
    "TorchVAEEncoder",
    "VAEDecodeError",
    "VAEEncodeError",
    "latent_scaling_from_config",
]


class VAEDecodeError(SdxsError):
    """The VAE produced NaN or infinite pixels even in float32."""


class VAEEncodeError(SdxsError):
    """The VAE produced NaN or infinite latents even in float32."""


class VAEPart:
    """What the decoder and the encoder share: one AutoencoderKL, the device it runs on, the
    tiling rule and the float32 upcast after a NaN/inf result.

    `tiled`: None runs whole images and falls back to tiles on out-of-memory; True always goes
    tile by tile; False never does (out-of-memory is then an error at once).
    """

    verb = "decoding"  # the messages' words, per part
    done = "decoded"
    makes = "pixels"
    takes = "latents"

    def __init__(
        self, vae: AutoencoderKL, *, tiled: bool | None = None, device: Any = None
    ) -> None:
        self.vae = vae
        # given when the VAE is parked elsewhere between uses (low_vram.py): where it runs
        self.device = torch.device(device) if device is not None else vae.device
        self.tiled = tiled
        self.used_tiling = False  # whether the last call went tile by tile
        self.upcast = False  # whether NaN/inf made this part switch the VAE to float32

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.dtype

    def __call__(self, array: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # the decoder and the encoder each say what they take

    def _finite(self, run: Callable[[], torch.Tensor], error: type[SdxsError]) -> torch.Tensor:
        """`run()` in float32 out; NaN/inf in half precision upcasts the VAE and runs again."""
        with torch.inference_mode():
            result = run()
            if not _all_finite(result) and self.dtype != torch.float32:
                logger.warning(
                    "the %s VAE %s NaN/inf %s; %s in float32 from now on",
                    str(self.dtype).removeprefix("torch."),
                    self.done,
                    self.makes,
                    self.verb,
                )
                nn.Module.to(self.vae, torch.float32)  # ModelMixin.to warns needlessly
                self.upcast = True
                result = run()
            if not _all_finite(result):
                raise error(
                    f"the VAE {self.done} NaN or infinite {self.makes} even in float32; "
                    f"the {self.takes} or the VAE weights are broken"
                )
            return result.float()

    def _whole_or_tiles(
        self,
        whole: Callable[[], torch.Tensor],
        tiles: Callable[[], torch.Tensor],
        images: tuple[int, int, int],
    ) -> torch.Tensor:
        """`whole()` or `tiles()` by the rule of `tiled`; `images`: (count, width, height)."""
        self.used_tiling = bool(self.tiled)
        if self.tiled:
            return tiles()
        try:
            return whole()
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            if self.tiled is False:
                how = f"tiled {self.verb} is turned off"
                raise OutOfMemoryError(_oom_message(self.verb, images, how)) from err
            logger.warning(
                "the VAE ran out of memory %s %d image(s) of %dx%d; retrying tile by tile",
                self.verb,
                *images,
            )
        # retry outside the except block, so the failed attempt's frames and tensors are freed
        release_cached_memory(self.device)
        self.used_tiling = True
        try:
            return tiles()
        except RuntimeError as err:
            if not is_out_of_memory(err):
                raise
            raise OutOfMemoryError(_oom_message(self.verb, images, "even tile by tile")) from err


class TorchVAEDecoder(VAEPart):
    """`sdxs_rt.components.VAEDecoder`: unscaled latents -> float32 images in [-1, 1].

    `tiled`: see `VAEPart`. `tile_size`: the tiles' side in pixels (None: diffusers' default,
    the config's sample_size); the encoder sharing this VAE tiles at the same size.
    """

    def __init__(
        self, vae: AutoencoderKL, *, tiled: bool | None = None, tile_size: int | None = None
    ) -> None:
        super().__init__(vae, tiled=tiled)
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
    def tile_size(self) -> int:
        """The side in pixels of the tiles a tiled decode uses."""
        return int(self.vae.tile_sample_min_size)

    def _set_tile_size(self, pixels: int) -> None:
        # diffusers' tiled_decode reads both: the latent tile is the pixel tile over the VAE's
        # downscaling factor (8 for SDXS)
        factor = vae_scale_factor(self.vae)
        if pixels < factor or pixels % factor:
            raise ValueError(f"VAE tiles must be a multiple of {factor} px, not {pixels}")
        self.vae.tile_sample_min_size = pixels
        self.vae.tile_latent_min_size = pixels // factor

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return self._finite(lambda: self._decode(latents), VAEDecodeError)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.device, self.dtype)
        factor = vae_scale_factor(self.vae)
        images = (z.shape[0], z.shape[-1] * factor, z.shape[-2] * factor)
        return self._whole_or_tiles(
            lambda: self.vae.decode(z).sample, lambda: self._decode_tiles(z), images
        )

    def _decode_tiles(self, z: torch.Tensor) -> torch.Tensor:
        # one image at a time as well: tiles bound the memory of one image, not of the batch
        return torch.cat([self.vae.tiled_decode(item).sample for item in z.split(1)])


class TorchVAEEncoder(VAEPart):
    """`sdxs_rt.components.VAEEncoder`: images in [-1, 1] -> float32 unscaled latents, the
    posterior mean (`latent_dist.mean`, never a sample).

    Built on the decoder's AutoencoderKL (`sharing`), whose encoder half is loaded with it: no
    second copy of the weights, and the same device, precision, tile size and tiling rule. A
    float32 upcast by either part holds for both, since they share the weights.

    Tiled encoding (low-VRAM mode, or after an out-of-memory) is diffusers' own: overlapping
    tiles, each encoded alone (its GroupNorm statistics and attention see one tile), blended
    over a quarter of a tile. It is an approximation near the seams, not the whole-image mean.
    """

    verb, done, makes, takes = "encoding", "encoded", "latents", "image"

    @classmethod
    def sharing(cls, decoder: TorchVAEDecoder) -> TorchVAEEncoder:
        return cls(decoder.vae, tiled=decoder.tiled, device=decoder.device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_encoder_images(tuple(images.shape), vae_scale_factor(self.vae))
        return self._finite(lambda: self._encode(images), VAEEncodeError)

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, self.dtype)
        sizes = (x.shape[0], x.shape[-1], x.shape[-2])
        return self._whole_or_tiles(lambda: self._mean(x), lambda: self._encode_tiles(x), sizes)

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x).latent_dist.mean

    def _encode_tiles(self, x: torch.Tensor) -> torch.Tensor:
        # one image at a time, as the decoder: tiles bound the memory of one image
        with _tiling_switched_on(self.vae):
            return torch.cat([self._mean(item) for item in x.split(1)])


@contextmanager
def _tiling_switched_on(vae: AutoencoderKL) -> Iterator[None]:
    """diffusers' public tiling switch, on for one call: `encode` then tiles any image larger
    than one tile (the direct `tiled_encode` is deprecated for removal in diffusers 1.0)."""
    was_on = vae.use_tiling
    vae.enable_tiling()
    try:
        yield
    finally:
        if not was_on:
            vae.disable_tiling()


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent pixel along a side: 2 per down block after the first (8 for SDXS)."""
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's torch.OutOfMemoryError, or a RuntimeError that says so (MPS, CPU allocators)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def _oom_message(verb: str, images: tuple[int, int, int], how: str) -> str:
    count, width, height = images
    return (
        f"the VAE ran out of device memory {verb} {count} image(s) of "
        f"{width}x{height} ({how}); use a smaller size or batch, or another device"
    )


def release_cached_memory(device: torch.device) -> None:
    """The caching allocator's free blocks back to the driver (CUDA only; elsewhere nothing)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _all_finite(images: torch.Tensor) -> bool:
    return bool(torch.isfinite(images).all())
