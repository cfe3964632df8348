"""The native samplers reproduce diffusers' schedulers step by step, on numpy and on torch.

Each parity case runs diffusers' loop (`from_config`, `set_timesteps`, `scale_model_input`,
`step`) next to ours, with the same fake model and the same pre-drawn noise (diffusers'
`randn_tensor` is patched to hand out the sequence our `noise()` returns), and compares the
timestep passed to the model, the latents and the x0 estimate after every step.

Tolerance: 1e-5 times the size of the float32 state, `max(1, peak RMS of diffusers' latents)`
(x_T times init_noise_sigma included). For unit-scale latents that is the plain 1e-5 bar;
where the state itself is large (Euler starts at sigma_max, 14.6 to 20000 here; an epsilon
model that is not a real denoiser drives x0 far from unit scale) float32 rounding of the
state alone exceeds 1e-5, in diffusers as in ours.
"""

from __future__ import annotations

import inspect
import itertools
import math
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pytest

from sdxs_rt import schedules
from sdxs_rt.array_ops import NumpyOps
from sdxs_rt.errors import ModelFormatError, UsageError
from sdxs_rt.sampler_schedule import build_schedule
from sdxs_rt.samplers import sample
from sdxs_rt.scheduler_table import SAMPLERS, SCHEDULER_LABELS, SCHEDULER_NAMES
from sdxs_rt.schedules import SchedulerConfig

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SHAPE = (1, 4, 8, 8)
TOLERANCE = 1e-5
X0_MARGIN = 4
# diffusers rescales betas to zero terminal SNR in float32 with torch's sqrt, which is not
# correctly rounded; for the cosine schedule that moves alphas_cumprod[0] by 2 ulps, i.e.
# sigma at t = 0 by 0.14% (1 - 0.99996 cancels). Every sampler that reaches t = 0 inherits
# it; Karras sigmas start from that sigma_min, and epsilon at zero SNR amplifies x0 by 4096.
KNOWN_SCHEDULE_TOLERANCE = {"dpmpp_2m_karras": 5e-3}
KNOWN_SCHEDULE_DEFAULT = 1e-4
STEP_COUNTS = (1, 4, 10, 40)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# (timestep_spacing, steps_offset): the offset only matters for "leading".
SPACINGS = (("leading", 0), ("leading", 1), ("linspace", 0), ("trailing", 0))
# The table's diffusers class for each sampler is what every parity case runs against.
DIFFUSERS_CLASSES: dict[str, tuple[str, dict[str, Any]]] = {
    entry.name: (entry.diffusers_class, {"use_karras_sigmas": True} if entry.karras else {})
    for entry in SAMPLERS
}
NOISE_MODULES = (
    "diffusers.schedulers.scheduling_ddpm",
    "diffusers.schedulers.scheduling_euler_ancestral_discrete",
)


class TorchOps:
    """float32 CPU tensors."""

    def from_host(self, array: np.ndarray) -> Any:
        return torch.from_numpy(np.array(array, dtype=np.float32))

    def to_host(self, array: Any) -> np.ndarray:
        return array.detach().numpy().copy()

    def concat(self, arrays: Sequence[Any]) -> Any:
        return torch.cat(list(arrays), dim=0)

    def clip(self, array: Any, low: float, high: float) -> Any:
        return array.clamp(low, high)


@dataclass(frozen=True)
class Case:
    sampler: str
    prediction_type: str = "epsilon"
    spacing: str = "leading"
    steps_offset: int = 0
    clip_sample: bool = False
    zero_snr: bool = False
    beta_schedule: str = "scaled_linear"
    steps: int = 10
    extra: tuple[tuple[str, Any], ...] = field(default=())  # more DDPM config keys

    def config_dict(self) -> dict[str, Any]:
        """A complete DDPM `scheduler_config.json`, as diffusers saves one."""
        options = {
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": self.beta_schedule,
            "prediction_type": self.prediction_type,
            "timestep_spacing": self.spacing,
            "steps_offset": self.steps_offset,
            "clip_sample": self.clip_sample,
            "rescale_betas_zero_snr": self.zero_snr,
        }
        accepted = inspect.signature(diffusers.DDPMScheduler).parameters
        ddpm_extra = {k: v for k, v in self.extra if k in accepted}
        other_extra = {k: v for k, v in self.extra if k not in accepted}  # other classes' keys
        scheduler = diffusers.DDPMScheduler(**{**options, **ddpm_extra})
        head = {"_class_name": "DDPMScheduler", "_diffusers_version": "0.39.0"}
        return {**head, **scheduler.config, **other_extra}

    def tolerance(self) -> float:
        if self.beta_schedule == "squaredcos_cap_v2" and self.zero_snr:
            return KNOWN_SCHEDULE_TOLERANCE.get(self.sampler, KNOWN_SCHEDULE_DEFAULT)
        return TOLERANCE

    def __str__(self) -> str:
        clip = "clip" if self.clip_sample else "noclip"
        snr = "zsnr" if self.zero_snr else "snr"
        spacing = f"{self.spacing}{self.steps_offset}"
        parts = [self.sampler, self.prediction_type, spacing, clip, snr, self.beta_schedule]
        parts += [str(self.steps)] + [f"{k}={v}"[:24] for k, v in self.extra]
        return "-".join(parts)


def _rejected_by_diffusers(case: Case) -> bool:
    # diffusers' Euler ancestral raises NotImplementedError for "sample" prediction.
    if case.sampler == "euler_a" and case.prediction_type == "sample":
        return True
    # Zero terminal SNR makes alpha 0 at t = 999 ("leading" never gets there): epsilon -> x0
    # is inf, which only clip_sample turns back into numbers.
    unclipped = case.sampler in ("ddpm", "ddim") and not case.clip_sample
    reaches_999 = case.spacing != "leading"
    return case.zero_snr and case.prediction_type == "epsilon" and unclipped and reaches_999


def grid_cases() -> list[Case]:
    """Every sampler over the option grid, minus options it ignores and what diffusers rejects."""
    cases = []
    for sampler in SCHEDULER_NAMES:
        clips = (True, False) if sampler in ("ddpm", "ddim") else (False,)
        # Karras sigmas ignore the spacing and the offset.
        spacings = SPACINGS[2:3] if sampler == "dpmpp_2m_karras" else SPACINGS
        grid = itertools.product(
            PREDICTION_TYPES, spacings, clips, (False, True), BETA_SCHEDULES, STEP_COUNTS
        )
        for prediction, (spacing, offset), clip, zero_snr, betas, steps in grid:
            case = Case(sampler, prediction, spacing, offset, clip, zero_snr, betas, steps)
            if not _rejected_by_diffusers(case):
                cases.append(case)
    return cases


def _scaled_linear_betas() -> tuple[float, ...]:
    return tuple((np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2).tolist())


EXTRA_CASES = [
    *(Case(name, extra=(("trained_betas", _scaled_linear_betas()),)) for name in SCHEDULER_NAMES),
    *(Case(name, extra=(("num_train_timesteps", 500),)) for name in SCHEDULER_NAMES),
    Case("ddpm", clip_sample=True, extra=(("clip_sample_range", 0.5),)),
    Case("ddim", clip_sample=True, extra=(("clip_sample_range", 0.5),)),
    Case("ddim", spacing="trailing", extra=(("set_alpha_to_one", False),)),
    Case("ddim", steps_offset=1, extra=(("set_alpha_to_one", False),)),
    Case("ddpm", extra=(("variance_type", "fixed_small_log"),)),
    Case("ddpm", extra=(("variance_type", None),)),
    Case("ddpm", steps=7, extra=(("beta_start", 0.0001), ("beta_end", 0.02))),
]


# --- the two loops -----------------------------------------------------------------------


def _fixed_pattern() -> np.ndarray:
    return np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)


def fake_model(x_in: Any, t: float, pattern: Any) -> Any:
    """Deterministic in (x_in, t); the same float32 arithmetic on numpy and torch."""
    return x_in * 0.3 + pattern * (0.1 * math.sin(t / 100.0))


def _noise_sequence(steps: int) -> list[np.ndarray]:
    rng = np.random.default_rng(2)
    return [rng.standard_normal(SHAPE).astype(np.float32) for _ in range(steps + 1)]


@dataclass
class Trace:
    start: np.ndarray  # x_T times init_noise_sigma
    timesteps: list[float] = field(default_factory=list)
    latents: list[np.ndarray] = field(default_factory=list)
    denoised: list[np.ndarray | None] = field(default_factory=list)
    noise_draws: int = 0
    model_timesteps: list[float] = field(default_factory=list)  # as the model received them

    def scale(self) -> float:
        rms = [float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) for x in self.latents]
        return max(1.0, *rms, float(np.sqrt(np.mean(np.square(self.start, dtype=np.float64)))))


class _SequenceNoise:
    """Stands in for diffusers' randn_tensor: hands out the pre-drawn arrays in order."""

    def __init__(self, noises: list[np.ndarray]) -> None:
        self.noises, self.count = noises, 0

    def __call__(self, shape: Any, generator: Any = None, dtype: Any = None, **_: Any) -> Any:
        self.count += 1
        return torch.from_numpy(self.noises[self.count - 1].copy()).to(dtype=dtype)


def diffusers_scheduler(case: Case) -> Any:
    class_name, extra = DIFFUSERS_CLASSES[case.sampler]
    scheduler = getattr(diffusers, class_name).from_config(case.config_dict(), **extra)
    scheduler.set_timesteps(case.steps)
    return scheduler


def run_diffusers(case: Case, x_T: np.ndarray) -> Trace:
    """diffusers' own loop, as its pipelines run it; randn_tensor must be patched."""
    scheduler = diffusers_scheduler(case)
    pattern = torch.from_numpy(_fixed_pattern())
    x = torch.from_numpy(x_T.copy()) * scheduler.init_noise_sigma
    trace = Trace(x.numpy().copy())
    for t in scheduler.timesteps:
        output = fake_model(scheduler.scale_model_input(x, t), float(t), pattern)
        result = scheduler.step(output, t, x)
        x = result.prev_sample
        x0 = getattr(result, "pred_original_sample", None)  # DPM-Solver gives none
        trace.timesteps.append(float(t))
        trace.latents.append(x.numpy().copy())
        trace.denoised.append(None if x0 is None else x0.numpy().copy())
    return trace


def run_ours(case: Case, x_T: np.ndarray, noises: list[np.ndarray], ops: Any) -> Trace:
    trace = Trace(x_T)
    pattern = ops.from_host(_fixed_pattern())

    def noise() -> Any:
        trace.noise_draws += 1
        return ops.from_host(noises[trace.noise_draws - 1])

    def model(x_in: Any, t: float) -> Any:
        assert type(t) is float
        trace.model_timesteps.append(t)
        return fake_model(x_in, t, pattern)

    config = SchedulerConfig.from_dict(case.config_dict())
    schedule = build_schedule(case.sampler, config, case.steps)
    steps = sample(schedule, model, schedule.start_latents(ops.from_host(x_T)), noise, ops)
    for index, step in enumerate(steps):
        assert step.index == index
        trace.timesteps.append(step.timestep)
        trace.latents.append(ops.to_host(step.latents))
        trace.denoised.append(ops.to_host(step.denoised))
    return trace


def expected_noise_draws(case: Case) -> int:
    """The noise contract: one draw per step that adds noise; the last step adds none."""
    return case.steps - 1 if case.sampler in ("ddpm", "euler_a") else 0


def worst_differences(ours: Trace, reference: Trace) -> tuple[float, float]:
    """Largest |ours - diffusers| over all steps: latents, and x0 where diffusers gives it."""

    def largest(pairs: Any) -> float:
        diffs = [float(np.abs(a.astype(np.float64) - b).max()) for a, b in pairs if b is not None]
        return max(diffs, default=0.0)

    latents = largest(zip(ours.latents, reference.latents, strict=True))
    return latents, largest(zip(ours.denoised, reference.denoised, strict=True))


def _skip_where_diffusers_fails(case: Case, reference: Trace | None) -> None:
    if reference is None:
        # Karras timesteps can repeat the first one; diffusers then starts at the second
        # occurrence and indexes past its sigmas.
        assert case.sampler == "dpmpp_2m_karras"
        pytest.skip("diffusers' DPMSolverMultistep raises IndexError on repeated timesteps")
    if not all(np.isfinite(x).all() for x in reference.latents):
        # float32 sigma_down = sqrt(sigma_next^2 - sigma_up^2) goes negative at sigma ~ 2e4.
        assert case.sampler == "euler_a" and case.beta_schedule == "squaredcos_cap_v2"
        pytest.skip("diffusers' Euler ancestral produces NaN (float32 sigma_down)")


def compare(case: Case, monkeypatch: pytest.MonkeyPatch) -> dict[str, float]:
    """Worst difference against diffusers, relative to the state's scale, per backend."""
    x_T = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    noises = _noise_sequence(case.steps)
    for module in NOISE_MODULES:
        monkeypatch.setattr(f"{module}.randn_tensor", _SequenceNoise(noises))
    try:
        reference: Trace | None = run_diffusers(case, x_T)
    except IndexError:
        reference = None
    _skip_where_diffusers_fails(case, reference)
    assert reference is not None
    worst = {}
    for label, ops in (("numpy", NumpyOps()), ("torch", TorchOps())):
        ours = run_ours(case, x_T, noises, ops)
        assert ours.timesteps == ours.model_timesteps == reference.timesteps
        assert ours.noise_draws == expected_noise_draws(case)
        latents, denoised = worst_differences(ours, reference)
        worst[label] = latents / reference.scale()
        worst[f"{label} x0"] = denoised / reference.scale()
    return worst


@pytest.mark.parametrize("case", grid_cases() + EXTRA_CASES, ids=str)
def test_step_by_step_parity_with_diffusers(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    worst = compare(case, monkeypatch)
    assert max(worst["numpy"], worst["torch"]) <= case.tolerance(), worst
    # x0 = (x - sigma * eps) / alpha magnifies the latents' rounding by 1 / alpha at high noise.
    assert max(worst["numpy x0"], worst["torch x0"]) <= X0_MARGIN * case.tolerance(), worst


# --- schedules on their own --------------------------------------------------------------


@pytest.mark.parametrize("betas", BETA_SCHEDULES)
@pytest.mark.parametrize("zero_snr", [False, True])
def test_alphas_cumprod_match_diffusers(betas: str, zero_snr: bool) -> None:
    case = Case("ddpm", beta_schedule=betas, zero_snr=zero_snr)
    ours = schedules.alphas_cumprod(SchedulerConfig.from_dict(case.config_dict()))
    theirs = diffusers.DDPMScheduler.from_config(case.config_dict()).alphas_cumprod.numpy()
    if zero_snr:  # torch's float32 sqrt is not correctly rounded: a few ulps apart
        np.testing.assert_allclose(ours, theirs, rtol=5e-6, atol=0)
        assert ours[-1] == theirs[-1] == 0.0
    else:  # bit for bit on x86-64 today, but torch's vectorised float32 linspace may round
        # another way on other CPUs: a few ulps (float32 eps is 1.2e-7) are still a match
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "euler", "euler_a", "dpmpp_2m"])
@pytest.mark.parametrize("spacing", SPACINGS, ids=lambda s: f"{s[0]}{s[1]}")
def test_timesteps_match_diffusers_for_1_to_100_steps(sampler: str, spacing: Any) -> None:
    case = Case(sampler, spacing=spacing[0], steps_offset=spacing[1])
    config = SchedulerConfig.from_dict(case.config_dict())
    ours_for = {
        "ddpm": schedules.ddpm_timesteps,
        "ddim": schedules.ddpm_timesteps,
        "euler": schedules.euler_timesteps,
        "euler_a": schedules.euler_timesteps,
        "dpmpp_2m": schedules.dpm_timesteps,
    }[sampler]
    for steps in range(1, 101):
        theirs = diffusers_scheduler(replace(case, steps=steps)).timesteps
        ours = ours_for(config, steps)
        # np.arange in "trailing" sometimes adds a step at timestep -1 (61 of 1000 steps):
        # we keep exactly `steps`.
        extra = theirs.numpy()[steps:]
        assert extra.tolist() in ([], [-1]) and (not len(extra) or spacing[0] == "trailing")
        np.testing.assert_array_equal(ours, theirs.numpy()[:steps])


# --- contract and errors -----------------------------------------------------------------


def test_names_and_labels_agree() -> None:
    assert SCHEDULER_NAMES == ("ddpm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_2m_karras")
    assert tuple(SCHEDULER_LABELS) == SCHEDULER_NAMES
    assert list(SCHEDULER_LABELS.values()) == [
        "DDPM",
        "DDIM",
        "Euler",
        "Euler a",
        "DPM++ 2M",
        "DPM++ 2M Karras",
    ]


def _start(name: str, steps: Any, config: SchedulerConfig | None = None) -> Any:
    x = np.zeros(SHAPE, dtype=np.float32)
    config = config or SchedulerConfig()
    schedule = build_schedule(name, config, steps)
    return sample(schedule, lambda x_in, t: x_in, x, lambda: x, NumpyOps())


def test_unknown_scheduler_is_a_usage_error_listing_the_choices() -> None:
    with pytest.raises(UsageError, match=r"unknown scheduler 'heun'; choose one of: ddpm, ddim"):
        _start("heun", 10)


@pytest.mark.parametrize("steps", [0, -3, 2.5, True, "10"])
def test_bad_step_counts_are_usage_errors_before_iterating(steps: Any) -> None:
    with pytest.raises(UsageError, match="steps"):
        _start("ddpm", steps)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_more_steps_than_training_timesteps_is_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError, match="1001 steps"):
        _start(name, 1001)


def test_steps_offset_past_the_last_timestep_is_a_usage_error() -> None:
    config = SchedulerConfig(steps_offset=1)
    with pytest.raises(UsageError, match="too many"):
        _start("ddpm", 1000, config)


def test_the_generator_yields_one_step_per_inference_step_and_can_stop_early() -> None:
    steps = _start("euler_a", 5)
    first = next(steps)
    assert (first.index, first.timestep) == (0, 800.0)  # "leading": 4 * (1000 // 5)
    assert first.latents.shape == first.denoised.shape == SHAPE
    steps.close()  # cancelling = stopping the iteration
    assert [s.index for s in _start("dpmpp_2m", 5)] == [0, 1, 2, 3, 4]


def test_defaults_are_ddpm_defaults_and_other_keys_are_ignored() -> None:
    ddpm = dict(diffusers.DDPMScheduler().config)
    config = SchedulerConfig.from_dict({"_class_name": "EulerDiscreteScheduler", "sigma_min": 1})
    for name in SchedulerConfig.__dataclass_fields__:
        default = ddpm.get(name, True)  # set_alpha_to_one: DDIMScheduler's default
        assert getattr(config, name) == default, name
    assert SchedulerConfig.from_dict(ddpm) == config


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("beta_schedule", "sigmoid", r"beta_schedule='sigmoid'.*'linear', 'scaled_linear'"),
        ("thresholding", True, r"thresholding=True.*supported: False"),
        ("variance_type", "learned", r"variance_type='learned'.*'fixed_small'"),
        ("prediction_type", "flow_prediction", r"prediction_type='flow_prediction'.*epsilon"),
        ("timestep_spacing", "uniform", r"timestep_spacing='uniform'.*'trailing'"),
        ("clip_sample", "yes", r"clip_sample='yes'; expected true or false"),
        ("num_train_timesteps", 10.5, r"num_train_timesteps=10.5; expected an integer"),
        ("beta_end", None, r"beta_end=None; expected a number"),
        ("beta_start", float("nan"), r"beta_start=nan; expected a number"),
        ("trained_betas", [0.1, 0.2], r"2 trained_betas for num_train_timesteps=1000"),
    ],
)
def test_unsupported_config_values_are_model_format_errors(
    key: str, value: Any, message: str
) -> None:
    with pytest.raises(ModelFormatError, match=message):
        SchedulerConfig.from_dict({key: value})


def test_the_core_runs_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np\n"
        "from sdxs_rt.array_ops import NumpyOps\n"
        "from sdxs_rt.sampler_schedule import build_schedule\n"
        "from sdxs_rt.samplers import sample\n"
        "from sdxs_rt.scheduler_table import SCHEDULER_NAMES\n"
        "from sdxs_rt.schedules import SchedulerConfig\n"
        "x = np.ones((1, 4, 2, 2), np.float32)\n"
        "for name in SCHEDULER_NAMES:\n"
        "    schedule = build_schedule(name, SchedulerConfig(), 3)\n"
        "    steps = sample(schedule, lambda x_in, t: x_in * 0.5, x, lambda: x, NumpyOps())\n"
        "    assert np.isfinite(list(steps)[-1].latents).all()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
