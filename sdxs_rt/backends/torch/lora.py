"""LoRA at run time: read diffusers/peft LoRA files and merge them into U-Net weights (no peft).

A LoRA file is one safetensors file in the format diffusers' `save_lora_weights` writes and
`load_lora_weights` reads: keys `unet.<module>.lora_A.weight` (down, (r, in[, kh, kw])) and
`unet.<module>.lora_B.weight` (up, (out, r[, 1, 1])), and the peft LoraConfig as JSON under the
`lora_adapter_metadata` header key (`unet.r`, `unet.lora_alpha`, `unet.alpha_pattern`, ...).
Merging adds `scale * alpha / r * up @ down` to `<module>.weight`. TorchUNet folds single-token
cross-attention into per-prompt constants built from the weights, so LoRAs are merged first.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from sdxs_rt.errors import ModelFormatError, UsageError

METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
PREFIX = "unet."
# (down, up) key suffixes: peft's names, and the older diffusers names of the same tensors
SUFFIX_PAIRS = ((".lora_A.weight", ".lora_B.weight"), (".lora.down.weight", ".lora.up.weight"))
ALPHA_SUFFIX = ".alpha"


class LoraFormatError(ModelFormatError):
    """A LoRA file that exists but does not fit the U-Net or is not in a format sdxs-rt reads."""


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to apply: its file and its strength (1.0: as trained, 0: no effect)."""

    path: Path
    scale: float = 1.0

    @property
    def name(self) -> str:
        return self.path.stem

    def __str__(self) -> str:
        return f"{self.path}:{self.scale:g}"


@dataclass(frozen=True)
class LoraLayer:
    """One adapted layer: `weight += scale * factor * up @ down` (reshaped for convolutions)."""

    module: str
    down: torch.Tensor
    up: torch.Tensor
    factor: float  # alpha / r (alpha / sqrt(r) for rsLoRA)
    down_key: str  # the file's key names, for error messages
    up_key: str


# ---------------------------------------------------------------- FILE:SCALE specs


def parse_lora_spec(spec: str | LoraSpec) -> LoraSpec:
    """`a.safetensors:0.8` -> (a.safetensors, 0.8); no `:SCALE` means 1.0.

    The scale is what follows the last colon, unless that colon is a Windows drive's
    (`C:\\x.safetensors`) or belongs to the path (a path separator follows it).
    """
    if isinstance(spec, LoraSpec):
        return spec
    text = spec.strip()
    head, sep, tail = text.rpartition(":")
    is_drive = len(head) == 1 and head.isalpha()
    if not sep or is_drive or "/" in tail or "\\" in tail:
        return LoraSpec(_spec_path(text, spec), 1.0)
    return LoraSpec(_spec_path(head, spec), _spec_scale(tail, spec))


def _spec_path(text: str, spec: str) -> Path:
    if not text:
        raise UsageError(f"LoRA {spec!r} names no file; write it as FILE or FILE:SCALE")
    return Path(text).expanduser()


def _spec_scale(text: str, spec: str) -> float:
    try:
        scale = float(text)
    except ValueError:
        raise UsageError(
            f"LoRA {spec!r} has scale {text!r}, which is not a number; write it as FILE:SCALE"
        ) from None
    if not math.isfinite(scale):
        raise UsageError(f"LoRA {spec!r} has scale {text!r}; the scale must be a finite number")
    return scale


# ---------------------------------------------------------------- reading a LoRA file


def read_lora(path: Path) -> list[LoraLayer]:
    """The layers of a LoRA file, with their alpha / r factors; clear errors for other formats."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"LoRA file {path} does not exist")
    tensors, header = _read_file(path)
    config = _adapter_config(header, path)
    if config.get("use_dora"):
        raise LoraFormatError(f"LoRA file {path} is a DoRA, which sdxs-rt cannot merge")
    if config.get("lora_bias"):
        raise LoraFormatError(f"LoRA file {path} trains biases (lora_bias), which sdxs-rt lacks")
    tensors = _strip_prefix(tensors, path)
    return [_layer(module, keys, tensors, config) for module, keys in _pairs(tensors, path)]


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            header = handle.metadata() or {}
            return {key: handle.get_tensor(key) for key in handle.keys()}, header  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as err:
        raise LoraFormatError(
            f"LoRA file {path} is not a readable safetensors file: {err}"
        ) from err


def _adapter_config(header: Mapping[str, str], path: Path) -> dict[str, Any]:
    """The U-Net's LoraConfig values from the header (diffusers packs them as `unet.<field>`)."""
    raw = header.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as err:
        raise LoraFormatError(f"LoRA file {path} has unreadable {METADATA_KEY}: {err}") from None
    if not isinstance(packed, dict):
        raise LoraFormatError(f"LoRA file {path} has a {METADATA_KEY} that is not a JSON object")
    if any(key.startswith(PREFIX) for key in packed):
        return {k.removeprefix(PREFIX): v for k, v in packed.items() if k.startswith(PREFIX)}
    return packed


def _strip_prefix(tensors: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    if any(key.startswith(("lora_unet_", "lora_te")) for key in tensors):
        raise LoraFormatError(
            f"LoRA file {path} is in the kohya/A1111 format; sdxs-rt reads the diffusers/peft "
            "format (keys like 'unet.<module>.lora_A.weight')"
        )
    others = sorted(k for k in tensors if "." in k and not k.startswith(PREFIX))
    prefixed = [k for k in tensors if k.startswith(PREFIX)]
    if prefixed and others:
        raise LoraFormatError(
            f"LoRA file {path} holds layers for other models than the U-Net (e.g. {others[0]!r}); "
            "sdxs-rt applies U-Net LoRAs only"
        )
    return {key.removeprefix(PREFIX): value for key, value in tensors.items()}


def _pairs(tensors: Mapping[str, torch.Tensor], path: Path) -> list[tuple[str, tuple[str, str]]]:
    """(module, (down key, up key)) for every adapted module; any other key is an error."""
    pairs: list[tuple[str, tuple[str, str]]] = []
    used: set[str] = set()
    for key in sorted(tensors):
        for down_suffix, up_suffix in SUFFIX_PAIRS:
            if key.endswith(down_suffix):
                module = key.removesuffix(down_suffix)
                up_key = module + up_suffix
                if up_key not in tensors:
                    raise LoraFormatError(f"LoRA file {path} has {key!r} but no {up_key!r}")
                pairs.append((module, (key, up_key)))
                used.update((key, up_key, module + ALPHA_SUFFIX))
    left = sorted(set(tensors) - used)
    if left:
        raise LoraFormatError(
            f"LoRA file {path} has key {PREFIX}{left[0]!r}, which is not a LoRA down/up weight "
            "sdxs-rt can merge (expected '<module>.lora_A.weight' and '<module>.lora_B.weight')"
        )
    if not pairs:
        raise LoraFormatError(f"LoRA file {path} holds no U-Net LoRA layers")
    return pairs


def _layer(
    module: str,
    keys: tuple[str, str],
    tensors: Mapping[str, torch.Tensor],
    config: Mapping[str, Any],
) -> LoraLayer:
    down, up = tensors[keys[0]], tensors[keys[1]]
    rank = down.shape[0]
    alpha = _alpha(module, rank, tensors, config)
    factor = alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    return LoraLayer(module, down, up, factor, PREFIX + keys[0], PREFIX + keys[1])


def _alpha(
    module: str, rank: int, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> float:
    """Per-layer `.alpha` key > the config's alpha_pattern > lora_alpha > the rank (diffusers'
    own fallback when a file carries no alpha: scaling 1)."""
    if module + ALPHA_SUFFIX in tensors:
        return float(tensors[module + ALPHA_SUFFIX].item())
    for pattern, alpha in (config.get("alpha_pattern") or {}).items():
        # peft's rule (peft.utils.other.get_pattern_key): the pattern matches a suffix of names
        if re.fullmatch(rf"(.*\.)?({pattern})", module):
            return float(alpha)
    return float(config.get("lora_alpha", rank))


# ---------------------------------------------------------------- merging


def merged_weights(
    weights: Mapping[str, torch.Tensor],
    loras: Sequence[tuple[Sequence[LoraLayer], float, Path]],
) -> dict[str, torch.Tensor]:
    """New tensors for the weights the LoRAs touch: `W + sum(scale * factor * up @ down)`.

    `loras`: (layers, scale, file) per LoRA. Everything is checked before anything is computed;
    the sum is formed in float32 and cast once to each weight's own dtype and device.
    """
    for layers, _, path in loras:
        for layer in layers:
            check_layer(layer, weights, path)
    deltas: dict[str, torch.Tensor] = {}
    for layers, scale, _ in loras:
        for layer in layers:
            key = layer.module + ".weight"
            delta = scale * layer.factor * layer_delta(layer, weights[key])
            deltas[key] = deltas[key] + delta if key in deltas else delta
    return {
        key: (weights[key].float() + delta).to(weights[key].dtype) for key, delta in deltas.items()
    }


def layer_delta(layer: LoraLayer, weight: torch.Tensor) -> torch.Tensor:
    """`up @ down` in float32 on the weight's device, in the weight's shape (convs: the up
    projection is 1x1, so the product is an ordinary matrix product over flattened kernels)."""
    up = layer.up.to(weight.device, torch.float32).flatten(1)
    down = layer.down.to(weight.device, torch.float32).flatten(1)
    return (up @ down).reshape(weight.shape)


def check_layer(layer: LoraLayer, weights: Mapping[str, torch.Tensor], path: Path) -> None:
    """One sentence naming the file and the key when the layer does not fit the U-Net."""
    key = layer.module + ".weight"
    if key not in weights:
        raise LoraFormatError(
            f"LoRA file {path} has key {layer.down_key!r} for layer {layer.module!r}, "
            "which this U-Net does not have"
        )
    expected_down, expected_up = _expected_shapes(tuple(weights[key].shape), layer.down.shape[0])
    for name, tensor, expected in (
        (layer.down_key, layer.down, expected_down),
        (layer.up_key, layer.up, expected_up),
    ):
        if tuple(tensor.shape) != expected:
            raise LoraFormatError(
                f"LoRA file {path} has key {name!r} of shape {tuple(tensor.shape)}, but the "
                f"U-Net's {key!r} of shape {tuple(weights[key].shape)} needs {expected}"
            )


def _expected_shapes(weight: tuple[int, ...], rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(down, up) shapes for a Linear (out, in) or a Conv (out, in, kh, kw) weight."""
    out_features, in_shape = weight[0], weight[1:]
    up_tail = (1,) * (len(weight) - 2)  # peft's conv LoRA: up is a 1x1 convolution
    return (rank, *in_shape), (out_features, rank, *up_tail)


# ---------------------------------------------------------------- a loaded U-Net


def apply_loras(unet: nn.Module, specs: Sequence[LoraSpec | str]) -> list[dict[str, Any]]:
    """Merge LoRAs into the parameters of a loaded (not yet folded) U-Net, in place.

    Returns one info dict per LoRA (file name, scale, short hash) for the image metadata.
    """
    parsed = [parse_lora_spec(spec) for spec in specs]
    if not parsed:
        return []
    loras = [(read_lora(spec.path), spec.scale, spec.path) for spec in parsed]
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for key, value in merged_weights(params, loras).items():
            params[key].copy_(value)
    return [lora_info(spec) for spec in parsed]


def lora_info(spec: LoraSpec) -> dict[str, Any]:
    """What image metadata records of a LoRA; the hash is A1111's (sha256, 12 hex digits)."""
    from sdxs_rt.loading import file_sha256

    digest = file_sha256(spec.path)[:12]
    return {"name": spec.name, "file": spec.path.name, "scale": spec.scale, "hash": digest}
