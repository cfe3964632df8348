"""Tests for the procedural demo dataset and the pixel-based prompt checker."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdxs_rt.dev.demo.check import accuracy, fill_ratio, matches, measure, shape_guess
from sdxs_rt.dev.demo.data import (
    COLOURS,
    SHAPES,
    Combination,
    all_combinations,
    caption,
    render,
    split_combinations,
    write_dataset,
)


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_at_least_the_required_shapes_and_colours() -> None:
    assert {"circle", "square", "triangle"} <= set(SHAPES)
    assert {"red", "green", "blue", "yellow", "white", "black"} <= set(COLOURS)
    combos = all_combinations()
    assert len(combos) == len(set(combos)) == len(SHAPES) * len(COLOURS) * (len(COLOURS) - 1)
    assert all(c.colour != c.background for c in combos)


def test_combination_rejects_same_colour_and_unknown_names() -> None:
    with pytest.raises(ValueError):
        Combination("circle", "red", "red")
    with pytest.raises(ValueError):
        Combination("hexagon", "red", "blue")
    with pytest.raises(ValueError):
        Combination("circle", "purple", "blue")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_is_deterministic_and_holds_out_enough(seed: int) -> None:
    train, held = split_combinations(seed=seed)
    assert (train, held) == split_combinations(seed=seed)
    assert len(held) >= 0.10 * len(all_combinations())
    assert not set(train) & set(held)
    assert set(train) | set(held) == set(all_combinations())
    assert {c.shape for c in train} == set(SHAPES)
    assert {c.colour for c in train} == set(COLOURS)
    assert {c.background for c in train} == set(COLOURS)


def test_split_depends_on_seed() -> None:
    assert split_combinations(seed=0)[1] != split_combinations(seed=1)[1]


@pytest.mark.parametrize(
    ("combo", "english", "russian"),
    [
        (Combination("circle", "red", "blue"), "a red circle on a blue background",
         "красный круг на синем фоне"),
        (Combination("square", "yellow", "black"), "a yellow square on a black background",
         "жёлтый квадрат на чёрном фоне"),
        (Combination("triangle", "white", "green"), "a white triangle on a green background",
         "белый треугольник на зелёном фоне"),
        (Combination("circle", "blue", "yellow"), "a blue circle on a yellow background",
         "синий круг на жёлтом фоне"),
        (Combination("square", "green", "white"), "a green square on a white background",
         "зелёный квадрат на белом фоне"),
        (Combination("triangle", "black", "red"), "a black triangle on a red background",
         "чёрный треугольник на красном фоне"),
    ],
)  # fmt: skip
def test_caption_exact_strings(combo: Combination, english: str, russian: str) -> None:
    assert caption(combo, "en") == english
    assert caption(combo, "ru") == russian


def test_captions_distinct_in_both_languages() -> None:
    combos = all_combinations()
    for language in ("en", "ru"):
        texts = [caption(c, language) for c in combos]
        assert len(set(texts)) == len(texts)
    with pytest.raises(ValueError):
        caption(combos[0], "de")


def test_render_is_deterministic_and_sized() -> None:
    combo = Combination("triangle", "red", "blue")
    first = render(combo, size=64, seed=3)
    assert first.size == (64, 64) and first.mode == "RGB"
    assert first.tobytes() == render(combo, size=64, seed=3).tobytes()
    assert first.tobytes() != render(combo, size=64, seed=4).tobytes()


@pytest.mark.parametrize("antialias", [True, False])
def test_measure_is_right_on_every_combination(antialias: bool) -> None:
    for combo in all_combinations():
        for seed in range(3):
            image = render(combo, size=64, seed=seed, antialias=antialias)
            assert measure(image) == (combo.colour, combo.background), combo
            assert matches(image, combo)


def test_accuracy_at_other_sizes_and_on_arrays() -> None:
    combos = all_combinations()
    for size in (32, 96):
        assert accuracy((render(c, size=size, seed=5), c) for c in combos) == 1.0
    assert accuracy((np.asarray(render(c, seed=2)), c) for c in combos) == 1.0
    assert accuracy([]) == 0.0


def test_checker_rejects_mismatched_prompts() -> None:
    combos = all_combinations()
    pairs = []
    for combo in combos:
        other = next(c for c in combos if c.colour != combo.colour and c.shape == combo.shape)
        pairs.append((render(combo, seed=1), other))
        swapped = next(c for c in combos if c.background != combo.background)
        pairs.append((render(combo, seed=1), swapped))
    assert accuracy(pairs) == 0.0


def test_checker_returns_none_on_noise_and_plain_images() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert measure(noise) == (None, None)
    assert not matches(noise, Combination("circle", "red", "blue"))
    plain = Image.new("RGB", (64, 64), COLOURS["blue"])
    assert measure(plain) == (None, "blue")
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    assert measure(grey) == (None, None)
    assert shape_guess(grey) is None and fill_ratio(grey) is None


def test_checker_returns_none_on_muddled_shape() -> None:
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[16:48, 16:32] = COLOURS["red"]
    pixels[16:48, 32:48] = COLOURS["green"]
    assert measure(pixels) == (None, "black")


def test_shape_guess_on_rendered_shapes() -> None:
    for shape in SHAPES:
        for seed in range(5):
            image = render(Combination(shape, "yellow", "blue"), size=64, seed=seed)
            assert shape_guess(image) == shape


def test_write_dataset_layout_and_determinism(tmp_path: Path) -> None:
    combos = split_combinations()[0][:5]
    rows = write_dataset(tmp_path / "a", combos, images_per_combo=3, size=32, seed=11)
    write_dataset(tmp_path / "b", combos, images_per_combo=3, size=32, seed=11)
    write_dataset(tmp_path / "c", combos, images_per_combo=3, size=32, seed=12)
    folder = tmp_path / "a"
    assert _folder_bytes(folder) == _folder_bytes(tmp_path / "b")
    assert _folder_bytes(folder) != _folder_bytes(tmp_path / "c")
    assert len(list(folder.glob("*.png"))) == len(list(folder.glob("*.txt"))) == 15
    lines = (folder / "metadata.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == rows
    expected = [c for c in combos for _ in range(3)]
    for row, combo in zip(rows, expected, strict=True):
        text = (folder / row["file_name"]).with_suffix(".txt").read_text(encoding="utf-8")
        assert text.strip() == row["text"]
        assert row["text"] in {caption(combo, "en"), caption(combo, "ru")}
        with Image.open(folder / row["file_name"]) as image:
            assert image.size == (32, 32)
            assert matches(image, combo)
    assert {caption(c, "ru") for c in combos} & {r["text"] for r in rows}
    assert {caption(c, "en") for c in combos} & {r["text"] for r in rows}


def test_write_dataset_single_language(tmp_path: Path) -> None:
    combos = all_combinations()[:2]
    rows = write_dataset(tmp_path, combos, images_per_combo=2, size=32, languages=("ru",))
    assert all(row["text"] in {caption(c, "ru") for c in combos} for row in rows)
    with pytest.raises(ValueError):
        write_dataset(tmp_path / "x", combos, languages=())
