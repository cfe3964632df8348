"""A1111 `parameters` text: the exact text A1111 writes, A1111-rules parsing, and every label
of `sdxs_rt.infotext.LABELS` (A1111's img2img, inpainting and variation labels, and ours)
written and read back."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from sdxs_rt.infotext import (
    LABELS,
    RE_PARAM,
    ParsedParameters,
    format_parameters,
    parameter_items,
    parse_parameters,
    quote,
    record_from_parameters,
)
from sdxs_rt.metadata import ImageRecord
from sdxs_rt.scheduler_table import scheduler_for_label

try:
    from hypothesis import assume, given, settings
    from hypothesis import strategies as st
except ImportError:  # the fixed-seed generator below still covers the same properties
    st = None

RECORD = ImageRecord(
    prompt="a cat",
    negative_prompt="blurry",
    steps=40,
    guidance_scale=5.5,
    seed=123,
    width=576,
    height=576,
    scheduler="ddpm",
    scheduler_label="DDPM",
    model="IDKiro/sdxs-512-dreamshaper",
    model_hash="a1b2c3d4e5",
    backend="torch",
    precision="fp16",
    device="cuda:0",
    rng="numpy-pcg64",
    version="0.1.0",
    text_encoder="google/siglip",
    variant="fp16",
)

TAIL = "Version: sdxs-rt 0.1.0, Backend: torch, RNG: numpy-pcg64, Precision: fp16, Scheduler: ddpm"

# An inpainted, outpainted variation: every image-input and variation field set.
DIGEST = {"sha256": "ab" * 32, "source": "file", "name": "in.png"}
IMAGE_RECORD = replace(
    RECORD,
    strength=0.6,
    resize_mode="crop",
    mask_blur=4,
    paste_back=True,
    outpaint=[64, 0, 128, 0],
    init_image=DIGEST,
    mask={**DIGEST, "sha256": "cd" * 32, "name": "mask.png"},
    variation_seed=77,
    variation_strength=0.25,
)
# The fields the A1111 text carries (the digests live in the sdxs_rt chunk only).
TEXT_FIELDS = (
    "strength", "resize_mode", "mask_blur", "paste_back", "outpaint", "variation_seed",
    "variation_strength",
)  # fmt: skip


# ---------------------------------------------------------------- exact text


def test_exact_a1111_text_with_negative() -> None:
    assert format_parameters(RECORD) == (
        "a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 40, Sampler: DDPM, CFG scale: 5.5, Seed: 123, Size: 576x576, "
        f"Model hash: a1b2c3d4e5, Model: IDKiro/sdxs-512-dreamshaper, {TAIL}"
    )


def test_exact_text_without_negative_or_hash_and_integer_cfg_as_float() -> None:
    record = replace(RECORD, negative_prompt="", model_hash="", guidance_scale=7, width=512)
    assert format_parameters(record) == (
        "a cat\n"
        "Steps: 40, Sampler: DDPM, CFG scale: 7.0, Seed: 123, Size: 512x576, "
        f"Model: IDKiro/sdxs-512-dreamshaper, {TAIL}"
    )


def test_prompt_is_written_raw_and_values_with_separators_are_json_quoted() -> None:
    record = replace(
        RECORD,
        prompt="masterpiece, a cat: sitting\non a mat",
        negative_prompt="low quality,\nworst: ever",
        model='C:\\models\\sdxs, "v2"',
        scheduler_label="DPM++ 2M Karras",
    )
    assert format_parameters(record) == (
        "masterpiece, a cat: sitting\non a mat\n"
        "Negative prompt: low quality,\nworst: ever\n"
        "Steps: 40, Sampler: DPM++ 2M Karras, CFG scale: 5.5, Seed: 123, Size: 576x576, "
        'Model hash: a1b2c3d4e5, Model: "C:\\\\models\\\\sdxs, \\"v2\\"", ' + TAIL
    )


def test_values_a1111_would_misread_are_quoted_too() -> None:
    text = format_parameters(replace(RECORD, model='"quoted"', backend=" padded "))
    assert 'Model: "\\"quoted\\""' in text and 'Backend: " padded "' in text
    params = parse_parameters(text).params
    assert params["Model"] == '"quoted"' and params["Backend"] == " padded "


# ---------------------------------------------------------------- parsing like A1111


def test_parse_real_a1111_text_with_schedule_type_and_quoted_hashes() -> None:
    text = (
        "1girl, (masterpiece:1.2)\nsecond line\n"
        "Negative prompt: ugly\nbad hands\n"
        "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, "
        'Size: 512x768, Model hash: 6ce0161689, Model: v1-5, Lora hashes: "a: 1f, b: 2e", '
        "Version: v1.10.1"
    )
    parsed = parse_parameters(text)
    assert parsed.prompt == "1girl, (masterpiece:1.2)\nsecond line"
    assert parsed.negative_prompt == "ugly\nbad hands"
    assert parsed.params["Lora hashes"] == "a: 1f, b: 2e"
    assert record_from_parameters(parsed) == {
        "prompt": parsed.prompt,
        "negative_prompt": "ugly\nbad hands",
        "steps": 20,
        "scheduler_label": "DPM++ 2M",
        "scheduler": "dpmpp_2m_karras",
        "guidance_scale": 7.0,
        "seed": 42,
        "width": 512,
        "height": 768,
        "model_hash": "6ce0161689",
        "model": "v1-5",
        "extra": {"Schedule type": "Karras", "Lora hashes": "a: 1f, b: 2e", "Version": "v1.10.1"},
    }


def test_last_line_with_fewer_than_three_parameters_is_prompt() -> None:
    parsed = parse_parameters("a cat\nStyle: oil, Mood: calm")
    assert parsed == ParsedParameters("a cat\nStyle: oil, Mood: calm", "", {})


def test_lines_are_stripped_and_leading_blank_negative_line_dropped_like_a1111() -> None:
    parsed = parse_parameters("  a cat  \nNegative prompt:\n  ugly\nSteps: 1, Seed: 2, Size: 3x4")
    assert (parsed.prompt, parsed.negative_prompt) == ("a cat", "ugly")


def test_unreadable_values_and_unknown_samplers_are_kept_not_guessed() -> None:
    parsed = parse_parameters("x\nSteps: many, Sampler: UniPC, Seed: 5, Size: big, Scheduler: foo")
    values = record_from_parameters(parsed)
    assert values["seed"] == 5 and values["scheduler_label"] == "UniPC"
    assert "scheduler" not in values and "steps" not in values and "width" not in values
    assert values["extra"] == {"Steps": "many", "Size": "big", "Scheduler": "foo"}


@pytest.mark.parametrize(
    ("label", "schedule", "expected"),
    [
        ("Euler a", "", "euler_a"),
        ("euler A", "Automatic", "euler_a"),
        ("DPM++ 2M Karras", "", "dpmpp_2m_karras"),
        ("DPM++ 2M Karras", "Karras", "dpmpp_2m_karras"),
        ("DPM++ 2M", "Karras", "dpmpp_2m_karras"),
        ("DPM++ 2M", "Exponential", None),
        ("DDIM", "Karras", None),
        ("UniPC", "", None),
    ],
)
def test_scheduler_for_a1111_label(label: str, schedule: str, expected: str | None) -> None:
    assert scheduler_for_label(label, schedule) == expected


# ---------------------------------------------------------------- round trip


def record_fields(record: ImageRecord) -> dict[str, object]:
    """What record_from_parameters must give back for a record written by format_parameters."""
    return {
        "prompt": record.prompt,
        "negative_prompt": record.negative_prompt,
        "steps": record.steps,
        "scheduler_label": record.scheduler_label,
        "guidance_scale": float(record.guidance_scale),
        "seed": record.seed,
        "width": record.width,
        "height": record.height,
        "model_hash": record.model_hash,
        "model": record.model,
        "version": record.version,
        "backend": record.backend,
        "rng": record.rng,
        "precision": record.precision,
        "scheduler": record.scheduler,
        **({"revision": record.revision} if record.revision else {}),
        **{
            name: getattr(record, name) for name in TEXT_FIELDS if getattr(record, name) is not None
        },
    }


def a1111_representable(prompt: str, negative: str) -> bool:
    """The prompts A1111's own format can carry; the round-trip property holds for exactly these.

    A1111's format is ambiguous (or lossy) for: lines with leading or trailing whitespace (the
    parser strips every line), prompts or negatives that start with a blank line (the whole text
    is stripped, and the negative drops an empty first line), and lines starting with
    `Negative prompt:` inside a prompt or negative (that line would start the negative). A
    prompt whose last line looks like a parameter line is NOT ambiguous for text we write,
    because our parameter line always comes last: such prompts stay in the strategy.
    """
    for text in (prompt, negative):
        lines = text.split("\n")
        if any(line != line.strip() or line.startswith("Negative prompt:") for line in lines):
            return False
        if text.startswith("\n"):
            return False
    return True


def assert_round_trip(prompt: str, negative: str, model: str, guidance: float, seed: int) -> None:
    record = replace(
        RECORD,
        prompt=prompt,
        negative_prompt=negative,
        model=model,
        guidance_scale=guidance,
        seed=seed,
    )
    parsed = parse_parameters(format_parameters(record))
    assert (parsed.prompt, parsed.negative_prompt) == (prompt, negative)
    assert record_from_parameters(parsed) == record_fields(record)


PIECES = [
    "a", "cat", " ", ", ", ",", ":", ": ", '"', "\\", "\n", "\n\n", "кот", "猫", "é", "🐱", "{",
    "(masterpiece:1.2)", "Steps: 1, Seed: 2, Size: 3x4", "Negative", "prompt", "Sampler: x",
]  # fmt: skip


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 12)))


def test_round_trip_many_fixed_seed_prompts() -> None:
    rng = random.Random(1234)
    checked = 0
    while checked < 2000:
        prompt, negative, model = random_text(rng), random_text(rng), random_text(rng)
        if not a1111_representable(prompt, negative) or not model:
            continue
        assert_round_trip(prompt, negative, model, rng.uniform(0, 20), rng.randrange(2**32))
        checked += 1


def test_round_trip_includes_prompt_whose_last_line_looks_like_parameters() -> None:
    assert_round_trip("a cat\nSteps: 1, Seed: 2, Size: 3x4", "", "m", 5.5, 1)
    assert_round_trip("a cat", "x\nSteps: 1, Seed: 2, Size: 3x4", "m", 5.5, 1)


def test_the_excluded_cases_really_are_ambiguous() -> None:
    """Guards the docstring of a1111_representable: these do not survive A1111's format."""
    for prompt, negative in [(" a", ""), ("a\nNegative prompt: b", ""), ("\na", ""), ("a", "\nb")]:
        assert not a1111_representable(prompt, negative)
        record = replace(RECORD, prompt=prompt, negative_prompt=negative)
        parsed = parse_parameters(format_parameters(record))
        assert (parsed.prompt, parsed.negative_prompt) != (prompt, negative)


if st is not None:
    TEXT = st.text(st.sampled_from(list('ab ,:"\\\n{}()кот猫é🐱')) | st.characters(), max_size=40)

    @settings(max_examples=300, deadline=None)
    @given(
        TEXT,
        TEXT,
        TEXT.filter(bool),
        st.floats(0, 50, allow_nan=False),
        st.integers(0, 2**32 - 1),
    )
    def test_round_trip_hypothesis(
        prompt: str, negative: str, model: str, guidance: float, seed: int
    ) -> None:
        assume(a1111_representable(prompt, negative))
        assert_round_trip(prompt, negative, model, guidance, seed)


# ---------------------------------------------------------------- img2img, inpainting, variations


def test_exact_text_with_every_image_input_and_variation_label() -> None:
    assert format_parameters(IMAGE_RECORD) == (
        "a cat\n"
        "Negative prompt: blurry\n"
        "Steps: 40, Sampler: DDPM, CFG scale: 5.5, Seed: 123, Size: 576x576, "
        "Model hash: a1b2c3d4e5, Model: IDKiro/sdxs-512-dreamshaper, "
        "Variation seed: 77, Variation seed strength: 0.25, Denoising strength: 0.6, "
        f"Mask blur: 4, Resize mode: Crop and resize, {TAIL}, "
        'Outpaint: "64,0,128,0", Paste back: True'
    )


def test_text_to_image_writes_none_of_the_image_input_labels() -> None:
    keys = {key for key, _ in parameter_items(RECORD)}
    assert keys.isdisjoint(
        {"Variation seed", "Denoising strength", "Mask blur", "Resize mode", "Outpaint",
         "Paste back", "Lora hashes", "LoRA"}
    )  # fmt: skip


def test_a1111_own_labels_and_order() -> None:
    """A1111's create_infotext order: Seed, Size, Model hash, Model, Variation seed, Variation
    seed strength, Denoising strength, then its extra parameters (Mask blur), then Version."""
    keys = [key for key, _ in parameter_items(IMAGE_RECORD)]
    a1111 = ["Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model",
             "Variation seed", "Variation seed strength", "Denoising strength", "Mask blur",
             "Version"]  # fmt: skip
    assert [key for key in keys if key in a1111] == a1111
    # A1111's own regex finds every key with its value, so A1111 reads the line as we wrote it.
    last_line = format_parameters(IMAGE_RECORD).split("\n")[-1]
    assert [key for key, _ in RE_PARAM.findall(last_line)] == keys


def test_each_label_appears_once_and_every_field_label_reads_back() -> None:
    labels = [entry.label for entry in LABELS]
    assert len(labels) == len(set(labels))
    # Every label set at once (hires fields next to image inputs only here: each label is
    # parsed alone below).
    record = replace(
        IMAGE_RECORD,
        revision="0123456789abcdef" * 2,
        hires_scale=2.0,
        hires_steps=12,
        hires_upscaler="latent",
        walk_prompt="a blue circle, on white",
        walk_negative_prompt="blurry",
        walk_t=0.25,
    )
    written = dict(parameter_items(record))
    for entry in LABELS:
        if entry.read is None:
            continue
        value = entry.write(record)
        assert value is not None and entry.label in written, entry.label
        parsed = parse_parameters(f"x\nAa: 1, Bb: 2, {entry.label}: {quote(written[entry.label])}")
        fields = record_from_parameters(parsed)
        read = entry.read(parsed.params[entry.label])
        assert read and all(fields[name] == getattr(record, name) for name in read)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"paste_back": False, "mask_blur": 0, "resize_mode": "stretch"},
        {"strength": 1.0, "outpaint": None, "mask": None, "mask_blur": None, "paste_back": None},
        {"strength": None, "resize_mode": None, "mask_blur": None, "paste_back": None,
         "outpaint": None, "init_image": None, "mask": None},
        {"variation_seed": 2**32 - 1, "variation_strength": 1.0},
        {"variation_seed": None, "variation_strength": None, "strength": 0.05},
    ],
)  # fmt: skip
def test_round_trip_of_every_new_label(changes: dict[str, Any]) -> None:
    record = replace(IMAGE_RECORD, **changes)
    parsed = parse_parameters(format_parameters(record))
    assert record_from_parameters(parsed) == record_fields(record)


def test_real_a1111_img2img_inpaint_text_reads_into_fields() -> None:
    text = (
        "a cat\n"
        "Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1, "
        "Size: 512x512, Model hash: 6ce0161689, Model: v1-5, Variation seed: 5, "
        "Variation seed strength: 0.3, Denoising strength: 0.75, Mask blur: 4, "
        "Inpaint area: Only masked, Masked area padding: 32, Masked content: fill, "
        "Mask mode: Inpaint not masked, Version: v1.10.1"
    )
    values = record_from_parameters(parse_parameters(text))
    assert values["strength"] == 0.75 and values["mask_blur"] == 4
    assert values["variation_seed"] == 5 and values["variation_strength"] == 0.3
    # What sdxs-rt cannot do the same way is kept, not guessed.
    assert values["extra"] == {
        "Schedule type": "Automatic",
        "Inpaint area": "Only masked",
        "Masked area padding": "32",
        "Masked content": "fill",
        "Mask mode": "Inpaint not masked",
        "Version": "v1.10.1",
    }


@pytest.mark.parametrize(
    ("value", "mode"),
    [("Just resize", "stretch"), ("Crop and resize", "crop"), ("crop and resize", "crop"),
     ("0", "stretch"), ("1", "crop"), ("stretch", "stretch"), ("crop", "crop"),
     ("Resize and fill", None), ("2", None), ("Just resize (latent upscale)", None)],
)  # fmt: skip
def test_resize_mode_reads_a1111_choices_indices_and_our_names(
    value: str, mode: str | None
) -> None:
    values = record_from_parameters(parse_parameters(f"x\nSteps: 1, Seed: 2, Resize mode: {value}"))
    if mode is None:
        assert "resize_mode" not in values and values["extra"] == {"Resize mode": value}
    else:
        assert values["resize_mode"] == mode


@pytest.mark.parametrize(
    "pair",
    ["Denoising strength: 1.5", "Denoising strength: much", "Mask blur: -1", "Mask blur: 2.5",
     "Variation seed strength: 2", "Variation seed: x", "Outpaint: \"64,64\"",
     "Paste back: maybe", "Outpaint: \"-64,0,0,0\""],
)  # fmt: skip
def test_unreadable_new_values_are_kept_in_extra(pair: str) -> None:
    key, value = pair.split(": ", 1)
    values = record_from_parameters(parse_parameters(f"x\nSteps: 1, Seed: 2, {pair}"))
    assert values["extra"] == {key: value.strip('"')}


def test_loras_are_written_with_a1111_hashes_and_read_back_raw() -> None:
    loras = [{"name": "style", "file": "style.safetensors", "scale": 0.8, "hash": "0123456789ab"}]
    record = replace(RECORD, extra={"loras": loras})
    items = dict(parameter_items(record))
    assert items["Lora hashes"] == "style: 0123456789ab" and items["LoRA"] == "style: 0.8"
    values = record_from_parameters(parse_parameters(format_parameters(record)))
    assert values["extra"] == {"Lora hashes": "style: 0123456789ab", "LoRA": "style: 0.8"}
