"""Parity with the model card: its reference algorithm, run verbatim on a tiny checkpoint and fed
the noise of the contract, must give sdxs-rt's image (max pixel difference <= 2/255, fp32, CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from sdxs_rt.pipeline import Pipeline  # noqa: E402
from sdxs_rt.rng import ImageNoise  # noqa: E402
from sdxs_rt.tiny import build_tiny_model  # noqa: E402

PROMPT, NEGATIVE = "кот", "bad quality"
SEED, STEPS, SIZE, GUIDANCE = 1234, 12, 128, 5.5


@pytest.fixture(scope="module")
def card_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("card") / "model", seed=3, remote_code=True)


def card_encode_prompt(tokenizer, text_model, prompt: str, negative_prompt: str):
    """The model card's encode_prompt, verbatim but for the globals (cpu, fp32)."""
    with torch.no_grad():
        out = []
        for text in (negative_prompt, prompt):
            inputs = tokenizer(
                text, return_tensors="pt", padding="max_length", max_length=512, truncation=True
            )
            emb = text_model.encode_texts(inputs.input_ids, inputs.attention_mask)
            if emb.ndim == 2:
                emb = emb.unsqueeze(1)
            out.append(emb.to("cpu", dtype=torch.float32))
    return torch.cat(out, dim=0)


class ContractNoise:
    """Stands in for diffusers' randn_tensor: returns the contract's per-step draws."""

    def __init__(self, stream: ImageNoise) -> None:
        self.stream = stream

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == (1, *self.stream.shape)
        return torch.from_numpy(self.stream.draw())[None].to(dtype=dtype)


def card_image(model: Path, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoModel, AutoTokenizer

    te_dir = model / "text_encoder"
    tokenizer = AutoTokenizer.from_pretrained(te_dir)
    text_model = AutoModel.from_pretrained(te_dir, trust_remote_code=True).eval()
    embeddings = card_encode_prompt(tokenizer, text_model, PROMPT, NEGATIVE)
    unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet").eval()
    vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()
    scheduler = DDPMScheduler.from_pretrained(model, subfolder="scheduler")

    stream = ImageNoise(SEED, (16, SIZE // 8, SIZE // 8))
    monkeypatch.setattr("diffusers.schedulers.scheduling_ddpm.randn_tensor", ContractNoise(stream))
    with torch.no_grad():  # the card's generate_latents, with the contract's initial noise
        latents = torch.from_numpy(stream.draw())[None]
        scheduler.set_timesteps(STEPS)
        for t in scheduler.timesteps:
            latent_model_input = torch.cat([latents] * 2)
            latent_model_input = scheduler.scale_model_input(latent_model_input, t)
            noise_pred = unet(latent_model_input, t, embeddings).sample
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + GUIDANCE * (noise_pred_text - noise_pred_uncond)
            latents = scheduler.step(noise_pred, t, latents).prev_sample
        # initial latents + one draw per step with t > 0 (DDPM adds no noise at t = 0)
        assert stream.draws == 1 + int((scheduler.timesteps > 0).sum())
        latents = (latents / vae.config.scaling_factor) + vae.config.shift_factor
        images = vae.decode(latents).sample
    images = (images / 2 + 0.5).clamp(0, 1)
    images = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return (images[0] * 255).round().astype("uint8")


def test_sdxs_rt_matches_the_model_card_algorithm(
    card_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference = card_image(card_model, monkeypatch)
    monkeypatch.undo()
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
