"""Noise schedules as pure numpy functions: betas, alphas_cumprod, timesteps and sigmas.

Everything here reproduces diffusers' schedulers (checked against 0.39) value for value.
diffusers keeps betas, alphas_cumprod and sigmas in float32; we compute in float64 and round
to float32 at the same points, so that timesteps, betas and alphas_cumprod agree bit for bit.
Sigmas can still differ by one float32 ulp where torch's float32 `sqrt` (not correctly
rounded) rounds the other way. No torch here: the core must run without it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from sdxs_rt.errors import ModelFormatError, UsageError

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "linspace", "trailing")
# DDPM's "fixed_small_log" takes exp(log(var) / 2): the same standard deviation as "fixed_small".
VARIANCE_TYPES = (None, "fixed_small", "fixed_small_log")

# Sigma-based schedulers replace a zero final alphas_cumprod (zero terminal SNR) by this value
# so that sigma_max stays finite (about 4096), as diffusers does.
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24


@dataclass(frozen=True)
class SchedulerConfig:
    """The parts of a diffusers `scheduler_config.json` that the samplers use.

    Defaults are those of diffusers' `DDPMScheduler`.
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    rescale_betas_zero_snr: bool = False
    variance_type: str | None = "fixed_small"
    thresholding: bool = False
    # Not a DDPM key: DDIM/PNDM configs may set it; False ends DDIM at alphas_cumprod[0].
    set_alpha_to_one: bool = True

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> SchedulerConfig:
        """Parse a scheduler config dict; keys this runtime does not use are ignored."""
        parsed = {
            name: parse(name, config[name]) for name, parse in _PARSERS.items() if name in config
        }
        result = cls(**parsed)
        _check_supported(result)
        return result


def _choice(allowed: tuple[Any, ...]) -> Callable[[str, Any], Any]:
    def parse(name: str, value: Any) -> Any:
        if value not in allowed:
            shown = ", ".join(repr(v) for v in allowed)
            raise ModelFormatError(
                f"scheduler config has {name}={value!r}, which sdxs-rt does not support "
                f"(supported: {shown})."
            )
        return value

    return parse


def _expected(name: str, value: Any, what: str) -> ModelFormatError:
    return ModelFormatError(f"scheduler config has {name}={value!r}; expected {what}.")


def _is_number(value: Any) -> bool:
    finite = isinstance(value, (int, float)) and math.isfinite(value)
    return finite and not isinstance(value, bool)


def _number(name: str, value: Any) -> float:
    if not _is_number(value):
        raise _expected(name, value, "a number")
    return float(value)


def _integer(name: str, value: Any) -> int:
    if not _is_number(value) or int(value) != value:
        raise _expected(name, value, "an integer")
    return int(value)


def _boolean(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _expected(name, value, "true or false")
    return value


def _betas_list(name: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        raise _expected(name, value, "a list of numbers")
    return tuple(_number(name, v) for v in value)


_PARSERS: dict[str, Callable[[str, Any], Any]] = {
    "num_train_timesteps": _integer,
    "beta_start": _number,
    "beta_end": _number,
    "beta_schedule": _choice(BETA_SCHEDULES),
    "trained_betas": _betas_list,
    "prediction_type": _choice(PREDICTION_TYPES),
    "timestep_spacing": _choice(TIMESTEP_SPACINGS),
    "steps_offset": _integer,
    "clip_sample": _boolean,
    "clip_sample_range": _number,
    "rescale_betas_zero_snr": _boolean,
    "variance_type": _choice(VARIANCE_TYPES),
    "thresholding": _choice((False,)),
    "set_alpha_to_one": _boolean,
}


def _check_supported(config: SchedulerConfig) -> None:
    if config.num_train_timesteps < 2:
        raise ModelFormatError(
            f"scheduler config has num_train_timesteps={config.num_train_timesteps}; "
            "expected at least 2."
        )
    betas = config.trained_betas
    if betas is not None and len(betas) != config.num_train_timesteps:
        raise ModelFormatError(
            f"scheduler config has {len(betas)} trained_betas for "
            f"num_train_timesteps={config.num_train_timesteps}; the two must agree."
        )


# --- betas and alphas_cumprod ------------------------------------------------------------


def torch_linspace_float32(start: float, end: float, steps: int) -> FloatArray:
    """`torch.linspace(start, end, steps, dtype=torch.float32)`, value for value.

    torch computes a float32 step, then `start + step * i` (first half) and
    `end - step * (steps - 1 - i)` (second half) with fused multiply-adds; the float64 sum of
    float32 products is exact before the single rounding, which reproduces that.
    """
    if steps == 1:
        return np.array([np.float32(start)], dtype=np.float64)
    first, last = np.float32(start), np.float32(end)
    step = np.float64((last - first) / np.float32(steps - 1))
    index = np.arange(steps)
    from_start = np.float64(first) + step * index
    from_end = np.float64(last) - step * (steps - 1 - index)
    values = np.where(index < steps // 2, from_start, from_end)
    return values.astype(np.float32).astype(np.float64)


def _cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> FloatArray:
    """Betas of "squaredcos_cap_v2" (improved DDPM's cosine alpha_bar), in float64."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    steps = num_train_timesteps
    betas = [
        min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), max_beta) for i in range(steps)
    ]
    return np.array(betas, dtype=np.float64)


def _raw_betas(config: SchedulerConfig) -> FloatArray:
    steps = config.num_train_timesteps
    if config.trained_betas is not None:
        return np.array(config.trained_betas, dtype=np.float64)
    if config.beta_schedule == "linear":
        return torch_linspace_float32(config.beta_start, config.beta_end, steps)
    if config.beta_schedule == "scaled_linear":
        roots = torch_linspace_float32(config.beta_start**0.5, config.beta_end**0.5, steps)
        return _float32(roots * roots)
    return _cosine_betas(steps)


def rescale_zero_terminal_snr(betas: FloatArray) -> FloatArray:
    """Shift and scale sqrt(alphas_cumprod) so that the last one is exactly 0 (arXiv 2305.08891).

    Done in float32 like diffusers: the tail subtracts nearly equal numbers, and float64 would
    move the last alphas_cumprod by up to 4e-5 (relative) away from the values models were
    trained with.
    """
    alphas = np.float32(1) - betas.astype(np.float32)
    sqrt_cumprod = np.sqrt(_cumprod(alphas).astype(np.float32))
    first, last = sqrt_cumprod[0], sqrt_cumprod[-1]
    sqrt_cumprod = (sqrt_cumprod - last) * (first / (first - last))
    cumprod = sqrt_cumprod * sqrt_cumprod
    alphas = np.concatenate([cumprod[:1], cumprod[1:] / cumprod[:-1]])
    return (np.float32(1) - alphas).astype(np.float64)


def betas(config: SchedulerConfig) -> FloatArray:
    """The training betas, rounded to float32 as diffusers stores them."""
    raw = _float32(_raw_betas(config))
    return _float32(rescale_zero_terminal_snr(raw)) if config.rescale_betas_zero_snr else raw


def alphas_cumprod(config: SchedulerConfig) -> FloatArray:
    """Cumulative products of (1 - beta); the last is exactly 0 with rescale_betas_zero_snr."""
    return _float32(_cumprod(_float32(1.0 - betas(config))))


def sigma_alphas_cumprod(config: SchedulerConfig) -> FloatArray:
    """alphas_cumprod as the sigma-based schedulers (Euler, DPM-Solver) see it."""
    cumprod = alphas_cumprod(config)
    if config.rescale_betas_zero_snr:
        cumprod = cumprod.copy()
        cumprod[-1] = ZERO_SNR_ALPHA_CUMPROD
    return cumprod


def sigmas_from_alphas_cumprod(cumprod: FloatArray) -> FloatArray:
    """sigma = sqrt((1 - a) / a), the noise-to-signal ratio of each training timestep."""
    return _float32(np.sqrt((1.0 - cumprod) / cumprod))


def _cumprod(values: npt.NDArray[np.floating[Any]]) -> FloatArray:
    # torch's CPU cumprod accumulates float32 inputs in float64, exactly like this.
    return np.cumprod(values, dtype=np.float64)


def _float32(values: FloatArray) -> FloatArray:
    return values.astype(np.float32).astype(np.float64)


# --- timesteps ---------------------------------------------------------------------------


def _check_step_count(config: SchedulerConfig, num_inference_steps: int) -> None:
    if num_inference_steps > config.num_train_timesteps:
        raise UsageError(
            f"{num_inference_steps} steps is more than the {config.num_train_timesteps} "
            "timesteps the model was trained with."
        )


def spaced_timesteps(config: SchedulerConfig, count: int, *, rounded: bool = True) -> FloatArray:
    """`count` descending timesteps spread over the training range per `timestep_spacing`.

    "linspace" includes both ends; "leading" starts at 0 (plus steps_offset) with an integer
    stride; "trailing" ends at num_train_timesteps - 1. Euler keeps linspace unrounded.
    """
    train = config.num_train_timesteps
    if config.timestep_spacing == "linspace":
        grid = np.linspace(0, train - 1, count, dtype=np.float64)[::-1]
        return grid.round() if rounded else grid
    if config.timestep_spacing == "leading":
        leading = np.arange(count, dtype=np.float64) * (train // count)
        return leading[::-1] + float(config.steps_offset)
    # np.arange sometimes yields one extra, near-zero entry (e.g. 61 steps of 1000); diffusers
    # then runs an extra step at timestep -1. Keep exactly `count`.
    trailing = np.round(np.arange(train, 0, -train / count))[:count]
    return np.asarray(trailing - 1.0, dtype=np.float64)


def _checked(config: SchedulerConfig, timesteps: FloatArray) -> FloatArray:
    in_range = timesteps.min() >= 0 and timesteps.max() <= config.num_train_timesteps - 1
    if not in_range or np.any(np.diff(timesteps) >= 0):
        raise UsageError(
            f"{len(timesteps)} steps is too many for timestep_spacing="
            f"{config.timestep_spacing!r} with steps_offset={config.steps_offset}; use fewer steps."
        )
    return timesteps


def ddpm_timesteps(config: SchedulerConfig, num_inference_steps: int) -> IntArray:
    """Integer timesteps of DDPMScheduler and DDIMScheduler."""
    _check_step_count(config, num_inference_steps)
    return _checked(config, spaced_timesteps(config, num_inference_steps)).astype(np.int64)


def euler_timesteps(config: SchedulerConfig, num_inference_steps: int) -> FloatArray:
    """float32 timesteps of the Euler schedulers ("linspace" ones are fractional)."""
    _check_step_count(config, num_inference_steps)
    grid = spaced_timesteps(config, num_inference_steps, rounded=False)
    return _checked(config, _float32(grid))


def dpm_timesteps(config: SchedulerConfig, num_inference_steps: int) -> IntArray:
    """Integer timesteps of DPMSolverMultistepScheduler.

    "linspace" and "leading" spread num_inference_steps + 1 points and drop the last one
    (the model is never evaluated at the clean end).
    """
    _check_step_count(config, num_inference_steps)
    if config.timestep_spacing == "trailing":
        grid = spaced_timesteps(config, num_inference_steps)
    else:
        grid = spaced_timesteps(config, num_inference_steps + 1)[:-1]
    return _checked(config, grid).astype(np.int64)


# --- sigmas ------------------------------------------------------------------------------


def interpolated_sigmas(config: SchedulerConfig, timesteps: npt.NDArray[Any]) -> FloatArray:
    """Sigmas at (possibly fractional) timesteps by linear interpolation, then a final 0."""
    train_sigmas = sigmas_from_alphas_cumprod(sigma_alphas_cumprod(config))
    sigmas = np.interp(timesteps, np.arange(len(train_sigmas)), train_sigmas)
    return _float32(np.append(sigmas, 0.0))


def karras_sigmas(sigma_min: float, sigma_max: float, count: int, rho: float = 7.0) -> FloatArray:
    """The Karras et al. (2022) schedule: evenly spaced in sigma ** (1 / rho), descending."""
    ramp = np.linspace(0, 1, count)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sigma_to_timestep(sigmas: FloatArray, train_sigmas: FloatArray) -> FloatArray:
    """Fractional training timesteps of `sigmas`, interpolating linearly in log(sigma)."""
    log_train = np.log(train_sigmas.astype(np.float32))  # diffusers takes the log in float32
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma[np.newaxis, :] - log_train[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=len(log_train) - 2)
    low_log, high_log = log_train[low], log_train[low + 1]
    weight = np.clip((low_log - log_sigma) / (low_log - high_log), 0, 1)
    return np.asarray((1 - weight) * low + weight * (low + 1), dtype=np.float64)


def dpm_karras_schedule(
    config: SchedulerConfig, num_inference_steps: int
) -> tuple[FloatArray, IntArray]:
    """(sigmas with a final 0, timesteps) of DPMSolverMultistep with use_karras_sigmas."""
    _check_step_count(config, num_inference_steps)
    train_sigmas = sigmas_from_alphas_cumprod(sigma_alphas_cumprod(config))
    sigmas = karras_sigmas(train_sigmas[0], train_sigmas[-1], num_inference_steps)
    fractional = sigma_to_timestep(sigmas, train_sigmas)
    # diffusers rounds, except for the cosine schedule, whose timesteps its int64 cast truncates.
    cosine = config.beta_schedule == "squaredcos_cap_v2"
    timesteps = np.trunc(fractional) if cosine else fractional.round()
    return _float32(np.append(sigmas, 0.0)), timesteps.astype(np.int64)
