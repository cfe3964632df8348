"""The small protocols every backend implements; the pipeline only ever sees these.

Arrays are "backend arrays": numpy arrays for ONNX Runtime, torch tensors for the torch
backend. The core does plain `+ - *` on them and asks `ArrayOps` for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sdxs_rt.errors import ModelFormatError, UsageError

if TYPE_CHECKING:  # annotations only: the CLI's help path must not import numpy
    import numpy as np
    from PIL import Image

Array = Any  # a numpy array or a torch tensor, whichever the backend uses


class ArrayOps(Protocol):
    """The few array operations that differ between numpy and torch."""

    def from_host(self, array: np.ndarray) -> Array:
        """Move a float32 host array (noise) to the backend's device, in the latent dtype."""
        ...

    def to_host(self, array: Array) -> np.ndarray:
        """Return a float32 numpy copy."""
        ...

    def concat(self, arrays: Sequence[Array]) -> Array:
        """Concatenate along the batch axis."""
        ...

    def clip(self, array: Array, low: float, high: float) -> Array: ...


class TextEncoder(Protocol):
    """Prompts -> pooled embeddings of shape (B, D); tokenizer included."""

    width: int

    def __call__(self, prompts: Sequence[str]) -> Array: ...


class UNet(Protocol):
    """(sample (B,16,h,w), timestep, encoder_hidden_states (B,1,D)) -> model output (B,16,h,w)."""

    def __call__(self, sample: Array, timestep: float, encoder_hidden_states: Array) -> Array: ...


class VAEDecoder(Protocol):
    """Unscaled latents (B,16,h,w) -> images (B,3,8h,8w) in [-1, 1]."""

    def __call__(self, latents: Array) -> Array: ...


class VAEEncoder(Protocol):
    """Images (B,3,8h,8w) in [-1, 1] -> unscaled latents (B,16,h,w), for img2img.

    The latents are the mean of the VAE's latent distribution, never a sample from it: the
    same image gives the same latents on every backend (within precision), and no seed is
    spent on it. Backend arrays in and out, the latents in the dtype the sampler works in.
    """

    def __call__(self, images: Array) -> Array: ...


class ImageEncoder(Protocol):
    """Image prompts -> (B, width) condition vectors in the text encoder's space.

    `images`: PIL images (any mode; prepared as the checkpoint's preprocessor_config.json says,
    see `sdxs_rt.image_preprocess`), or a host float32 array that is already SigLIP's
    `pixel_values`, shape (B, 3, *size). Each vector is the SigLIP vision tower's pooled output
    (its attention-pooling head), NOT L2-normalised, exactly as `encode_texts` leaves text
    vectors: the model card feeds the U-Net un-normalised text vectors, and its image
    embeddings come from the same checkpoint's vision tower (the remote code's
    `encode_images(pixel_values)` with its default `normalize=False`). Their norms differ from
    text vectors' (SigLIP aligns directions, not lengths); blends should weigh them knowingly.
    Backend arrays out, float32, like `TextEncoder`.
    """

    width: int
    size: tuple[int, int]  # (height, width) of the pixel_values the tower takes

    def __call__(self, images: Sequence[Image.Image] | np.ndarray) -> Array: ...


def require_image_encoder(components: Components) -> ImageEncoder:
    """The loaded image encoder, or UsageError saying in one sentence why there is none (a text
    encoder without a vision tower, an export without the image_encoder graph, a backend that
    has none)."""
    if components.image_encoder is not None:
        return components.image_encoder
    reason = components.info.get("image_encoder_unavailable") or (
        f"the {components.info.get('backend', 'loaded')} backend loaded no image encoder"
    )
    raise UsageError(f"image prompts cannot be used: {reason}")


def check_encoder_images(shape: tuple[int, ...], vae_scale_factor: int) -> None:
    """What every `VAEEncoder` accepts: (B, 3, H, W) with H and W multiples of the VAE's factor.

    Said in one sentence before the VAE runs, instead of an error from deep inside a graph.
    """
    if len(shape) != 4 or shape[1] != 3:
        raise UsageError(f"the VAE encoder takes images of shape (B, 3, H, W), not {shape}")
    height, width = shape[2], shape[3]
    if height % vae_scale_factor or width % vae_scale_factor or not height or not width:
        raise UsageError(
            f"the VAE encoder takes sides that are multiples of {vae_scale_factor} px, "
            f"not {width}x{height}"
        )


@dataclass(frozen=True)
class LatentScaling:
    """How model latents map to VAE latents: `z_vae = z * std / scaling + mean` (per channel).

    With `scaling_factor`/`shift_factor` configs, mean is the shift and std is 1.
    """

    scaling_factor: float = 1.0
    mean: tuple[float, ...] | float = 0.0
    std: tuple[float, ...] | float = 1.0


# What AutoencoderKL (and so the model card's `vae.config.scaling_factor`) uses when the
# config file does not say.
DIFFUSERS_DEFAULT_SCALING_FACTOR = 0.18215
CARD_DECODE_NOTE = (
    "the VAE config also carries latents_mean/latents_std; sdxs-rt follows the model card, "
    "which decodes with scaling_factor and shift_factor only"
)


def latent_scaling_from_config(vae_config: dict[str, Any], latent_channels: int) -> LatentScaling:
    """How the U-Net's latents map to the VAE's, as the VAE config says.

    `scaling_factor` + `shift_factor` (the model card's decode: z / scaling + shift), or, when
    there is no shift_factor, per-channel `latents_mean` / `latents_std` (diffusers' SDXL
    convention: z * std / scaling + mean). With both, the card wins (see latent_scaling_note).
    """
    scaling = vae_config.get("scaling_factor")
    scaling = DIFFUSERS_DEFAULT_SCALING_FACTOR if scaling is None else float(scaling)
    if not scaling > 0:
        raise ModelFormatError(f"the VAE config has scaling_factor {scaling}; it must be positive")
    shift = vae_config.get("shift_factor")
    mean, std = vae_config.get("latents_mean"), vae_config.get("latents_std")
    if shift is not None or (mean is None and std is None):
        return LatentScaling(scaling_factor=scaling, mean=float(shift or 0.0), std=1.0)
    if mean is None or std is None:
        raise ModelFormatError("the VAE config gives only one of latents_mean and latents_std")
    return LatentScaling(
        scaling_factor=scaling,
        mean=_per_channel("latents_mean", mean, latent_channels),
        std=_per_channel("latents_std", std, latent_channels),
    )


def latent_scaling_note(vae_config: dict[str, Any]) -> str | None:
    """Said at load and in `check` when the config offers both conventions."""
    has_stats = vae_config.get("latents_mean") is not None or vae_config.get("latents_std")
    return CARD_DECODE_NOTE if has_stats and vae_config.get("shift_factor") is not None else None


def _per_channel(name: str, values: Any, channels: int) -> tuple[float, ...]:
    if not isinstance(values, (list, tuple)) or len(values) != channels:
        raise ModelFormatError(
            f"the VAE config's {name} must list {channels} numbers, one per latent channel"
        )
    return tuple(float(v) for v in values)


@dataclass
class Components:
    """What a backend hands the pipeline."""

    text_encoder: TextEncoder
    unet: UNet
    vae_decoder: VAEDecoder
    ops: ArrayOps
    scheduler_config: dict[str, Any]
    latent_scaling: LatentScaling = field(default_factory=LatentScaling)
    latent_channels: int = 16
    vae_scale_factor: int = 8
    native_size: tuple[int, int] = (576, 576)  # (width, height) when a request names none
    info: dict[str, Any] = field(
        default_factory=dict
    )  # backend, device, precision, model name/hash
    # None: this loaded model cannot encode images (an export or engine build without the VAE
    # encoder); info["vae_encoder_unavailable"] then says why.
    vae_encoder: VAEEncoder | None = None
    # None: no image prompts (a text encoder without a vision tower, an export without the
    # image_encoder graph); info["image_encoder_unavailable"] then says why
    # (`require_image_encoder` raises it as a UsageError).
    image_encoder: ImageEncoder | None = None
