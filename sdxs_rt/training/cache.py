"""Latents and text embeddings, computed once and kept on disk (safetensors, one file each).

Latent files are keyed by the VAE weights' content hash, the latent scaling, the image's
identity (path, size, mtime) and its bucket; embedding files by the text encoder's identity
(weights hashes, remote code or not) and the caption. Latents are stored in MODEL space (what
the U-Net sees: `(z_vae - mean) * scaling_factor / std`, the inverse of
`sdxs_rt.latents.unscale_latents`). The VAE encoder and the text encoder are loaded only when
something is missing, and released before the U-Net is trained.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from tqdm import tqdm

from sdxs_rt.backends.torch.ops import TorchOps
from sdxs_rt.backends.torch.text_encoder import load_text_encoder
from sdxs_rt.backends.torch.vae import latent_scaling_from_config
from sdxs_rt.backends.torch.weights import load_diffusers_module, save_safetensors_atomic
from sdxs_rt.components import LatentScaling
from sdxs_rt.latents import scale_latents
from sdxs_rt.loading import ModelFiles, file_sha256
from sdxs_rt.text_encoder_files import TextEncoderFiles, resolve_text_encoder
from sdxs_rt.training.buckets import Bucket, resize_and_crop
from sdxs_rt.training.sources import ImageSource

CACHE_FORMAT = "sdxs-rt-train-cache-1"
ENCODE_BATCH = 8  # images per VAE call and captions per text-encoder call


@dataclass(frozen=True)
class CacheRequest:
    """What to cache and how: the model, the images with their buckets, extra captions."""

    files: ModelFiles
    text_encoder: str | None
    trust_remote_code: bool
    allow_upscale: bool
    device: torch.device
    show_progress: bool = True


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join((CACHE_FORMAT, *parts)).encode("utf-8")).hexdigest()[:32]


def vae_key(files: ModelFiles) -> str:
    scaling = latent_scaling_from_config(files.vae_config, int(files.unet_config["in_channels"]))
    return _digest(file_sha256(files.vae_weights), repr(scaling), "posterior-mean")


def text_encoder_key(files: TextEncoderFiles, trust_remote_code: bool) -> str:
    hashes = [file_sha256(path) for path in files.weights]
    tokenizer = files.tokenizer_dir / "tokenizer.json"
    hashes.append(file_sha256(tokenizer) if tokenizer.is_file() else "no tokenizer.json")
    return _digest(*hashes, f"remote code {trust_remote_code}")


class TrainingCache:
    """Paths of the cached tensors, and reading them back for training batches."""

    def __init__(self, root: Path, latent_key: str, embedding_key: str) -> None:
        self.root = root
        self.latent_key, self.embedding_key = latent_key, embedding_key
        self._embeddings: dict[str, torch.Tensor] = {}

    def latent_path(self, source: ImageSource, bucket: Bucket) -> Path:
        name = _digest(self.latent_key, source.identity, str(bucket))
        return self.root / "latents" / name[:2] / f"{name}.safetensors"

    def embedding_path(self, caption: str) -> Path:
        name = _digest(self.embedding_key, caption)
        return self.root / "embeddings" / name[:2] / f"{name}.safetensors"

    def latents(self, paths: Sequence[Path]) -> torch.Tensor:
        """(B, C, h, w) float32 model-space latents from their cache files."""
        return torch.stack([load_file(path)["latents"] for path in paths])

    def embedding(self, caption: str) -> torch.Tensor:
        """(D,) float32 pooled embedding, read once and kept in memory."""
        if caption not in self._embeddings:
            self._embeddings[caption] = load_file(self.embedding_path(caption))["embedding"]
        return self._embeddings[caption]

    def embeddings(self, captions: Sequence[str]) -> torch.Tensor:
        """(B, 1, D): the U-Net's encoder_hidden_states for these captions."""
        return torch.stack([self.embedding(c) for c in captions])[:, None]


def load_vae_encoder(files: ModelFiles, device: torch.device) -> AutoencoderKL:
    """The model's AutoencoderKL in float32 (the cache is computed in full precision)."""
    return load_diffusers_module(
        AutoencoderKL, files.vae_config, files.vae_weights, device, torch.float32
    )


def image_tensor(image: Any) -> torch.Tensor:
    """PIL RGB -> (3, H, W) float32 in [-1, 1]."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1)


Pending = list[tuple[ImageSource, Bucket, Path]]  # (image, its bucket, its cache file)


def _encode_latents(request: CacheRequest, pending: Pending) -> None:
    vae = load_vae_encoder(request.files, request.device)
    channels = int(request.files.unet_config["in_channels"])
    scaling = latent_scaling_from_config(request.files.vae_config, channels)
    bar = tqdm(total=len(pending), desc="caching latents", disable=not request.show_progress)
    for chunk in _same_bucket_chunks(pending):
        _encode_chunk(vae, scaling, request.allow_upscale, chunk)
        bar.update(len(chunk))
    bar.close()
    del vae


def _same_bucket_chunks(pending: Pending) -> list[Pending]:
    """Chunks of at most ENCODE_BATCH images that share a bucket (one tensor shape each)."""
    by_bucket: dict[Bucket, Pending] = {}
    for item in pending:
        by_bucket.setdefault(item[1], []).append(item)
    return [
        items[start : start + ENCODE_BATCH]
        for items in by_bucket.values()
        for start in range(0, len(items), ENCODE_BATCH)
    ]


def _encode_chunk(
    vae: AutoencoderKL, scaling: LatentScaling, allow_upscale: bool, chunk: Pending
) -> None:
    pixels = torch.stack(
        [image_tensor(resize_and_crop(s.open(), b, allow_upscale)) for s, b, _ in chunk]
    )
    with torch.inference_mode():
        # The posterior MEAN, not a sample: deterministic, and what most fine-tuners cache.
        z = vae.encode(pixels.to(vae.device)).latent_dist.mean.float()
        latents = scale_latents(z, scaling, TorchOps(z.device, torch.float32))
    for (_, _, path), latent in zip(chunk, latents, strict=True):
        save_safetensors_atomic({"latents": latent}, path)


def _encode_captions(
    request: CacheRequest, encoder_files: TextEncoderFiles, pending: dict[str, Path]
) -> None:
    encoder = load_text_encoder(
        encoder_files, request.device, torch.float32, request.trust_remote_code
    )
    captions = list(pending)
    bar = tqdm(
        total=len(captions), desc="caching text embeddings", disable=not request.show_progress
    )
    for start in range(0, len(captions), ENCODE_BATCH):
        chunk = captions[start : start + ENCODE_BATCH]
        with torch.inference_mode():
            vectors = encoder(chunk).float()
        for caption, vector in zip(chunk, vectors, strict=True):
            save_safetensors_atomic({"embedding": vector}, pending[caption])
        bar.update(len(chunk))
    bar.close()
    del encoder


def build_cache(
    request: CacheRequest,
    items: Sequence[tuple[ImageSource, Bucket]],
    extra_captions: Sequence[str],
    cache_dir: Path,
    main_process_first: Callable[[], AbstractContextManager[Any]],
) -> tuple[TrainingCache, list[Path]]:
    """Fill the cache for `items` and every caption (theirs, `extra_captions` and "").

    Returns the cache and each item's latent file. Only the main process computes anything:
    the others enter after it (`main_process_first`) and find every file present.
    """
    encoder_files = resolve_text_encoder(request.text_encoder, request.files)
    cache = TrainingCache(
        cache_dir,
        vae_key(request.files),
        text_encoder_key(encoder_files, request.trust_remote_code),
    )
    paths = [cache.latent_path(source, bucket) for source, bucket in items]
    captions = dict.fromkeys(["", *extra_captions, *(s.caption for s, _ in items)])
    with main_process_first():
        missing = [(s, b, p) for (s, b), p in zip(items, paths, strict=True) if not p.is_file()]
        if missing:
            _encode_latents(request, missing)
        wanted = {c: cache.embedding_path(c) for c in captions}
        todo = {c: path for c, path in wanted.items() if not path.is_file()}
        if todo:
            _encode_captions(request, encoder_files, todo)
    _release_memory(request.device)
    return cache, paths


def _release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
