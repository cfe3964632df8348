"""A tiny text encoder in the published Mexma-SigLIP layout (`visheratin/mexma-siglip`).

config.json without dimensions, ONE float32 model.safetensors (text tower + projector + a tiny
SigLIP vision tower + logit scale/bias), tokenizer.json and sidecars, preprocessor_config.json,
and a tiny stand-in of the remote code. Also the demo model's own text-encoder writer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from sdxs_rt.dev.tiny_files import (
    TEXT_EMBED_DIM,
    perturb_zero_tensors,
    save_tensors,
    seeded,
    write_json,
)
from sdxs_rt.dev.tiny_tokenizer_files import write_tokenizer

REMOTE_CODE_FILE = "mexma_siglip.py"  # the name the published config's auto_map points to
TINY_TEXT_WIDTH = 128  # two of XLM-R's 64-wide heads: the head count is derived, not stated

# `visheratin/mexma-siglip`'s config.json, in full, at its latest revision: no dimensions.
# The earlier revision has the same keys minus `auto_map`, with torch_dtype float32.
MEXMA_SIGLIP_CONFIG: dict[str, Any] = {
    "auto_map": {
        "AutoConfig": "mexma_siglip.MexmaSigLIPConfig",
        "AutoModel": "mexma_siglip.MexmaSigLIP",
    },
    "architectures": ["MexmaSigLIP"],
    "optimized": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.46.3",
}
MEXMA_SIGLIP_EARLIER_CONFIG: dict[str, Any] = {
    **{k: v for k, v in MEXMA_SIGLIP_CONFIG.items() if k != "auto_map"},
    "torch_dtype": "float32",
}

# A tiny stand-in for the remote code the published repo ships (`mexma_siglip.py`). The real
# file builds its towers from the configs of facebook/MEXMA and
# google/siglip-so400m-patch14-384, fetched from the hub at run time; the stand-in carries tiny
# versions of those two configs instead, so that it runs offline. Same module names
# (`text_model`, `text_projector`, `vision_model`, `logit_scale`, `logit_bias`), same
# `encode_texts`; like the published code (MODEL.md), it never calls `post_init()`.
REMOTE_CODE_TEMPLATE = '''\
"""Tiny stand-in for visheratin/mexma-siglip's remote code (written by sdxs_rt.dev.tiny)."""

import math

import torch
from torch import nn
from transformers import (
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    XLMRobertaConfig,
    XLMRobertaModel,
)

# What the real code fetches from facebook/MEXMA and google/siglip-so400m-patch14-384.
TEXT_CONFIG = __TEXT_CONFIG__
VISION_CONFIG = __VISION_CONFIG__
EMBED_DIM = __EMBED_DIM__


class MexmaSigLIPConfig(PretrainedConfig):
    model_type = "mexma_siglip"

    def __init__(self, optimized=False, **kwargs):
        self.optimized = optimized
        super().__init__(**kwargs)


class MexmaSigLIP(PreTrainedModel):
    config_class = MexmaSigLIPConfig

    def __init__(self, config):
        super().__init__(config)
        text_config = XLMRobertaConfig(**TEXT_CONFIG)
        self.text_model = XLMRobertaModel(text_config, add_pooling_layer=False)
        self.text_projector = nn.Linear(text_config.hidden_size, EMBED_DIM, bias=False)
        vision = SiglipVisionModel(SiglipVisionConfig(**VISION_CONFIG))
        self.vision_model = getattr(vision, "vision_model", vision)  # flat in transformers 5
        self.logit_scale = nn.Parameter(torch.ones([1]) * math.log(10))
        self.logit_bias = nn.Parameter(torch.ones([1]) * -10)

    def encode_images(self, pixel_values, normalize=False):
        features = self.vision_model(pixel_values).pooler_output
        if normalize:
            features = features / features.norm(p=2, dim=-1, keepdim=True)
        return features

    def encode_texts(self, input_ids, attention_mask, normalize=False):
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask)
        features = self.text_projector(hidden.last_hidden_state[:, 0])  # CLS pooling
        if normalize:
            features = features / features.norm(p=2, dim=-1, keepdim=True)
        return features
'''


def remote_code_source(text_config: dict[str, Any], vision_config: dict[str, Any]) -> str:
    """The stand-in remote code, with the tower configs it would have fetched."""
    return (
        REMOTE_CODE_TEMPLATE.replace("__TEXT_CONFIG__", repr(text_config))
        .replace("__VISION_CONFIG__", repr(vision_config))
        .replace("__EMBED_DIM__", str(TEXT_EMBED_DIM))
    )


def text_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    """A tiny XLM-R config (the Mexma-SigLIP text tower) as a plain dict; 64-wide heads, as
    the native loader derives them for a config that states no dimensions."""
    from transformers import XLMRobertaConfig

    values: dict[str, Any] = {
        "hidden_size": TINY_TEXT_WIDTH,
        "num_hidden_layers": 2,
        "intermediate_size": 2 * TINY_TEXT_WIDTH,
        "initializer_range": 0.2,  # wider than 0.02 so the CLS vector depends on the prompt
        "hidden_dropout_prob": 0.0,  # eval only; the demo recipe's training asks for 0 too
        "attention_probs_dropout_prob": 0.0,
        **overrides,
    }
    values.setdefault("num_attention_heads", values["hidden_size"] // 64)
    config = XLMRobertaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        **values,
    )
    data = config.to_diff_dict()
    data.pop("transformers_version", None)  # keeps the bytes independent of the install
    return data


def vision_config() -> dict[str, Any]:
    """A small SigLIP vision tower shaped as the published so400m-patch14-384 where it matters.

    As wide as the text projection (1152, 16 heads of 72: so400m's), since its pooled output is
    an image prompt's condition vector in the same space; one layer and a narrow FFN keep it
    small (about 11M parameters). Like 384 px in 14-px patches, its 36 px are not a whole
    number of 8-px patches: the patch grid (4 x 4) floors, and the preprocessor resizes to 36.
    """
    return {
        "hidden_size": TEXT_EMBED_DIM,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 16,
        "image_size": 36,
        "patch_size": 8,
        "num_channels": 3,
        "layer_norm_eps": 1e-6,
    }


def _preprocessor_config(vision: dict[str, Any]) -> dict[str, Any]:
    """SiglipImageProcessor's settings as google/siglip-so400m ships them, at the tiny size."""
    size = vision["image_size"]
    return {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "SiglipProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"height": size, "width": size},
    }


def text_encoder_tensors(text_config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """`text_model.*` + `text_projector.weight`: the text path of the published file."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    with seeded(seed):
        tower = XLMRobertaModel(XLMRobertaConfig(**text_config), add_pooling_layer=False)
        projector = torch.randn(TEXT_EMBED_DIM, text_config["hidden_size"]) * 0.2
    perturb_zero_tensors(tower, seed)
    tensors = {f"text_model.{k}": v for k, v in tower.state_dict().items()}
    tensors["text_projector.weight"] = projector
    return tensors


def _vision_tensors(vision: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """`vision_model.*`, `logit_scale`, `logit_bias`: the rest of the published file."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    with seeded(seed):
        model = SiglipVisionModel(SiglipVisionConfig(**vision))
    # transformers 4 wraps the tower as `.vision_model`; 5 flattened it (same tensor names)
    tower = getattr(model, "vision_model", model)
    perturb_zero_tensors(tower, seed)
    tensors = {f"vision_model.{k}": v for k, v in tower.state_dict().items()}
    tensors["logit_scale"] = torch.ones(1) * math.log(10)
    tensors["logit_bias"] = torch.ones(1) * -10
    return tensors


def write_text_encoder(folder: Path, tokenizer: Tokenizer, seed: int, remote_code: bool) -> None:
    """A tiny text encoder in the published Mexma-SigLIP layout (see write_mexma_siglip)."""
    config = text_config(tokenizer.get_vocab_size())
    write_mexma_siglip(folder, tokenizer, config, text_encoder_tensors(config, seed), remote_code)


def write_mexma_siglip(
    folder: Path,
    tokenizer: Tokenizer,
    text_config: dict[str, Any],
    text_tensors: dict[str, torch.Tensor],
    remote_code: bool = True,
) -> None:
    """The files of `visheratin/mexma-siglip` as published: config.json without dimensions,
    ONE float32 model.safetensors (text tower + projector + vision tower + logit scale/bias),
    tokenizer.json and its sidecars (no sentencepiece model), preprocessor_config.json and,
    with `remote_code`, the latest revision's auto_map + the stand-in `mexma_siglip.py`
    (without: the earlier revision's config)."""
    folder.mkdir(parents=True, exist_ok=True)
    vision = vision_config()
    tensors = {**text_tensors, **_vision_tensors(vision, _vision_seed(text_tensors))}
    config = MEXMA_SIGLIP_CONFIG if remote_code else MEXMA_SIGLIP_EARLIER_CONFIG
    if remote_code:
        (folder / REMOTE_CODE_FILE).write_text(remote_code_source(text_config, vision))
    write_json(folder / "config.json", config)
    save_tensors({k: v.float() for k, v in tensors.items()}, folder / "model.safetensors")
    write_tokenizer(tokenizer, folder)  # the card loads tokenizer and model from one folder
    write_json(folder / "preprocessor_config.json", _preprocessor_config(vision))


def _vision_seed(text_tensors: dict[str, torch.Tensor]) -> int:
    """A seed tied to the text weights, so one text encoder always gets the same vision tower."""
    return int(text_tensors["text_projector.weight"].flatten()[0].abs().item() * 1e6) % 2**31


def write_text_encoder_files(
    folder: Path,
    tokenizer: Tokenizer,
    text_config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
) -> None:
    """The demo model's text encoder: text weights only, with a config that states the XLM-R
    dimensions (`text_config`). Not a published layout; sdxs-rt reads it for its own model."""
    folder.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "architectures": ["MexmaSigLIP"],
        "model_type": "mexma_siglip",
        "projection_dim": TEXT_EMBED_DIM,
        "embed_dim": TEXT_EMBED_DIM,
        "text_config": text_config,
        "torch_dtype": "float32",
    }
    write_json(folder / "config.json", config)
    save_tensors(tensors, folder / "model.safetensors")
    write_tokenizer(tokenizer, folder)
