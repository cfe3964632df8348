"""The denoising objective: forward noising, the prediction target, min-SNR weights, dropout.

The noise schedule comes from the model's own scheduler_config through `sdxs_rt.schedules`
(the same betas the samplers use, zero-terminal-SNR rescaling included), so training and
inference agree on what timestep t means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from sdxs_rt.errors import ModelFormatError
from sdxs_rt.schedules import SchedulerConfig, alphas_cumprod

TRAINABLE_PREDICTIONS = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class NoiseSchedule:
    alphas_cumprod: torch.Tensor  # (T,) float32, on the CPU
    prediction_type: str

    @classmethod
    def from_config(cls, scheduler_config: dict[str, Any]) -> NoiseSchedule:
        config = SchedulerConfig.from_dict(scheduler_config)
        if config.prediction_type not in TRAINABLE_PREDICTIONS:
            raise ModelFormatError(
                f"the scheduler predicts {config.prediction_type!r}; sdxs-rt trains only "
                "'epsilon' and 'v_prediction' models"
            )
        cumprod = torch.tensor(alphas_cumprod(config), dtype=torch.float32)
        return cls(cumprod, config.prediction_type)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.alphas_cumprod.shape[0])

    def _coefficients(self, timesteps: torch.Tensor, like: torch.Tensor) -> tuple[Any, Any]:
        """sqrt(a_t) and sqrt(1 - a_t), shaped to broadcast over `like` (B, C, H, W)."""
        cumprod = self.alphas_cumprod.to(like.device)[timesteps.to(like.device)].to(like.dtype)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return cumprod.sqrt().reshape(shape), (1 - cumprod).sqrt().reshape(shape)

    def add_noise(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) noise (DDPMScheduler.add_noise)."""
        signal, sigma = self._coefficients(timesteps, latents)
        return signal * latents + sigma * noise

    def training_target(
        self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
    ) -> torch.Tensor:
        """What the U-Net should output: the noise, or v = sqrt(a) noise - sqrt(1-a) x_0."""
        if self.prediction_type == "epsilon":
            return noise
        signal, sigma = self._coefficients(timesteps, latents)
        return signal * noise - sigma * latents

    def snr(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Signal-to-noise ratio a_t / (1 - a_t) per timestep (0 at a zero-SNR final step)."""
        cumprod = self.alphas_cumprod[timesteps.cpu()].double()
        return (cumprod / (1 - cumprod)).float()

    def sample_timesteps(self, count: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (count,), generator=generator)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (arXiv 2303.09556): eps min(snr, g)/snr, v min(snr, g)/(snr+1).

    For epsilon at snr 0 (zero terminal SNR) the limit, 1, is used instead of 0/0.
    """
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    if prediction_type == "epsilon":
        return torch.where(snr > 0, clipped / snr.clamp(min=1e-12), torch.ones_like(snr))
    raise ModelFormatError(
        f"min-SNR weights are defined for epsilon and v, not {prediction_type!r}"
    )


def drop_captions(
    embeddings: torch.Tensor,
    empty: torch.Tensor,
    probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each row by the empty prompt's embedding with `probability`; (rows, dropped)."""
    dropped = torch.rand(embeddings.shape[0], generator=generator) < probability
    mask = dropped.reshape((-1,) + (1,) * (embeddings.ndim - 1)).to(embeddings.device)
    return torch.where(mask, empty.to(embeddings).expand_as(embeddings), embeddings), dropped


def weighted_mse(
    prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None
) -> torch.Tensor:
    """Mean squared error per sample (in float32), weighted, averaged over the batch."""
    per_sample = (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, target.ndim)))
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights.to(per_sample)).mean()
