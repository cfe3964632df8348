"""The model card's algorithm, verbatim, with the noise of the sdxs-rt contract injected.

`encode_prompt`, `generate_latents` and `decode_latents` are the card's functions with their
globals made arguments. The text encoder is loaded the card's way: `AutoModel(...,
trust_remote_code=True)` on the remote code that `sdxs_rt.dev.tiny` / the bench presets write, and
its `encode_texts` on prompts padded to 512 tokens. The U-Net is diffusers'
`UNet2DConditionModel` (eager), the scheduler `DDPMScheduler`, whose per-step noise
(`randn_tensor`) is replaced by the contract's stream (`sdxs_rt.rng.ImageNoise`), so the image
can be compared pixel for pixel with sdxs-rt's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from sdxs_rt.rng import ImageNoise

RANDN_TENSOR = "diffusers.schedulers.scheduling_ddpm.randn_tensor"


@dataclass(frozen=True)
class CardRun:
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    size: int
    guidance: float = 5.5
    device: str = "cpu"
    dtype: torch.dtype = torch.float32


@dataclass
class CardResult:
    image: np.ndarray  # (H, W, 3) uint8
    timings: dict[str, float] = field(default_factory=dict)
    step_seconds: list[float] = field(default_factory=list)
    noise_draws: int = 0
    noisy_steps: int = 0  # steps with t > 0: DDPM adds no noise at t = 0


class ContractNoise:
    """Stands in for diffusers' randn_tensor: returns the contract's per-step draws."""

    def __init__(self, stream: ImageNoise) -> None:
        self.stream = stream

    def __call__(
        self,
        shape: Any,
        generator: Any = None,
        device: Any = None,
        dtype: Any = None,
        layout: Any = None,
    ) -> torch.Tensor:
        assert tuple(shape) == (1, *self.stream.shape)
        return torch.from_numpy(self.stream.draw())[None].to(device=device, dtype=dtype)


def encode_prompt(
    tokenizer: Any,
    text_model: Any,
    prompt: str,
    negative_prompt: str | None,
    device: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """The card's encode_prompt: [negative, positive], each padded to 512 tokens."""
    if negative_prompt is None:
        negative_prompt = ""
    with torch.no_grad():
        out = []
        for text in (negative_prompt, prompt):
            inputs = tokenizer(
                text, return_tensors="pt", padding="max_length", max_length=512, truncation=True
            ).to(device)
            emb = text_model.encode_texts(inputs.input_ids, inputs.attention_mask)
            if emb.ndim == 2:
                emb = emb.unsqueeze(1)
            out.append(emb.to(device, dtype=dtype))
    return torch.cat(out, dim=0)


StepHook = Callable[[int, float], None]


def generate_latents(
    unet: Any,
    scheduler: Any,
    embeddings: torch.Tensor,
    latents: torch.Tensor,
    steps: int,
    guidance_scale: float,
    on_step: StepHook | None = None,
) -> torch.Tensor:
    """The card's generate_latents loop; `latents` is the initial noise (contract's draw)."""
    with torch.no_grad():
        scheduler.set_timesteps(steps)
        for index, t in enumerate(scheduler.timesteps):
            tick = time.perf_counter()
            latent_model_input = torch.cat([latents] * 2)
            latent_model_input = scheduler.scale_model_input(latent_model_input, t)
            noise_pred = unet(latent_model_input, t, embeddings).sample
            noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
            noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
            latents = scheduler.step(noise_pred, t, latents).prev_sample
            if on_step is not None:
                on_step(index, time.perf_counter() - tick)
    return latents


def decode_latents(latents: torch.Tensor, vae: Any) -> np.ndarray:
    """The card's decode_latents (output_type="np"), then the card's uint8 rounding."""
    latents = (latents / vae.config.scaling_factor) + vae.config.shift_factor
    with torch.no_grad():
        images = vae.decode(latents).sample
    images = (images / 2 + 0.5).clamp(0, 1)
    array = images.cpu().permute(0, 2, 3, 1).float().numpy()
    return (array[0] * 255).round().astype("uint8")


@dataclass
class CardModel:
    tokenizer: Any
    text_model: Any
    unet: Any
    vae: Any
    scheduler: Any


def load_card_model(model: Path, device: str, dtype: torch.dtype) -> CardModel:
    """Load every part as the card does (the text encoder from `model/text_encoder`)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer

    te_dir = Path(model) / "text_encoder"
    variant = "fp16" if any((Path(model) / "unet").glob("*.fp16.safetensors")) else None
    return CardModel(
        # trust_remote_code=False: transformers 5 would otherwise ask (the folder has auto_map)
        tokenizer=AutoTokenizer.from_pretrained(te_dir, trust_remote_code=False),
        text_model=card_text_model(te_dir, device, dtype, variant),
        unet=_load(UNet2DConditionModel, model, "unet", variant).to(device, dtype=dtype).eval(),
        vae=_load(AutoencoderKL, model, "vae", variant).to(device, dtype=dtype).eval(),
        scheduler=DDPMScheduler.from_pretrained(model, subfolder="scheduler"),
    )


def card_text_model(te_dir: Path, device: str, dtype: torch.dtype, variant: str | None) -> Any:
    """The card's `AutoModel.from_pretrained(..., trust_remote_code=True)`, verbatim under
    transformers 4. transformers 5 cannot build the published class that way (it never calls
    post_init), so there the same class and file go through `load_remote_model`."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(te_dir, torch_dtype=dtype, trust_remote_code=True)
        return model.to(device, dtype=dtype).eval()
    from sdxs_rt.backends.torch.remote_code import load_remote_model
    from sdxs_rt.loading import resolve_model
    from sdxs_rt.text_encoder_files import resolve_text_encoder

    files = resolve_text_encoder(str(te_dir), resolve_model(str(te_dir.parent), variant))
    return load_remote_model(files, torch.device(device), dtype)


def _load(cls: Any, model: Path, subfolder: str, variant: str | None) -> Any:
    return cls.from_pretrained(model, subfolder=subfolder, variant=variant)


@contextmanager
def contract_noise(stream: ImageNoise) -> Iterator[None]:
    with mock.patch(RANDN_TENSOR, ContractNoise(stream)):
        yield


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def run_card(parts: CardModel, run: CardRun) -> CardResult:
    """Text encoding, sampling and decoding the card's way; phases timed with a sync at each
    boundary only (on CUDA a step's time is then sampling / steps, see `step_seconds`)."""
    result = CardResult(image=np.zeros((0,), np.uint8))
    clock = _PhaseClock(run.device, result.timings)
    embeddings = encode_prompt(
        parts.tokenizer, parts.text_model, run.prompt, run.negative_prompt, run.device, run.dtype
    )
    clock.lap("text_encode")
    stream = ImageNoise(run.seed, (16, run.size // 8, run.size // 8))
    latents = torch.from_numpy(stream.draw())[None].to(run.device, dtype=run.dtype)
    with contract_noise(stream):
        latents = generate_latents(
            parts.unet,
            parts.scheduler,
            embeddings,
            latents,
            run.steps,
            run.guidance,
            lambda _i, s: result.step_seconds.append(s),
        )
    clock.lap("sampling")
    result.image = decode_latents(latents, parts.vae)
    clock.lap("decode")
    result.timings["total"] = sum(result.timings.values())
    result.noise_draws = stream.draws
    result.noisy_steps = int((parts.scheduler.timesteps > 0).sum())
    return result


class _PhaseClock:
    def __init__(self, device: str, timings: dict[str, float]) -> None:
        self.device, self.timings = device, timings
        _sync(device)
        self.tick = time.perf_counter()

    def lap(self, name: str) -> None:
        _sync(self.device)
        now = time.perf_counter()
        self.timings[name] = now - self.tick
        self.tick = now


def card_image(model: Path, run: CardRun) -> CardResult:
    """Load the model the card's way and run it once."""
    return run_card(load_card_model(model, run.device, run.dtype), run)
