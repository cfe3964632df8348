"""Samplers: one short generator per method, reproducing diffusers' schedulers step by step.

Each sampler follows k-diffusion's shape (`sample_euler(model, x, sigmas, ...)`): it calls the
(already guided) model once per step and yields a `SamplerStep`. Per-step coefficients are
Python floats computed on the host; arrays only see `+ - *`, division by a float and
`ops.clip`, so the same code runs on numpy arrays and torch tensors. No torch import here.

Noise contract: `noise()` is called exactly once for each step that adds noise, in step order,
and never for a step that adds none (DDPM: every step but the last; Euler a: every step but the
last, whose sigma_up is 0). diffusers also draws (and scales to ~0) noise on those last steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from sdxs_rt import schedules
from sdxs_rt.components import Array, ArrayOps
from sdxs_rt.sampler_schedule import SamplerSchedule
from sdxs_rt.schedules import FloatArray, IntArray, SchedulerConfig

ModelFn = Callable[[Array, float], Array]  # (model input, timestep) -> raw model output
NoiseFn = Callable[[], Array]  # the next standard-normal array shaped like the latents
# Called with (step index, x after the step); returns the x the next step starts from.
# Inpainting blends the known region back in here; plain sampling passes x through.
StepHook = Callable[[int, Array], Array]


@dataclass(frozen=True)
class SamplerStep:
    index: int  # 0-based step index
    timestep: float  # the timestep value that was passed to the model at this step
    latents: Array  # x after this step (backend array)
    denoised: Array  # the x0 prediction at this step (for previews)


def _unchanged(index: int, x: Array) -> Array:
    return x


def sample(
    schedule: SamplerSchedule,
    model: ModelFn,
    x: Array,
    noise: NoiseFn,
    ops: ArrayOps,
    after_step: StepHook = _unchanged,
) -> Iterator[SamplerStep]:
    """Run `schedule` from `x` (already at its first step's level), yielding after every step.

    Start from `schedule.start_latents(n)` for text to image, from `schedule.noised(z, n)` for
    image to image. Step indices count from 0 within the schedule, whatever its `start`.
    """
    run = _Run(schedule, model, noise, ops, after_step)
    return _SAMPLERS[schedule.scheduler](run, x)


# --- scalar arithmetic ------------------------------------------------------------------
# diffusers computes every per-step coefficient from float32 0-d tensors. We follow the same
# float32 operations in the same order (np.float32 scalars), then hand the arrays exact
# Python floats. Float64 coefficients drift further from diffusers (40 DDPM steps: 1.4e-5
# instead of 5e-6).

F32 = np.float32


def _sqrt(value: np.float32) -> np.float32:
    return np.sqrt(F32(value))


# --- prediction types: the one place that knows epsilon, v and sample ---------------------


@dataclass(frozen=True)
class NoiseLevel:
    """The sample at this step is `x = alpha * x0 + sigma * eps`.

    norm_sq = alpha^2 + sigma^2 is 1 for the variance-preserving samplers (DDPM, DDIM,
    DPM-Solver) and sigma^2 + 1 for the Euler ones, whose x is the model input times norm.
    """

    alpha: float
    sigma: float
    norm: float = 1.0
    norm_sq: float = 1.0


def predicted_x0(output: Array, x: Array, level: NoiseLevel, prediction_type: str) -> Array:
    """The clean-sample estimate from the raw model output."""
    if prediction_type == "epsilon":
        return _divide(x - output * level.sigma, level.alpha)
    if prediction_type == "v_prediction":
        # v = alpha * eps - sigma * x0 for the unit-norm pair (alpha, sigma) / norm.
        sigma_over_norm = float(F32(level.sigma) / F32(level.norm))
        return _scale(_divide(x, level.norm_sq), level.alpha) - output * sigma_over_norm
    return output


def predicted_eps(output: Array, x: Array, level: NoiseLevel, prediction_type: str) -> Array:
    """The noise estimate from the raw model output."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        alpha_over_norm = float(F32(level.alpha) / F32(level.norm))
        return _scale(output, alpha_over_norm) + _scale(_divide(x, level.norm_sq), level.sigma)
    return _divide(x - output * level.alpha, level.sigma)


def _scale(array: Array, factor: float) -> Array:
    return array if factor == 1.0 else array * factor


def _divide(numerator: Array, denominator: float) -> Array:
    if denominator == 1.0:
        return numerator
    # With zero terminal SNR, alpha is 0 at t = 999: diffusers divides anyway (inf, which
    # clip_sample then clips), and so do we.
    with np.errstate(divide="ignore", invalid="ignore"):
        return numerator / denominator


def _clip_x0(x0: Array, config: SchedulerConfig, ops: ArrayOps) -> Array:
    if not config.clip_sample:
        return x0
    return ops.clip(x0, -config.clip_sample_range, config.clip_sample_range)


# --- DDPM and DDIM: variance preserving, integer timesteps --------------------------------


def _vp_level(alpha_cumprod: np.float32) -> NoiseLevel:
    return NoiseLevel(float(_sqrt(alpha_cumprod)), float(_sqrt(1 - alpha_cumprod)))


def _cumprod_at(cumprod: FloatArray, timestep: int, final: float = 1.0) -> np.float32:
    # Before the first training timestep the sample is clean, unless DDIM's set_alpha_to_one
    # is False, which takes alphas_cumprod[0] instead.
    return F32(cumprod[timestep]) if timestep >= 0 else F32(final)


def sample_ddpm(
    model: ModelFn,
    x: Array,
    timesteps: IntArray,
    cumprod: FloatArray,
    config: SchedulerConfig,
    noise: NoiseFn,
    ops: ArrayOps,
    after_step: StepHook = _unchanged,
) -> Iterator[SamplerStep]:
    """Ancestral DDPM (DDPMScheduler with variance_type "fixed_small")."""
    previous = [*timesteps[1:].tolist(), -1]
    for index, (t, t_prev) in enumerate(zip(timesteps.tolist(), previous, strict=True)):
        a_t, a_prev = _cumprod_at(cumprod, t), _cumprod_at(cumprod, t_prev)
        output = model(x, float(t))
        x0 = predicted_x0(output, x, _vp_level(a_t), config.prediction_type)
        x0 = _clip_x0(x0, config, ops)
        x0_coeff, x_coeff, std = _ddpm_posterior(a_t, a_prev)
        x = x0 * x0_coeff + x * x_coeff
        if t_prev >= 0:
            x = x + noise() * std
        x = after_step(index, x)
        yield SamplerStep(index, float(t), x, x0)


def _ddpm_posterior(a_t: np.float32, a_prev: np.float32) -> tuple[float, float, float]:
    """Mean coefficients (for x0 and x_t) and standard deviation of q(x_prev | x_t, x0)."""
    alpha_t = a_t / a_prev
    beta_t = 1 - alpha_t
    x0_coeff = _sqrt(a_prev) * beta_t / (1 - a_t)
    x_coeff = _sqrt(alpha_t) * (1 - a_prev) / (1 - a_t)
    variance = max((1 - a_prev) / (1 - a_t) * beta_t, F32(1e-20))
    return float(x0_coeff), float(x_coeff), float(_sqrt(variance))


def sample_ddim(
    model: ModelFn,
    x: Array,
    timesteps: IntArray,
    cumprod: FloatArray,
    config: SchedulerConfig,
    ops: ArrayOps,
    total_steps: int,
    after_step: StepHook = _unchanged,
) -> Iterator[SamplerStep]:
    """Deterministic DDIM (DDIMScheduler, eta = 0)."""
    # diffusers steps back by a fixed stride of the full schedule, not to the next timestep in
    # the list (they differ for "linspace" and "trailing" spacing, and for a sliced schedule).
    stride = config.num_train_timesteps // total_steps
    final = 1.0 if config.set_alpha_to_one else float(cumprod[0])
    for index, t in enumerate(timesteps.tolist()):
        level = _vp_level(_cumprod_at(cumprod, t))
        a_prev = _cumprod_at(cumprod, t - stride, final)
        output = model(x, float(t))
        eps = predicted_eps(output, x, level, config.prediction_type)
        x0 = _clip_x0(predicted_x0(output, x, level, config.prediction_type), config, ops)
        x = x0 * float(_sqrt(a_prev)) + eps * float(_sqrt(1 - a_prev))
        x = after_step(index, x)
        yield SamplerStep(index, float(t), x, x0)


# --- Euler and Euler ancestral: x = x0 + sigma * eps -------------------------------------


def _ve_level(sigma: np.float32) -> NoiseLevel:
    norm_sq = sigma * sigma + 1
    return NoiseLevel(1.0, float(sigma), float(_sqrt(norm_sq)), float(norm_sq))


def _euler_denoise(
    model: ModelFn, x: Array, sigma: np.float32, timestep: float, prediction_type: str
) -> Array:
    level = _ve_level(sigma)
    output = model(x / level.norm, timestep)
    return predicted_x0(output, x, level, prediction_type)


def sample_euler(
    model: ModelFn,
    x: Array,
    sigmas: FloatArray,
    timesteps: FloatArray,
    prediction_type: str,
    after_step: StepHook = _unchanged,
) -> Iterator[SamplerStep]:
    """Euler's method on the probability-flow ODE (EulerDiscreteScheduler)."""
    for index, t in enumerate(timesteps.tolist()):
        sigma, sigma_next = F32(sigmas[index]), F32(sigmas[index + 1])
        x0 = _euler_denoise(model, x, sigma, t, prediction_type)
        derivative = (x - x0) / float(sigma)
        x = after_step(index, x + derivative * float(sigma_next - sigma))
        yield SamplerStep(index, t, x, x0)


def ancestral_split(sigma: np.float32, sigma_next: np.float32) -> tuple[np.float32, np.float32]:
    """(sigma_down, sigma_up): a deterministic step to sigma_down, then fresh noise of sigma_up."""
    next_sq = sigma_next * sigma_next
    sigma_up = _sqrt(next_sq * (sigma * sigma - next_sq) / (sigma * sigma))
    # float32 can round the difference below 0 when sigma >> sigma_next (diffusers: NaN).
    return _sqrt(max(next_sq - sigma_up * sigma_up, F32(0))), sigma_up


def sample_euler_ancestral(
    model: ModelFn,
    x: Array,
    sigmas: FloatArray,
    timesteps: FloatArray,
    prediction_type: str,
    noise: NoiseFn,
    after_step: StepHook = _unchanged,
) -> Iterator[SamplerStep]:
    """Euler ancestral (EulerAncestralDiscreteScheduler)."""
    for index, t in enumerate(timesteps.tolist()):
        sigma, sigma_next = F32(sigmas[index]), F32(sigmas[index + 1])
        x0 = _euler_denoise(model, x, sigma, t, prediction_type)
        sigma_down, sigma_up = ancestral_split(sigma, sigma_next)
        derivative = (x - x0) / float(sigma)
        x = x + derivative * float(sigma_down - sigma)
        if sigma_up > 0:
            x = x + noise() * float(sigma_up)
        x = after_step(index, x)
        yield SamplerStep(index, t, x, x0)


# --- DPM-Solver++ 2M: variance preserving, in log-SNR time --------------------------------


def _dpm_level(sigma: np.float32) -> NoiseLevel:
    alpha = 1 / _sqrt(sigma * sigma + 1)
    return NoiseLevel(float(alpha), float(sigma * alpha))


def _log_snr(level: NoiseLevel) -> np.float32:
    return np.log(F32(level.alpha)) - np.log(F32(level.sigma))


def sample_dpmpp_2m(
    model: ModelFn,
    x: Array,
    sigmas: FloatArray,
    timesteps: IntArray,
    prediction_type: str,
    after_step: StepHook = _unchanged,
) -> Iterator[SamplerStep]:
    """DPM-Solver++(2M) (DPMSolverMultistepScheduler, solver_order 2, midpoint, final sigma 0).

    The first step is first order (no history yet); the last goes straight to x0.
    """
    previous: tuple[Array, np.float32] | None = None  # (x0, step size h) of the previous step
    for index, t in enumerate(timesteps.tolist()):
        level = _dpm_level(F32(sigmas[index]))
        x0 = predicted_x0(model(x, float(t)), x, level, prediction_type)
        sigma_next = F32(sigmas[index + 1])
        if sigma_next == 0:
            # The limit of the update as sigma -> 0 (diffusers' lower_order_final step).
            x, previous = x0, None
        else:
            x, previous = _dpm_update(x, x0, level, _dpm_level(sigma_next), previous)
        x = after_step(index, x)
        yield SamplerStep(index, float(t), x, x0)


def _dpm_update(
    x: Array,
    x0: Array,
    level: NoiseLevel,
    level_next: NoiseLevel,
    previous: tuple[Array, np.float32] | None,
) -> tuple[Array, tuple[Array, np.float32]]:
    h = _log_snr(level_next) - _log_snr(level)
    x0_coeff = F32(level_next.alpha) * (np.exp(-h) - 1)
    x = x * float(F32(level_next.sigma) / F32(level.sigma)) - x0 * float(x0_coeff)
    if previous is not None:
        # Second order: a finite-difference correction from the previous x0 estimate.
        previous_x0, previous_h = previous
        slope = (x0 - previous_x0) * float(1 / (previous_h / h))
        x = x - slope * float(F32(0.5) * x0_coeff)
    return x, (x0, h)


# --- dispatch: one adapter per sampler from the schedule value ---------------------------


@dataclass(frozen=True)
class _Run:
    schedule: SamplerSchedule
    model: ModelFn
    noise: NoiseFn
    ops: ArrayOps
    after_step: StepHook


def _ddpm(r: _Run, x: Array) -> Iterator[SamplerStep]:
    s = r.schedule
    cumprod = schedules.alphas_cumprod(s.config)
    timesteps = s.timesteps.astype(np.int64)
    return sample_ddpm(r.model, x, timesteps, cumprod, s.config, r.noise, r.ops, r.after_step)


def _ddim(r: _Run, x: Array) -> Iterator[SamplerStep]:
    s = r.schedule
    cumprod = schedules.alphas_cumprod(s.config)
    timesteps = s.timesteps.astype(np.int64)
    return sample_ddim(r.model, x, timesteps, cumprod, s.config, r.ops, s.total_steps, r.after_step)


def _sigmas(schedule: SamplerSchedule) -> FloatArray:
    assert schedule.sigmas is not None, schedule.scheduler
    return schedule.sigmas


def _euler(r: _Run, x: Array) -> Iterator[SamplerStep]:
    s = r.schedule
    prediction = s.config.prediction_type
    timesteps = s.timesteps.astype(np.float64)
    return sample_euler(r.model, x, _sigmas(s), timesteps, prediction, r.after_step)


def _euler_a(r: _Run, x: Array) -> Iterator[SamplerStep]:
    s = r.schedule
    prediction = s.config.prediction_type
    timesteps = s.timesteps.astype(np.float64)
    return sample_euler_ancestral(
        r.model, x, _sigmas(s), timesteps, prediction, r.noise, r.after_step
    )


def _dpmpp_2m(r: _Run, x: Array) -> Iterator[SamplerStep]:
    s = r.schedule
    timesteps = s.timesteps.astype(np.int64)
    prediction = s.config.prediction_type
    return sample_dpmpp_2m(r.model, x, _sigmas(s), timesteps, prediction, r.after_step)


_SAMPLERS: dict[str, Callable[[_Run, Array], Iterator[SamplerStep]]] = {
    "ddpm": _ddpm,
    "ddim": _ddim,
    "euler": _euler,
    "euler_a": _euler_a,
    "dpmpp_2m": _dpmpp_2m,
    "dpmpp_2m_karras": _dpmpp_2m,
}
