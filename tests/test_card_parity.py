"""Parity with the model card: its reference algorithm, run verbatim on a tiny checkpoint and fed
the noise of the contract, must give sdxs-rt's image (max pixel difference <= 2/255, fp32, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from sdxs_rt.dev.bench.reference import CardRun  # noqa: E402
from sdxs_rt.dev.bench.reference import card_image as run_card_image  # noqa: E402
from sdxs_rt.dev.tiny import build_tiny_model  # noqa: E402
from sdxs_rt.pipeline import Pipeline  # noqa: E402

PROMPT, NEGATIVE = "кот", "bad quality"
SEED, STEPS, SIZE, GUIDANCE = 1234, 12, 128, 5.5


@pytest.fixture(scope="module")
def card_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("card") / "model", seed=3, remote_code=True)


def card_image(model: Path) -> np.ndarray:
    """The card's algorithm (one copy, in sdxs_rt.dev.bench.reference) fed the contract's noise."""
    run = CardRun(PROMPT, NEGATIVE, SEED, STEPS, SIZE, GUIDANCE)
    result = run_card_image(model, run)
    # initial latents + one draw per step with t > 0 (DDPM adds no noise at t = 0)
    assert result.noise_draws == 1 + result.noisy_steps
    return result.image


def test_sdxs_rt_matches_the_model_card_algorithm(card_model: Path) -> None:
    reference = card_image(card_model)
    pipe = Pipeline.from_pretrained(str(card_model), device="cpu", dtype="fp32")
    ours = pipe(
        PROMPT,
        negative_prompt=NEGATIVE,
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        width=SIZE,
        height=SIZE,
        seed=SEED,
    ).images[0]
    diff = np.abs(np.asarray(ours, dtype=np.int16) - reference.astype(np.int16))
    print(f"card parity: max pixel difference {diff.max()}/255, mean {diff.mean():.4f}")
    assert reference.std() > 5  # the tiny model draws something, not a flat image
    assert diff.max() <= 2
