"""img2img, inpainting, outpainting and variation seeds, end to end on real models.

The built-in demo model draws one coloured shape on a coloured background, so what an image mode
did can be read back from pixels (`sdxs_rt.dev.demo.check`): which colours, and where the shape
is. The torch / ONNX Runtime comparison runs on the tiny random-weight model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdxs_rt.dev.demo.check import MAX_DISTANCE, measure, shape_guess
from sdxs_rt.dev.demo.data import COLOURS, Combination, render
from sdxs_rt.pipeline import GenerationResult, Pipeline

pytest.importorskip("torch")

PROMPT = "a red circle on a blue background"
GREEN_BACKGROUND = "a red circle on a green background"
STEPS = 10
SEED = 3


@pytest.fixture(scope="module")
def demo() -> Pipeline:
    return Pipeline.from_pretrained(None)  # the built-in demo model, 64x64, torch on the CPU


def red_circle() -> Image.Image:
    image = render(Combination("circle", "red", "blue"), 64, seed=1)
    assert measure(image) == ("red", "blue")  # the input is what the tests say it is
    return image


def left_half() -> Image.Image:
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    return mask


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def mean_difference(first: Image.Image, second: Image.Image) -> float:
    return float(np.abs(pixels(first) - pixels(second)).mean())


def max_difference(first: Image.Image, second: Image.Image) -> int:
    return int(np.abs(pixels(first) - pixels(second)).max())


def colour_share(region: np.ndarray, colour: str) -> float:
    """Share of the pixels (H, W, 3) within check.py's MAX_DISTANCE of the named colour."""
    distance = np.linalg.norm(
        region.astype(np.float32) - np.array(COLOURS[colour], np.float32), axis=-1
    )
    return float((distance <= MAX_DISTANCE).mean())


def shape_pixels(image: Image.Image) -> np.ndarray:
    """Where the measured shape colour is nearer than the measured background colour."""
    shape, background = measure(image)
    assert shape is not None and background is not None, "no shape to locate"
    rgb = pixels(image).astype(np.float32)
    to_shape = np.linalg.norm(rgb - np.array(COLOURS[shape], np.float32), axis=-1)
    to_background = np.linalg.norm(rgb - np.array(COLOURS[background], np.float32), axis=-1)
    return to_shape < to_background


def overlap(first: Image.Image, second: Image.Image) -> float:
    """Intersection over union of the two images' shapes."""
    a, b = shape_pixels(first), shape_pixels(second)
    return float((a & b).sum() / (a | b).sum())


def run(pipe: Pipeline, prompt: str = PROMPT, **options: Any) -> GenerationResult:
    options.setdefault("num_inference_steps", STEPS)
    options.setdefault("seed", SEED)
    return pipe(prompt, **options)


# ---------------------------------------------------------------- img2img


def test_img2img_at_low_strength_keeps_the_red_circle_where_it_was(demo: Pipeline) -> None:
    init = red_circle()
    image = run(demo, init_image=init, strength=0.3).images[0]
    assert image.size == (64, 64)
    assert measure(image) == ("red", "blue") and shape_guess(image) == "circle"
    assert overlap(image, init) > 0.65
    assert 0 < mean_difference(image, init) < 20  # redrawn, not passed through
    # the same seed from noise puts its circle elsewhere: the init image placed this one
    drawn = run(demo).images[0]
    assert measure(drawn) == ("red", "blue") and overlap(drawn, init) < 0.5


# ---------------------------------------------------------------- inpainting


def test_inpainting_repaints_only_inside_the_mask_and_pastes_the_rest_back(
    demo: Pipeline,
) -> None:
    init = red_circle()
    result = run(demo, GREEN_BACKGROUND, init_image=init, mask=left_half())
    image = result.images[0]
    assert result.plan is not None and result.plan.inputs is not None
    feathered = np.asarray(result.plan.inputs.mask)
    repaint, keep = feathered == 255, feathered == 0
    assert repaint[:, :16].all() and keep[:, 48:].all()  # the blurred mask's solid parts
    before, after = pixels(init), pixels(image)
    # inside the mask the blue background turned green
    assert colour_share(before[repaint], "blue") > 0.5
    assert colour_share(after[repaint], "green") > 0.8
    assert colour_share(after[repaint], "blue") < 0.05
    # where the feathered mask is exactly 0, the input's own pixels
    np.testing.assert_array_equal(after[keep], before[keep])


def test_without_paste_back_the_kept_region_is_generated_not_copied(demo: Pipeline) -> None:
    init = red_circle()
    result = run(demo, GREEN_BACKGROUND, init_image=init, mask=left_half(), paste_back=False)
    assert result.plan is not None and result.plan.inputs is not None
    keep = np.asarray(result.plan.inputs.mask) == 0
    before, after = pixels(init), pixels(result.images[0])
    assert (after[keep] != before[keep]).any()  # decoded pixels, not forced equal
    # blended denoising still keeps that region's content: blue, not the prompt's green
    assert colour_share(after[keep], "blue") > 0.7
    assert colour_share(after[keep], "green") < 0.05
    assert colour_share(after[:, :16], "green") > 0.8


# ---------------------------------------------------------------- outpainting


def test_outpainting_grows_the_canvas_and_keeps_the_original_pixels(demo: Pipeline) -> None:
    init = red_circle()
    result = run(demo, init_image=init, outpaint=(64, 0, 0, 0))
    image = result.images[0]
    assert image.size == (128, 64)
    assert result.plan is not None and result.plan.inputs is not None
    assert result.plan.params.strength == 1.0  # the outpainting default
    keep = np.asarray(result.plan.inputs.mask) == 0
    assert not keep[:, :64].any() and keep[:, 80:].all()
    after = pixels(image)
    np.testing.assert_array_equal(after[:, 64:][keep[:, 64:]], pixels(init)[keep[:, 64:]])
    # the new area continues the picture: the same blue background
    assert measure(image.crop((0, 0, 48, 64)))[1] == "blue"
    assert colour_share(after[:, :48], "blue") > 0.5


# ---------------------------------------------------------------- variation seeds


def test_variation_strength_0_is_the_plain_image_exactly(demo: Pipeline) -> None:
    plain = run(demo, seed=5).images[0]
    same = run(demo, seed=5, variation_seed=9, variation_strength=0.0).images[0]
    np.testing.assert_array_equal(pixels(same), pixels(plain))


@pytest.mark.parametrize("scheduler", ["ddim", "euler"])
def test_with_a_deterministic_sampler_strength_1_is_the_variation_seeds_image(
    demo: Pipeline, scheduler: str
) -> None:
    # the first draw becomes V's; a deterministic sampler draws nothing else
    varied = run(demo, seed=5, variation_seed=9, variation_strength=1.0, scheduler=scheduler)
    own = run(demo, seed=9, scheduler=scheduler).images[0]
    assert max_difference(varied.images[0], own) <= 1
    plain = run(demo, seed=5, scheduler=scheduler).images[0]
    assert mean_difference(plain, own) > 10  # the two seeds' images really differ
    halfway = run(demo, seed=5, variation_seed=9, variation_strength=0.5, scheduler=scheduler)
    assert mean_difference(halfway.images[0], plain) > 1
    assert mean_difference(halfway.images[0], own) > 1


def test_with_ddpm_strength_1_keeps_the_seeds_later_draws(demo: Pipeline) -> None:
    # DDPM adds S's noise at every step after the first: V's image is not reproduced
    varied = run(demo, seed=5, variation_seed=9, variation_strength=1.0, scheduler="ddpm")
    own = run(demo, seed=9, scheduler="ddpm").images[0]
    assert mean_difference(varied.images[0], own) > 10


def test_variation_seeds_count_up_through_a_batch(demo: Pipeline) -> None:
    batch = run(
        demo, seed=5, num_images=2, batch_size=2, variation_seed=9, variation_strength=1.0,
        scheduler="ddim",
    )  # fmt: skip
    assert batch.seeds == [5, 6]
    for image, variation_seed in zip(batch.images, (9, 10), strict=True):
        assert (
            max_difference(image, run(demo, seed=variation_seed, scheduler="ddim").images[0]) <= 1
        )


# ---------------------------------------------------------------- reproducibility


def test_same_seed_and_inputs_give_the_same_pixels(demo: Pipeline, tmp_path: Path) -> None:
    init, mask = red_circle(), left_half()
    options = {"mask": mask, "strength": 0.8, "scheduler": "ddpm"}
    first = run(demo, GREEN_BACKGROUND, init_image=init, **options).images[0]
    again = run(demo, GREEN_BACKGROUND, init_image=init.copy(), **options).images[0]
    np.testing.assert_array_equal(pixels(again), pixels(first))
    init.save(tmp_path / "init.png")  # the same pixels from a file
    from_file = run(demo, GREEN_BACKGROUND, init_image=tmp_path / "init.png", **options)
    np.testing.assert_array_equal(pixels(from_file.images[0]), pixels(first))
    other = run(demo, GREEN_BACKGROUND, init_image=init, seed=SEED + 1, **options).images[0]
    assert mean_difference(other, first) > 0.5  # the seed matters


def test_a_batch_of_two_equals_two_single_runs(demo: Pipeline) -> None:
    options = {"init_image": red_circle(), "mask": left_half(), "strength": 0.8}
    batch = run(demo, GREEN_BACKGROUND, seed=11, num_images=2, batch_size=2, **options)
    assert batch.seeds == [11, 12]
    for image, seed in zip(batch.images, batch.seeds, strict=True):
        alone = run(demo, GREEN_BACKGROUND, seed=seed, **options).images[0]
        assert max_difference(image, alone) <= 1
    assert mean_difference(batch.images[0], batch.images[1]) > 0.5  # per-image noise


# ---------------------------------------------------------------- torch vs ONNX Runtime


def psnr(first: Image.Image, second: Image.Image) -> float:
    mse = float(np.mean((pixels(first).astype(np.float64) - pixels(second)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def test_torch_and_onnx_runtime_img2img_agree_on_the_tiny_model(
    tiny_model: Path, exported_tiny_fp32: Path
) -> None:
    torch_pipe = Pipeline.from_pretrained(str(tiny_model), backend="torch")
    onnx_pipe = Pipeline.from_pretrained(str(exported_tiny_fp32), backend="onnx")
    assert onnx_pipe.components.vae_encoder is not None, onnx_pipe.info.get(
        "vae_encoder_unavailable"
    )
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    init = Image.fromarray(noise, "RGB")
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (0, 0, 64, 128))
    for extra in ({}, {"mask": mask}):
        options = {"init_image": init, "strength": 0.6, **extra}
        expected = run(torch_pipe, "a red circle", **options).images[0]
        got = run(onnx_pipe, "a red circle", **options).images[0]
        assert got.size == expected.size == (128, 128)
        value = psnr(got, expected)
        print(f"\nimg2img {sorted(extra)}: ONNX Runtime fp32 vs torch fp32 PSNR {value:.1f} dB")
        assert value >= 45.0
        assert mean_difference(expected, init) > 5  # the model changed the image
