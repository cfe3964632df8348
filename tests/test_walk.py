"""Latent walks (sdxs_rt.walk, `sdxs-rt walk`): frame requests, condition slerp, pixels, files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdxs_rt.commands.cli import main
from sdxs_rt.conditioning import Condition, interpolate_conditions
from sdxs_rt.errors import EXIT_USAGE, UsageError
from sdxs_rt.infotext import parse_parameters
from sdxs_rt.metadata import read_metadata
from sdxs_rt.params import GenerationParams, WalkTarget
from sdxs_rt.pipeline import Pipeline
from sdxs_rt.rng import slerp
from sdxs_rt.walk import Keyframe, save_animation, walk, walk_frames

STEPS = 8
RED = "a red circle on a white background"
BLUE = "a blue circle on a white background"


# ---------------------------------------------------------------- frame requests


def test_frames_are_the_keyframes_and_n_between_each_pair() -> None:
    keys = [Keyframe("a", seed=1), Keyframe("b", seed=1), Keyframe("c", seed=5)]
    frames = walk_frames(keys, 3, GenerationParams(prompt="", num_inference_steps=4))
    assert len(frames) == 3 + 2 * 3
    assert [f.t for f in frames] == [0, 0.25, 0.5, 0.75] * 2 + [0]
    assert [f.keyframe for f in frames] == [0] * 4 + [1] * 4 + [2]
    assert [f.index for f in frames] == list(range(9))
    plain = [f.params for f in frames if f.t == 0]
    assert [(p.prompt, p.seed, p.walk_to, p.variation_seed) for p in plain] == [
        ("a", 1, None, None),
        ("b", 1, None, None),
        ("c", 5, None, None),
    ]
    same_seed, other_seed = frames[2].params, frames[6].params
    assert same_seed.walk_to == WalkTarget("b", 0.5) and same_seed.variation_seed is None
    assert (other_seed.prompt, other_seed.seed) == ("b", 1)
    assert other_seed.walk_to == WalkTarget("c", 0.5)
    assert (other_seed.variation_seed, other_seed.variation_strength) == (5, 0.5)


def test_one_seed_for_all_keyframes_random_when_none_is_given() -> None:
    frames = walk_frames(["a", "b"], 1, GenerationParams(prompt=""))
    assert frames[0].params.seed is not None
    assert len({f.params.seed for f in frames}) == 1
    assert frames[1].params.variation_seed is None


@pytest.mark.parametrize(
    ("keys", "between", "words"),
    [
        (["a"], 2, "at least 2 keyframes"),
        (["a", "b"], 0, "at least 1"),
        (["a", "b"], 1.5, "whole number"),
        ([Keyframe("a", seed=-2), "b"], 1, "seed must be"),
    ],
)
def test_bad_walks_are_refused(keys: list[str | Keyframe], between: int, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        walk_frames(keys, between, GenerationParams(prompt=""))


def test_walk_t_outside_0_1_is_refused() -> None:
    with pytest.raises(UsageError, match=r"walk t must be a number in \[0, 1\]"):
        GenerationParams(prompt="a", walk_to=WalkTarget("b", 1.5)).validate()


# ---------------------------------------------------------------- condition slerp


def test_conditions_slerp_at_every_switch_of_either_schedule() -> None:
    rng = np.random.default_rng(0)
    x, y, z, shared = (rng.standard_normal((1, 8)).astype(np.float32) for _ in range(4))
    a = [Condition(3, x), Condition(8, y)]
    b = [Condition(5, z), Condition(8, shared)]
    mixed = interpolate_conditions(a, b, 0.25, slerp)
    assert [c.until_step for c in mixed] == [3, 5, 8]
    for condition, (low, high) in zip(mixed, [(x, z), (y, z), (y, shared)], strict=True):
        assert np.array_equal(condition.vector, slerp(low, high, 0.25))
    assert interpolate_conditions(a, b, 0, slerp) == a
    assert interpolate_conditions(a, b, 1, slerp) == b
    same = interpolate_conditions([Condition(8, shared)], [Condition(8, shared)], 0.5, slerp)
    assert same[0].vector is shared  # e.g. both negatives "": untouched


# ---------------------------------------------------------------- on the demo model


@pytest.fixture(scope="module")
def demo() -> Pipeline:
    return Pipeline.from_pretrained(None)


def shape_colour(image: Image.Image) -> np.ndarray:
    """Mean colour of the pixels far from the background's (the top-left corner's) colour."""
    pixels = np.asarray(image).astype(np.int64)
    background = pixels[:3, :3].reshape(-1, 3).mean(axis=0)
    shape = np.abs(pixels - background).sum(axis=2) > 100
    assert shape.sum() > 200, "no shape drawn"
    return pixels[shape].mean(axis=0)


def test_walk_from_red_to_blue_ends_on_the_keyframes_and_passes_between(demo: Pipeline) -> None:
    frames = list(walk(demo, [RED, BLUE], 1, seed=4, num_inference_steps=STEPS))
    assert [f.frame.t for f in frames] == [0, 0.5, 0]
    red = demo(RED, seed=4, num_inference_steps=STEPS).images[0]
    blue = demo(BLUE, seed=4, num_inference_steps=STEPS).images[0]
    assert np.array_equal(np.asarray(frames[0].image), np.asarray(red))
    assert np.array_equal(np.asarray(frames[-1].image), np.asarray(blue))
    low, middle, high = (shape_colour(image) for image in (red, frames[1].image, blue))
    assert low[0] > low[2] + 100 and high[2] > high[0] + 100
    assert high[0] + 30 < middle[0] < low[0] - 30
    assert low[2] + 30 < middle[2] < high[2] - 30


def test_walk_t_0_is_the_plain_image(demo: Pipeline) -> None:
    """The option alone: t = 0 keeps the request's own vectors, bit for bit."""
    options = {"seed": 3, "num_inference_steps": 2}
    plain = demo(RED, **options).images[0]
    walked = demo(RED, walk_to=WalkTarget(BLUE, 0.0, "blurry"), **options).images[0]
    assert np.array_equal(np.asarray(plain), np.asarray(walked))


# ---------------------------------------------------------------- the command


def walk_argv(folder: Path, *extra: str) -> list[str]:
    return ["walk", RED, BLUE, "--steps", str(STEPS), "-o", str(folder), *extra]


@pytest.mark.parametrize("kind", ["webp", "gif"])
def test_cli_writes_frames_an_animation_and_json_lines(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "walk"
    argv = walk_argv(folder, "--frames", "2", "--seeds", "4", "9", "--json", "--animation", kind)
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    names = [f"frame-{i:04d}.png" for i in range(4)]
    assert sorted(p.name for p in folder.iterdir()) == sorted([*names, f"walk.{kind}"])
    assert [Path(row["path"]).name for row in rows[:4]] == names
    assert [row["seed"] for row in rows[:4]] == [4, 4, 4, 9]
    assert rows[1]["t"] == pytest.approx(1 / 3) and rows[1]["walk_prompt"] == BLUE
    assert rows[1]["variation_seed"] == 9
    assert rows[-1] == {"animation": str(folder / f"walk.{kind}"), "frames": 4}
    with Image.open(folder / f"walk.{kind}") as animation:
        assert animation.n_frames == 4


def test_cli_middle_frame_records_the_walk_and_replays_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "walk"
    argv = walk_argv(folder, "--frames", "2", "--seeds", "4", "9", "-n", "blurry")
    assert main([*argv, "--animation", "none"]) == 0
    middle = folder / "frame-0002.png"
    parameters, record = read_metadata(middle)
    assert record is not None and parameters is not None
    assert record["prompt"] == RED and record["walk_prompt"] == BLUE
    assert record["walk_t"] == 2 / 3 and record["walk_negative_prompt"] == "blurry"
    assert (record["seed"], record["variation_seed"], record["variation_strength"]) == (4, 9, 2 / 3)
    parsed = parse_parameters(parameters)
    assert parsed.prompt == RED
    assert parsed.params["Walk prompt"] == BLUE and float(parsed.params["Walk t"]) == 2 / 3
    capsys.readouterr()
    assert main(["info", str(middle), "--replay"]) == 0
    assert capsys.readouterr().out.startswith("replay: identical")


def test_cli_image_prompt_of_a_keyframe_is_recorded_and_replays(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = tmp_path / "green.png"
    Image.new("RGB", (40, 40), (30, 200, 30)).save(picture)
    folder = tmp_path / "walk"
    argv = ["walk", "a cat", "a dog::1 <image:1>::1", "--model", str(tiny_model), "--steps", "2"]
    argv += ["--size", "64x64", "--frames", "1", "--seeds", "5", "--animation", "none"]
    assert main([*argv, "--image-prompt", f"2:{picture}:0.5", "-o", str(folder)]) == 0
    middle = folder / "frame-0001.png"
    _, record = read_metadata(middle)
    assert record is not None and record["image_prompts"] is None
    [entry] = record["walk_image_prompts"]
    assert entry["name"] == "green.png" and entry["weight"] == 0.5
    capsys.readouterr()
    replay = ["info", str(middle), "--replay", "--model", str(tiny_model)]
    assert main([*replay, "--inputs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("replay: identical")


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["walk", RED], "at least 2 keyframe prompts, got 1"),
        (["walk", RED, BLUE, "--frames", "0"], "--frames"),
        (["walk", RED, BLUE, RED, "--seeds", "1", "2"], "got 2 seeds for 3 keyframes"),
        (["walk", RED, "", "--seeds", "1"], "keyframe 2's prompt is empty"),
        (["walk", RED, BLUE, "--image-prompt", "3:x.png"], "names keyframe 3"),
        (["walk", RED, BLUE, "--fps", "0"], "frames per second"),
    ],
)
def test_cli_bad_input_is_one_sentence_exit_2_nothing_written(
    argv: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "walk"
    assert main([*argv, "-o", str(folder)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert words in err and err.count("sdxs-rt: error:") == 1, err
    assert not folder.exists()


def test_cli_refuses_existing_frames_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "walk"
    folder.mkdir()
    (folder / "frame-0001.png").write_bytes(b"keep")
    assert main(walk_argv(folder, "--frames", "1")) == EXIT_USAGE
    assert "--overwrite" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["frame-0001.png"]


def test_save_animation_never_overwrites_unless_asked(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "blue", "green")]
    path = save_animation(frames, tmp_path / "a.gif", fps=10)
    with Image.open(path) as animation:
        assert animation.n_frames == 3 and animation.info["duration"] == 100
    with pytest.raises(UsageError, match="--overwrite"):
        save_animation(frames[:2], path, fps=10)
    save_animation(frames[:2], path, fps=10, overwrite=True)
    with Image.open(path) as animation:
        assert animation.n_frames == 2


def test_walk_on_onnx_runtime_without_torch_replays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The walk is core code: `--backend onnx` runs it with torch unimportable."""
    pytest.importorskip("onnxruntime")
    from tests.test_onnx_backend import write_handmade_export
    from tests.test_torch_free import RUN_WITHOUT_TORCH

    model = write_handmade_export(tmp_path / "export")
    folder = tmp_path / "walk"
    argv = ["walk", RED, BLUE, "--backend", "onnx", "--model", str(model), "--size", "128x128"]
    argv += ["--steps", "3", "--frames", "1", "--seeds", "7", "8", "-o", str(folder), "--json"]
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_TORCH, *argv],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [row.get("backend") for row in rows[:3]] == ["onnx"] * 3
    # The handmade graphs draw one white picture whatever they are asked: WebP folds identical
    # frames into one, so only the file is checked here.
    assert rows[-1]["frames"] == 3 and (folder / "walk.webp").is_file()
    assert main(["info", str(folder / "frame-0001.png"), "--replay", "--model", str(model)]) == 0
    assert capsys.readouterr().out.startswith("replay: identical")
