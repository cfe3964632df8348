"""The small protocols every backend implements; the pipeline only ever sees these.

Arrays are "backend arrays": numpy arrays for ONNX Runtime, torch tensors for the torch
backend. The core does plain `+ - *` on them and asks `ArrayOps` for the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # annotations only: the CLI's help path must not import numpy
    import numpy as np

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


@dataclass(frozen=True)
class LatentScaling:
    """How model latents map to VAE latents: `z_vae = z * std / scaling + mean` (per channel).

    With `scaling_factor`/`shift_factor` configs, mean is the shift and std is 1.
    """

    scaling_factor: float = 1.0
    mean: tuple[float, ...] | float = 0.0
    std: tuple[float, ...] | float = 1.0


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
    info: dict[str, Any] = field(
        default_factory=dict
    )  # backend, device, precision, model name/hash
