"""Mexma-SigLIP-style text encoders for the torch backend: prompts -> pooled (B, 1152) vectors.

Two ways to load the same checkpoint:
- `RemoteCodeTextEncoder`: the model card's way (`AutoModel(..., trust_remote_code=True)` and
  its `encode_texts`). Runs code shipped with the checkpoint, so only on explicit opt-in.
- `NativeTextEncoder`: no remote code. XLM-RoBERTa from transformers plus the projection found
  in the safetensors file, CLS pooling, dimensions from the tensor shapes. Refuses a layout it
  does not recognise, naming what it found.

Both tokenize without padding to 512 (MODEL.md, fact 2: with an attention mask the CLS vector
is the same, and 20x cheaper); `pad_to_max_length=True` reproduces the card for comparisons.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdxs_rt.backends.torch.remote_code import load_remote_model
from sdxs_rt.errors import ModelFormatError
from sdxs_rt.text_encoder_files import TextEncoderFiles
from sdxs_rt.text_layout import TOWER_PARTS, TOWER_UNUSED, TextLayout

MAX_TOKENS = 512  # the card truncates at 512; XLM-R has 514 positions (2 are offsets)


class PooledTextEncoder:
    """Shared part: tokenization (unpadded batch + mask), device/dtype, inference mode."""

    def __init__(
        self,
        tokenizer: Any,
        device: torch.device,
        dtype: torch.dtype,
        pad_to_max_length: bool = False,
    ) -> None:
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.pad_to_max_length = pad_to_max_length
        self.width = 0  # set by the loaders once the projection is known

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):  # a lone string is a Sequence[str] of characters
            prompts = [prompts]
        if not prompts:
            return torch.empty(0, self.width, device=self.device, dtype=self.dtype)
        input_ids, attention_mask = self.tokenize(prompts)
        with torch.inference_mode():
            embeds = self._encode(input_ids.to(self.device), attention_mask.to(self.device))
        return embeds.to(self.dtype)

    def tokenize(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, attention_mask) int64 tensors, truncated at 512 tokens with a warning."""
        _warn_if_truncated(self.tokenizer, prompts)
        padding = "max_length" if self.pad_to_max_length else "longest"
        batch = self.tokenizer(
            list(prompts),
            padding=padding,
            max_length=MAX_TOKENS,
            truncation=True,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class RemoteCodeTextEncoder(PooledTextEncoder):
    """The card's loader: the checkpoint's own code, called through `encode_texts`."""

    model: Any

    @classmethod
    def load(
        cls,
        files: TextEncoderFiles,
        device: str | torch.device,
        dtype: torch.dtype,
        pad_to_max_length: bool = False,
    ) -> RemoteCodeTextEncoder:
        encoder = cls(load_tokenizer(files), torch.device(device), dtype, pad_to_max_length)
        encoder.model = load_remote_model(files, encoder.device, dtype)
        encoder.width = int(encoder([""]).shape[-1])  # whatever the remote code projects to
        return encoder

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embeds = self.model.encode_texts(input_ids, attention_mask)
        if embeds.ndim == 3 and embeds.shape[1] == 1:  # (B, 1, D) -> (B, D)
            embeds = embeds[:, 0]
        return embeds


class NativeTextEncoder(PooledTextEncoder):
    """XLM-RoBERTa tower + linear projection, CLS pooling; no code from the checkpoint.

    Dimensions come from the tensor shapes (`sdxs_rt.text_layout`): the published config has
    none. Only the text tensors are read; a vision tower in the same file stays on disk."""

    tower: nn.Module
    projection: nn.Linear

    @classmethod
    def load(
        cls,
        files: TextEncoderFiles,
        device: str | torch.device,
        dtype: torch.dtype,
        pad_to_max_length: bool = False,
    ) -> NativeTextEncoder:
        layout = files.native_layout()
        encoder = cls(load_tokenizer(files), torch.device(device), dtype, pad_to_max_length)
        encoder.tower = _load_tower(files, layout)
        encoder.projection = _load_projection(files, layout)
        encoder.tower.to(encoder.device, dtype).eval()
        encoder.projection.to(encoder.device, dtype).eval()
        encoder.width = encoder.projection.out_features
        return encoder

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.tower(input_ids=input_ids, attention_mask=attention_mask)
        return self.projection(hidden.last_hidden_state[:, 0])  # CLS pooling


def load_text_encoder(
    files: TextEncoderFiles,
    device: str | torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool,
    pad_to_max_length: bool = False,
) -> PooledTextEncoder:
    """Native unless the user opted in to running the checkpoint's own code."""
    loader = RemoteCodeTextEncoder if trust_remote_code else NativeTextEncoder
    return loader.load(files, device, dtype, pad_to_max_length)


def load_tokenizer(files: TextEncoderFiles) -> Any:
    from transformers import AutoTokenizer

    # The tokenizer never needs remote code; saying so keeps transformers 5 from asking
    # (it consults the folder's config.json, whose auto_map names the model's code).
    return AutoTokenizer.from_pretrained(str(files.tokenizer_dir), trust_remote_code=False)


def _warn_if_truncated(tokenizer: Any, prompts: Sequence[str]) -> None:
    lengths = [len(ids) for ids in tokenizer(list(prompts), verbose=False)["input_ids"]]
    too_long = [n for n in lengths if n > MAX_TOKENS]
    if too_long:
        warnings.warn(
            f"{len(too_long)} prompt(s) have {max(too_long)} tokens; the text encoder reads "
            f"only the first {MAX_TOKENS}, the rest is ignored.",
            UserWarning,
            stacklevel=3,
        )


# --- remote code ------------------------------------------------------------------------


# --- native layout ----------------------------------------------------------------------


def _read_tensors(paths: tuple[Path, ...], prefix: str) -> dict[str, torch.Tensor]:
    """Tensors under `prefix` (prefix stripped), read lazily: a vision tower is never loaded.
    They keep the file's dtype (float32 in the published file, whatever its config says)."""
    from safetensors import safe_open

    tensors: dict[str, torch.Tensor] = {}
    for path in paths:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in list(handle.keys()):  # safe_open handles are not iterable
                if key.startswith(prefix):
                    tensors[key[len(prefix) :]] = handle.get_tensor(key)
    return tensors


def _load_tower(files: TextEncoderFiles, layout: TextLayout) -> nn.Module:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    config = {k: v for k, v in layout.tower_config.items() if k != "model_type"}
    tower = XLMRobertaModel(XLMRobertaConfig(**config), add_pooling_layer=False)
    state = {
        k: v
        for k, v in _read_tensors(files.weights, layout.tower_prefix).items()
        if k.startswith(TOWER_PARTS) and not k.startswith(TOWER_UNUSED)
    }
    where = (
        f"The text tower weights in {files.dir} (under {layout.tower_prefix or 'the top level'!r})"
    )
    try:
        result = tower.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches: the torch message lists them, one a line
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise ModelFormatError(f"{where} do not match its config: {details}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelFormatError(
            f"{where} are incomplete: missing {_few(result.missing_keys)}, "
            f"unexpected {_few(result.unexpected_keys)}."
        )
    return tower


def _few(keys: list[str], limit: int = 4) -> str:
    if not keys:
        return "none"
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _load_projection(files: TextEncoderFiles, layout: TextLayout) -> nn.Linear:
    paths = files.projector_weights or files.weights
    tensors = _read_tensors(paths, layout.projection)
    weight, bias = tensors["weight"], tensors.get("bias")
    projection = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        projection.weight.copy_(weight)
        if bias is not None:
            projection.bias.copy_(bias)
    return projection
