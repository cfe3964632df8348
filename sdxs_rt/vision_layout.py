"""The SigLIP vision tower of a Mexma-SigLIP checkpoint, judged from its safetensors header.

`visheratin/mexma-siglip`'s one `model.safetensors` holds, beside the text path, the vision
tower of google/siglip-so400m-patch14-384 under `vision_model.` (transformers'
SiglipVisionTransformer names: `embeddings.*`, `encoder.layers.N.*`, `post_layernorm.*`, and
the attention-pooling `head.*` whose output is the image's vector). Its config.json states no
dimensions, so they come from the tensor shapes, as for the text tower (`text_layout.py`):

- width, channels and patch size from `embeddings.patch_embedding.weight` [D, C, P, P];
- the patch grid from `embeddings.position_embedding.weight` [N, D]: sqrt(N) x sqrt(N) patches
  of P pixels. The side in pixels is not fixed by it: the patch convolution floors, so
  so400m-patch14-384's 27 x 27 grid (729 positions) takes any side from 378 to 391 px, and
  its preprocessor_config.json says 384 (`accepts_side`);
- layers from `encoder.layers.N`, FFN width from the first layer's `mlp.fc1`.

What a shape cannot show is SigLIP's: GELU (tanh approximation), LayerNorm eps 1e-6, no
dropout, and the head count, set here from the published SigLIP towers (so400m 1152 wide: 16
heads of 72; B 768: 12; L 1024: 16) and 64-wide heads for any other width. A config that
states a `vision_config` is believed for these and checked against the shapes. Torch-free.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sdxs_rt.errors import ModelFormatError
from sdxs_rt.text_layout import VISION_PREFIX, TensorInfo

SIGLIP_FIXED = {
    "model_type": "siglip_vision_model",
    "hidden_act": "gelu_pytorch_tanh",
    "layer_norm_eps": 1e-6,
    "attention_dropout": 0.0,
}
SIGLIP_HEADS = {768: 12, 1024: 16, 1152: 16}  # B/16, L/16, So400m/14 (72-wide heads)
DEFAULT_HEAD_WIDTH = 64
SHAPE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_channels", "patch_size")
PATCH = "embeddings.patch_embedding.weight"
POSITIONS = "embeddings.position_embedding.weight"
TOP_TENSORS = (
    PATCH,
    "embeddings.patch_embedding.bias",
    POSITIONS,
    "post_layernorm.weight",
    "post_layernorm.bias",
)
LAYER_MODULES = (
    "layer_norm1",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "layer_norm2",
    "mlp.fc1",
    "mlp.fc2",
)
HEAD_TENSORS = (
    "head.probe",
    "head.attention.in_proj_weight",
    "head.attention.in_proj_bias",
    "head.attention.out_proj.weight",
    "head.attention.out_proj.bias",
    "head.layernorm.weight",
    "head.layernorm.bias",
    "head.mlp.fc1.weight",
    "head.mlp.fc1.bias",
    "head.mlp.fc2.weight",
    "head.mlp.fc2.bias",
)
IGNORED = ("embeddings.position_ids",)  # a buffer some transformers versions save
_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")


@dataclass(frozen=True)
class VisionLayout:
    """How to build the vision tower: a SiglipVisionConfig's fields, and what they came from."""

    prefix: str  # "vision_model."
    config: dict[str, Any]
    config_source: str  # "tensor shapes" or "config.json"
    parameters: int

    @property
    def width(self) -> int:
        """The pooled vector's width (SigLIP's head returns the tower's width)."""
        return int(self.config["hidden_size"])

    @property
    def image_size(self) -> int:
        """The configured side; any side `accepts_side` admits gives the same patch grid."""
        return int(self.config["image_size"])

    @property
    def patch_grid(self) -> int:
        return self.image_size // int(self.config["patch_size"])

    def accepts_side(self, side: int) -> bool:
        """Whether images `side` px high (or wide) give the tower's patch grid."""
        return side // int(self.config["patch_size"]) == self.patch_grid

    def describe(self) -> str:
        cfg = self.config
        return (
            f"SigLIP {cfg['hidden_size']} wide, {cfg['num_hidden_layers']} layers, "
            f"{cfg['num_attention_heads']} heads, FFN {cfg['intermediate_size']}, "
            f"{self.patch_grid} x {self.patch_grid} patches of {cfg['patch_size']} px, "
            f"attention-pooling head (from the {self.config_source})"
        )


def has_vision_tower(tensors: Mapping[str, TensorInfo]) -> bool:
    return any(key.startswith(VISION_PREFIX) for key in tensors)


def vision_layout(
    tensors: Mapping[str, TensorInfo], config: Mapping[str, Any], where: str
) -> VisionLayout:
    """The tower under `vision_model.` in `tensors`, or ModelFormatError naming what is missing,
    unknown or inconsistent."""
    tower = {
        k[len(VISION_PREFIX) :]: v
        for k, v in tensors.items()
        if k.startswith(VISION_PREFIX) and k[len(VISION_PREFIX) :] not in IGNORED
    }
    if not tower:
        raise ModelFormatError(f"{where} holds no vision tower (no {VISION_PREFIX}* tensors)")
    derived = derive_siglip_config(tower, where)
    _require_exactly(tower, derived["num_hidden_layers"], where)
    stated = stated_vision_config(config)
    merged, source = _reconcile(derived, stated, where)
    return VisionLayout(
        prefix=VISION_PREFIX,
        config=merged,
        config_source=source,
        parameters=sum(v.count for v in tower.values()),
    )


def derive_siglip_config(tower: Mapping[str, TensorInfo], where: str) -> dict[str, Any]:
    """A SiglipVisionConfig's fields from the tower's shapes (keys without the prefix)."""
    needed = [PATCH, POSITIONS, "encoder.layers.0.mlp.fc1.weight"]
    missing = [name for name in needed if name not in tower]
    if missing:
        raise ModelFormatError(
            f"The vision tower in {where} lacks {', '.join(VISION_PREFIX + m for m in missing)}."
        )
    patch = tower[PATCH].shape
    if len(patch) != 4 or patch[2] != patch[3]:
        raise ModelFormatError(
            f"The vision tower's patch embedding in {where} has shape {list(patch)}; expected "
            "[width, channels, patch, patch]."
        )
    width, channels, patch_size = patch[0], patch[1], patch[2]
    positions = tower[POSITIONS].shape
    grid = math.isqrt(positions[0]) if len(positions) == 2 else 0
    if len(positions) != 2 or positions[1] != width or grid * grid != positions[0]:
        raise ModelFormatError(
            f"The vision tower's position embedding in {where} has shape {list(positions)}; "
            f"expected [a square number of patches, {width}]."
        )
    return {
        **SIGLIP_FIXED,
        "hidden_size": width,
        "intermediate_size": tower["encoder.layers.0.mlp.fc1.weight"].shape[0],
        "num_hidden_layers": 1 + max(int(m.group(1)) for k in tower if (m := _LAYER.match(k))),
        "num_attention_heads": siglip_heads(width, where),
        "num_channels": channels,
        "patch_size": patch_size,
        "image_size": grid * patch_size,
    }


def siglip_heads(width: int, where: str) -> int:
    """The head count a shape cannot show: the published towers', else 64-wide heads."""
    if width in SIGLIP_HEADS:
        return SIGLIP_HEADS[width]
    if width % DEFAULT_HEAD_WIDTH == 0:
        return width // DEFAULT_HEAD_WIDTH
    raise ModelFormatError(
        f"The vision tower in {where} is {width} wide: no published SigLIP tower has that width "
        f"and it is not a multiple of {DEFAULT_HEAD_WIDTH}, so its head count is unknown (state "
        "it in config.json's vision_config)."
    )


def stated_vision_config(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The `vision_config` a text-encoder config states, if any (the published one has none)."""
    nested = config.get("vision_config")
    return dict(nested) if isinstance(nested, dict) and nested else None


def _require_exactly(tower: Mapping[str, TensorInfo], layers: int, where: str) -> None:
    expected = {
        *TOP_TENSORS,
        *HEAD_TENSORS,
        *(
            f"encoder.layers.{i}.{module}.{kind}"
            for i in range(layers)
            for module in LAYER_MODULES
            for kind in ("weight", "bias")
        ),
    }
    missing = sorted(expected - set(tower))
    unknown = sorted(set(tower) - expected)
    for names, what in ((missing, "lacks"), (unknown, "holds tensors the loader does not know:")):
        if names:
            more = f" and {len(names) - 4} more" if len(names) > 4 else ""
            listed = ", ".join(VISION_PREFIX + n for n in names[:4])
            headless = " (no attention-pooling head)" if "head.probe" in missing else ""
            raise ModelFormatError(
                f"The vision tower in {where} ({layers} layers) {what} {listed}{more}{headless}."
            )


def _reconcile(
    derived: dict[str, Any], stated: dict[str, Any] | None, where: str
) -> tuple[dict[str, Any], str]:
    if stated is None:
        return derived, "tensor shapes"
    wrong = [
        f"{key} {stated[key]} (the tensors say {derived[key]})"
        for key in SHAPE_KEYS
        if key in stated and stated[key] != derived[key]
    ]
    patch, grid = derived["patch_size"], derived["image_size"] // derived["patch_size"]
    side = stated.get("image_size", derived["image_size"])
    if not isinstance(side, int) or side // patch != grid:
        wrong.append(f"image_size {side} (the tensors say {grid} x {grid} patches of {patch} px)")
    if wrong:
        raise ModelFormatError(
            f"The vision tower in {where} does not match its vision_config: {'; '.join(wrong)}."
        )
    kept = ("num_attention_heads", "hidden_act", "layer_norm_eps", "image_size")
    merged = {**derived, **{k: stated[k] for k in kept if k in stated}}
    if derived["hidden_size"] % int(merged["num_attention_heads"]):
        raise ModelFormatError(
            f"{where}'s vision_config gives {merged['num_attention_heads']} heads for a "
            f"{derived['hidden_size']}-wide tower; the width must divide by them."
        )
    return merged, "config.json"
