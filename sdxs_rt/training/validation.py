"""Validation images during training, through the runtime's own Pipeline.

The pipeline gets torch-backend components built around a plain U-Net holding the trained
weights, the cached text embeddings in place of the text encoder (it was released after
caching), and the model's VAE decoder.

Under FSDP no process holds the whole U-Net, and every forward of the sharded one all-gathers
with the other processes: a forward on the main process alone waits forever. The trainer
therefore gathers the full state dict collectively (every process calls
`accelerator.get_state_dict`, the same gather that saving uses), and the main process alone
generates from an unsharded copy built from it while the others wait at a barrier. The other
way, sampling on every process through the sharded module, would decode the same images on
every process and run the wrapped module under inference mode and outside the training step,
which FSDP does not promise to support. Under DDP or on one device the "gathered" state dict
is the live weights themselves, so the copy shares their storage and costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import UNet2DConditionModel

from sdxs_rt.backends.torch.ops import TorchOps
from sdxs_rt.backends.torch.unet import TorchUNet
from sdxs_rt.backends.torch.vae import TorchVAEDecoder, latent_scaling_from_config
from sdxs_rt.components import Components
from sdxs_rt.loading import ModelFiles
from sdxs_rt.pipeline import Pipeline
from sdxs_rt.training.cache import TrainingCache
from sdxs_rt.training.config import TrainConfig


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

    def run(self, state: dict[str, torch.Tensor], step: int, tracker: Any) -> list[Path]:
        """Generate one image per prompt from the U-Net weights in `state` (the full state dict,
        EMA weights when on), save the PNGs, log them. The main process only."""
        folder = Path(self.config.output_dir) / "validation" / f"step-{step:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        unet = validation_unet(self.config, self.files, state).to(self.device)
        pipe = Pipeline(self._components(unet))
        return [self._one(pipe, folder, index, prompt, tracker, step)
                for index, prompt in enumerate(self.config.validation_prompts)]  # fmt: skip

    def _one(
        self, pipe: Pipeline, folder: Path, index: int, prompt: str, tracker: Any, step: int
    ) -> Path:
        config = self.config
        result = pipe(
            prompt,
            num_inference_steps=config.validation_steps,
            guidance_scale=config.validation_guidance_scale,
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


def validation_unet(
    config: TrainConfig, files: ModelFiles, state: dict[str, torch.Tensor]
) -> torch.nn.Module:
    """A plain U-Net (with the LoRA adapter in LoRA mode) holding `state`, in eval mode.

    Built on the meta device and filled with `assign`: no memory goes to weights about to be
    replaced, and `state`'s tensors are used as they are (no copy). `strict` makes any key
    the gather missed an error instead of a silently random layer.
    """
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(files.unet_config)
        if config.mode == "lora":
            from sdxs_rt.training.lora import add_lora_adapter

            add_lora_adapter(unet, config.lora_rank, config.lora_alpha)
    unet.load_state_dict(state, strict=True, assign=True)
    return unet.eval().requires_grad_(False)
