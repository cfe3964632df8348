"""What a text-encoder checkpoint holds, judged from its safetensors headers alone.

The published Mexma-SigLIP (`visheratin/mexma-siglip`) has a config.json with no dimensions
(its remote code fetches them from other repos at run time) and one float32 file holding the
XLM-R text tower (`text_model.*`), the 1024 -> 1152 `text_projector`, the SigLIP vision tower
(`vision_model.*`) and the contrastive `logit_scale`/`logit_bias`. So the native loader reads
the dimensions from the tensor shapes, and names every tensor it does not understand.

Torch-free: `sdxs-rt check` and the early width check use it before any weight is read.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sdxs_rt.errors import ModelFormatError

# XLM-RoBERTa's convention (base 768/12, large 1024/16): 64-wide attention heads. The head
# count is the one dimension a weight shape cannot tell; this is the single place it is set.
XLM_R_HEAD_WIDTH = 64
# xlm-roberta-large's (and MEXMA's) remaining settings; none of them changes a weight shape.
XLM_R_FIXED = {
    "model_type": "xlm-roberta",
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "pad_token_id": 1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "position_embedding_type": "absolute",
    "hidden_dropout_prob": 0.0,  # inference only
    "attention_probs_dropout_prob": 0.0,
}
SHAPE_KEYS = (
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "vocab_size",
    "max_position_embeddings",
    "type_vocab_size",
)
WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"
PROJECTION_NAMES = ("text_projector", "text_projection")
VISION_PREFIX = "vision_model."
CONTRASTIVE_HEAD = ("logit_scale", "logit_bias")  # SigLIP's loss parameters: unused here
TOWER_PARTS = ("embeddings.", "encoder.")
TOWER_UNUSED = (
    "pooler.",
    "embeddings.position_ids",
    "embeddings.token_type_ids",
)  # pooler; buffers
_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")
# What every XLM-R layer holds (weight and bias each): checked in the header, so a damaged
# file is named before anything loads.
LAYER_MODULES = (
    "attention.self.query",
    "attention.self.key",
    "attention.self.value",
    "attention.output.dense",
    "attention.output.LayerNorm",
    "intermediate.dense",
    "output.dense",
    "output.LayerNorm",
)
EMBEDDING_TENSORS = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "embeddings.token_type_embeddings.weight",
    "embeddings.LayerNorm.weight",
    "embeddings.LayerNorm.bias",
)


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors' names: F32, F16, BF16...
    shape: tuple[int, ...]

    @property
    def count(self) -> int:
        total = 1
        for size in self.shape:
            total *= size
        return total


@dataclass(frozen=True)
class TextLayout:
    """How to build the text path: tower tensors + config, projection, what is left aside."""

    tower_prefix: str  # "text_model." (Mexma-SigLIP) or "" (a bare XLM-R)
    tower_config: dict[str, Any]  # an XLMRobertaConfig's fields
    config_source: str  # "config.json" or "tensor shapes"
    projection: str  # key prefix of the projection ("text_projector.")
    projection_bias: bool
    width: int  # the pooled vector's width (the projection's output)
    unused: dict[str, int] = field(default_factory=dict)  # group -> tensor count, not loaded
    dtypes: dict[str, int] = field(default_factory=dict)  # dtype -> tensor count, all tensors
    text_parameters: int = 0
    vision_parameters: int = 0

    @property
    def has_vision_tower(self) -> bool:
        return VISION_PREFIX.rstrip(".") in self.unused

    def describe(self) -> str:
        heads = self.tower_config["num_attention_heads"]
        cfg = self.tower_config
        return (
            f"XLM-R {cfg['hidden_size']} wide, {cfg['num_hidden_layers']} layers, {heads} heads, "
            f"FFN {cfg['intermediate_size']}, vocabulary {cfg['vocab_size']} "
            f"(from the {self.config_source}) -> {self.projection.rstrip('.')} "
            f"{cfg['hidden_size']} -> {self.width}"
        )


def text_layout(
    tensors: Mapping[str, TensorInfo],
    config: Mapping[str, Any],
    where: str,
    projector: Mapping[str, TensorInfo] | None = None,
) -> TextLayout:
    """The layout of `tensors` (one text-encoder checkpoint), or ModelFormatError naming what
    is missing or not understood. `projector`: a separate one-linear-map checkpoint (an XLM-R
    `text_encoder/` beside a `text_projector/` folder)."""
    tower_prefix = _tower_prefix(tensors, where)
    if projector is not None:
        projection, proj_tensors = _lone_linear(projector, where), projector
    else:
        projection, proj_tensors = _projection_name(tensors, where), tensors
    unused = _unused_groups(tensors, tower_prefix, projection if projector is None else None)
    tower = {k[len(tower_prefix) :]: v for k, v in tensors.items() if k.startswith(tower_prefix)}
    derived = derive_xlm_r_config(tower, where)
    tower_config, source = _reconcile(derived, config, where)
    weight = proj_tensors[f"{projection}weight"]
    _check_projection(weight, proj_tensors.get(f"{projection}bias"), derived, where)
    vision = sum(v.count for k, v in tensors.items() if k.startswith(VISION_PREFIX))
    text = sum(v.count for k, v in tower.items()) + weight.count
    return TextLayout(
        tower_prefix=tower_prefix,
        tower_config=tower_config,
        config_source=source,
        projection=projection,
        projection_bias=f"{projection}bias" in proj_tensors,
        width=weight.shape[0],
        unused=unused,
        dtypes=dict(Counter(v.dtype for v in tensors.values())),
        text_parameters=text,
        vision_parameters=vision,
    )


def derive_xlm_r_config(tower: Mapping[str, TensorInfo], where: str) -> dict[str, Any]:
    """An XLM-R config from the tower's tensor shapes (keys without the tower prefix)."""
    needed = {
        "word": WORD_EMBEDDINGS,
        "positions": "embeddings.position_embeddings.weight",
        "types": "embeddings.token_type_embeddings.weight",
        "ffn": "encoder.layer.0.intermediate.dense.weight",
    }
    missing = [name for name in needed.values() if name not in tower]
    if missing:
        raise ModelFormatError(f"The text tower in {where} lacks {', '.join(missing)}.")
    vocab, hidden = tower[needed["word"]].shape
    layers = 1 + max(int(m.group(1)) for k in tower if (m := _LAYER.match(k)))
    _require_complete_tower(tower, layers, where)
    if hidden % XLM_R_HEAD_WIDTH:
        raise ModelFormatError(
            f"The text tower in {where} is {hidden} wide, not a multiple of XLM-R's "
            f"{XLM_R_HEAD_WIDTH}-wide heads, and its config does not give the head count."
        )
    return {
        **XLM_R_FIXED,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": hidden // XLM_R_HEAD_WIDTH,
        "intermediate_size": tower[needed["ffn"]].shape[0],
        "vocab_size": vocab,
        "max_position_embeddings": tower[needed["positions"]].shape[0],
        "type_vocab_size": tower[needed["types"]].shape[0],
    }


def _require_complete_tower(tower: Mapping[str, TensorInfo], layers: int, where: str) -> None:
    expected = [
        *EMBEDDING_TENSORS,
        *(
            f"encoder.layer.{i}.{module}.{kind}"
            for i in range(layers)
            for module in LAYER_MODULES
            for kind in ("weight", "bias")
        ),
    ]
    missing = [name for name in expected if name not in tower]
    if missing:
        more = f" and {len(missing) - 4} more" if len(missing) > 4 else ""
        raise ModelFormatError(
            f"The text tower in {where} ({layers} layers) lacks {', '.join(missing[:4])}{more}."
        )


def stated_xlm_r_config(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The XLM-R dimensions a config states (nested `text_config` or top level), if any."""
    nested = config.get("text_config")
    candidate = nested if isinstance(nested, dict) else config
    if candidate.get("model_type") in ("xlm-roberta", None) and "hidden_size" in candidate:
        return dict(candidate)
    return None


def unknown_config_error(config: Mapping[str, Any], where: str) -> ModelFormatError | None:
    """A config that names another architecture for its text tower (T5, CLIP...): refused."""
    nested = config.get("text_config")
    candidate = nested if isinstance(nested, dict) else config
    model_type = candidate.get("model_type")
    if model_type in (None, "xlm-roberta", "mexma_siglip"):
        return None
    return ModelFormatError(
        f"{where} describes a text encoder the native loader does not know (model_type "
        f"{model_type!r}, architectures {config.get('architectures')}); expected an "
        "XLM-RoBERTa text tower (use --trust-remote-code to run the checkpoint's own code)."
    )


# --- pieces -----------------------------------------------------------------------------


def _tower_prefix(tensors: Mapping[str, TensorInfo], where: str) -> str:
    prefixes = sorted(
        {k[: -len(WORD_EMBEDDINGS)] for k in tensors if k.endswith(WORD_EMBEDDINGS)}
        - {VISION_PREFIX}  # a vision tower is never the text tower
    )
    if len(prefixes) == 1:
        return prefixes[0]
    raise ModelFormatError(
        f"The weights in {where} have a layout the native text encoder does not recognise "
        f"(top-level names: {_top_level(tensors)}); expected an XLM-R tower "
        f"(text_model.{WORD_EMBEDDINGS}) and text_projector.weight."
    )


def _projection_name(tensors: Mapping[str, TensorInfo], where: str) -> str:
    found = [f"{name}." for name in PROJECTION_NAMES if f"{name}.weight" in tensors]
    if len(found) == 1:
        return found[0]
    raise ModelFormatError(
        f"The weights in {where} have no single text projection (top-level names: "
        f"{_top_level(tensors)}); expected text_projector.weight, a Linear to the U-Net's width."
    )


def _lone_linear(tensors: Mapping[str, TensorInfo], where: str) -> str:
    """The prefix of the one linear map (a 2-D weight, maybe a 1-D bias) a projector holds."""
    weights = [k for k, v in tensors.items() if k.endswith("weight") and len(v.shape) == 2]
    others = [k for k in tensors if k not in weights and not k.endswith("bias")]
    if len(weights) == 1 and not others:
        return weights[0][: -len("weight")]
    raise ModelFormatError(
        f"The text projector beside {where} should hold one linear map; it holds "
        f"{', '.join(sorted(tensors)[:6]) or 'nothing'}."
    )


def _unused_groups(
    tensors: Mapping[str, TensorInfo], tower_prefix: str, projection: str | None
) -> dict[str, int]:
    """Tensors the text path leaves on disk, by group; anything unknown is refused."""
    groups: Counter[str] = Counter()
    unknown = []
    for key in tensors:
        if key.startswith(tower_prefix) and key[len(tower_prefix) :].startswith(TOWER_PARTS):
            continue
        if projection is not None and key.startswith(projection):
            continue
        rest = key[len(tower_prefix) :] if key.startswith(tower_prefix) else key
        if key.startswith(VISION_PREFIX) or key in CONTRASTIVE_HEAD:
            groups[key.split(".", 1)[0]] += 1
        elif rest.startswith(TOWER_UNUSED):
            groups[f"{tower_prefix}{rest.split('.', 1)[0]}"] += 1
        else:
            unknown.append(key)
    if unknown:
        raise ModelFormatError(
            f"The text encoder weights hold {len(unknown)} tensors the native loader does not "
            f"know ({', '.join(sorted(unknown)[:5])}{' ...' if len(unknown) > 5 else ''})."
        )
    return dict(groups)


def _reconcile(
    derived: dict[str, Any], config: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], str]:
    """Dimensions a config states must equal the shapes; its head count is then believed."""
    stated = stated_xlm_r_config(config)
    if stated is None:
        return derived, "tensor shapes"
    wrong = [
        f"{key} {stated[key]} (the tensors say {derived[key]})"
        for key in SHAPE_KEYS
        if key in stated and int(stated[key]) != derived[key]
    ]
    if wrong:
        mismatch = "; ".join(wrong)
        raise ModelFormatError(f"The text tower in {where} does not match its config: {mismatch}.")
    merged = {**derived, **{k: v for k, v in stated.items() if k not in SHAPE_KEYS}}
    merged["model_type"] = "xlm-roberta"
    return merged, "config.json"


def _check_projection(
    weight: TensorInfo, bias: TensorInfo | None, tower: dict[str, Any], where: str
) -> None:
    if len(weight.shape) != 2 or weight.shape[1] != tower["hidden_size"]:
        raise ModelFormatError(
            f"The text projection in {where} has shape {list(weight.shape)}; expected "
            f"[width, {tower['hidden_size']}] to follow the {tower['hidden_size']}-wide tower."
        )
    if bias is not None and bias.shape != weight.shape[:1]:
        raise ModelFormatError(
            f"The text projection bias in {where} has shape {list(bias.shape)}, not "
            f"[{weight.shape[0]}]."
        )


def _top_level(tensors: Iterable[str]) -> str:
    names = sorted({k.split(".", 1)[0] for k in tensors})
    return ", ".join(names[:12]) or "none"
