"""Aspect-ratio buckets for training: 64-px steps, one side at 576 and the other 320..576.

SDXS was trained on buckets whose long side is 576 and whose short side runs from 320 to 576
in 64-px steps. Each image goes to the bucket with the closest aspect ratio, is scaled so that
it covers the bucket and is center-cropped. Small images are never upscaled unless asked: see
`assign_bucket` for the rule that shrinks the bucket instead.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from PIL import Image

from sdxs_rt.errors import UsageError

STEP = 64


@dataclass(frozen=True, order=True)
class Bucket:
    width: int
    height: int

    @property
    def aspect(self) -> float:
        return self.width / self.height

    def __str__(self) -> str:
        return f"{self.width}x{self.height}"


def make_buckets(long_side: int = 576, min_side: int = 320, step: int = STEP) -> list[Bucket]:
    """The square bucket, then landscape/portrait pairs with the short side shrinking by `step`."""
    _check_bucket_options(long_side, min_side, step)
    buckets = [Bucket(long_side, long_side)]
    for short in range(long_side - step, min_side - 1, -step):
        buckets += [Bucket(long_side, short), Bucket(short, long_side)]
    return buckets


def _check_bucket_options(long_side: int, min_side: int, step: int) -> None:
    if step <= 0 or long_side % step or min_side % step:
        raise UsageError(
            f"Bucket sides must be positive multiples of the step {step}; "
            f"got long side {long_side} and minimum side {min_side}."
        )
    if not step <= min_side <= long_side:
        raise UsageError(
            f"The minimum bucket side {min_side} must be between {step} and the long side "
            f"{long_side}."
        )


def closest_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is closest (in log space) to width/height; ties: the first."""
    if not buckets:
        raise UsageError("There are no buckets to choose from.")
    target = math.log(width / height)
    return min(buckets, key=lambda b: abs(math.log(b.aspect) - target))


def assign_bucket(
    width: int, height: int, buckets: Sequence[Bucket], allow_upscale: bool = False
) -> Bucket | None:
    """The bucket for an image of `width` x `height`, or None when the image is too small.

    The bucket with the closest aspect ratio is chosen. If the image is smaller than it on
    either side and upscaling is not allowed, the bucket is shrunk instead: its long side goes
    down in 64-px steps and its short side follows, rounded to the nearest multiple of 64 (at
    least 64), until the shrunk bucket fits inside the image. The first bucket that fits is
    returned; None when not even a 64-px one fits (an image under 64 px on a side).
    """
    if width <= 0 or height <= 0:
        raise UsageError(f"An image must have a positive size; got {width}x{height}.")
    bucket = closest_bucket(width, height, buckets)
    if allow_upscale or (bucket.width <= width and bucket.height <= height):
        return bucket
    return _shrink_to_fit(bucket, width, height)


def _shrink_to_fit(bucket: Bucket, width: int, height: int) -> Bucket | None:
    long_side = max(bucket.width, bucket.height)
    ratio = min(bucket.width, bucket.height) / long_side
    for side in range(long_side - STEP, STEP - 1, -STEP):
        short = max(STEP, round(side * ratio / STEP) * STEP)
        candidate = Bucket(side, short) if bucket.width >= bucket.height else Bucket(short, side)
        if candidate.width <= width and candidate.height <= height:
            return candidate
    return None


def assign_buckets(
    sizes: Sequence[tuple[int, int]],
    buckets: Sequence[Bucket] | None = None,
    allow_upscale: bool = False,
) -> list[Bucket | None]:
    """`assign_bucket` for each (width, height); the default buckets are `make_buckets()`."""
    chosen = make_buckets() if buckets is None else buckets
    return [assign_bucket(w, h, chosen, allow_upscale) for w, h in sizes]


def resize_and_crop(image: Image.Image, bucket: Bucket, allow_upscale: bool = False) -> Image.Image:
    """Scale `image` so it covers `bucket`, then center-crop to exactly the bucket's size."""
    width, height = image.size
    scale = max(bucket.width / width, bucket.height / height)
    if scale > 1 and not allow_upscale:
        raise UsageError(
            f"The {width}x{height} image is smaller than the {bucket} bucket and upscaling "
            "is not allowed."
        )
    if scale != 1:
        new_size = (
            max(bucket.width, round(width * scale)),
            max(bucket.height, round(height * scale)),
        )
        image = image.resize(new_size, Image.Resampling.LANCZOS)
    left = (image.width - bucket.width) // 2
    top = (image.height - bucket.height) // 2
    return image.crop((left, top, left + bucket.width, top + bucket.height))


def group_by_bucket(assignments: Sequence[Bucket | None]) -> dict[Bucket, list[int]]:
    """Indices per bucket, buckets sorted and indices ascending; None (skipped) is left out."""
    groups: dict[Bucket, list[int]] = {}
    for index, bucket in enumerate(assignments):
        if bucket is not None:
            groups.setdefault(bucket, []).append(index)
    return {bucket: groups[bucket] for bucket in sorted(groups)}


def bucket_batches(
    assignments: Sequence[Bucket | None], batch_size: int, seed: int, drop_last: bool = False
) -> Iterator[list[int]]:
    """One epoch of batches: each batch's indices share one bucket; the order depends on `seed`.

    Indices are shuffled within each bucket, cut into batches of `batch_size` (the last one of
    a bucket may be smaller unless `drop_last`), and the batches are shuffled across buckets.
    Pass a different seed per epoch (e.g. base_seed + epoch) for a new, reproducible order.
    """
    if batch_size <= 0:
        raise UsageError(f"The batch size must be positive; got {batch_size}.")
    rng = random.Random(seed)
    batches: list[list[int]] = []
    for indices in group_by_bucket(assignments).values():
        shuffled = list(indices)
        rng.shuffle(shuffled)
        for start in range(0, len(shuffled), batch_size):
            batch = shuffled[start : start + batch_size]
            if len(batch) == batch_size or not drop_last:
                batches.append(batch)
    rng.shuffle(batches)
    return iter(batches)
