"""The noise contract: portable, per-image, seeded noise drawn on the host.

Every image has its own seed. Its noise comes from `numpy.random.Generator(PCG64(seed))`:
first the initial latents `standard_normal((C, h, w), float32)`, then one more draw of the same
shape for each sampler step that adds noise, in step order. An image is therefore reproducible
alone, whatever the batch size, backend or device.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

RNG_NAME = "numpy-pcg64"
MAX_SEED = 2**63 - 1


def random_seed() -> int:
    """A fresh seed for "random" runs; printed and stored so the image can be replayed."""
    return secrets.randbelow(2**32)


def seeds_for(seed: int, count: int) -> list[int]:
    """Seeds S, S+1, ... for a run of `count` images that starts at seed S."""
    return [seed + i for i in range(count)]


class ImageNoise:
    """The noise stream of one image."""

    def __init__(self, seed: int, shape: tuple[int, int, int]) -> None:
        self.seed = seed
        self.shape = shape
        self._generator = np.random.Generator(np.random.PCG64(seed))
        self.draws = 0

    def draw(self) -> np.ndarray:
        self.draws += 1
        return self._generator.standard_normal(self.shape, dtype=np.float32)


class BatchNoise:
    """Stacks the per-image streams of a batch: one draw is (B, C, h, w)."""

    def __init__(self, seeds: Sequence[int], shape: tuple[int, int, int]) -> None:
        self.streams = [ImageNoise(seed, shape) for seed in seeds]

    def draw(self) -> np.ndarray:
        return np.stack([stream.draw() for stream in self.streams])
