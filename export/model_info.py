"""What the torch-free runtime needs besides the graphs: sizes, latent scaling, scheduler
config and the tokenizer files, all read from the model's own configs."""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path
from typing import Any

from sdxs_rt.backends.torch.vae import latent_scaling_from_config
from sdxs_rt.errors import ModelFormatError, ModelNotFoundError
from sdxs_rt.loading import model_hash
from sdxs_rt.text_encoder_files import TextEncoderFiles

from .graph_files import install_dir, partial_dir
from .parity import GraphDims
from .wrappers import ExportSource

TOKENIZER_FOLDER = "tokenizer"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
XLM_R_SPECIAL_IDS = {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2}


def graph_dims(source: ExportSource) -> GraphDims:
    unet, vae = source.model.unet_config, source.model.vae_config
    latent_channels = int(unet["in_channels"])
    if int(vae["latent_channels"]) != latent_channels:
        raise ModelFormatError(
            f"the VAE in {source.model.vae_dir} has {vae['latent_channels']} latent channels "
            f"but the U-Net takes {latent_channels}"
        )
    text = _text_config(source.text_encoder)
    return GraphDims(
        latent_channels=latent_channels,
        text_width=_context_width(unet, source),
        vae_scale_factor=2 ** (len(vae["block_out_channels"]) - 1),
        latent_multiple=2 ** (len(unet["block_out_channels"]) - 1),
        vocab_size=int(text.get("vocab_size", 250002)),
        special_ids=tuple(int(text.get(k, v)) for k, v in XLM_R_SPECIAL_IDS.items()),  # type: ignore[arg-type]
        num_train_timesteps=int(source.model.scheduler_config.get("num_train_timesteps", 1000)),
        image_size=source.image_encoder.preprocessor.size if source.image_encoder else None,
    )


def _context_width(unet: dict[str, Any], source: ExportSource) -> int:
    width = unet["cross_attention_dim"]
    if isinstance(width, list):  # per-block widths: one context must serve them all
        if len(set(width)) != 1:
            raise ModelFormatError(
                f"the U-Net in {source.model.unet_dir} has per-block cross_attention_dim "
                f"{width}; sdxs-rt exports one context width"
            )
        width = width[0]
    return int(width)


def _text_config(files: TextEncoderFiles) -> dict[str, Any]:
    """The tower's XLM-R config, as the native loader reads it (the published config.json
    states no dimensions); empty when only the remote code understands the checkpoint."""
    return files.layout.tower_config if files.layout is not None else {}


def manifest_fields(source: ExportSource, dims: GraphDims) -> dict[str, Any]:
    """The Manifest fields that describe the model (not the graphs or the options)."""
    files = source.model
    scaling = latent_scaling_from_config(files.vae_config, dims.latent_channels)
    return {
        "model": {
            "name": files.name,
            "hash": model_hash(files.unet_weights),
            "text_encoder": source.text_encoder.name,
            "variant": files.variant,
            "revision": files.revision,  # the hub revision exported (None: a local folder)
        },
        "latent_channels": dims.latent_channels,
        "vae_scale_factor": dims.vae_scale_factor,
        "text_width": dims.text_width,
        "latent_scaling": {
            "scaling_factor": scaling.scaling_factor,
            "mean": _plain(scaling.mean),
            "std": _plain(scaling.std),
        },
        "scheduler_config": dict(files.scheduler_config),
        "image_preprocessor": (
            source.image_encoder.preprocessor.to_dict() if source.image_encoder else {}
        ),
    }


def _plain(value: float | tuple[float, ...]) -> float | list[float]:
    return list(value) if isinstance(value, tuple) else value


def copy_tokenizer(files: TextEncoderFiles, out_dir: Path) -> str:
    """Copy the tokenizer files into `<out>/tokenizer/`; returns the tokenizer.json path,
    relative to `out_dir`. A slow-only tokenizer is converted to tokenizer.json first."""
    target = out_dir / TOKENIZER_FOLDER
    relative = f"{TOKENIZER_FOLDER}/tokenizer.json"
    source = files.tokenizer_dir
    if _same_files(source, target):
        return relative  # a rerun: leave the folder (and its mtimes) alone
    work = partial_dir(out_dir, TOKENIZER_FOLDER)
    try:
        if (source / "tokenizer.json").is_file():
            for name in TOKENIZER_FILES:
                if (source / name).is_file():
                    shutil.copy2(source / name, work / name)
        else:
            _convert_to_fast_tokenizer(source, work)
        install_dir(work, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return relative


def _same_files(source: Path, target: Path) -> bool:
    present = [name for name in TOKENIZER_FILES if (source / name).is_file()]
    return bool(present) and all(
        (target / name).is_file() and filecmp.cmp(source / name, target / name, shallow=False)
        for name in present
    )


def _convert_to_fast_tokenizer(source: Path, work: Path) -> None:
    """transformers converts a SentencePiece-only tokenizer into tokenizer.json."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(
            str(source), use_fast=True, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"no usable tokenizer in {source}: {exc}") from None
    tokenizer.save_pretrained(str(work))
    if not (work / "tokenizer.json").is_file():
        raise ModelFormatError(f"the tokenizer in {source} cannot be saved as tokenizer.json")
    for path in work.iterdir():
        if path.name not in TOKENIZER_FILES:  # the runtime reads tokenizer.json alone
            path.unlink()
