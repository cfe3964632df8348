"""Blends, prompt schedules, emphasis and image prompts, from parsed prompt to pixels."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdxs_rt.array_ops import NumpyOps
from sdxs_rt.commands.cli import main
from sdxs_rt.conditioning import ImagePromptRef, blend, condition_schedule, with_image_prompts
from sdxs_rt.dev.demo.check import measure
from sdxs_rt.errors import EXIT_USAGE, UsageError
from sdxs_rt.guidance import ScheduledGuidance
from sdxs_rt.metadata import read_metadata
from sdxs_rt.pipeline import Pipeline
from sdxs_rt.prompt_syntax import WeightedPart, parse_prompt

STEPS = 16
RED = "a red circle on a white background"
BLUE = "a blue circle on a white background"


def vectors(part: WeightedPart) -> np.ndarray:
    """A fake encoder: each text or image gets a distinct one-hot-like vector."""
    kind, key = part.key
    seed = sum(map(ord, f"{kind}:{key}"))
    return np.random.default_rng(seed).standard_normal((1, 8)).astype(np.float32)


# ---------------------------------------------------------------- the arithmetic


def test_a_blend_is_the_weighted_sum_over_the_positive_weights() -> None:
    program = parse_prompt("cat::3 dog::1 fog::-1")
    [segment] = condition_schedule(program, 4, (), vectors)
    cat, dog, fog = (vectors(WeightedPart(1, text=t)) for t in ("cat", "dog", "fog"))
    assert np.allclose(segment.vector, (3 * cat + dog - fog) / 4, atol=1e-6)


def test_weights_one_and_zero_give_the_first_prompt_exactly() -> None:
    [segment] = condition_schedule(parse_prompt("cat::1 dog::0"), 4, (), vectors)
    assert np.array_equal(segment.vector, vectors(WeightedPart(1, text="cat")))


def test_image_prompts_join_the_blend_with_their_own_weights() -> None:
    image = ImagePromptRef(("1", "ref"), "ab" * 32, 0.5)
    program = parse_prompt("cat")
    parts = with_image_prompts(program, program.parts_at(1, 4), [image])
    assert [(p.text, p.image, round(p.weight, 6)) for p in parts] == [
        ("cat", None, round(1 / 1.5, 6)),
        (None, "1", round(0.5 / 1.5, 6)),
    ]
    placed = parse_prompt("cat::1 <image:ref>::3")
    parts = with_image_prompts(placed, placed.parts_at(1, 4), [image])
    assert [(p.image, p.weight) for p in parts] == [(None, 0.25), ("ref", 0.75)]


def test_a_schedule_switches_the_vector_at_the_step_it_names() -> None:
    conditions = condition_schedule(parse_prompt("a [red:blue:0.5] ball"), 10, (), vectors)
    assert [c.until_step for c in conditions] == [5, 10]
    red = blend(parse_prompt("a red ball").parts_at(1, 1), vectors)
    blue = blend(parse_prompt("a blue ball").parts_at(1, 1), vectors)
    assert np.array_equal(conditions[0].vector, red)
    assert np.array_equal(conditions[1].vector, blue)


def test_scheduled_guidance_rebuilds_the_context_only_when_the_vector_changes() -> None:
    a, b = np.ones((1, 4), np.float32), 2 * np.ones((1, 4), np.float32)
    seen: list[float] = []

    def unet(x: np.ndarray, t: float, context: np.ndarray) -> np.ndarray:
        seen.append(float(context[0, 0, 0]))
        return x * 0 + context[:, :, :1, None]

    contexts: list[int] = []

    def conditions(step: int) -> tuple[np.ndarray, None]:
        return (a if step <= 2 else b), None

    model = ScheduledGuidance(unet, conditions, 1, 1.0, NumpyOps())
    x = np.zeros((1, 1, 2, 2), np.float32)
    for index in range(4):
        model(x, 1.0)
        contexts.append(id(model._model))
        model.after_step(index, x)
    assert seen == [1.0, 1.0, 2.0, 2.0]
    assert contexts[0] == contexts[1] != contexts[2] == contexts[3]


# ---------------------------------------------------------------- on the demo model


@pytest.fixture(scope="module")
def demo() -> Pipeline:
    return Pipeline.from_pretrained(None)


def draw(pipe: Pipeline, prompt: str, **options: object) -> np.ndarray:
    image = pipe(prompt, seed=4, num_inference_steps=STEPS, **options).images[0]
    return np.asarray(image).astype(np.int64)


def shape_colour(pixels: np.ndarray) -> np.ndarray:
    """Mean colour of the pixels far from the background's (the top-left corner's) colour."""
    background = pixels[:3, :3].reshape(-1, 3).mean(axis=0)
    shape = np.abs(pixels - background).sum(axis=2) > 100
    assert shape.sum() > 200, "no shape drawn"
    return pixels[shape].mean(axis=0)


def test_a_blend_of_red_and_blue_draws_an_in_between_colour(demo: Pipeline) -> None:
    red, blue = shape_colour(draw(demo, RED)), shape_colour(draw(demo, BLUE))
    mixed = shape_colour(draw(demo, f"{RED}::1 {BLUE}::1"))
    assert red[0] > red[2] and blue[2] > blue[0]
    assert red[2] < mixed[2] < blue[2]
    assert blue[0] < mixed[0] < red[0]


def test_blend_weights_one_and_zero_draw_the_first_prompt_exactly(demo: Pipeline) -> None:
    assert np.array_equal(draw(demo, f"{RED}::1 {BLUE}::0"), draw(demo, RED))


def test_a_schedule_from_red_to_blue_changes_the_colour(demo: Pipeline) -> None:
    plain = shape_colour(draw(demo, RED))
    switched = shape_colour(draw(demo, "a [red:blue:0.5] circle on a white background"))
    assert switched[2] > plain[2] + 40


def test_emphasis_is_stripped_with_one_warning(demo: Pipeline) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emphasised = draw(demo, "a (red:1.3) circle on a ((white)) background")
    assert np.array_equal(emphasised, draw(demo, RED))
    messages = [str(w.message) for w in caught if "emphasis" in str(w.message)]
    assert len(messages) == 1 and "one pooled vector" in messages[0]


def test_image_prompts_need_a_vision_tower(demo: Pipeline) -> None:
    image = Image.new("RGB", (32, 32), "red")
    with pytest.raises(UsageError, match="image prompts cannot be used"):
        demo(RED, image_prompts=[(image, 1.0)], num_inference_steps=2)


# ---------------------------------------------------------------- image prompts (tiny model)


def test_an_image_prompt_changes_the_image_and_weight_zero_does_not(tiny_model: Path) -> None:
    pipe = Pipeline.from_pretrained(str(tiny_model))
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    common = {"seed": 2, "num_inference_steps": 3, "width": 64, "height": 64}
    plain = np.asarray(pipe("a cat", **common).images[0])
    weighted = np.asarray(pipe("a cat", image_prompts=[(image, 1.0)], **common).images[0])
    zero = np.asarray(pipe("a cat", image_prompts=[(image, 0.0)], **common).images[0])
    assert np.array_equal(plain, zero)
    assert np.abs(plain.astype(int) - weighted).max() > 0


def test_cli_image_prompt_is_recorded_and_replays(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = tmp_path / "ref.png"
    Image.new("RGB", (40, 40), (30, 200, 30)).save(reference)
    out = tmp_path / "out.png"
    argv = ["generate", "a cat::2 <image:ref>::1", "--model", str(tiny_model), "--steps", "2"]
    argv += ["--size", "64x64", "--seed", "5", "--image-prompt", f"{reference}:0.5"]
    assert main([*argv, "-o", str(out)]) == 0
    _, record = read_metadata(out)
    assert record is not None
    assert record["prompt_parts"] == [
        {"text": "a cat", "weight": 2.0},
        {"image": "ref", "weight": 1.0},
    ]
    [entry] = record["image_prompts"]
    assert entry["weight"] == 0.5 and entry["name"] == "ref.png"
    capsys.readouterr()
    assert main(["info", str(out), "--replay", "--model", str(tiny_model)]) == 0
    assert capsys.readouterr().out.startswith("replay: identical")


@pytest.mark.parametrize(
    ("prompt", "words"),
    [
        ("a [red circle", "is never closed"),
        ("cat::2x dog", "weight"),
        ("cat::-1 dog::-2", "no part of the prompt's blend has a weight above 0"),
        ("a cat:: <image:nope>", "no image prompt is called that"),
    ],
)
def test_bad_prompt_syntax_is_one_sentence_and_exit_2(
    prompt: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", prompt, "--steps", "2", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and words in err, err
    assert err.count("sdxs-rt: error:") == 1 and not (tmp_path / "x.png").exists()


def test_json_output_names_the_blend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["generate", f"{RED}::1 {BLUE}::1", "--steps", "2", "--json"]
    assert main([*argv, "-o", str(tmp_path / "b.png")]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["prompt"] == f"{RED}::1 {BLUE}::1"
    assert measure(Image.open(tmp_path / "b.png")) is not None


def test_image_prompts_and_blends_on_onnx_runtime_match_torch(
    tiny_model: Path, exported_tiny_fp32: Path
) -> None:
    image = Image.new("RGB", (40, 40), (200, 30, 30))
    options = {
        "seed": 2, "num_inference_steps": 3, "width": 64, "height": 64,
        "image_prompts": [(image, 0.7)], "scheduler": "euler",
    }  # fmt: skip
    prompt = "a [cat:dog:0.5]::2 a hat::1"
    torch_image = Pipeline.from_pretrained(str(tiny_model))(prompt, **options).images[0]
    onnx_pipe = Pipeline.from_pretrained(str(exported_tiny_fp32), backend="onnx")
    onnx_image = onnx_pipe(prompt, **options).images[0]
    difference = np.abs(np.asarray(torch_image, np.int64) - np.asarray(onnx_image, np.int64))
    assert difference.max() <= 2, difference.max()


def test_a_blend_with_a_schedule_replays_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "blend.png"
    prompt = "a [red:blue:0.5] circle on a white background::2 a yellow circle::1"
    argv = ["generate", prompt, "-n", "a green square::1", "--steps", "6", "--seed", "8"]
    assert main([*argv, "-o", str(out)]) == 0
    _, record = read_metadata(out)
    assert record is not None and record["prompt"] == prompt
    assert [part["weight"] for part in record["prompt_parts"]] == [2.0, 1.0]
    capsys.readouterr()
    assert main(["info", str(out), "--replay"]) == 0
    assert capsys.readouterr().out.startswith("replay: identical")
