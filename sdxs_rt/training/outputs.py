"""What a finished run leaves: a model folder the runtime loads unchanged, or a LoRA file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from sdxs_rt.backends.torch.weights import save_safetensors_atomic
from sdxs_rt.loading import WEIGHTS_STEM_DIFFUSERS, ModelFiles
from sdxs_rt.training.config import TrainConfig
from sdxs_rt.training.lora import merge_lora_into_folder, save_lora

MODEL_DIR = "model"
LORA_FILE = "lora.safetensors"
RESULT_FILE = "train_result.json"  # its presence marks a finished run


def save_full_model(files: ModelFiles, unet: Any, state_dict: dict[str, Any], output: Path) -> Path:
    """Copy the base model's other parts, save the trained U-Net into the same folder name.

    The U-Net goes as float32 safetensors; with an fp16 base variant an fp16 copy is written
    too, so the folder loads with and without `--variant fp16` like its base did. The weights
    are `state_dict` (gathered from every process), written here: diffusers' `save_pretrained`
    takes no state dict (it would swallow one and save the module's own, sharded, tensors).
    """
    target = output / MODEL_DIR
    staging = output / f".{MODEL_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    unet_name = files.unet_dir.relative_to(files.root).as_posix()
    shutil.copytree(files.root, staging, ignore=shutil.ignore_patterns(".cache", unet_name))
    unet.save_config(staging / unet_name)
    _save_unet_weights(state_dict, staging / unet_name, None)
    if files.variant:
        half = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
        _save_unet_weights(half, staging / unet_name, files.variant)
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def _save_unet_weights(state_dict: dict[str, Any], folder: Path, variant: str | None) -> None:
    """diffusion_pytorch_model[.variant].safetensors, the names diffusers reads."""
    name = ".".join(filter(None, (WEIGHTS_STEM_DIFFUSERS, variant, "safetensors")))
    tensors = {key: value.detach().cpu().contiguous() for key, value in state_dict.items()}
    save_safetensors_atomic(tensors, folder / name, {"format": "pt"})


def save_lora_outputs(
    config: TrainConfig,
    files: ModelFiles,
    unet: Any,
    state_dict: dict[str, Any],
    output: Path,
    step: int,
) -> tuple[Path, Path | None]:
    """output/lora.safetensors (the adapter's tensors taken from `state_dict`, the gathered
    weights), and output/model merged from it when `merge_lora` is set."""
    metadata = {"sdxs_rt_base_model": files.name, "sdxs_rt_steps": str(step)}
    lora = save_lora(unet, output / LORA_FILE, metadata, state_dict)
    if not config.merge_lora:
        return lora, None
    target = output / MODEL_DIR
    shutil.rmtree(target, ignore_errors=True)
    return lora, merge_lora_into_folder(str(files.root), lora, 1.0, target)


def write_result(output: Path, summary: dict[str, Any]) -> None:
    (output / RESULT_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
