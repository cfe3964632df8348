"""Hires fix: the second pass's plan, its refusals, and a run on the demo model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sdxs_rt.commands.generate import HIRES_UPSCALERS
from sdxs_rt.errors import UsageError
from sdxs_rt.latents import upscale_latents
from sdxs_rt.params import HIRES_UPSCALERS as PARAM_UPSCALERS
from sdxs_rt.params import GenerationParams
from sdxs_rt.pipeline import Pipeline
from sdxs_rt.plan import ModelFacts, hires_size, make_plan
from sdxs_rt.schedules import SchedulerConfig
from tests.fakes import fake_components

FACTS = ModelFacts(
    native_size=(64, 64),
    scheduler_config=SchedulerConfig.from_dict({"_class_name": "DDPMScheduler"}),
    default_scheduler="euler",
)


def test_cli_choices_are_the_libraries_upscalers() -> None:
    assert HIRES_UPSCALERS == PARAM_UPSCALERS


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [((576, 576), 2.0, (1152, 1152)), ((576, 448), 1.5, (896, 640)), ((64, 64), 1.01, (128, 128))],
)
def test_hires_size_is_scaled_to_multiples_of_64(size, scale, expected) -> None:
    assert hires_size(*size, scale) == expected


def test_the_plan_has_a_second_pass_with_its_own_slice_and_shape() -> None:
    params = GenerationParams("x", num_inference_steps=20, hires_scale=2.0, hires_strength=0.5)
    plan = make_plan(params, FACTS)
    assert plan.hires is not None
    assert plan.output_size == (128, 128) and plan.size == (64, 64)
    assert plan.hires.latent_shape == (16, 16, 16)
    assert len(plan.hires.schedule) == 10 and plan.total_steps == 30
    steps = make_plan(GenerationParams("x", hires_scale=2.0, hires_steps=8), FACTS).hires
    assert steps is not None and len(steps.schedule) == 4


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"hires_scale": 1.0}, "hires scale must be a number in (1, 4]"),
        ({"hires_scale": 8.0}, "hires scale must be a number in (1, 4]"),
        ({"hires_scale": 2.0, "hires_strength": 0.0}, "hires strength"),
        ({"hires_scale": 2.0, "hires_steps": 0}, "steps must be a positive"),
        ({"hires_scale": 2.0, "hires_upscaler": "esrgan"}, "unknown hires upscaler"),
        ({"hires_scale": 2.0, "init_image": "x.png"}, "hires fix is for text to image"),
        ({"hires_scale": 2.0, "width": 4096, "height": 64}, "hires width"),
    ],
)
def test_bad_hires_requests_are_one_sentence(fields, words) -> None:
    with pytest.raises(UsageError, match=None) as caught:
        make_plan(GenerationParams("x", **fields), FACTS)
    assert words in str(caught.value)
    assert str(caught.value).count(". ") == 0


def test_without_an_image_encoder_only_the_latent_upscaler_runs() -> None:
    pipe = Pipeline(fake_components())
    assert pipe.components.vae_encoder is None
    with pytest.raises(UsageError, match="cannot encode images"):
        pipe.plan(GenerationParams("x", width=64, height=64, hires_scale=2.0))
    result = pipe(
        "x", width=64, height=64, num_inference_steps=4, hires_scale=2.0, hires_upscaler="latent"
    )
    assert result.images[0].size == (128, 128)


def test_latent_upscaling_is_bilinear_per_channel() -> None:
    latents = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    up = upscale_latents(latents, (8, 8))
    assert up.shape == (2, 3, 8, 8)
    # a bilinear resize keeps each channel's range and mean (up to the edges' clamping)
    assert np.allclose(up.mean(axis=(2, 3)), latents.mean(axis=(2, 3)), atol=0.05)
    assert up.min() >= latents.min() - 1e-4 and up.max() <= latents.max() + 1e-4


@pytest.mark.parametrize("upscaler", ["lanczos", "latent"])
def test_hires_on_the_demo_model_keeps_the_picture(upscaler: str) -> None:
    from sdxs_rt.dev.demo.check import measure

    pipe = Pipeline.from_pretrained(None)
    prompt = "a red circle on a blue background"
    low = pipe(prompt, seed=1, num_inference_steps=12).images[0]
    high = pipe(
        prompt, seed=1, num_inference_steps=12, hires_scale=2.0, hires_upscaler=upscaler
    ).images[0]
    assert high.size == (128, 128)
    down = high.resize(low.size, Image.Resampling.BOX)
    assert measure(down) == measure(low) == ("red", "blue")


def test_hires_labels_are_a1111s_and_read_back() -> None:
    from sdxs_rt.infotext import format_parameters, parse_parameters, record_from_parameters
    from sdxs_rt.metadata import ImageRecord

    record = ImageRecord(
        prompt="p", negative_prompt="", steps=20, guidance_scale=5.5, seed=3, width=576,
        height=448, scheduler="euler", scheduler_label="Euler", model="m", model_hash="h",
        backend="torch", precision="fp32", device="cpu", rng="numpy-pcg64", version="0",
        text_encoder="t", hires_scale=2.0, hires_strength=0.45, hires_steps=12,
        hires_upscaler="latent",
    )  # fmt: skip
    text = format_parameters(record)
    assert "Size: 576x448" in text and "Denoising strength: 0.45" in text
    assert "Hires upscale: 2.0, Hires steps: 12, Hires upscaler: Latent" in text
    assert record.image_size == (1152, 896)
    values = record_from_parameters(parse_parameters(text))
    assert values["hires_scale"] == 2.0 and values["hires_steps"] == 12
    assert values["hires_strength"] == 0.45 and "strength" not in values
    assert values["hires_upscaler"] == "latent"
