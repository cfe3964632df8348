"""Build diffusers modules from their JSON config and a safetensors file, without random init.

The module is constructed on the meta device (no memory, no init kernels), then the tensors of
the safetensors file are assigned in place of the meta parameters. Safetensors only: never
unpickle. Every architectural value comes from the config, through diffusers' `from_config`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sdxs_rt.errors import ModelFormatError, ModelNotFoundError

ModuleT = TypeVar("ModuleT", bound=nn.Module)
EXAMPLES = 2  # how many offending keys an error message names


def read_config(path: Path) -> dict[str, Any]:
    """Read a component's `config.json`, with a clear error when it is missing or not JSON."""
    if not path.is_file():
        raise ModelNotFoundError(f"config file {path} does not exist")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"config file {path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ModelFormatError(f"config file {path} does not hold a JSON object")
    return config


def load_diffusers_module(
    cls: type[ModuleT],
    config: dict[str, Any],
    weights: Path,
    device: torch.device | str,
    dtype: torch.dtype,
) -> ModuleT:
    """Build `cls` (e.g. UNet2DConditionModel, AutoencoderKL) from `config` and `weights`.

    Returns the module on `device` in `dtype`, in eval mode, with gradients off.
    """
    weights = Path(weights)
    _check_class_name(cls, config, weights)
    state = _read_safetensors(weights)
    module = _build_on_meta(cls, config, weights)
    _check_state_matches(module, state, weights)
    # assign=True swaps the meta parameters for the file's tensors instead of copying into them
    module.load_state_dict(state, strict=True, assign=True)
    _check_no_meta_tensors(module, weights)
    # nn.Module.to, not diffusers' ModelMixin.to, which warns on every dtype cast (the U-Net and
    # the VAE keep no module in float32, so there is nothing for that warning to protect).
    nn.Module.to(module, device=device, dtype=dtype)
    _copy_out_of_file(module, state)
    module.eval()
    module.requires_grad_(False)
    return module


def _copy_out_of_file(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Give memory of their own to the tensors that still view the file's mmap (CPU, same
    dtype): otherwise writing the file in place would change a loaded model, and truncating it
    would kill the process (SIGBUS), e.g. a server's while someone updates the model folder."""
    mapped = {tensor.untyped_storage().data_ptr() for tensor in state.values()}
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.untyped_storage().data_ptr() in mapped:
            tensor.data = tensor.data.clone()


def _check_class_name(cls: type, config: dict[str, Any], weights: Path) -> None:
    declared = config.get("_class_name")
    if declared is not None and declared != cls.__name__:
        raise ModelFormatError(
            f"the config next to {weights} describes a {declared}, "
            f"but a {cls.__name__} was expected"
        )


def _read_safetensors(weights: Path) -> dict[str, torch.Tensor]:
    if not weights.is_file():
        raise ModelNotFoundError(f"weights file {weights} does not exist")
    try:
        return load_file(weights, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFormatError(
            f"weights file {weights} is not a readable safetensors file: {err}"
        ) from err


def _build_on_meta(cls: type[ModuleT], config: dict[str, Any], weights: Path) -> ModuleT:
    try:
        with torch.device("meta"):
            return cls.from_config(config)  # type: ignore[attr-defined]
    except (TypeError, ValueError, KeyError) as err:
        raise ModelFormatError(
            f"the {cls.__name__} config for {weights} is not one diffusers can build: {err}"
        ) from err


def _check_state_matches(module: nn.Module, state: dict[str, torch.Tensor], weights: Path) -> None:
    """Compare key sets and shapes first, so the error is one readable sentence."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        name for name in set(expected) & set(state) if tuple(state[name].shape) != expected[name]
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} keys missing ({_examples(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys ({_examples(unexpected)})")
    if wrong_shape:
        shapes = ", ".join(
            f"{name!r} is {tuple(state[name].shape)} in the file but {expected[name]} in the config"
            for name in wrong_shape[:EXAMPLES]
        )
        problems.append(f"{len(wrong_shape)} tensors with the wrong shape (e.g. {shapes})")
    if problems:
        raise ModelFormatError(
            f"weights file {weights} does not match its {type(module).__name__} config: "
            + "; ".join(problems)
        )


def _examples(names: list[str]) -> str:
    shown = ", ".join(repr(name) for name in names[:EXAMPLES])
    return f"e.g. {shown}"


def _check_no_meta_tensors(module: nn.Module, weights: Path) -> None:
    # Non-persistent buffers are not in the file: they would stay on the meta device.
    left = [name for name, t in _tensors(module) if t.is_meta]
    if left:
        raise ModelFormatError(
            f"after loading {weights}, {len(left)} tensors of the {type(module).__name__} have no "
            f"values ({_examples(left)}); this model layout is not supported"
        )


def _tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [*module.named_parameters(), *module.named_buffers()]


def save_safetensors_atomic(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file via a temp file in the same folder and os.replace: a reader
    (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(contiguous, temp, metadata=metadata)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
