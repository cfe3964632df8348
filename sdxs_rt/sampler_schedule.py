"""A sampler's schedule as a value: the timesteps (and sigmas) it runs, sliceable.

`build_schedule(name, config, steps)` makes the full schedule of `steps` inference steps, as
diffusers' `set_timesteps` does. `from_step(k)` drops the first k steps (img2img, resuming);
`for_strength(s)` keeps the last `int(steps * s)`, diffusers' img2img rule. The schedule also
knows how its scheduler puts noise on a clean sample (`noised`, diffusers' `add_noise`) and how
pure noise enters at the first step (`start_latents`, `init_noise_sigma`). Host floats only: no
arrays of the backend are made here, so this stays torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

from sdxs_rt import schedules
from sdxs_rt.components import Array
from sdxs_rt.errors import UsageError
from sdxs_rt.image_inputs import steps_kept
from sdxs_rt.scheduler_table import SCHEDULER_NAMES
from sdxs_rt.schedules import FloatArray, SchedulerConfig

F32 = np.float32

# How each sampler's state x relates to a clean sample x0 and unit noise n at a step:
#   "alphas_cumprod": x = sqrt(a_t) x0 + sqrt(1 - a_t) n  (DDPM, DDIM: integer timesteps)
#   "sigma":          x = x0 + sigma n                    (Euler: the unscaled variable)
#   "alpha_sigma":    x = (x0 + sigma n) / sqrt(sigma^2 + 1)  (DPM-Solver: variance preserving)
NOISE_FORMS = {
    "ddpm": "alphas_cumprod",
    "ddim": "alphas_cumprod",
    "euler": "sigma",
    "euler_a": "sigma",
    "dpmpp_2m": "alpha_sigma",
    "dpmpp_2m_karras": "alpha_sigma",
}


@dataclass(frozen=True)
class SamplerSchedule:
    """The steps one sampler runs; `timesteps[i]` goes to the model at step i.

    `sigmas` (sigma samplers only) has one more entry than `timesteps`: the level after the last
    step. `total_steps` is the length of the full schedule before slicing (DDIM steps back by
    num_train_timesteps // total_steps); `start` is the index of `timesteps[0]` in it.
    """

    scheduler: str
    config: SchedulerConfig
    timesteps: npt.NDArray[np.float64] | npt.NDArray[np.int64]
    sigmas: FloatArray | None
    total_steps: int
    start: int = 0

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def noise_form(self) -> str:
        return NOISE_FORMS[self.scheduler]

    def from_step(self, k: int) -> SamplerSchedule:
        """The same schedule without its first k steps (diffusers' `set_begin_index`)."""
        if not 0 <= k < len(self):
            raise UsageError(f"cannot start at step {k} of a {len(self)}-step schedule")
        sigmas = None if self.sigmas is None else self.sigmas[k:]
        return replace(self, timesteps=self.timesteps[k:], sigmas=sigmas, start=self.start + k)

    def for_strength(self, strength: float) -> SamplerSchedule:
        """The last int(steps * strength) steps: diffusers' img2img `get_timesteps`."""
        # One rule and one message for it: image_inputs.steps_kept (the CLI checks it early).
        kept = steps_kept(self.total_steps, strength)
        return self.from_step(self.total_steps - kept)

    def timestep_of(self, step: int) -> float:
        return float(self.timesteps[step])

    def noise_scales(self, step: int) -> tuple[float, float]:
        """(a, b) with x = a * x0 + b * n at the input of `step`; step == len(self): the end."""
        if step == len(self):
            return 1.0, 0.0
        if self.noise_form == "alphas_cumprod":
            a_t = F32(schedules.alphas_cumprod(self.config)[int(self.timesteps[step])])
            return float(np.sqrt(a_t)), float(np.sqrt(F32(1) - a_t))
        assert self.sigmas is not None
        sigma = F32(self.sigmas[step])
        if self.noise_form == "sigma":
            return 1.0, float(sigma)
        alpha = F32(1) / np.sqrt(sigma * sigma + F32(1))
        return float(alpha), float(sigma * alpha)

    def noised(self, clean: Array, noise: Array, step: int = 0) -> Array:
        """`clean` noised to the level at the input of `step` (diffusers' `add_noise`)."""
        a, b = self.noise_scales(step)
        return clean * a + noise * b if b else clean * a

    def start_latents(self, noise: Array) -> Array:
        """Unit noise scaled to the first step's level, as a text-to-image run starts."""
        if self.noise_form != "sigma":
            return noise
        assert self.sigmas is not None
        return noise * _init_noise_sigma(self.config, self.sigmas)


def _init_noise_sigma(config: SchedulerConfig, sigmas: FloatArray) -> float:
    # diffusers' Euler `init_noise_sigma`: sigma_max, or sqrt(sigma_max^2 + 1) for "leading".
    sigma_max = F32(sigmas.max())
    if config.timestep_spacing == "leading":
        return float(np.sqrt(sigma_max * sigma_max + F32(1)))
    return float(sigma_max)


def build_schedule(name: str, config: SchedulerConfig, steps: int) -> SamplerSchedule:
    """The full schedule of sampler `name` for `steps` inference steps."""
    if name not in NOISE_FORMS:
        raise UsageError(
            f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULER_NAMES)}."
        )
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise UsageError(f"steps must be a whole number, not {steps!r}.")
    if steps <= 0:
        raise UsageError(f"steps must be at least 1, not {steps}.")
    steps = int(steps)
    if name in ("ddpm", "ddim"):
        timesteps = schedules.ddpm_timesteps(config, steps)
        return SamplerSchedule(name, config, timesteps, None, steps)
    if name in ("euler", "euler_a"):
        fractional = schedules.euler_timesteps(config, steps)
        sigmas = schedules.interpolated_sigmas(config, fractional)
        return SamplerSchedule(name, config, fractional, sigmas, steps)
    if name == "dpmpp_2m":
        timesteps = schedules.dpm_timesteps(config, steps)
        sigmas = schedules.interpolated_sigmas(config, timesteps)
        return SamplerSchedule(name, config, timesteps, sigmas, steps)
    sigmas, timesteps = schedules.dpm_karras_schedule(config, steps)
    return SamplerSchedule(name, config, timesteps, sigmas, steps)
