"""PNG metadata: exact A1111 text, A1111-rules parsing, the sdxs_rt chunk, tEXt/iTXt/zTXt."""

from __future__ import annotations

import json
import random
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from sdxs_rt.errors import EXIT_NOT_FOUND, ModelNotFoundError, UsageError
from sdxs_rt.metadata import (
    FORMAT_VERSION,
    ImageRecord,
    ParsedParameters,
    describe_image,
    format_description,
    format_parameters,
    parse_parameters,
    png_info,
    read_metadata,
    record_from_parameters,
)
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


def text_chunks(path: Path) -> dict[bytes, tuple[bytes, bytes]]:
    """Keyword -> (chunk type, chunk body) of every text chunk, read from the raw bytes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, offset = {}, 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        body = data[offset + 8 : offset + 8 + length]
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            found[body.split(b"\0", 1)[0]] = (kind, body)
        offset += 12 + length
    return found


def chunk_types(path: Path) -> dict[bytes, bytes]:
    return {key: kind for key, (kind, _) in text_chunks(path).items()}


def save_with(path: Path, info: PngImagePlugin.PngInfo) -> Path:
    Image.new("RGB", (8, 4), (10, 20, 30)).save(path, pnginfo=info)
    return path


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


# ---------------------------------------------------------------- the sdxs_rt chunk


def test_sdxs_rt_json_round_trip_and_format_key() -> None:
    record = replace(RECORD, prompt="кот, 猫", extra={"eta": 0.0, "tags": ["a"]})
    data = json.loads(record.to_json())
    assert data["format"] == FORMAT_VERSION == 1
    assert ImageRecord.from_json(record.to_json()) == record


def test_sdxs_rt_json_tolerates_unknown_keys_and_missing_optional_ones() -> None:
    data = json.loads(RECORD.to_json())
    data.update(format=2, future_field=[1, 2])
    del data["variant"], data["revision"], data["extra"]
    record = ImageRecord.from_json(json.dumps(data))
    assert record == replace(RECORD, variant=None, extra={"future_field": [1, 2]})


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"prompt": "a"}'])
def test_sdxs_rt_json_errors_are_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="sdxs_rt metadata"):
        ImageRecord.from_json(text)


# ---------------------------------------------------------------- PNG chunks


def test_png_info_uses_text_for_latin1_and_itxt_for_other_text(tmp_path: Path) -> None:
    ascii_png = save_with(tmp_path / "a.png", png_info(RECORD))
    russian_png = save_with(tmp_path / "b.png", png_info(replace(RECORD, prompt="кот")))
    assert chunk_types(ascii_png) == {b"parameters": b"tEXt", b"sdxs_rt": b"tEXt"}
    assert chunk_types(russian_png) == {b"parameters": b"iTXt", b"sdxs_rt": b"iTXt"}


@pytest.mark.parametrize("prompt", ["a cat", "кот на ковре, 猫"])
def test_saved_png_reads_back_to_the_same_record(tmp_path: Path, prompt: str) -> None:
    record = replace(RECORD, prompt=prompt, negative_prompt="размыто")
    parameters, data = read_metadata(save_with(tmp_path / "x.png", png_info(record)))
    assert parameters == format_parameters(record)
    assert data is not None and ImageRecord.from_dict(data) == record
    assert parameters is not None
    assert record_from_parameters(parse_parameters(parameters)) == record_fields(record)


def test_revision_comes_after_our_keys_and_reads_back(tmp_path: Path) -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    record = replace(RECORD, revision=sha)
    assert format_parameters(record).endswith(f"{TAIL}, Revision: {sha}")
    assert "Revision" not in format_parameters(RECORD)  # only when a revision was pinned
    parameters, data = read_metadata(save_with(tmp_path / "x.png", png_info(record)))
    assert data is not None and data["revision"] == sha
    assert ImageRecord.from_dict(data) == record
    assert parameters is not None
    assert record_from_parameters(parse_parameters(parameters)) == record_fields(record)


def explicit_chunks(kind: str, text: str) -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    if kind == "tEXt":
        info.add_text("parameters", text)
    elif kind == "zTXt":
        info.add_text("parameters", text, zip=True)
    elif kind == "iTXt":
        info.add_itxt("parameters", text)
    else:  # compressed iTXt
        info.add_itxt("parameters", text, zip=True)
    return info


@pytest.mark.parametrize("kind", ["tEXt", "zTXt", "iTXt", "iTXt-compressed"])
def test_reads_text_ztxt_and_itxt_chunks(tmp_path: Path, kind: str) -> None:
    text = format_parameters(replace(RECORD, prompt="café, ünïcode"))  # latin-1: fits every kind
    path = save_with(tmp_path / "x.png", explicit_chunks(kind, text))
    assert chunk_types(path)[b"parameters"] == kind.split("-")[0].encode()
    body = text_chunks(path)[b"parameters"][1]
    if kind.startswith("iTXt"):  # keyword \0, then the compression flag
        assert body[len(b"parameters") + 1] == (kind == "iTXt-compressed")
    assert read_metadata(path) == (text, None)


def test_reads_chunks_stored_after_the_pixel_data(tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add(b"tEXt", b"parameters\0late text", after_idat=True)
    assert read_metadata(save_with(tmp_path / "x.png", info)) == ("late text", None)


def test_png_without_metadata_and_damaged_sdxs_rt_chunk(tmp_path: Path) -> None:
    assert read_metadata(save_with(tmp_path / "plain.png", PngImagePlugin.PngInfo())) == (
        None,
        None,
    )
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a cat")
    info.add_text("sdxs_rt", "{broken")
    assert read_metadata(save_with(tmp_path / "bad.png", info)) == ("a cat", None)


def test_missing_file_is_not_found_error_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.png"
    with pytest.raises(ModelNotFoundError, match=r"nope\.png") as caught:
        read_metadata(missing)
    assert isinstance(caught.value, FileNotFoundError)
    assert caught.value.exit_code == EXIT_NOT_FOUND


def test_non_png_and_unreadable_files_are_usage_errors(tmp_path: Path) -> None:
    jpeg = tmp_path / "x.jpg"
    Image.new("RGB", (4, 4)).save(jpeg)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    truncated = tmp_path / "cut.png"
    save_with(truncated, png_info(RECORD))
    truncated.write_bytes(truncated.read_bytes()[:-30])
    for path, message in [
        (jpeg, "JPEG image"),
        (garbage, "not an image"),
        (tmp_path, "folder"),
        (truncated, "cannot read"),
    ]:
        with pytest.raises(UsageError, match=message) as caught:
            read_metadata(path)
        assert str(path) in str(caught.value)


# ---------------------------------------------------------------- `sdxs-rt info`


def test_describe_image_and_human_description(tmp_path: Path) -> None:
    record = replace(RECORD, prompt="a cat\non a mat")
    path = save_with(tmp_path / "x.png", png_info(record))
    described = describe_image(path)
    assert described["path"] == str(path)
    assert (described["width"], described["height"]) == (8, 4)
    assert described["parameters"] == format_parameters(record)
    assert described["sdxs_rt"]["text_encoder"] == "google/siglip"
    assert described["parsed"]["prompt"] == "a cat\non a mat"
    assert described["parsed"]["params"]["Seed"] == "123"
    json.dumps(described)  # --json must be able to print it
    text = format_description(described)
    assert f"{path}: 8x4 PNG" in text
    assert "Prompt:           a cat\n                  on a mat" in text
    assert "Negative prompt:  blurry" in text and "Seed:             123" in text
    assert "text_encoder:" in text and "google/siglip" in text


def test_description_without_metadata(tmp_path: Path) -> None:
    path = save_with(tmp_path / "x.png", PngImagePlugin.PngInfo())
    described = describe_image(path)
    assert described["parameters"] is None and described["parsed"] is None
    assert "no generation metadata" in format_description(described)
