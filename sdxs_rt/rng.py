"""The noise contract: portable, per-image, seeded noise drawn on the host.

Every image has its own seed. Its noise comes from `numpy.random.Generator(PCG64(seed))`:
first the initial noise `standard_normal((C, h, w), float32)` (text to image: the initial
latents; image to image: the noise added to the init image's latents), then one more draw of the
same shape for each sampler step that adds noise, in step order. An image is therefore
reproducible alone, whatever the batch size, backend or device.

Variation seeds (A1111's meaning): with variation seed V and strength A, the initial noise is
the spherical interpolation from seed S's first draw to seed V's first draw at A; every later
draw is still S's. (A1111 interpolates each column of its (C, h, w) tensor separately; we
interpolate the whole tensor. Its noise comes from torch's generator anyway, so its pixels
are not ours.)
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RNG_NAME = "numpy-pcg64"
MAX_SEED = 2**63 - 1


def random_seed() -> int:
    """A fresh seed for "random" runs; printed and stored so the image can be replayed."""
    return secrets.randbelow(2**32)


def seeds_for(seed: int, count: int) -> list[int]:
    """Seeds S, S+1, ... for a run of `count` images that starts at seed S."""
    return [seed + i for i in range(count)]


def slerp(low: np.ndarray, high: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation from `low` (t = 0) to `high` (t = 1), in float64, as float32."""
    a, b = low.astype(np.float64).ravel(), high.astype(np.float64).ravel()
    cos = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if np.sin(omega) < 1e-6:  # (anti)parallel: the sphere gives no direction, so lerp
        mixed = (1 - t) * a + t * b
    else:
        mixed = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)
    return mixed.reshape(low.shape).astype(np.float32)


@dataclass(frozen=True)
class Variation:
    """Blend the initial noise towards `seed`'s first draw by `strength` (0: none, 1: all)."""

    seed: int
    strength: float


class ImageNoise:
    """The noise stream of one image."""

    def __init__(
        self, seed: int, shape: tuple[int, int, int], variation: Variation | None = None
    ) -> None:
        self.seed = seed
        self.shape = shape
        self.variation = variation
        self._generator = np.random.Generator(np.random.PCG64(seed))
        self.draws = 0

    def draw(self) -> np.ndarray:
        self.draws += 1
        noise = self._generator.standard_normal(self.shape, dtype=np.float32)
        if self.draws == 1 and self.variation is not None and self.variation.strength > 0:
            other = ImageNoise(self.variation.seed, self.shape).draw()
            return slerp(noise, other, self.variation.strength)
        return noise


class BatchNoise:
    """Stacks the per-image streams of a batch: one draw is (B, C, h, w)."""

    def __init__(
        self,
        seeds: Sequence[int],
        shape: tuple[int, int, int],
        variations: Sequence[Variation | None] | None = None,
    ) -> None:
        variations = variations or [None] * len(seeds)
        self.streams = [
            ImageNoise(seed, shape, variation)
            for seed, variation in zip(seeds, variations, strict=True)
        ]

    def draw(self) -> np.ndarray:
        return np.stack([stream.draw() for stream in self.streams])
