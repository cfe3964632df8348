"""PNG metadata: the sdxs_rt chunk, tEXt/iTXt/zTXt chunks, `sdxs-rt info` (the A1111 text itself:
tests/test_infotext.py)."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from sdxs_rt.errors import EXIT_NOT_FOUND, ModelNotFoundError, UsageError
from sdxs_rt.infotext import format_parameters, parse_parameters, record_from_parameters
from sdxs_rt.metadata import (
    FORMAT_VERSION,
    ImageRecord,
    describe_image,
    format_description,
    png_info,
    read_metadata,
)
from tests.test_infotext import IMAGE_RECORD, RECORD, TAIL, record_fields


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


def test_image_input_record_keeps_digests_in_the_chunk_and_fields_in_the_text(
    tmp_path: Path,
) -> None:
    parameters, data = read_metadata(save_with(tmp_path / "x.png", png_info(IMAGE_RECORD)))
    assert data is not None and ImageRecord.from_dict(data) == IMAGE_RECORD
    assert data["init_image"]["sha256"] == "ab" * 32 and data["mask"]["name"] == "mask.png"
    assert parameters is not None and "ab" * 32 not in parameters
    assert record_from_parameters(parse_parameters(parameters)) == record_fields(IMAGE_RECORD)


def test_record_loras_are_the_well_formed_entries_of_extra() -> None:
    good = {"name": "a", "file": "a.safetensors", "scale": 1.0, "hash": "0" * 12}
    record = replace(RECORD, extra={"loras": [good, {"scale": 2}, "b"]})
    assert record.loras == [good]
    assert replace(RECORD, extra={"loras": "a"}).loras == [] and RECORD.loras == []


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
