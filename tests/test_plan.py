"""`make_plan`: the size rule, strength defaults, the img2img schedule, seeds, masks and digests.

No model: a plan needs only `ModelFacts` (a native size, a scheduler config, a default sampler).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdxs_rt.errors import ModelNotFoundError, UsageError
from sdxs_rt.params import GenerationParams
from sdxs_rt.plan import (
    DEFAULT_STRENGTH,
    OUTPAINT_STRENGTH,
    GenerationPlan,
    ModelFacts,
    make_plan,
    output_size,
    pixel_digest,
)
from sdxs_rt.rng import Variation
from sdxs_rt.sampler_schedule import build_schedule
from sdxs_rt.scheduler_table import SCHEDULER_NAMES
from sdxs_rt.schedules import SchedulerConfig

CONFIG = SchedulerConfig.from_dict({})  # DDPM defaults: 1000 steps, linear betas
FACTS = ModelFacts(native_size=(576, 448), scheduler_config=CONFIG, default_scheduler="ddpm")


def plan(**options: object) -> GenerationPlan:
    options.setdefault("num_inference_steps", 10)
    return make_plan(GenerationParams(prompt="x", **options), FACTS)  # type: ignore[arg-type]


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def one_sentence(message: str) -> bool:
    return "\n" not in message and ". " not in message.rstrip(".")


# ---------------------------------------------------------------- the size rule


def test_without_init_image_the_size_is_the_models_own_side_by_side() -> None:
    assert plan().size == (576, 448)
    assert plan(width=320).size == (320, 448)
    assert plan(height=640).size == (576, 640)
    assert plan(width=128, height=192).size == (128, 192)


@pytest.mark.parametrize(
    ("init_size", "expected"),
    [
        ((200, 150), (192, 128)),
        ((128, 64), (128, 64)),
        ((127, 191), (64, 128)),
        ((30, 10), (64, 64)),
    ],
)
def test_the_init_size_rounded_down_to_64_is_the_default(
    init_size: tuple[int, int], expected: tuple[int, int]
) -> None:
    planned = plan(init_image=picture(*init_size))
    assert planned.size == expected
    assert planned.latent_shape == (16, expected[1] // 8, expected[0] // 8)
    assert planned.inputs is not None and planned.inputs.init.size == expected


def test_an_explicit_side_wins_over_the_init_image_on_its_own() -> None:
    init = picture(200, 150)
    assert plan(init_image=init, width=320).size == (320, 128)
    assert plan(init_image=init, height=320).size == (192, 320)
    both = plan(init_image=init, width=64, height=256)
    assert both.size == (64, 256)
    assert both.inputs is not None and both.inputs.init.size == (64, 256)


def test_outpainting_adds_its_amounts_to_the_rounded_init_size() -> None:
    planned = plan(init_image=picture(200, 150), outpaint=(64, 0, 128, 64))
    assert planned.size == (192 + 64, 128 + 128 + 64)
    assert planned.inputs is not None and planned.inputs.init.size == planned.size
    # with an explicit size, the init image is fitted to the size less the outpainting
    given = plan(init_image=picture(200, 150), outpaint=(64, 64, 0, 0), width=256, height=128)
    assert given.size == (256, 128)
    assert given.inputs is not None and given.inputs.init.size == (256, 128)


def test_output_size_is_the_same_rule_without_a_plan() -> None:
    params = GenerationParams(prompt="x", outpaint=(0, 64, 0, 0), init_image=picture(1, 1))
    assert output_size(params, (576, 576), (100, 70)) == (128, 64)
    assert output_size(params, (576, 576), None) == (576, 576)  # no init: the native size


def test_an_inner_area_too_small_for_the_init_image_is_one_sentence() -> None:
    with pytest.raises(UsageError) as caught:
        plan(init_image=picture(64, 64), outpaint=(64, 64, 0, 0), width=128)
    message = str(caught.value)
    assert "64,64,0,0" in message and "128x64" in message and "less than 64 px" in message
    assert one_sentence(message)


@pytest.mark.parametrize(
    ("outpaint", "words"),
    [
        ((32, 0, 0, 0), "outpaint left 32 is not a multiple of 64"),
        ((0, 0, -64, 0), "outpaint top must be 0 or more"),
        ((0, 0, 0, 0), "at least one side"),
        ((64, 0, 0), "four amounts"),
    ],
)
def test_bad_outpaint_amounts_are_named_as_outpaint(outpaint: tuple[int, ...], words: str) -> None:
    # not blamed on the width or height they would make
    with pytest.raises(UsageError, match=words):
        plan(init_image=picture(64, 64), outpaint=outpaint)


# ---------------------------------------------------------------- strength and steps


def test_strength_defaults() -> None:
    assert plan().params.strength is None and plan().inputs is None
    assert plan(init_image=picture(64, 64)).params.strength == DEFAULT_STRENGTH == 0.75
    outpainted = plan(init_image=picture(64, 64), outpaint=(64, 0, 0, 0))
    assert outpainted.params.strength == OUTPAINT_STRENGTH == 1.0
    assert outpainted.inputs is not None and outpainted.inputs.strength == 1.0
    given = plan(init_image=picture(64, 64), outpaint=(64, 0, 0, 0), strength=0.4)
    assert given.params.strength == 0.4


@pytest.mark.parametrize(
    ("steps", "strength"), [(20, 0.75), (10, 0.3), (7, 0.5), (40, 1.0), (100, 0.29), (3, 0.34)]
)
@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_steps_run_is_int_steps_times_strength_the_last_ones(
    steps: int, strength: float, scheduler: str
) -> None:
    planned = plan(
        init_image=picture(64, 64), strength=strength, num_inference_steps=steps,
        scheduler=scheduler,
    )  # fmt: skip
    kept = int(steps * strength)
    assert planned.steps_run == kept and planned.scheduler == scheduler
    full = build_schedule(scheduler, CONFIG, steps)
    np.testing.assert_array_equal(planned.schedule.timesteps, full.timesteps[steps - kept :])
    assert planned.schedule.start == steps - kept and planned.schedule.total_steps == steps
    assert planned.params.num_inference_steps == steps  # the request keeps its own count


def test_without_init_image_every_step_runs() -> None:
    assert plan(num_inference_steps=13).steps_run == 13


def test_a_strength_that_leaves_no_step_is_refused() -> None:
    with pytest.raises(UsageError, match=r"0\.01 with 20 steps leaves no step") as caught:
        plan(init_image=picture(64, 64), strength=0.01, num_inference_steps=20)
    assert one_sentence(str(caught.value))


# ---------------------------------------------------------------- seeds and variations


def test_seeds_count_up_per_image() -> None:
    planned = plan(seed=7, num_images=3, batch_size=2)
    assert planned.seeds == (7, 8, 9) and planned.params.seed == 7
    assert planned.variations is None and planned.variation_for(2) is None


def test_a_random_seed_is_fixed_once_in_the_plan() -> None:
    planned = plan(num_images=2)
    seed = planned.params.seed
    assert isinstance(seed, int) and seed >= 0
    assert planned.seeds == (seed, seed + 1)


def test_variation_seeds_count_up_per_image_with_the_same_strength() -> None:
    planned = plan(seed=7, num_images=3, variation_seed=100, variation_strength=0.25)
    assert planned.variations == (
        Variation(100, 0.25), Variation(101, 0.25), Variation(102, 0.25)
    )  # fmt: skip
    assert planned.variation_for(1) == Variation(101, 0.25)


def test_a_variation_strength_of_0_is_no_variation() -> None:
    assert plan(variation_seed=5, variation_strength=0.0).variations is None


def test_a_variation_strength_needs_a_variation_seed() -> None:
    with pytest.raises(UsageError, match="variation strength needs a variation seed"):
        plan(variation_strength=0.5)


@pytest.mark.parametrize(
    ("seed", "count", "words"),
    [
        (-1, 1, "variation seed must be a whole number >= 0, got -1"),
        (True, 1, "variation seed must be a whole number >= 0, got True"),
        (2**63 - 1, 2, "variation seed 9223372036854775807 is too large for 2 images"),
    ],
)
def test_bad_variation_seeds_are_named_as_variation_seeds(
    seed: object, count: int, words: str
) -> None:
    with pytest.raises(UsageError, match=words) as caught:
        plan(variation_seed=seed, variation_strength=0.5, num_images=count)
    assert "-1 for random" not in str(caught.value)  # that is --seed's, refused here


def test_the_sampler_defaults_to_the_models_and_unknown_ones_are_refused() -> None:
    assert plan().scheduler == "ddpm" and plan().params.scheduler == "ddpm"
    with pytest.raises(UsageError, match="unknown scheduler 'lms'"):
        plan(scheduler="lms")


# ---------------------------------------------------------------- masks


def square_mask(width: int, height: int, box: tuple[int, int, int, int]) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    mask.paste(255, box)
    return mask


def test_the_outpainted_area_joins_the_mask() -> None:
    user = square_mask(64, 64, (16, 16, 32, 48))
    planned = plan(init_image=picture(64, 64), mask=user, outpaint=(64, 0, 0, 64), mask_blur=0)
    assert planned.inputs is not None and planned.inputs.mask is not None
    mask = np.asarray(planned.inputs.mask)
    assert mask.shape == (128, 128)
    assert (mask[:, :64] == 255).all() and (mask[64:, :] == 255).all()  # the new area
    np.testing.assert_array_equal(mask[:64, 64:], np.asarray(user))  # the user's, in place
    assert planned.inputs.paste_back


def test_outpainting_alone_masks_the_new_area_only() -> None:
    init = picture(64, 64)
    planned = plan(init_image=init, outpaint=(0, 64, 0, 0), mask_blur=0)
    assert planned.inputs is not None and planned.inputs.mask is not None
    mask = np.asarray(planned.inputs.mask)
    assert (mask[:, :64] == 0).all() and (mask[:, 64:] == 255).all()
    assert planned.inputs.mask_digest is None  # no mask was given
    canvas = np.asarray(planned.inputs.init)
    np.testing.assert_array_equal(canvas[:, :64], np.asarray(init))  # kept exactly


def test_the_mask_is_fitted_like_the_image_and_feathered() -> None:
    init = picture(128, 64)
    user = square_mask(128, 64, (32, 0, 64, 64))  # the centre crop's left half
    hard = plan(init_image=init, mask=user, width=64, height=64, mask_blur=0)
    assert hard.inputs is not None and hard.inputs.mask is not None
    mask = np.asarray(hard.inputs.mask)
    assert (mask[:, :30] == 255).all() and (mask[:, 34:] == 0).all()
    soft = plan(init_image=init, mask=user, width=64, height=64, mask_blur=4)
    assert soft.inputs is not None and soft.inputs.mask is not None
    feathered = np.asarray(soft.inputs.mask)
    assert 0 < feathered[32, 32] < 255  # the edge is grey now
    assert feathered[32, 0] > 200 and feathered[32, 63] == 0


def test_a_mask_of_another_size_names_both_sizes() -> None:
    with pytest.raises(UsageError) as caught:
        plan(init_image=picture(100, 70), mask=Image.new("L", (50, 40)))
    message = str(caught.value)
    assert "50x40" in message and "100x70" in message and one_sentence(message)


def test_paste_back_follows_the_request_and_needs_a_mask() -> None:
    mask = square_mask(64, 64, (0, 0, 32, 64))
    assert plan(init_image=picture(64, 64), mask=mask).inputs.paste_back  # type: ignore[union-attr]
    off = plan(init_image=picture(64, 64), mask=mask, paste_back=False)
    assert off.inputs is not None and not off.inputs.paste_back
    plain = plan(init_image=picture(64, 64))
    assert plain.inputs is not None and plain.inputs.mask is None and not plain.inputs.paste_back


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"mask": Image.new("L", (64, 64))}, "a mask needs an init image"),
        ({"strength": 0.5}, "a strength needs an init image"),
        ({"outpaint": (64, 0, 0, 0)}, "outpainting needs an init image"),
    ],
)
def test_image_options_without_an_init_image_are_refused(
    options: dict[str, object], words: str
) -> None:
    with pytest.raises(UsageError, match=words):
        plan(**options)


@pytest.mark.parametrize("strength", [0, 1.5, -0.1, float("nan"), True])
def test_strength_out_of_range_is_refused(strength: object) -> None:
    with pytest.raises(UsageError, match="strength must be a number in"):
        plan(init_image=picture(64, 64), strength=strength)


# ---------------------------------------------------------------- digests


def test_files_are_named_by_the_sha256_of_their_bytes(tmp_path: Path) -> None:
    init_path, mask_path = tmp_path / "photo.png", tmp_path / "mask.png"
    picture(96, 64).save(init_path)
    square_mask(96, 64, (0, 0, 48, 64)).save(mask_path)
    planned = plan(init_image=str(init_path), mask=mask_path)
    assert planned.inputs is not None and planned.inputs.mask_digest is not None
    init_digest = planned.inputs.init_digest
    assert init_digest.sha256 == hashlib.sha256(init_path.read_bytes()).hexdigest()
    assert init_digest.source == "file" and init_digest.name == "photo.png"
    assert planned.inputs.mask_digest.sha256 == hashlib.sha256(mask_path.read_bytes()).hexdigest()
    assert planned.inputs.mask_digest.as_dict() == {
        "sha256": hashlib.sha256(mask_path.read_bytes()).hexdigest(),
        "source": "file",
        "name": "mask.png",
    }


def test_in_memory_images_are_named_by_their_pixels(tmp_path: Path) -> None:
    image = picture(64, 64)
    digest = plan(init_image=image).inputs.init_digest  # type: ignore[union-attr]
    assert digest.source == "pixels" and digest.name is None
    assert digest == pixel_digest(image)
    assert plan(init_image=image.copy()).inputs.init_digest == digest  # type: ignore[union-attr]
    changed = image.copy()
    changed.putpixel((5, 5), (0, 0, 0) if image.getpixel((5, 5)) != (0, 0, 0) else (1, 1, 1))
    assert pixel_digest(changed) != digest
    # the same bytes in another shape or mode are another image
    flat = Image.frombytes("RGB", (32, 128), image.tobytes())
    assert pixel_digest(flat) != digest
    grey = Image.frombytes("L", (192, 64), image.tobytes())
    assert pixel_digest(grey) != digest
    # and a pixel digest is not the digest of any file holding the pixels
    image.save(tmp_path / "same.png")
    on_disk = plan(init_image=tmp_path / "same.png").inputs.init_digest  # type: ignore[union-attr]
    assert on_disk.source == "file" and on_disk.sha256 != digest.sha256


def test_a_missing_init_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"init image .*missing\.png does not exist"):
        plan(init_image=tmp_path / "missing.png")


def test_an_in_memory_mask_follows_the_file_rules(tmp_path: Path) -> None:
    # A brush painted on transparency: uniform colour, the alpha carries the drawing.
    brush = Image.new("RGBA", (64, 64), (255, 255, 255, 0))
    brush.paste((255, 255, 255, 255), (0, 0, 32, 64))
    brush.save(tmp_path / "brush.png")
    init = Image.new("RGB", (64, 64), (10, 20, 30))
    common = {"init_image": init, "width": 64, "height": 64, "mask_blur": 0}
    from_file = make_plan(GenerationParams("x", mask=tmp_path / "brush.png", **common), FACTS)
    in_memory = make_plan(GenerationParams("x", mask=brush, **common), FACTS)
    assert from_file.inputs is not None and in_memory.inputs is not None
    assert from_file.inputs.mask is not None and in_memory.inputs.mask is not None
    file_pixels = np.asarray(from_file.inputs.mask)
    assert np.array_equal(file_pixels, np.asarray(in_memory.inputs.mask))
    assert file_pixels[:, :32].min() == 255 and file_pixels[:, 32:].max() == 0
