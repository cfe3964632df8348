"""`sdxs-rt generate` with image inputs: the flags end to end on the demo model, and bad input.

Every bad input exits with its code (sdxs_rt/errors.py: 2 usage, 3 file not found), says so in
one `sdxs-rt: error:` line and leaves the output folder empty.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from sdxs_rt import image_inputs
from sdxs_rt.commands import generate
from sdxs_rt.commands.cli import main
from sdxs_rt.dev.demo.check import measure
from sdxs_rt.dev.demo.data import Combination, render
from sdxs_rt.errors import EXIT_NOT_FOUND, EXIT_USAGE
from sdxs_rt.metadata import read_metadata
from sdxs_rt.pipeline import Pipeline

PROMPT = "a red circle on a blue background"
FAST = ["--steps", "6", "--seed", "3"]


def test_the_parsers_resize_modes_are_the_libraries() -> None:
    assert generate.RESIZE_MODES == image_inputs.RESIZE_MODES


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A 64x64 red circle on blue, a left-half mask, a mask of another size, an empty folder."""
    init = tmp_path / "circle.png"
    render(Combination("circle", "red", "blue"), 64, seed=1).save(init)
    mask = tmp_path / "mask.png"
    left = Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))
    left.save(mask)
    small_mask = tmp_path / "small-mask.png"
    Image.new("L", (32, 32), 255).save(small_mask)
    out = tmp_path / "out"
    out.mkdir()
    return {"init": init, "mask": mask, "small_mask": small_mask, "out": out}


def generate_into(
    capsys: pytest.CaptureFixture[str], out: Path, *flags: str
) -> tuple[int, list[dict[str, Any]], str]:
    code = main(["generate", PROMPT, *FAST, "-o", f"{out}/", "--json", *flags])
    stdout, stderr = capsys.readouterr()
    return code, [json.loads(line) for line in stdout.splitlines()], stderr


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def only_png(folder: Path) -> Path:
    (path,) = folder.iterdir()
    assert path.suffix == ".png"
    return path


# ---------------------------------------------------------------- the flags, end to end


def test_img2img_records_the_strength_and_the_init_images_sha256(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    code, (line,), _ = generate_into(
        capsys, files["out"], "--init-image", str(files["init"]), "--strength", "0.5"
    )
    assert code == 0
    path = only_png(files["out"])
    assert line["path"] == str(path)
    image = Image.open(path)
    assert image.size == (64, 64) and measure(image) == ("red", "blue")
    parameters, record = read_metadata(path)
    assert record is not None and parameters is not None
    expected_init = {"sha256": sha256(files["init"]), "source": "file", "name": "circle.png"}
    assert record["strength"] == 0.5 and record["init_image"] == expected_init
    assert record["resize_mode"] == "crop" and record["mask"] is None
    assert "Denoising strength: 0.5" in parameters
    assert line["strength"] == 0.5 and line["init_image"] == expected_init


def test_inpainting_flags_are_recorded(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    code, (line,), _ = generate_into(
        capsys, files["out"], "--init-image", str(files["init"]), "--mask", str(files["mask"]),
        "--mask-blur", "2", "--no-paste-back",
    )  # fmt: skip
    assert code == 0
    _, record = read_metadata(only_png(files["out"]))
    assert record is not None
    assert record["strength"] == 0.75  # the default
    assert record["init_image"]["sha256"] == sha256(files["init"])
    assert record["mask"] == {"sha256": sha256(files["mask"]), "source": "file", "name": "mask.png"}
    assert record["mask_blur"] == 2 and record["paste_back"] is False
    assert line["mask"]["sha256"] == sha256(files["mask"]) and line["paste_back"] is False


def test_outpainting_grows_the_image_and_records_the_amounts(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    code, (line,), _ = generate_into(
        capsys, files["out"], "--init-image", str(files["init"]), "--outpaint", "64,0,0,64"
    )
    assert code == 0
    path = only_png(files["out"])
    assert Image.open(path).size == (128, 128)
    _, record = read_metadata(path)
    assert record is not None
    assert record["outpaint"] == [64, 0, 0, 64] and record["strength"] == 1.0
    assert (record["width"], record["height"]) == (128, 128) == (line["width"], line["height"])
    assert record["paste_back"] is True and record["mask"] is None  # only the new area


def test_an_explicit_size_and_resize_mode_are_used(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    wide = tmp_path / "wide.png"
    render(Combination("square", "yellow", "black"), 64, seed=2).resize((150, 70)).save(wide)
    code, (line,), _ = generate_into(
        capsys, files["out"], "--init-image", str(wide), "--resize-mode", "stretch",
        "--size", "128x64", "--strength", "0.4",
    )  # fmt: skip
    assert code == 0
    path = only_png(files["out"])
    assert Image.open(path).size == (128, 64)
    _, record = read_metadata(path)
    assert record is not None and record["resize_mode"] == "stretch"
    assert record["init_image"]["sha256"] == sha256(wide) and line["resize_mode"] == "stretch"


def test_variation_seeds_are_recorded_per_image(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    code, lines, _ = generate_into(
        capsys, files["out"], "--count", "2", "--variation-seed", "9",
        "--variation-strength", "0.5",
    )  # fmt: skip
    assert code == 0 and len(lines) == 2
    records = [read_metadata(Path(line["path"]))[1] for line in lines]
    assert [(r["seed"], r["variation_seed"], r["variation_strength"]) for r in records] == [  # type: ignore[index]
        (3, 9, 0.5),
        (4, 10, 0.5),
    ]
    assert all(r["strength"] is None and r["init_image"] is None for r in records)  # type: ignore[index]


# ---------------------------------------------------------------- bad input


def refused(capsys: pytest.CaptureFixture[str], out: Path, *flags: str) -> tuple[int, str]:
    """Run generate expecting a refusal: (exit code, the error line); nothing written."""
    code = main(["generate", PROMPT, *FAST, "-o", f"{out}/", *flags])
    stdout, stderr = capsys.readouterr()
    errors = [line for line in stderr.splitlines() if line.startswith("sdxs-rt: error:")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr and stdout == ""
    assert list(out.iterdir()) == []
    return code, errors[0]


def test_a_file_that_is_not_an_image_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("not a picture\n")
    code, line = refused(capsys, files["out"], "--init-image", str(fake))
    assert code == EXIT_USAGE and "notes.png" in line and "not an image file" in line


def test_a_truncated_image_and_a_folder_are_usage_errors(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(files["init"].read_bytes()[:100])
    code, line = refused(capsys, files["out"], "--init-image", str(truncated))
    assert code == EXIT_USAGE and "cut.png" in line
    code, line = refused(capsys, files["out"], "--init-image", str(tmp_path))
    assert code == EXIT_USAGE and "is a folder" in line


def test_a_missing_init_image_or_mask_is_not_found(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.png"
    code, line = refused(capsys, files["out"], "--init-image", str(missing))
    assert code == EXIT_NOT_FOUND and "nowhere.png does not exist" in line
    code, line = refused(
        capsys, files["out"], "--init-image", str(files["init"]), "--mask", str(missing)
    )
    assert code == EXIT_NOT_FOUND and "mask" in line and "nowhere.png" in line


def test_a_mask_of_another_size_names_both_sizes(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path]
) -> None:
    code, line = refused(
        capsys, files["out"], "--init-image", str(files["init"]),
        "--mask", str(files["small_mask"]),
    )  # fmt: skip
    assert code == EXIT_USAGE and "32x32" in line and "64x64" in line


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--strength", "0"], "strength must be a number in (0, 1]"),
        (["--strength", "1.5"], "strength must be a number in (0, 1]"),
        (["--strength", "0.01", "--steps", "20"], "leaves no step to run"),
        (["--outpaint", "32,0,0,0"], "outpaint left 32 is not a multiple of 64"),
        (["--outpaint", "64,64"], "four whole numbers"),
        (["--mask-blur", "-1"], "mask blur"),
        (["--variation-seed", "9", "--variation-strength", "1.5"], "variation strength"),
    ],
)
def test_numbers_out_of_range_are_usage_errors(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], flags: list[str], words: str
) -> None:
    code, line = refused(capsys, files["out"], "--init-image", str(files["init"]), *flags)
    assert code == EXIT_USAGE and words in line


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--mask", "MASK"], "a mask needs an init image"),
        (["--strength", "0.5"], "a strength needs an init image"),
        (["--outpaint", "64,0,0,0"], "outpainting needs an init image"),
        (["--variation-strength", "0.5"], "a variation strength needs a variation seed"),
    ],
)
def test_options_missing_what_they_need_are_usage_errors(
    capsys: pytest.CaptureFixture[str], files: dict[str, Path], flags: list[str], words: str
) -> None:
    flags = [str(files["mask"]) if flag == "MASK" else flag for flag in flags]
    code, line = refused(capsys, files["out"], *flags)
    assert code == EXIT_USAGE and words in line


@pytest.mark.parametrize(
    ("flags", "code", "words"),
    [
        (["--mask", "SMALL_MASK"], EXIT_USAGE, "the mask is 32x32 but the init image is 64x64"),
        (["--mask", "NOWHERE"], EXIT_NOT_FOUND, "does not exist"),
        (["--strength", "0.01", "--steps", "20"], EXIT_USAGE, "or the steps to at least 100"),
        (["--outpaint", "64,0,0,0", "--steps", "1", "--strength", "0.5"], EXIT_USAGE, "no step"),
    ],
)
def test_image_input_refusals_come_before_the_model_loads(
    capsys: pytest.CaptureFixture[str],
    files: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    code: int,
    words: str,
) -> None:
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(Pipeline, "from_pretrained", no_loading)
    named = {"SMALL_MASK": str(files["small_mask"]), "NOWHERE": str(files["out"] / "x.png")}
    flags = [named.get(flag, flag) for flag in flags]
    got, line = refused(capsys, files["out"], "--init-image", str(files["init"]), *flags)
    assert got == code and words in line


def test_variation_seeds_count_up_with_the_seeds_across_prompts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle on a blue background\na blue square on a red background\n")
    argv = ["generate", "--prompt-file", str(prompts), "--steps", "2", "--seed", "100"]
    argv += ["--count", "2", "--variation-seed", "500", "--variation-strength", "0.5"]
    assert main([*argv, "-o", f"{tmp_path / 'out'}/", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    pairs = [(row["seed"], row["variation_seed"]) for row in rows]
    assert pairs == [(100, 500), (101, 501), (102, 502), (103, 503)]
