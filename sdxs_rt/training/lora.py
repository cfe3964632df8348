"""LoRA for fine-tuning: add a peft adapter to the U-Net, save it as diffusers reads it, merge it.

The file is the one diffusers' `save_lora_weights` writes and `load_lora_weights` reads: peft key
names with a `unet.` prefix (`unet.<module>.lora_A.weight`, `unet.<module>.lora_B.weight`), and
the adapter's LoraConfig (rank `r`, `lora_alpha`, `target_modules`, ...) packed as `unet.<field>`
in JSON under the safetensors header key `lora_adapter_metadata`, as diffusers'
`_collate_lora_metadata` + `write_lora_layers` do. Without that config diffusers would assume
alpha = r; `sdxs_rt.backends.torch.lora` reads the same fields. peft is imported only where used,
so `merge_lora_into_folder` (the `sdxs-rt merge-lora` command) works without it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sdxs_rt.backends.torch.lora import (
    METADATA_KEY,
    PREFIX,
    LoraLayer,
    merged_weights,
    read_lora,
)
from sdxs_rt.backends.torch.weights import save_safetensors_atomic
from sdxs_rt.errors import ModelFormatError, ModelNotFoundError, UsageError
from sdxs_rt.hub import check_revision
from sdxs_rt.loading import WEIGHTS_STEM_DIFFUSERS, ModelFiles, resolve_model

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

ADAPTER_NAME = "default"  # diffusers' add_adapter default; peft strips it from saved keys
# Attention projections. SDXS cross-attends to ONE token: softmax over one key is exactly 1, so
# the cross-attention's to_q and to_k get exactly zero gradient and are left out (a LoRA from
# elsewhere that has them still merges, with no effect). proj_in/proj_out and the feed-forward
# layers would triple the parameters for little gain on style/subject tuning: pass them in
# `targets` when wanted (EXTENDED_TARGETS).
DEFAULT_TARGETS: tuple[str, ...] = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_v",
    "attn2.to_out.0",
)
EXTENDED_TARGETS: tuple[str, ...] = (*DEFAULT_TARGETS, "proj_in", "proj_out", "ff.net.0.proj")


def add_lora_adapter(
    unet: UNet2DConditionModel, rank: int, alpha: float, targets: tuple[str, ...] = DEFAULT_TARGETS
) -> None:
    """Add a trainable LoRA (rank `rank`, scaling alpha/rank) to a diffusers U-Net in place;
    every base weight is frozen. `targets`: module-name suffixes, peft's `target_modules`."""
    from peft import LoraConfig

    if rank < 1:
        raise UsageError(f"LoRA rank must be at least 1, got {rank}")
    if alpha <= 0:
        raise UsageError(f"LoRA alpha must be positive, got {alpha}")
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,  # type: ignore[arg-type]  # peft takes floats (scaling = alpha / r)
        target_modules=list(targets),
        init_lora_weights="gaussian",  # A random, B zero: the adapter starts as a no-op
    )
    unet.requires_grad_(False)
    unet.add_adapter(config, adapter_name=ADAPTER_NAME)
    for name, param in unet.named_parameters():
        param.requires_grad_("lora_" in name)


def lora_state_dict(
    unet: UNet2DConditionModel, full_state: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """The adapter's tensors under diffusers' key names (`unet.<module>.lora_A.weight`), from
    `full_state` (the whole model's state dict, e.g. gathered from FSDP shards) when given,
    else from the module itself."""
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, full_state, adapter_name=ADAPTER_NAME)
    return {PREFIX + key: t.detach().to("cpu").contiguous() for key, t in state.items()}


def adapter_metadata(unet: UNet2DConditionModel) -> dict[str, str]:
    """The safetensors header diffusers writes: `format` and the packed LoraConfig JSON."""
    config = unet.peft_config[ADAPTER_NAME].to_dict()
    packed = {PREFIX + key: _jsonable(value) for key, value in config.items()}
    return {"format": "pt", METADATA_KEY: json.dumps(packed, indent=2, sort_keys=True)}


def _jsonable(value: Any) -> Any:
    # as diffusers' write_lora_layers: sets (target_modules) become lists
    return sorted(value) if isinstance(value, set) else value


def save_lora(
    unet: UNet2DConditionModel,
    path: Path,
    metadata: dict[str, str] | None = None,
    full_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the adapter to ONE safetensors file, atomically; `metadata`: extra header strings
    (e.g. training settings), never overriding the two keys diffusers reads; `full_state`: as
    in `lora_state_dict`."""
    path = Path(path)
    header = {**(metadata or {}), **adapter_metadata(unet)}
    save_safetensors_atomic(lora_state_dict(unet, full_state), path, header)
    return path


# ---------------------------------------------------------------- merged model folders


def merge_lora_into_folder(
    model: str | Path, lora: Path, scale: float, out_dir: Path, revision: str | None = None
) -> Path:
    """Copy a diffusers-format model (folder or hub id, at `revision`) to `out_dir` with the LoRA
    merged into every U-Net weight file (each keeps its dtype and variant name); returns `out_dir`.

    The copy is built beside `out_dir` and renamed into place at the end, so a failure leaves
    no half-written model. `out_dir` must not exist yet (or be an empty folder).
    """
    out_dir = Path(out_dir)
    check_revision(str(model), revision)
    _check_out_dir(out_dir)
    lora = Path(lora)
    layers = read_lora(lora)  # before copying anything: a bad LoRA file fails fast
    files = _resolve_any_variant(str(model), revision)
    if out_dir.resolve().is_relative_to(files.root.resolve()):
        raise UsageError(f"output {out_dir} is inside the model folder {files.root}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        copy = staging / "model"
        shutil.copytree(files.root, copy, ignore=shutil.ignore_patterns(".cache"))
        unet_dir = copy / files.unet_dir.relative_to(files.root)
        for weights in _unet_weight_files(unet_dir):
            _merge_file(weights, [(layers, scale, lora)])
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(copy, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.is_file() or (out_dir.is_dir() and any(out_dir.iterdir())):
        raise UsageError(f"output {out_dir} already exists; choose a new folder")


def _resolve_any_variant(model: str, revision: str | None) -> ModelFiles:
    """The model with its plain weights, else with only fp16 weights (the card's variant)."""
    try:
        return resolve_model(model, None, revision)
    except (ModelNotFoundError, ModelFormatError) as plain_error:
        try:
            return resolve_model(model, "fp16", revision)
        except (ModelNotFoundError, ModelFormatError):
            raise plain_error from None


def _unet_weight_files(unet_dir: Path) -> list[Path]:
    files = sorted(unet_dir.glob(f"{WEIGHTS_STEM_DIFFUSERS}*.safetensors"))
    if any(unet_dir.glob("*.safetensors.index.json")):
        raise ModelFormatError(
            f"{unet_dir} holds sharded U-Net weights; merge-lora expects single safetensors files"
        )
    return files


def _merge_file(weights: Path, loras: list[tuple[list[LoraLayer], float, Path]]) -> None:
    """Rewrite one U-Net safetensors file with the LoRAs merged (its header kept)."""
    with safe_open(weights, framework="pt", device="cpu") as handle:
        header = handle.metadata() or {}
    state = load_file(weights, device="cpu")
    state.update(merged_weights(state, loras))
    if weights.is_symlink():
        weights.unlink()  # a hub snapshot links into the cache: never write through it
    save_safetensors_atomic(state, weights, header)
