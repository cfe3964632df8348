"""Latent arithmetic the pipeline and training share: the card's scaling between model and
VAE latents, the blended-inpainting step, and latent upscaling for the hires fix."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from sdxs_rt.components import Array, ArrayOps, LatentScaling
from sdxs_rt.sampler_schedule import SamplerSchedule


def _per_channel(value: tuple[float, ...] | float, ops: ArrayOps) -> Any:
    if isinstance(value, (int, float)):
        return float(value)
    return ops.from_host(np.asarray(value, dtype=np.float32).reshape(1, -1, 1, 1))


def unscale_latents(latents: Array, scaling: LatentScaling, ops: ArrayOps) -> Array:
    """Model latents -> VAE latents: `z * std / scaling_factor + mean` (per channel)."""
    std, mean = _per_channel(scaling.std, ops), _per_channel(scaling.mean, ops)
    return latents * std / scaling.scaling_factor + mean


def scale_latents(latents: Array, scaling: LatentScaling, ops: ArrayOps) -> Array:
    """VAE latents -> model latents, the inverse: `(z - mean) * scaling_factor / std`."""
    std, mean = _per_channel(scaling.std, ops), _per_channel(scaling.mean, ops)
    return (latents - mean) * scaling.scaling_factor / std


def blend_known_region(
    schedule: SamplerSchedule, clean: Array, first_noise: Array, mask: Array
) -> Any:
    """After step i, the known region (mask 0) is the init latents noised to step i + 1's
    level with the image's first draw: blended latent denoising; clean after the last step."""

    def blend(index: int, x: Array) -> Array:
        known = schedule.noised(clean, first_noise, index + 1)
        return x * mask + known * (1.0 - mask)

    return blend


def upscale_latents(latents: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(B, C, h, w) -> (B, C, H, W): each channel resized bilinearly (Pillow's float images)."""
    height, width = size
    batch, channels = latents.shape[:2]
    out = np.empty((batch, channels, height, width), np.float32)
    for b, c in np.ndindex(batch, channels):
        channel = Image.fromarray(latents[b, c].astype(np.float32), "F")
        out[b, c] = np.asarray(channel.resize((width, height), Image.Resampling.BILINEAR))
    return out
