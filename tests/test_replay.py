"""`sdxs-rt info --replay`: images drawn by the CLI on the built-in model (text to image, img2img,
inpainting, outpainting, a variation) replay to identical pixels; a changed pixel, a missing
input, an in-memory input and a missing LoRA each give their exit code and one sentence."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, PngImagePlugin

from sdxs_rt.commands.cli import main
from sdxs_rt.errors import EXIT_NOT_FOUND, EXIT_REPLAY_DIFFERS, EXIT_USAGE, ModelNotFoundError
from sdxs_rt.metadata import ImageRecord, png_info, read_metadata
from sdxs_rt.replay import (
    ReplayOptions,
    compare_images,
    find_loras,
    prepare_replay,
    recorded_model,
)
from tests.test_infotext import RECORD

FAST = ["--steps", "3", "-q"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """An init image (96x80: fitted, not just copied) and a same-size mask, in their own folder."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    image = Image.new("RGB", (96, 80), (30, 60, 200))
    ImageDraw.Draw(image).ellipse((24, 16, 72, 64), fill=(220, 30, 30))
    image.save(folder / "init.png")
    mask = Image.new("L", (96, 80), 0)
    ImageDraw.Draw(mask).rectangle((8, 8, 40, 40), fill=255)
    mask.save(folder / "mask.png")
    return folder


def generate(capsys: pytest.CaptureFixture[str], out: Path, *argv: str) -> None:
    code, _, err = run_cli(capsys, "generate", "a red circle on a blue background", *FAST,
                           "-o", str(out), *argv)  # fmt: skip
    assert code == 0, err


CASES = {
    "text to image": ["--seed", "11", "--size", "64x64"],
    "img2img": ["--seed", "12", "--init-image", "{inputs}/init.png", "--strength", "0.7",
                "--resize-mode", "stretch"],
    "inpainting": ["--seed", "13", "--init-image", "{inputs}/init.png", "--mask",
                   "{inputs}/mask.png", "--mask-blur", "2", "--strength", "0.9"],
    "outpainting": ["--seed", "14", "--init-image", "{inputs}/init.png", "--outpaint",
                    "64,0,0,0", "--no-paste-back"],
    "hires fix": ["--seed", "15", "--size", "64x64", "--hires-scale", "2", "--hires-steps",
                  "4", "--hires-upscaler", "latent"],
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_cli_images_replay_identical(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, inputs: Path, case: str
) -> None:
    out = tmp_path / "out" / "image.png"
    generate(capsys, out, *(arg.format(inputs=inputs) for arg in CASES[case]))
    code, stdout, stderr = run_cli(capsys, "info", str(out), "--replay", "--inputs", str(inputs))
    width, height = Image.open(out).size
    assert (code, stdout) == (0, f"replay: identical ({width} x {height})\n"), stderr
    if case == "outpainting":
        assert (width, height) == (128, 64)
    if case == "hires fix":
        assert (width, height) == (128, 128)


def test_variation_image_of_a_batch_replays_with_its_own_seeds(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    generate(capsys, tmp_path / "{index}.png", "--seed", "3", "--size", "64x64", "--count", "2",
             "--variation-seed", "9", "--variation-strength", "0.4")  # fmt: skip
    second = tmp_path / "1.png"
    _, record = read_metadata(second)
    assert record is not None and (record["seed"], record["variation_seed"]) == (4, 10)
    code, stdout, _ = run_cli(capsys, "info", str(second), "--replay", "--json")
    assert code == 0
    assert json.loads(stdout) == {
        "path": str(second), "identical": True, "width": 64, "height": 64, "replay_width": 64,
        "replay_height": 64, "differing_pixels": 0, "max_abs_diff": 0,
    }  # fmt: skip


def test_inputs_are_found_in_the_images_own_folder_by_default(
    capsys: pytest.CaptureFixture[str], inputs: Path
) -> None:
    out = inputs / "result.png"  # beside init.png and mask.png, under other names
    generate(capsys, out, "--seed", "21", "--init-image", str(inputs / "init.png"),
             "--mask", str(inputs / "mask.png"))  # fmt: skip
    (inputs / "init.png").rename(inputs / "renamed.png")  # found by hash, not by name
    code, stdout, _ = run_cli(capsys, "info", str(out), "--replay")
    assert (code, stdout) == (0, "replay: identical (64 x 64)\n")


def test_changed_pixel_reports_differs_with_its_exit_code(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "a.png"
    generate(capsys, out, "--seed", "5", "--size", "64x64")
    with Image.open(out) as image:
        texts = dict(image.text)
        pixels = np.array(image.convert("RGB"))
    pixels[10, 20, 1] = (int(pixels[10, 20, 1]) + 37) % 256
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    Image.fromarray(pixels).save(out, pnginfo=info)
    code, stdout, _ = run_cli(capsys, "info", str(out), "--replay")
    diff = min(37, 256 - 37)  # the change wrapped around or not
    assert code == EXIT_REPLAY_DIFFERS == 7
    assert stdout in (f"replay: differs: 1 pixel, max |diff| {d}\n" for d in (37, diff))


def test_missing_input_is_one_sentence_and_not_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, inputs: Path
) -> None:
    out = tmp_path / "out.png"
    generate(capsys, out, "--seed", "6", "--init-image", str(inputs / "init.png"))
    empty = tmp_path / "empty"
    empty.mkdir()
    code, stdout, stderr = run_cli(capsys, "info", str(out), "--replay", "--inputs", str(empty))
    sha = hashlib.sha256((inputs / "init.png").read_bytes()).hexdigest()
    assert (code, stdout) == (EXIT_NOT_FOUND, "")
    assert stderr == (
        f"sdxs-rt: error: the init image (init.png, sha256 {sha[:12]}) is not in {empty}; "
        "give the folder that holds it with --inputs DIR\n"
    )


# ---------------------------------------------------------------- refused before loading


def save_record(path: Path, record: ImageRecord) -> Path:
    Image.new("RGB", (64, 64)).save(path, pnginfo=png_info(record))
    return path


DEMO = replace(RECORD, model="demo-shapes", width=64, height=64, precision="fp32", device="cpu")


def test_input_given_as_pixels_cannot_be_found(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    digest = {"sha256": "ab" * 32, "source": "pixels", "name": None}
    path = save_record(tmp_path / "x.png", replace(DEMO, init_image=digest, strength=0.5))
    code, _, stderr = run_cli(capsys, "info", str(path), "--replay")
    assert code == EXIT_NOT_FOUND
    assert stderr.count("\n") == 1 and "pixels in memory, not as a file" in stderr


def test_missing_lora_is_refused_and_present_ones_are_found_by_name_or_hash(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    lora_file = tmp_path / "style.safetensors"
    lora_file.write_bytes(b"not really a LoRA, but hashed like one")
    digest = hashlib.sha256(lora_file.read_bytes()).hexdigest()[:12]
    lora = {"name": "style", "file": "style.safetensors", "scale": 0.8, "hash": digest}
    record = replace(DEMO, extra={"loras": [lora]})
    assert find_loras(record, tmp_path) == [f"{lora_file}:0.8"]
    lora_file.rename(tmp_path / "renamed.safetensors")
    assert find_loras(record, tmp_path) == [f"{tmp_path / 'renamed.safetensors'}:0.8"]
    path = save_record(tmp_path / "x.png", record)
    code, _, stderr = run_cli(
        capsys, "info", str(path), "--replay", "--inputs", str(tmp_path / "x")
    )
    assert code == EXIT_NOT_FOUND and "LoRA style.safetensors" in stderr
    assert stderr.count("\n") == 1


def test_records_and_models_that_cannot_be_replayed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    code, _, stderr = run_cli(capsys, "info", str(plain), "--replay")
    assert code == EXIT_USAGE and "has no sdxs_rt record" in stderr
    code, _, stderr = run_cli(
        capsys, "info", str(save_record(tmp_path / "s.png", RECORD)), "--replay"
    )
    assert code == EXIT_USAGE and "is 64x64 but its record describes a 576x576 image" in stderr
    with pytest.raises(ModelNotFoundError, match="give its path with --model"):
        recorded_model(replace(DEMO, model="my-local-model"))
    assert recorded_model(DEMO) is None  # the built-in model
    assert recorded_model(replace(DEMO, model="AiArtLab/sdxs")) == "AiArtLab/sdxs"
    hub_record = replace(DEMO, model="AiArtLab/sdxs", revision="0" * 40, variant="fp16")
    job = prepare_replay(save_record(tmp_path / "h.png", hub_record))
    assert job.load["model"] == "AiArtLab/sdxs" and job.load["revision"] == "0" * 40
    job = prepare_replay(
        save_record(tmp_path / "r.png", replace(hub_record, model="my-local-model")),
        ReplayOptions(model=str(tmp_path), device="cuda", precision="fp16"),
    )
    assert (job.load["model"], job.load["device"], job.load["dtype"], job.load["revision"]) == (
        str(tmp_path), "cuda", "fp16", None,
    )  # fmt: skip
    assert job.params.num_images == 1 and job.params.seed == DEMO.seed


def test_replay_flags_without_replay_are_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = save_record(tmp_path / "x.png", DEMO)
    code, _, stderr = run_cli(capsys, "info", str(path), "--inputs", str(tmp_path))
    assert code == EXIT_USAGE and "--inputs apply to --replay only" in stderr


def test_compare_images_counts_pixels_and_names_size_mismatches() -> None:
    a = Image.new("RGB", (4, 2), (10, 10, 10))
    b = a.copy()
    b.putpixel((0, 0), (10, 15, 8))
    b.putpixel((3, 1), (0, 10, 10))
    assert compare_images(a, b).summary() == "replay: differs: 2 pixels, max |diff| 10"
    assert compare_images(a, a).summary() == "replay: identical (4 x 2)"
    other = compare_images(a, Image.new("RGB", (2, 4)))
    assert not other.identical
    assert other.summary() == "replay: differs: the replay is 2x4, the image 4x2"
