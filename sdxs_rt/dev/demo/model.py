"""The recipe of the packaged demo model: one command, fixed seeds, about 20 minutes on 2 cores.

    python -m sdxs_rt.dev.demo.model OUT_DIR [--work-dir DIR]

1. draw the shapes dataset (training combinations only; the held-out ones are never drawn),
2. train a tiny 16-channel VAE on it and whiten its latents (shift/scale from statistics),
3. train a tiny XLM-R text encoder + tokenizer on the English and Russian captions,
4. write a base model with a random U-Net of the SDXS shape (4 cross-attention levels,
   1152-wide single-token context) and train it with `sdxs-rt train`'s own `train()`
   (latents and embeddings cached, frozen VAE and text encoder, 10% caption dropout),
5. store the U-Net in fp16 (half the package size) and measure the colour accuracy on seen and
   held-out combinations from pixels (`demo_check`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from sdxs_rt.dev import tiny
from sdxs_rt.dev.demo import components as parts
from sdxs_rt.dev.demo.data import (
    COLOURS,
    LANGUAGES,
    SHAPES,
    Combination,
    all_combinations,
    caption,
    split_combinations,
    write_dataset,
)

UNET_BLOCKS = [32, 64, 64, 96]
# Zero terminal SNR (so v prediction): with SD's schedule 7% of the signal survives the last
# step, an 8x8 latent's mean colour leaks through it in training, and sampling from pure noise
# then picks colours at random. Flat-colour pictures are the worst case for that leak.
SCHEDULE = {
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "timestep_spacing": "trailing",
}


@dataclass(frozen=True)
class DemoRecipe:
    seed: int = 0
    image_size: int = 64
    images_per_combo: int = 32
    vae: parts.VAETraining = field(default_factory=parts.VAETraining)
    text: parts.TextTraining = field(default_factory=parts.TextTraining)
    unet_steps: int = 6000
    unet_batch_size: int = 32
    unet_learning_rate: float = 5e-4
    unet_warmup_steps: int = 200


def unet_kwargs(image_size: int) -> dict[str, Any]:
    """`tiny.unet_kwargs()` widened to learn something; 8x8 latents for 64-px pictures."""
    return {
        **tiny.unet_kwargs(),
        "sample_size": image_size // 8,
        "block_out_channels": UNET_BLOCKS,
        "attention_head_dim": [c // 32 for c in UNET_BLOCKS],  # heads of 32 channels
        "transformer_layers_per_block": [1, 1, 1, 1],
    }


def all_captions() -> list[str]:
    """Every caption the demo can be asked, both languages: the tokenizer's vocabulary."""
    return [caption(c, language) for c in all_combinations() for language in LANGUAGES]


def caption_labels(combos: Sequence[Combination]) -> tuple[list[str], torch.Tensor]:
    """Captions of `combos` in every language with (shape, colour, background) class ids."""
    colours = list(COLOURS)
    texts, labels = [], []
    for combo in combos:
        for language in LANGUAGES:
            texts.append(caption(combo, language))
            labels.append(
                [
                    SHAPES.index(combo.shape),
                    colours.index(combo.colour),
                    colours.index(combo.background),
                ]
            )
    return texts, torch.tensor(labels)


def _bar(total: int, description: str) -> Any:
    return tqdm(total=total, desc=description, unit="step", file=sys.stderr, dynamic_ncols=True)


def build_base_model(
    out: Path, recipe: DemoRecipe, data_dir: Path, train: list[Combination]
) -> None:
    """Steps 2-4 up to the untrained U-Net: VAE, text encoder, tokenizer, scheduler."""
    images = parts.images_to_tensor(
        [np.asarray(Image.open(p)) for p in sorted(data_dir.glob("*.png"))]
    )
    with _bar(recipe.vae.steps, "VAE") as progress:
        vae = parts.train_vae(images, recipe.vae, progress)
    parts.save_vae(vae, out / "vae", *parts.latent_statistics(vae, images))
    tokenizer = tiny.build_tokenizer(all_captions())
    texts, labels = caption_labels(train)
    with _bar(recipe.text.steps, "text encoder") as progress:
        text_config, tensors = parts.train_text_encoder(
            tokenizer, texts, labels, recipe.text, progress
        )
    tiny.write_text_encoder_files(out / "text_encoder", tokenizer, text_config, tensors)
    tiny.write_tokenizer(tokenizer, out / "tokenizer")
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    tiny.write_json(out / "scheduler" / "scheduler_config.json", tiny.scheduler_config(SCHEDULE))
    tiny.write_json(out / "model_index.json", tiny.model_index("unet"))
    _write_random_unet(out / "unet", recipe)


def _write_random_unet(folder: Path, recipe: DemoRecipe) -> None:
    from diffusers import UNet2DConditionModel

    with tiny.seeded(recipe.seed):
        unet = UNet2DConditionModel(**unet_kwargs(recipe.image_size))
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_config(str(folder))
    tiny.save_tensors(unet.state_dict(), folder / "diffusion_pytorch_model.safetensors")


def train_unet(base: Path, data_dir: Path, run_dir: Path, recipe: DemoRecipe) -> Any:
    """Step 4 through the public training path, exactly as `sdxs-rt train` runs it."""
    from sdxs_rt.training.config import TrainConfig
    from sdxs_rt.training.trainer import train

    config = TrainConfig(
        data=str(data_dir),
        output_dir=str(run_dir),
        model=str(base),
        resolution=recipe.image_size,
        min_side=recipe.image_size,
        batch_size=recipe.unet_batch_size,
        max_steps=recipe.unet_steps,
        learning_rate=recipe.unet_learning_rate,
        lr_scheduler="cosine",
        lr_warmup_steps=recipe.unet_warmup_steps,
        weight_decay=0.0,
        caption_dropout=0.1,
        checkpoint_every=0,
        validation_every=0,
        log_with="none",
        seed=recipe.seed,
    )
    return train(config)


def store_unet_fp16(model_dir: Path) -> None:
    """fp16 weights under the plain file name: loaders upcast on load; the package halves."""
    from safetensors.torch import load_file

    path = model_dir / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(path))
    tiny.save_tensors({k: v.half() for k, v in tensors.items()}, path)


def build_demo_model(
    out_dir: Path, work_dir: Path, recipe: DemoRecipe, evaluate_accuracy: bool = True
) -> dict[str, Any]:
    """Run the whole recipe; returns the figures also written to OUT_DIR/recipe.json."""
    started = time.perf_counter()
    train_combos, held_out = split_combinations(seed=recipe.seed)
    data_dir, base, run_dir = work_dir / "data", work_dir / "base", work_dir / "unet-run"
    for folder in (data_dir, base, run_dir):
        shutil.rmtree(folder, ignore_errors=True)
    write_dataset(data_dir, train_combos, recipe.images_per_combo, recipe.image_size, recipe.seed)
    build_base_model(base, recipe, data_dir, train_combos)
    result = train_unet(base, data_dir, run_dir, recipe)
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(result.model_dir, out_dir)
    store_unet_fp16(out_dir)
    losses = result.losses
    figures = {
        "recipe": asdict(recipe),
        "train_combinations": len(train_combos),
        "held_out_combinations": [str(c) for c in held_out],
        "training_seconds": round(time.perf_counter() - started, 1),
        "unet_training_seconds": round(result.seconds, 1),
        "final_loss_mean_last_100": round(float(np.mean(losses[-100:])), 4),
    }
    if evaluate_accuracy:
        figures.update(accuracy_figures(out_dir, train_combos, held_out))
    tiny.write_json(out_dir / "recipe.json", figures)
    return figures


def evaluate(
    model: Path | str | None,
    combos: Sequence[Combination],
    seeds: Sequence[int] = (0, 1),
    languages: Sequence[str] = LANGUAGES,
    **generation: Any,
) -> dict[str, Any]:
    """Generate every combination's caption in every language with every seed (the CLI's
    defaults unless `generation` overrides them) and check the colours from pixels."""
    from sdxs_rt.dev.demo.check import matches
    from sdxs_rt.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(None if model is None else str(model))
    right, misses = 0, []
    for combo in combos:
        for language in languages:
            prompt = caption(combo, language)
            for seed in seeds:
                image = pipe(prompt, seed=seed, width=64, height=64, **generation).images[0]
                if matches(image, combo):
                    right += 1
                else:
                    misses.append(f"{prompt} (seed {seed})")
    total = len(combos) * len(languages) * len(seeds)
    return {"accuracy": right / total, "images": total, "misses": misses}


def accuracy_figures(
    model: Path, train: Sequence[Combination], held_out: Sequence[Combination]
) -> dict[str, Any]:
    seen = evaluate(model, train, seeds=(0,))
    held = evaluate(model, held_out)
    return {
        "seen_accuracy": round(seen["accuracy"], 4),
        "held_out_accuracy": round(held["accuracy"], 4),
        "seen_misses": seen["misses"],
        "held_out_misses": held["misses"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sdxs_rt.dev.demo.model",
        description="Train the built-in demo model (shapes in colours) from scratch on the CPU.",
    )
    parser.add_argument("out_dir", type=Path, help="where the finished model folder goes")
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="dataset, caches, logs (default OUT_DIR.work)"
    )
    parser.add_argument("--unet-steps", type=int, default=DemoRecipe.unet_steps)
    parser.add_argument("--images-per-combo", type=int, default=DemoRecipe.images_per_combo)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    recipe = DemoRecipe(unet_steps=args.unet_steps, images_per_combo=args.images_per_combo)
    work = args.work_dir or args.out_dir.with_name(args.out_dir.name + ".work")
    figures = build_demo_model(args.out_dir, work, recipe)
    print(json.dumps({k: v for k, v in figures.items() if k != "recipe"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
