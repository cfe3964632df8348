"""Optimizer, learning-rate schedule and an EMA of the trained weights."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from sdxs_rt.errors import UsageError
from sdxs_rt.training.config import TrainConfig

logger = logging.getLogger(__name__)
NOTICE_8BIT = "8-bit AdamW needs CUDA and bitsandbytes; using torch AdamW"


def _bitsandbytes_adamw() -> Any | None:
    """bitsandbytes' AdamW8bit class when it can run here (CUDA and the package), else None."""
    if not torch.cuda.is_available():
        return None
    try:
        import bitsandbytes  # type: ignore[import-not-found]
    except Exception:  # broken installs raise more than ImportError
        return None
    return bitsandbytes.optim.AdamW8bit


def make_optimizer(
    config: TrainConfig, parameters: Iterable[nn.Parameter]
) -> torch.optim.Optimizer:
    """ "auto": 8-bit AdamW when possible, else torch AdamW (with a one-line notice)."""
    trainable = [p for p in parameters if p.requires_grad]
    if not trainable:
        raise UsageError("The model has no trainable parameters.")
    options: dict[str, Any] = {
        "lr": config.lr,
        "betas": (config.adam_beta1, config.adam_beta2),
        "eps": config.adam_epsilon,
        "weight_decay": config.weight_decay,
    }
    eight_bit = _bitsandbytes_adamw() if config.optimizer != "adamw" else None
    if eight_bit is not None:
        return eight_bit(trainable, **options)
    if config.optimizer == "adamw8bit":
        raise UsageError(f"optimizer 'adamw8bit': {NOTICE_8BIT.split(';')[0]}.")
    if config.optimizer == "auto":
        logger.warning(NOTICE_8BIT)
    return torch.optim.AdamW(trainable, **options)


def make_lr_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, num_processes: int
) -> Any:
    """Warm-up then constant/linear/cosine decay over `max_steps` optimizer steps.

    Counts are multiplied by the process count: accelerate's wrapped scheduler steps once per
    process on every optimizer step.
    """
    from diffusers.optimization import get_scheduler

    name = "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
    return get_scheduler(
        name,
        optimizer=optimizer,
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=config.max_steps * num_processes,
    )


class EMA:
    """Exponential moving average of the trainable parameters, kept in float32.

    `offload`: the average lives on the CPU (costs a device->host copy per step, saves a full
    copy of the weights in GPU memory). The decay warms up as diffusers' EMAModel does:
    min(decay, (1 + n) / (10 + n)) at update n.
    """

    def __init__(self, parameters: Iterable[nn.Parameter], decay: float, offload: bool) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        self.decay = decay
        self.device = torch.device("cpu") if offload else None
        self.shadow = [self._place(p.detach().float().clone()) for p in self.parameters]
        self.updates = 0
        self._backup: list[torch.Tensor] | None = None

    def _place(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device) if self.device is not None else tensor

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        keep = self.current_decay()
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            shadow.lerp_(self._place(param.detach().float()), 1.0 - keep)
        self.updates += 1

    @torch.no_grad()
    def swap_in(self) -> None:
        """Put the averaged weights into the model (keeping the trained ones aside)."""
        self._backup = [p.detach().clone() for p in self.parameters]
        self.copy_to_model()

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for shadow, param in zip(self.shadow, self.parameters, strict=True):
            param.copy_(shadow.to(param.device, param.dtype))

    @torch.no_grad()
    def swap_out(self) -> None:
        """Restore the trained weights after `swap_in`."""
        if self._backup is None:
            return
        for saved, param in zip(self._backup, self.parameters, strict=True):
            param.copy_(saved)
        self._backup = None

    def save(self, path: Path) -> None:
        tensors = {f"{i}": s.detach().cpu().contiguous() for i, s in enumerate(self.shadow)}
        save_file(tensors, str(path), metadata={"updates": str(self.updates)})

    def load(self, path: Path) -> None:
        from safetensors import safe_open

        tensors = load_file(str(path))
        if len(tensors) != len(self.shadow):
            raise UsageError(
                f"{path} holds {len(tensors)} EMA tensors; expected {len(self.shadow)}."
            )
        for i, shadow in enumerate(self.shadow):
            shadow.copy_(tensors[f"{i}"])
        with safe_open(str(path), "pt") as handle:
            self.updates = int((handle.metadata() or {}).get("updates", 0))
