"""The PyTorch backend: CPU and CUDA, fp32 / fp16 / bf16, SDPA attention, folded cross-attention."""

from sdxs_rt.backends.torch.loader import load_components

__all__ = ["load_components"]
