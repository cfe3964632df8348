"""Generation parameters and their validation: one clear sentence per bad value."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sdxs_rt.errors import UsageError
from sdxs_rt.rng import MAX_SEED

SIZE_STEP = 64
MAX_SIDE = 4096  # 4096 px is already ~50x the trained area; larger is a typo, not a wish


@dataclass(frozen=True)
class GenerationParams:
    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int = 40
    guidance_scale: float = 5.5
    width: int = 576
    height: int = 576
    seed: int | None = None
    scheduler: str | None = None  # None: the model's own scheduler
    num_images: int = 1
    batch_size: int = 1

    def validate(self) -> GenerationParams:
        check_size("width", self.width)
        check_size("height", self.height)
        check_steps(self.num_inference_steps)
        check_guidance(self.guidance_scale)
        check_seed(self.seed, self.num_images)
        check_positive("number of images", self.num_images)
        check_positive("batch size", self.batch_size)
        if not isinstance(self.prompt, str) or not isinstance(self.negative_prompt, str):
            raise UsageError("the prompt and the negative prompt must be strings")
        return self


def nearest_sizes(value: int) -> list[int]:
    below = max(SIZE_STEP, value // SIZE_STEP * SIZE_STEP)
    above = min(MAX_SIDE, below + SIZE_STEP)
    return sorted({below, above})


def check_size(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise UsageError(f"{name} must be a whole number of pixels, got {value!r}")
    if value <= 0:
        raise UsageError(f"{name} must be positive, got {value}")
    if value > MAX_SIDE:
        raise UsageError(f"{name} {value} is too large; the most sdxs-rt accepts is {MAX_SIDE}")
    if value % SIZE_STEP:
        options = " or ".join(str(v) for v in nearest_sizes(value))
        raise UsageError(
            f"{name} {value} is not a multiple of {SIZE_STEP}; nearest valid: {options}"
        )


def check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps <= 0:
        raise UsageError(f"steps must be a positive whole number, got {steps!r}")


def check_guidance(scale: float) -> None:
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise UsageError(f"guidance scale must be a finite number >= 0, got {scale!r}")


def check_seed(seed: int | None, count: int) -> None:
    if seed is None:
        return
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise UsageError(f"seed must be a whole number >= 0 (or -1 for random), got {seed!r}")
    if seed + max(count, 1) - 1 > MAX_SEED:
        raise UsageError(f"seed {seed} is too large; the most is {MAX_SEED}")


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise UsageError(f"{name} must be a positive whole number, got {value!r}")
