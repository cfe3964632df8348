"""The training objective against diffusers' DDPMScheduler, min-SNR weights, dropout, EMA."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import DDPMScheduler  # noqa: E402

from sdxs_rt.components import LatentScaling  # noqa: E402
from sdxs_rt.errors import ModelFormatError  # noqa: E402
from sdxs_rt.training.objective import (  # noqa: E402
    NoiseSchedule,
    drop_captions,
    min_snr_weights,
    weighted_mse,
)

CONFIGS = [
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "linear", "prediction_type": "v_prediction"},
    {"beta_schedule": "scaled_linear", "prediction_type": "v_prediction",
     "rescale_betas_zero_snr": True, "beta_start": 0.00085, "beta_end": 0.012},
]  # fmt: skip


def _tensors(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(4, 16, 8, 8, generator=g)
    noise = torch.randn(4, 16, 8, 8, generator=g)
    return x0, noise, torch.tensor([0, 10, 500, 999])


@pytest.mark.parametrize("config", CONFIGS)
def test_add_noise_and_target_match_diffusers(config: dict) -> None:
    reference = DDPMScheduler(num_train_timesteps=1000, **config)
    schedule = NoiseSchedule.from_config(dict(reference.config))
    torch.testing.assert_close(
        schedule.alphas_cumprod, reference.alphas_cumprod, rtol=1e-5, atol=1e-6
    )
    x0, noise, t = _tensors()
    torch.testing.assert_close(schedule.add_noise(x0, noise, t), reference.add_noise(x0, noise, t))
    expected = noise if reference.config.prediction_type == "epsilon" else None
    if expected is None:
        expected = reference.get_velocity(x0, noise, t)
    torch.testing.assert_close(schedule.training_target(x0, noise, t), expected)


def test_sample_prediction_is_refused() -> None:
    with pytest.raises(ModelFormatError, match="sample"):
        NoiseSchedule.from_config({"prediction_type": "sample"})


def test_min_snr_weights_numbers() -> None:
    snr = torch.tensor([0.0, 1.0, 5.0, 20.0])
    eps = min_snr_weights(snr, 5.0, "epsilon")
    torch.testing.assert_close(eps, torch.tensor([1.0, 1.0, 1.0, 0.25]))
    v = min_snr_weights(snr, 5.0, "v_prediction")
    torch.testing.assert_close(v, torch.tensor([0.0, 0.5, 5 / 6, 5 / 21]))


def test_snr_of_schedule() -> None:
    schedule = NoiseSchedule.from_config({"beta_schedule": "linear"})
    a = schedule.alphas_cumprod[torch.tensor([3, 700])].double()
    torch.testing.assert_close(schedule.snr(torch.tensor([3, 700])), (a / (1 - a)).float())


def test_caption_dropout_all_none_and_some() -> None:
    rows, empty = torch.ones(64, 1, 5), torch.zeros(5)
    out, dropped = drop_captions(rows, empty, 1.0, torch.Generator().manual_seed(0))
    assert dropped.all() and torch.equal(out, torch.zeros(64, 1, 5))
    out, dropped = drop_captions(rows, empty, 0.0, torch.Generator().manual_seed(0))
    assert not dropped.any() and torch.equal(out, rows)
    out, dropped = drop_captions(rows, empty, 0.5, torch.Generator().manual_seed(0))
    assert 0 < int(dropped.sum()) < 64
    assert torch.equal(out[dropped], torch.zeros(int(dropped.sum()), 1, 5))


def test_weighted_mse() -> None:
    prediction, target = torch.zeros(2, 3, 2, 2), torch.ones(2, 3, 2, 2)
    target[1] *= 2
    assert float(weighted_mse(prediction, target, None)) == pytest.approx(2.5)
    assert float(weighted_mse(prediction, target, torch.tensor([1.0, 0.5]))) == pytest.approx(1.5)


@pytest.mark.parametrize(
    "scaling",
    [
        LatentScaling(scaling_factor=0.5, mean=0.1, std=1.0),
        LatentScaling(
            scaling_factor=0.7, mean=tuple(range(16)), std=tuple(1 + i / 8 for i in range(16))
        ),
    ],
)
def test_model_space_round_trip_with_pipeline_unscale(scaling: LatentScaling) -> None:
    from sdxs_rt.backends.torch.ops import TorchOps
    from sdxs_rt.pipeline import scale_latents, unscale_latents

    z = torch.randn(2, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    ops = TorchOps(torch.device("cpu"), torch.float32)
    back = unscale_latents(scale_latents(z, scaling, ops), scaling, ops)
    torch.testing.assert_close(back, z)


def test_ema_update_swap_and_offload() -> None:
    from sdxs_rt.training.optim import EMA

    layer = torch.nn.Linear(2, 2)
    start = layer.weight.detach().clone()
    ema = EMA(layer.parameters(), decay=0.5, offload=True)
    assert ema.shadow[0].device.type == "cpu"
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update()  # update 0: decay min(0.5, 1/10) = 0.1
    torch.testing.assert_close(ema.shadow[0], start + 0.9)
    ema.update()  # update 1: decay min(0.5, 2/11)
    keep = 2 / 11
    torch.testing.assert_close(ema.shadow[0], keep * (start + 0.9) + (1 - keep) * (start + 1))
    trained = layer.weight.detach().clone()
    ema.swap_in()
    torch.testing.assert_close(layer.weight.detach(), ema.shadow[0])
    ema.swap_out()
    torch.testing.assert_close(layer.weight.detach(), trained)
