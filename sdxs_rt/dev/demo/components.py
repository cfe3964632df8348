"""The demo model's own tiny VAE and text encoder, trained from scratch on the shapes dataset.

The real SDXS borrows a pretrained 16-channel VAE and the Mexma-SigLIP text encoder; the demo
cannot download them, so it trains small stand-ins in the same on-disk formats (diffusers
`AutoencoderKL`, Mexma-SigLIP layout with an XLM-R tower). Both are frozen afterwards, as the
real ones are while the U-Net trains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sdxs_rt.dev import tiny

Log = Callable[[str], None]

VAE_BLOCKS = [16, 32, 32, 32]  # 4 levels = 8x down, as the real VAE; 0.3 M parameters
TEXT_TOWER = {"hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128}


@dataclass(frozen=True)
class VAETraining:
    steps: int = 800
    batch_size: int = 32
    crop: int = 32  # the VAE is convolutional: training on crops is 4x cheaper, same weights
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6
    latent_noise: float = 0.1  # share of the posterior std sampled: robust decoder, sharp output
    seed: int = 0


@dataclass(frozen=True)
class TextTraining:
    steps: int = 400
    learning_rate: float = 3e-3
    seed: int = 0


def vae_kwargs(image_size: int) -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": VAE_BLOCKS,
        "layers_per_block": 1,
        "latent_channels": tiny.LATENT_CHANNELS,
        "norm_num_groups": 8,
        "sample_size": image_size,
        "mid_block_add_attention": False,
    }


def images_to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 arrays -> float (N, 3, H, W) in [-1, 1]."""
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()
    return stacked / 127.5 - 1.0


def _random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One crop position per batch, on the 8-px latent grid so crops align with latents."""
    cells = (images.shape[-1] - size) // 8 + 1
    top, left = (int(v) * 8 for v in torch.randint(0, cells, (2,), generator=generator))
    return images[:, :, top : top + size, left : left + size]


def _vae_loss(vae: Any, batch: torch.Tensor, options: VAETraining) -> torch.Tensor:
    posterior = vae.encode(batch).latent_dist
    latents = posterior.mean + options.latent_noise * posterior.std * torch.randn_like(
        posterior.mean
    )
    error = vae.decode(latents).sample - batch
    return error.abs().mean() + error.pow(2).mean() + options.kl_weight * posterior.kl().mean()


def train_vae(images: torch.Tensor, options: VAETraining, progress: Any) -> Any:
    """Train an `AutoencoderKL` on (N, 3, H, W) images in [-1, 1]; L1 + L2 + a light KL."""
    from diffusers import AutoencoderKL

    generator = torch.Generator().manual_seed(options.seed)
    with tiny.seeded(options.seed):
        vae = AutoencoderKL(**vae_kwargs(images.shape[-1]))
    optimizer = torch.optim.AdamW(vae.parameters(), lr=options.learning_rate)
    for _ in range(options.steps):
        indices = torch.randint(0, len(images), (options.batch_size,), generator=generator)
        loss = _vae_loss(vae, _random_crops(images[indices], options.crop, generator), options)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        progress.update()
    return vae.eval()


@torch.no_grad()
def latent_statistics(vae: Any, images: torch.Tensor) -> tuple[float, float]:
    """(mean, std) of the posterior means: the shift and 1/scale that whiten the latents."""
    latents = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in images.split(64)])
    return float(latents.mean()), float(latents.std())


def save_vae(vae: Any, folder: Path, mean: float, std: float) -> None:
    """diffusers layout, with `shift_factor`/`scaling_factor` set from the latent statistics."""
    vae.register_to_config(shift_factor=round(mean, 6), scaling_factor=round(1.0 / std, 6))
    folder.mkdir(parents=True, exist_ok=True)
    vae.save_config(str(folder))
    tiny.save_tensors(vae.state_dict(), folder / "diffusion_pytorch_model.safetensors")


# --- text encoder -----------------------------------------------------------------------


class CaptionClassifier(nn.Module):
    """XLM-R tower + 1152-wide projector (the Mexma-SigLIP layout), trained through linear
    heads that read shape, colour and background back from the pooled vector. Linear heads
    make the vector encode each attribute separately, so unseen combinations still map to
    sensible points the U-Net can generalise to."""

    def __init__(self, text_config: dict[str, Any], label_counts: Sequence[int]) -> None:
        from transformers import XLMRobertaConfig, XLMRobertaModel

        super().__init__()
        self.text_model = XLMRobertaModel(XLMRobertaConfig(**text_config), add_pooling_layer=False)
        width = text_config["hidden_size"]
        self.text_projector = nn.Linear(width, tiny.TEXT_EMBED_DIM, bias=False)
        self.heads = nn.ModuleList(nn.Linear(tiny.TEXT_EMBED_DIM, n) for n in label_counts)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        return self.text_projector(hidden.last_hidden_state[:, 0])  # CLS pooling, as the card

    def encoder_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"text_model.{k}": v for k, v in self.text_model.state_dict().items()}
        tensors["text_projector.weight"] = self.text_projector.weight
        return tensors


def tokenize(tokenizer: Any, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad to the longest caption with `<pad>` (id 1), as the runtime's tokenizer does."""
    encodings = [tokenizer.encode(text).ids for text in captions]
    length = max(len(ids) for ids in encodings)
    ids = torch.ones(len(encodings), length, dtype=torch.long)
    mask = torch.zeros(len(encodings), length, dtype=torch.long)
    for row, tokens in enumerate(encodings):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = 1
    return ids, mask


def train_text_encoder(
    tokenizer: Any,
    captions: Sequence[str],
    labels: torch.Tensor,
    options: TextTraining,
    progress: Any,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(text_config, encoder tensors): full-batch Adam on cross-entropy over every attribute.
    `labels` is (N, A) integer classes, one column per attribute."""
    config = tiny.text_config(
        tokenizer.get_vocab_size(),
        **TEXT_TOWER,
        initializer_range=0.02,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    counts = [int(labels[:, column].max()) + 1 for column in range(labels.shape[1])]
    with tiny.seeded(options.seed):
        model = CaptionClassifier(config, counts)
    ids, mask = tokenize(tokenizer, captions)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate)
    for _ in range(options.steps):
        embeddings = model.embed(ids, mask)
        loss = sum(
            nn.functional.cross_entropy(head(embeddings), labels[:, column])
            for column, head in enumerate(model.heads)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
        progress.set_postfix(loss=f"{float(loss.detach()):.4f}")  # type: ignore[union-attr]
        progress.update()
    tensors = {k: v.detach().clone() for k, v in model.encoder_tensors().items()}
    return config, _unit_rms(tensors, model.eval(), ids, mask)


@torch.no_grad()
def _unit_rms(
    tensors: dict[str, torch.Tensor],
    model: CaptionClassifier,
    ids: torch.Tensor,
    mask: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Rescale the projector so embeddings have RMS 1: a scale-free input for the U-Net."""
    rms = model.embed(ids, mask).pow(2).mean().sqrt().item()
    tensors["text_projector.weight"] = tensors["text_projector.weight"] / max(rms, 1e-6)
    return tensors
