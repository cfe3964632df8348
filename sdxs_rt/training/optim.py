"""Optimizer, learning-rate schedule and an EMA of the trained weights."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
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


def local_part(tensor: torch.Tensor) -> torch.Tensor:
    """The part of a parameter this process holds: the local shard of an FSDP2 DTensor, a view
    that writes through. Anything else is its own local part (an FSDP1 parameter outside
    forward already is a view of this process's shard; a DDP one is the whole tensor)."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor


class EMA:
    """Exponential moving average of the trainable parameters, kept in float32.

    Each process averages the parameter parts it holds (`local_part`): under DDP or on one
    device the whole parameters, under FSDP its own shards. That costs no communication per
    step, and the shards' averages together are the average of the whole weights, since the
    update is elementwise. Whoever needs whole averaged weights swaps them in on every process
    and gathers the state dict collectively (the trainer does, for validation and saving).

    `offload`: the average lives on the CPU (costs a device->host copy per step, saves a full
    copy of the weights in GPU memory). The decay warms up as diffusers' EMAModel does:
    min(decay, (1 + n) / (10 + n)) at update n.
    """

    def __init__(self, parameters: Iterable[nn.Parameter], decay: float, offload: bool) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]
        self.decay = decay
        self.device = torch.device("cpu") if offload else None
        self.shadow = [self._place(local_part(p).detach().float().clone()) for p in self.parameters]
        self.updates = 0
        self._backup: list[torch.Tensor] | None = None

    def _place(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device) if self.device is not None else tensor

    def _locals(self) -> list[torch.Tensor]:
        # fetched afresh each time: FSDP may re-point a parameter's storage between steps
        return [local_part(p) for p in self.parameters]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        keep = self.current_decay()
        for shadow, param in zip(self.shadow, self._locals(), strict=True):
            shadow.lerp_(self._place(param.detach().float()), 1.0 - keep)
        self.updates += 1

    @torch.no_grad()
    def swap_in(self) -> None:
        """Put the averaged weights into the model (keeping the trained ones aside)."""
        self._backup = [p.detach().clone() for p in self._locals()]
        self.copy_to_model()

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for shadow, param in zip(self.shadow, self._locals(), strict=True):
            param.copy_(shadow.to(param.device, param.dtype))

    @torch.no_grad()
    def swap_out(self) -> None:
        """Restore the trained weights after `swap_in`."""
        if self._backup is None:
            return
        for saved, param in zip(self._backup, self._locals(), strict=True):
            param.copy_(saved)
        self._backup = None

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model for the duration of the block."""
        self.swap_in()
        try:
            yield
        finally:
            self.swap_out()

    def save(self, path: Path) -> None:
        tensors = {f"{i}": s.detach().cpu().contiguous() for i, s in enumerate(self.shadow)}
        save_file(tensors, str(path), metadata={"updates": str(self.updates)})

    def load(self, path: Path) -> None:
        from safetensors import safe_open

        tensors = load_file(str(path))
        shapes = [tuple(tensors[f"{i}"].shape) if f"{i}" in tensors else None
                  for i in range(len(self.shadow))]  # fmt: skip
        if len(tensors) != len(self.shadow) or shapes != [tuple(s.shape) for s in self.shadow]:
            raise UsageError(
                f"{path} holds {len(tensors)} EMA tensors that do not fit the {len(self.shadow)} "
                "trained parameters of this run (another model, mode or process layout?)."
            )
        for i, shadow in enumerate(self.shadow):
            shadow.copy_(tensors[f"{i}"])
        with safe_open(str(path), "pt") as handle:
            self.updates = int((handle.metadata() or {}).get("updates", 0))


def averaged_weights(ema: EMA | None) -> AbstractContextManager[None]:
    """`ema.swapped_in()`, or nothing to swap without an EMA."""
    return nullcontext() if ema is None else ema.swapped_in()
