"""The packaged demo model draws what it is asked, and its recipe runs end to end."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from sdxs_rt.commands.cli import main
from sdxs_rt.dev.demo import components as parts
from sdxs_rt.dev.demo.check import measure
from sdxs_rt.dev.demo.data import split_combinations
from sdxs_rt.dev.demo.model import DemoRecipe, build_demo_model, evaluate
from sdxs_rt.loading import default_model_path, native_image_size, resolve_model


def test_packaged_default_is_the_trained_demo_at_64_px() -> None:
    files = resolve_model(None)
    assert files.root == default_model_path()
    assert native_image_size(files) == (64, 64)
    # the recipe ships with its figures; the accuracy itself is measured, not read from them,
    # in test_colour_accuracy_on_seen_and_held_out_combinations
    assert {"seen_accuracy", "held_out_accuracy"} <= set(
        json.loads((files.root / "recipe.json").read_text())
    )
    total = sum(p.stat().st_size for p in files.root.rglob("*") if p.is_file())
    assert total < 25_000_000


def test_readme_first_command_draws_what_it_is_asked(tmp_path: Path) -> None:
    out = tmp_path / "circle.png"
    assert main(["generate", "a red circle on a blue background", "-o", str(out)]) == 0
    image = Image.open(out)
    assert image.size == (64, 64)
    assert measure(image) == ("red", "blue")


def test_russian_prompt_draws_too(tmp_path: Path) -> None:
    out = tmp_path / "square.png"
    assert main(["generate", "жёлтый квадрат на чёрном фоне", "--seed", "3", "-o", str(out)]) == 0
    assert measure(Image.open(out)) == ("yellow", "black")


def test_colour_accuracy_on_seen_and_held_out_combinations() -> None:
    """Every seen combination in both languages with one seed, every held-out one in both
    languages with two seeds, at the CLI's default settings (40 DDPM steps, CFG 5.5)."""
    train, held_out = split_combinations()
    seen = evaluate(None, train, seeds=(5,))
    held = evaluate(None, held_out, seeds=(5, 6))
    print(
        f"\ndemo model colour accuracy: seen {seen['accuracy']:.1%} of {seen['images']}, "
        f"held-out {held['accuracy']:.1%} of {held['images']}"
    )
    assert seen["accuracy"] >= 0.8
    assert held["accuracy"] >= 0.5


def test_recipe_runs_end_to_end_in_miniature(tmp_path: Path) -> None:
    """The whole recipe with a few steps per stage: the result is a loadable SDXS folder."""
    recipe = DemoRecipe(
        images_per_combo=1,
        vae=parts.VAETraining(steps=3, batch_size=4),
        text=parts.TextTraining(steps=3),
        unet_steps=3,
        unet_batch_size=4,
    )
    out = tmp_path / "demo"
    figures = build_demo_model(out, tmp_path / "work", recipe, evaluate_accuracy=False)
    assert figures["train_combinations"] == 76 and len(figures["held_out_combinations"]) == 14
    files = resolve_model(str(out))
    assert native_image_size(files) == (64, 64)
    assert files.text_encoder_dir is not None and files.tokenizer_dir is not None
    image_path = tmp_path / "x.png"
    args = ["generate", "a red circle", "--model", str(out), "--steps", "2", "-o", str(image_path)]
    assert main(args) == 0
    assert Image.open(image_path).size == (64, 64)
