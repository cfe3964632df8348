"""`ArrayOps` over torch CUDA tensors, and the device the engines run on.

The same operations as the torch backend's `TorchOps`, kept here so that the TensorRT backend
needs torch alone, not the torch backend's diffusers and transformers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sdxs_rt.errors import DeviceError, UsageError


class CudaTensorOps:
    """Float32 latents on one CUDA device."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def from_host(self, array: np.ndarray) -> torch.Tensor:
        host = np.array(array, dtype=np.float32)  # a writable copy: callers may reuse theirs
        return torch.from_numpy(host).to(self.device, non_blocking=self.device.type == "cuda")

    def to_host(self, array: torch.Tensor) -> np.ndarray:
        return array.detach().to("cpu", torch.float32).clone().numpy()

    def concat(self, arrays: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.cat(list(arrays), dim=0)

    def clip(self, array: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return array.clamp(low, high)


def cuda_device(name: str) -> torch.device:
    """ "cuda", "cuda:N" or "auto" -> a visible CUDA device, made current; else refused."""
    name = name.strip().lower()
    if name == "auto":
        name = "cuda"
    if name != "cuda" and not name.startswith("cuda:"):
        raise DeviceError(
            f"the tensorrt backend runs on an NVIDIA GPU, not on {name!r}; pass --device cuda"
        )
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; use cuda or cuda:N") from None
    if not torch.cuda.is_available():
        raise DeviceError(
            f"device {name!r} was requested but CUDA is not available (this torch "
            f"{torch.__version__} build has no CUDA, or no NVIDIA GPU and driver are visible)"
        )
    if (device.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r} was requested but that GPU is not visible")
    torch.cuda.set_device(device)  # TensorRT deserialises and runs on the current device
    return device
