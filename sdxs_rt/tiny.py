"""Tiny random-weight SDXS checkpoints in the real on-disk diffusers layout, built offline.

Tests, demos and benchmarks need a model that loads through exactly the same code paths as the
real `AiArtLab/sdxs` (configs, folder names, weight variants, both text-encoder layouts) but
builds in a second and weighs a few megabytes. Same seed -> same files, byte for byte.

    python -m sdxs_rt.tiny OUT_DIR [--seed N] [--unet-folder sdxs] [--variant fp16] ...
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import Unigram

TEXT_EMBED_DIM = 1152  # SigLIP-so400m width: what the SDXS U-Net cross-attends to
LATENT_CHANNELS = 16
TOKENIZER_MAX_LENGTH = 512
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3 as in XLM-R; <mask> comes last
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
"""Tiny stand-in for visheratin/mexma-siglip's remote code (written by sdxs_rt.tiny)."""

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


# English and Russian captions about shapes and colours: the tokenizer's whole world.
CAPTIONS = (
    "a red circle on a white background",
    "a blue square next to a green triangle",
    "two yellow stars above a black line",
    "a small orange ring inside a large purple square",
    "a pink heart and a grey cross, flat colours, simple drawing",
    "three green dots in a row, minimal style",
    "a cat sitting on a blue box",
    "красный круг на белом фоне",
    "синий квадрат рядом с зелёным треугольником",
    "две жёлтые звезды над чёрной линией",
    "маленькое оранжевое кольцо внутри большого фиолетового квадрата",
    "розовое сердце и серый крест, плоские цвета, простой рисунок",
    "три зелёные точки в ряд, минималистичный стиль",
    "кот сидит на синей коробке",
)
ASCII_CHARS = "".join(chr(c) for c in range(33, 127))
CYRILLIC_CHARS = "".join(chr(c) for c in range(0x410, 0x450)) + "ёЁ"


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG (diffusers/transformers init from it) without leaking the state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in tensors.items()}, str(path), {"format": "pt"})


def _perturb_zero_tensors(module: torch.nn.Module, seed: int) -> None:
    """diffusers zero-inits some layers (and all norm biases): randomise them so outputs
    depend on every input and every weight file actually matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


# --- tokenizer --------------------------------------------------------------------------


def _unigram_vocab(corpus: Sequence[str]) -> list[tuple[str, float]]:
    """Corpus words (log-frequency scores) plus every ASCII/Cyrillic char as a fallback piece."""
    words = Counter(w for caption in corpus for w in caption.replace(",", " ,").split())
    total = sum(words.values())
    vocab: list[tuple[str, float]] = [(tok, 0.0) for tok in SPECIAL_TOKENS]
    seen = {tok for tok, _ in vocab}
    for word, count in sorted(words.items(), key=lambda item: (-item[1], item[0])):
        vocab.append(("▁" + word, math.log(count / total)))
        seen.add("▁" + word)
    for char in "▁" + ASCII_CHARS + CYRILLIC_CHARS:
        for piece, score in (("▁" + char, -12.0), (char, -13.0)):
            if piece not in seen:
                vocab.append((piece, score))
                seen.add(piece)
    return vocab


def build_tokenizer(corpus: Sequence[str] = CAPTIONS) -> Tokenizer:
    """An XLM-R-style SentencePiece-Unigram tokenizer: `<s> ... </s>`, `<pad>`=1, `<mask>` last.
    Whole words of `corpus` are single pieces; anything else falls back to characters."""
    tokenizer = Tokenizer(Unigram(_unigram_vocab(corpus), unk_id=3, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)],
    )
    mask = AddedToken("<mask>", lstrip=True, special=True)  # as XLM-R: eats the space before
    tokenizer.add_special_tokens([*SPECIAL_TOKENS, mask])
    return tokenizer


def _special_tokens_map() -> dict[str, str]:
    return {
        "bos_token": "<s>",
        "cls_token": "<s>",
        "eos_token": "</s>",
        "mask_token": "<mask>",
        "pad_token": "<pad>",
        "sep_token": "</s>",
        "unk_token": "<unk>",
    }


def write_tokenizer(tokenizer: Tokenizer, folder: Path) -> None:
    """tokenizer.json + the transformers sidecars, so AutoTokenizer loads the fast tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "XLMRobertaTokenizer",
        "model_max_length": TOKENIZER_MAX_LENGTH,
        "clean_up_tokenization_spaces": True,
        **_special_tokens_map(),
    }
    write_json(folder / "tokenizer_config.json", config)
    write_json(folder / "special_tokens_map.json", _special_tokens_map())


# --- text encoder -----------------------------------------------------------------------


def text_config(vocab_size: int, **overrides: Any) -> dict[str, Any]:
    """A tiny XLM-R config (the Mexma-SigLIP text tower) as a plain dict; 64-wide heads, as
    the native loader derives them for a config that states no dimensions."""
    from transformers import XLMRobertaConfig

    values: dict[str, Any] = {
        "hidden_size": TINY_TEXT_WIDTH,
        "num_hidden_layers": 2,
        "intermediate_size": 2 * TINY_TEXT_WIDTH,
        "initializer_range": 0.2,  # wider than 0.02 so the CLS vector depends on the prompt
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
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        **values,
    )
    data = config.to_diff_dict()
    data.pop("transformers_version", None)  # keeps the bytes independent of the install
    return data


def vision_config() -> dict[str, Any]:
    """A tiny SigLIP vision tower (the published file holds so400m-patch14-384)."""
    return {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "image_size": 28,
        "patch_size": 14,
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


def _text_encoder_tensors(text_config: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """`text_model.*` + `text_projector.weight`: the text path of the published file."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    with _seeded(seed):
        tower = XLMRobertaModel(XLMRobertaConfig(**text_config), add_pooling_layer=False)
        projector = torch.randn(TEXT_EMBED_DIM, text_config["hidden_size"]) * 0.2
    _perturb_zero_tensors(tower, seed)
    tensors = {f"text_model.{k}": v for k, v in tower.state_dict().items()}
    tensors["text_projector.weight"] = projector
    return tensors


def _vision_tensors(vision: dict[str, Any], seed: int) -> dict[str, torch.Tensor]:
    """`vision_model.*`, `logit_scale`, `logit_bias`: the rest of the published file."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    with _seeded(seed):
        model = SiglipVisionModel(SiglipVisionConfig(**vision))
    # transformers 4 wraps the tower as `.vision_model`; 5 flattened it (same tensor names)
    tower = getattr(model, "vision_model", model)
    _perturb_zero_tensors(tower, seed)
    tensors = {f"vision_model.{k}": v for k, v in tower.state_dict().items()}
    tensors["logit_scale"] = torch.ones(1) * math.log(10)
    tensors["logit_bias"] = torch.ones(1) * -10
    return tensors


def write_text_encoder(folder: Path, tokenizer: Tokenizer, seed: int, remote_code: bool) -> None:
    """A tiny text encoder in the published Mexma-SigLIP layout (see write_mexma_siglip)."""
    config = text_config(tokenizer.get_vocab_size())
    write_mexma_siglip(folder, tokenizer, config, _text_encoder_tensors(config, seed), remote_code)


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


# --- diffusers components ---------------------------------------------------------------


def unet_kwargs() -> dict[str, Any]:
    """The SDXS U-Net shape (4 cross-attention levels, 1152-wide context) scaled down."""
    return {
        "sample_size": 72,
        "in_channels": LATENT_CHANNELS,
        "out_channels": LATENT_CHANNELS,
        "down_block_types": ["CrossAttnDownBlock2D"] * 4,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ["CrossAttnUpBlock2D"] * 4,
        "block_out_channels": [8, 16, 16, 24],
        "layers_per_block": 1,
        "transformer_layers_per_block": [1, 1, 2, 1],
        "attention_head_dim": [1, 2, 2, 3],  # legacy name: diffusers reads it as the head count
        "cross_attention_dim": TEXT_EMBED_DIM,
        "norm_num_groups": 8,
        "use_linear_projection": True,
    }


def vae_kwargs(latent_norm: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [8, 8, 16, 16],
        "layers_per_block": 1,
        "latent_channels": LATENT_CHANNELS,
        "norm_num_groups": 4,
        "sample_size": 576,
        "scaling_factor": 1.5,
    }
    if latent_norm == "shift":
        kwargs["shift_factor"] = 0.1
    elif latent_norm == "mean_std":
        kwargs["latents_mean"] = [round(0.05 * (i - 8), 3) for i in range(LATENT_CHANNELS)]
        kwargs["latents_std"] = [round(0.8 + 0.025 * i, 3) for i in range(LATENT_CHANNELS)]
    else:
        raise ValueError(f"latent_norm must be 'shift' or 'mean_std', not {latent_norm!r}")
    return kwargs


def scheduler_config(overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """DDPM as SD-style models ship it; overrides may replace anything, `_class_name` included."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
        timestep_spacing="leading",
        steps_offset=1,
    )
    # `_use_default_values` is a set turned list: its order changes between runs, so drop it.
    config = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
    config = {"_class_name": "DDPMScheduler", "_diffusers_version": _diffusers_version(), **config}
    config.update(overrides or {})
    return config


def _write_diffusers_model(model: Any, folder: Path, variant: str | None, seed: int) -> None:
    _perturb_zero_tensors(model, seed)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(str(folder))
    tensors = model.state_dict()
    stem = "diffusion_pytorch_model"
    if variant == "fp16":
        tensors = {k: v.half() for k, v in tensors.items()}
        stem += ".fp16"
    elif variant is not None:
        raise ValueError(f"variant must be None or 'fp16', not {variant!r}")
    save_tensors(tensors, folder / f"{stem}.safetensors")


def write_unet(
    folder: Path, seed: int, variant: str | None, widths: list[int] | None = None
) -> None:
    from diffusers import UNet2DConditionModel

    kwargs = unet_kwargs()
    if widths is not None:
        kwargs["block_out_channels"] = widths
    with _seeded(seed):
        unet = UNet2DConditionModel(**kwargs)
    _write_diffusers_model(unet, folder, variant, seed)


def write_vae(folder: Path, seed: int, variant: str | None, latent_norm: str) -> None:
    from diffusers import AutoencoderKL

    with _seeded(seed):
        vae = AutoencoderKL(**vae_kwargs(latent_norm))
    _write_diffusers_model(vae, folder, variant, seed)


def _diffusers_version() -> str:
    import diffusers

    return str(diffusers.__version__)


def model_index(unet_folder: str) -> dict[str, Any]:
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        unet_folder: ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", "AutoModel"],
        "tokenizer": ["transformers", "XLMRobertaTokenizerFast"],
    }


def build_tiny_model(
    out_dir: str | Path,
    *,
    seed: int = 0,
    unet_folder: Literal["unet", "sdxs"] = "unet",
    variant: str | None = None,
    latent_norm: Literal["shift", "mean_std"] = "shift",
    scheduler_overrides: dict[str, Any] | None = None,
    remote_code: bool = False,
    second_unet: bool = True,
) -> Path:
    """Write a tiny SDXS-format model to `out_dir` and return its path.

    As `AiArtLab/sdxs` is published: model_index.json naming `unet/`, and beside it a second,
    different U-Net in `sdxs/` (with `second_unet`; unused, so a loader that took it would
    give other images). The text encoder in `text_encoder/` has the published Mexma-SigLIP
    layout (`remote_code`: with the latest revision's auto_map and the stand-in code)."""
    if unet_folder not in ("unet", "sdxs"):
        raise ValueError(f"unet_folder must be 'unet' or 'sdxs', not {unet_folder!r}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    # Distinct seeds per component: changing one component never reshuffles another.
    write_unet(root / unet_folder, seed * 10 + 1, variant)
    if second_unet and unet_folder == "unet":
        write_unet(root / "sdxs", seed * 10 + 4, variant, widths=[8, 16, 24, 24])
    write_vae(root / "vae", seed * 10 + 2, variant, latent_norm)
    (root / "scheduler").mkdir(exist_ok=True)
    write_json(root / "scheduler" / "scheduler_config.json", scheduler_config(scheduler_overrides))
    tokenizer = build_tokenizer()
    write_text_encoder(root / "text_encoder", tokenizer, seed * 10 + 3, remote_code)
    write_tokenizer(tokenizer, root / "tokenizer")
    write_json(root / "model_index.json", model_index(unet_folder))
    return root


def build_tiny_text_encoder(
    out_dir: str | Path, *, seed: int = 3, remote_code: bool = True
) -> Path:
    """A tiny stand-in for the `visheratin/mexma-siglip` repo (the card's text encoder)."""
    root = Path(out_dir)
    write_text_encoder(root, build_tokenizer(), seed, remote_code)
    return root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sdxs_rt.tiny", description="Build a tiny random-weight SDXS model."
    )
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unet-folder", choices=("unet", "sdxs"), default="unet")
    parser.add_argument("--variant", choices=("fp16",), default=None)
    parser.add_argument("--latent-norm", choices=("shift", "mean_std"), default="shift")
    parser.add_argument("--remote-code", action="store_true", help="also write remote code")
    args = parser.parse_args(argv)
    path = build_tiny_model(
        args.out_dir,
        seed=args.seed,
        unet_folder=args.unet_folder,
        variant=args.variant,
        latent_norm=args.latent_norm,
        remote_code=args.remote_code,
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
