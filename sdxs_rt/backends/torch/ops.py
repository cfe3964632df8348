"""Torch implementation of `ArrayOps`, and device/precision names -> torch objects."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from sdxs_rt.errors import DeviceError, UsageError

logger = logging.getLogger(__name__)

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
}


class TorchOps:
    """The few array operations the torch-free core asks a backend for."""

    def __init__(
        self,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        *,
        pinned_staging: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        # Only meaningful on CUDA: elsewhere there is no host->device copy to overlap.
        self.pinned_staging = pinned_staging and self.device.type == "cuda"

    def from_host(self, array: np.ndarray) -> torch.Tensor:
        host = np.ascontiguousarray(array, dtype=np.float32)
        if not host.flags.writeable:  # torch.from_numpy warns on read-only memory
            host = host.copy()
        tensor = torch.from_numpy(host)
        if self.pinned_staging:
            return self._from_pinned(tensor)
        # non_blocking from pageable memory is still safe: torch stages the copy before returning
        return tensor.to(self.device, self.dtype, non_blocking=self.device.type == "cuda")

    def _from_pinned(self, tensor: torch.Tensor) -> torch.Tensor:
        """Stage in page-locked memory, then copy asynchronously: the host never waits.

        The staging block comes from torch's caching pinned-host allocator, which records the
        copy on its stream and hands the block out again only once that copy has finished, so a
        later draw can never overwrite noise still in flight (a fixed, reused buffer could).
        """
        staged = tensor.pin_memory()
        return staged.to(self.device, self.dtype, non_blocking=True)

    def to_host(self, array: torch.Tensor) -> np.ndarray:
        host = array.detach().to("cpu", torch.float32)
        if host.data_ptr() == array.data_ptr():  # already a CPU float32 tensor: copy, never alias
            host = host.clone()
        return host.numpy()

    def concat(self, arrays: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(arrays), dim=0)

    def clip(self, array: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return array.clamp(low, high)


def resolve_device(name: str) -> torch.device:
    """ "cpu", "cuda", "cuda:N", "mps" or "auto" (the best available) -> torch.device."""
    name = name.strip().lower()
    if name == "auto":
        return _best_available_device()
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("device 'mps' was requested but Apple MPS is not available here")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        return _cuda_device(name)
    raise UsageError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto")


def _best_available_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _cuda_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda, cuda:N, mps or auto") from err
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {name!r} was requested but CUDA is not available "
            f"(this torch {torch.__version__} build has no CUDA, "
            "or no NVIDIA GPU and driver are visible)"
        )
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(f"device {name!r} was requested but only {count} CUDA GPU(s) are visible")
    return device


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """ "fp32", "fp16" or "bf16" -> torch dtype; half precision on CPU works but is slow."""
    dtype = DTYPES.get(name.strip().lower())
    if dtype is None:
        raise UsageError(f"unknown precision {name!r}; use fp32, fp16 or bf16")
    if device is not None and device.type == "cpu" and dtype == torch.float16:
        # torch >= 2.1 runs fp16 convolutions on CPU, but far slower than fp32 or bf16
        logger.warning("fp16 on CPU is slow; fp32 (or bf16) is usually faster there")
    return dtype
