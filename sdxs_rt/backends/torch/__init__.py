"""The PyTorch backend: CPU and CUDA, fp32 / fp16 / bf16, SDPA attention, folded cross-attention."""

from __future__ import annotations

from typing import Any

__all__ = ["load_components"]


def __getattr__(name: str) -> Any:
    # Lazy: `sdxs_rt.backends.torch.ops` (used by the TensorRT backend) must not pull in
    # diffusers and transformers.
    if name == "load_components":
        from sdxs_rt.backends.torch.loader import load_components

        return load_components
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
