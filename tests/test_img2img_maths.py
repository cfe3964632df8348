"""Image to image and blended inpainting follow diffusers' maths, sampler by sampler.

diffusers' img2img pipelines keep the last `int(steps * strength)` timesteps
(`get_timesteps`), tell the scheduler where they start (`set_begin_index`), noise the clean
latents to the first kept timestep (`add_noise`) and run the usual loop. Its legacy inpainting
(a 4-channel U-Net) does the same and, after every step but the last, puts the known region
back noised to the next timestep with the same initial noise. Each case here runs that loop
next to ours (`build_schedule(...).for_strength`, `noised`, `sample(after_step=...)`) with the
same fake model and the same noise, and compares every step (tolerance as in test_samplers).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from sdxs_rt.array_ops import NumpyOps
from sdxs_rt.errors import UsageError
from sdxs_rt.sampler_schedule import build_schedule
from sdxs_rt.samplers import sample
from sdxs_rt.scheduler_table import SCHEDULER_NAMES
from sdxs_rt.schedules import SchedulerConfig
from tests.test_samplers import (
    NOISE_MODULES,
    SHAPE,
    TOLERANCE,
    Case,
    TorchOps,
    _fixed_pattern,
    _noise_sequence,
    _SequenceNoise,
    diffusers_scheduler,
    fake_model,
)

torch = pytest.importorskip("torch")

STRENGTHS = (0.3, 0.55, 1.0)
SPACINGS = (("leading", 1), ("trailing", 0), ("linspace", 0))


def _clean_latents() -> np.ndarray:
    return np.random.default_rng(5).standard_normal(SHAPE).astype(np.float32) * 0.8


def _mask() -> np.ndarray:
    mask = np.zeros((1, 1, *SHAPE[2:]), dtype=np.float32)
    mask[..., 2:6, 3:7] = 1.0
    mask[..., 2, 3] = 0.5  # a feathered cell
    return mask


def run_diffusers(
    case: Case, strength: float, clean: np.ndarray, mask: np.ndarray | None
) -> list[np.ndarray]:
    """diffusers' img2img / legacy-inpaint loop; randn_tensor must be patched."""
    scheduler = diffusers_scheduler(case)
    init_timestep = min(int(case.steps * strength), case.steps)
    t_start = max(case.steps - init_timestep, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order :]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    original = torch.from_numpy(clean)
    first_noise = torch.from_numpy(_noise_sequence(case.steps)[0])
    x = scheduler.add_noise(original, first_noise, timesteps[:1])
    pattern = torch.from_numpy(_fixed_pattern())
    latents = []
    for i, t in enumerate(timesteps):
        output = fake_model(scheduler.scale_model_input(x, t), float(t), pattern)
        x = scheduler.step(output, t, x).prev_sample
        if mask is not None:
            known = original
            if i < len(timesteps) - 1:
                known = scheduler.add_noise(original, first_noise, timesteps[i + 1 : i + 2])
            x = (1 - torch.from_numpy(mask)) * known + torch.from_numpy(mask) * x
        latents.append(x.numpy().copy())
    return latents


def run_ours(
    case: Case, strength: float, clean: np.ndarray, mask: np.ndarray | None, ops: Any
) -> list[np.ndarray]:
    noises = _noise_sequence(case.steps)
    draws = iter(noises)
    first = ops.from_host(next(draws))  # the contract: the first draw noises the init latents
    config = SchedulerConfig.from_dict(case.config_dict())
    schedule = build_schedule(case.sampler, config, case.steps).for_strength(strength)
    init = ops.from_host(clean)
    pattern = ops.from_host(_fixed_pattern())

    def blend(index: int, x: Any) -> Any:
        if mask is None:
            return x
        known = schedule.noised(init, first, index + 1)
        weight = ops.from_host(mask)
        return known * (1 - weight) + x * weight

    steps = sample(
        schedule,
        lambda x_in, t: fake_model(x_in, t, pattern),
        schedule.noised(init, first),
        lambda: ops.from_host(next(draws)),
        ops,
        blend,
    )
    return [ops.to_host(step.latents) for step in steps]


def _cases() -> list[tuple[Case, float, bool]]:
    cases = []
    for name in SCHEDULER_NAMES:
        for (spacing, offset), strength in zip(SPACINGS, STRENGTHS, strict=True):
            for inpaint in (False, True):
                case = Case(name, spacing=spacing, steps_offset=offset, steps=10)
                cases.append((case, strength, inpaint))
    cases.append((Case("ddim", prediction_type="v_prediction", zero_snr=True), 0.7, True))
    cases.append((Case("euler", spacing="trailing", steps=7), 0.5, False))
    return cases


@pytest.mark.parametrize(
    ("case", "strength", "inpaint"),
    _cases(),
    ids=lambda v: str(v) if isinstance(v, Case) else repr(v),
)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_img2img_and_blended_inpainting_match_diffusers(
    case: Case, strength: float, inpaint: bool, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    noises = _noise_sequence(case.steps)
    for module in NOISE_MODULES:
        # diffusers draws its per-step noise after the initial one: the same order as ours.
        monkeypatch.setattr(f"{module}.randn_tensor", _SequenceNoise(noises[1:]))
    clean, mask = _clean_latents(), (_mask() if inpaint else None)
    reference = run_diffusers(case, strength, clean, mask)
    ops = NumpyOps() if backend == "numpy" else TorchOps()
    ours = run_ours(case, strength, clean, mask, ops)
    assert len(ours) == len(reference) == min(int(case.steps * strength), case.steps)
    scale = max(1.0, *(float(np.sqrt(np.mean(np.square(x)))) for x in reference))
    worst = max(float(np.abs(a - b).max()) for a, b in zip(ours, reference, strict=True))
    assert worst <= TOLERANCE * scale, f"{case} strength {strength}: {worst:.3g}"


def test_inpainting_keeps_the_known_region_exactly_at_the_end() -> None:
    clean, mask = _clean_latents(), _mask()
    ours = run_ours(Case("euler_a", steps=8), 0.6, clean, mask, NumpyOps())
    known = mask[0, 0] == 0
    np.testing.assert_array_equal(ours[-1][:, :, known], clean[:, :, known])


def test_slicing_keeps_the_full_schedules_timesteps_and_stride() -> None:
    full = build_schedule("ddim", SchedulerConfig(), 20)
    sliced = full.for_strength(0.5)
    assert (sliced.start, len(sliced), sliced.total_steps) == (10, 10, 20)
    assert sliced.timesteps.tolist() == full.timesteps[10:].tolist()
    assert full.from_step(0).timesteps.tolist() == full.timesteps.tolist()


@pytest.mark.parametrize("strength", [0.01, 0.049])
def test_a_strength_that_keeps_no_step_is_one_sentence(strength: float) -> None:
    schedule = build_schedule("ddpm", SchedulerConfig(), 20)
    message = r"leaves no step to run; raise the strength to at least 0\.05"
    with pytest.raises(UsageError, match=message):
        schedule.for_strength(strength)


def test_text_to_image_start_is_init_noise_sigma_times_the_noise() -> None:
    diffusers = pytest.importorskip("diffusers")
    for spacing in ("leading", "trailing"):
        case = Case("euler", spacing=spacing)
        expected = diffusers_scheduler(case).init_noise_sigma
        schedule = build_schedule("euler", SchedulerConfig.from_dict(case.config_dict()), 10)
        assert schedule.start_latents(np.float32(1.0)) == pytest.approx(float(expected), rel=1e-6)
    assert diffusers is not None
