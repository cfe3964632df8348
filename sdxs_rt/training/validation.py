"""Validation images during training, through the runtime's own Pipeline.

The pipeline gets torch-backend components built around the U-Net being trained (unwrapped,
not folded: folding would rewrite the trained module), the cached text embeddings in place of
the text encoder (it was released after caching), and the model's VAE decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdxs_rt.backends.torch.ops import TorchOps
from sdxs_rt.backends.torch.unet import TorchUNet
from sdxs_rt.backends.torch.vae import TorchVAEDecoder, latent_scaling_from_config
from sdxs_rt.components import Components
from sdxs_rt.loading import ModelFiles
from sdxs_rt.pipeline import Pipeline
from sdxs_rt.training.cache import TrainingCache
from sdxs_rt.training.config import TrainConfig
from sdxs_rt.training.optim import EMA


class CachedTextEncoder:
    """`TextEncoder` over the embedding cache: only prompts cached before training work."""

    def __init__(self, cache: TrainingCache, device: torch.device) -> None:
        self.cache = cache
        self.device = device
        self.width = int(cache.embedding("").shape[-1])

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.cache.embeddings(list(prompts))[:, 0].to(self.device)


class Validator:
    def __init__(
        self, config: TrainConfig, files: ModelFiles, cache: TrainingCache, device: torch.device
    ) -> None:
        self.config, self.files, self.cache, self.device = config, files, cache, device
        self._vae: TorchVAEDecoder | None = None

    def _components(self, unet: torch.nn.Module) -> Components:
        files = self.files
        if self._vae is None:  # loaded at the first validation, then kept
            self._vae = TorchVAEDecoder.load(
                files.vae_dir,
                files.vae_weights,
                self.device,
                torch.float32,
                config=files.vae_config,
            )
        channels = int(files.unet_config["in_channels"])
        return Components(
            text_encoder=CachedTextEncoder(self.cache, self.device),
            unet=TorchUNet(unet, fold=False),  # type: ignore[arg-type]
            vae_decoder=self._vae,
            ops=TorchOps(self.device, torch.float32),
            scheduler_config=files.scheduler_config,
            latent_scaling=latent_scaling_from_config(files.vae_config, channels),
            latent_channels=channels,
            vae_scale_factor=2 ** (len(files.vae_config["block_out_channels"]) - 1),
            info={"backend": "torch", "model": files.name, "training": True},
        )

    def run(self, unet: torch.nn.Module, step: int, ema: EMA | None, tracker: Any) -> list[Path]:
        """Generate one image per prompt (EMA weights when on), save PNGs, log them."""
        folder = Path(self.config.output_dir) / "validation" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        was_training = unet.training
        unet.eval()
        if ema is not None:
            ema.swap_in()
        try:
            pipe = Pipeline(self._components(unet))
            paths = [self._one(pipe, folder, index, prompt, tracker, step)
                     for index, prompt in enumerate(self.config.validation_prompts)]  # fmt: skip
        finally:
            if ema is not None:
                ema.swap_out()
            unet.train(was_training)
        return paths

    def _one(
        self, pipe: Pipeline, folder: Path, index: int, prompt: str, tracker: Any, step: int
    ) -> Path:
        config = self.config
        result = pipe(
            prompt,
            num_inference_steps=config.validation_steps,
            guidance_scale=config.validation_cfg,
            width=config.validation_size,
            height=config.validation_size,
            seed=config.seed + index,
        )
        path = folder / f"{index:02d}.png"
        result.images[0].save(path)
        if tracker is not None:
            image = np.asarray(result.images[0])
            tracker.log_images({f"validation/{index:02d}": image}, step=step, dataformats="HWC")
        return path
