"""Shared pieces of the tiny builders: constants, seeding, deterministic file writers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

TEXT_EMBED_DIM = 1152  # SigLIP-so400m width: what the SDXS U-Net cross-attends to
LATENT_CHANNELS = 16


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG (diffusers/transformers init from it) without leaking the state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), {"format": "pt"})


def perturb_zero_tensors(module: torch.nn.Module, seed: int) -> None:
    """diffusers zero-inits some layers (and all norm biases): randomise them so outputs
    depend on every input and every weight file actually matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
