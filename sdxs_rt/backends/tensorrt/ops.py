"""The CUDA device the engines run on (arrays are the torch backend's `TorchOps` tensors)."""

from __future__ import annotations

import torch

from sdxs_rt.errors import DeviceError, UsageError


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
