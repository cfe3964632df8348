"""Prompt tokenization with the `tokenizers` library alone (no transformers, no torch).

Shared by the backends that run exported graphs (ONNX Runtime, TensorRT).

Tokenizes exactly as transformers' XLM-R fast tokenizer does with `padding="longest",
truncation=True, max_length=512`: `<s> ... </s>`, padded to the longest prompt of the batch
with the pad token and an attention mask, never to 512 (MODEL.md, fact 2).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from sdxs_rt.errors import EngineError

MAX_TOKENS = 512  # the card truncates at 512; XLM-R has 514 positions (2 are offsets)
DEFAULT_PAD_TOKEN = "<pad>"
SPECIAL_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")


class PromptTokenizer:
    """Prompts -> (input_ids, attention_mask), int64 arrays of shape (batch, longest)."""

    def __init__(self, tokenizer: Tokenizer, pad_token: str, max_tokens: int = MAX_TOKENS) -> None:
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise EngineError(f"the tokenizer has no pad token {pad_token!r}")
        self.max_tokens = max_tokens
        self.counter = _configured(tokenizer)  # untruncated, unpadded: to measure prompts
        self.batcher = _configured(tokenizer)
        self.batcher.enable_truncation(max_length=max_tokens)
        self.batcher.enable_padding(pad_id=pad_id, pad_token=pad_token)

    @classmethod
    def from_file(cls, path: Path, max_tokens: int = MAX_TOKENS) -> PromptTokenizer:
        path = Path(path)
        if not path.is_file():
            raise EngineError(
                f"{path} is missing; export the model again with 'sdxs-rt export onnx'"
            )
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception on bad JSON
            raise EngineError(
                f"{path} is not a tokenizer file the tokenizers library reads: {exc}"
            ) from None
        return cls(tokenizer, pad_token_for(path, tokenizer), max_tokens)

    def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        prompts = list(prompts)
        self._warn_if_truncated(prompts)
        encodings = self.batcher.encode_batch(prompts)
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return input_ids, attention_mask

    def _warn_if_truncated(self, prompts: list[str]) -> None:
        lengths = [len(e.ids) for e in self.counter.encode_batch(prompts)]
        too_long = [n for n in lengths if n > self.max_tokens]
        if too_long:
            warnings.warn(
                f"{len(too_long)} prompt(s) have {max(too_long)} tokens; the text encoder reads "
                f"only the first {self.max_tokens}, the rest is ignored.",
                UserWarning,
                stacklevel=4,
            )


def _configured(tokenizer: Tokenizer) -> Tokenizer:
    """A copy without the padding/truncation a tokenizer.json may carry."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def pad_token_for(path: Path, tokenizer: Tokenizer) -> str:
    """The pad token transformers would use: from the config files beside tokenizer.json."""
    for name in SPECIAL_TOKEN_FILES:
        token = _token_from(path.parent / name, "pad_token")
        if token:
            return token
    padding = tokenizer.padding
    if padding and padding.get("pad_token"):
        return str(padding["pad_token"])
    return DEFAULT_PAD_TOKEN


def _token_from(config_file: Path, key: str) -> str | None:
    if not config_file.is_file():
        return None
    try:
        value: Any = json.loads(config_file.read_text(encoding="utf-8")).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    if isinstance(value, dict):  # {"content": "<pad>", "lstrip": false, ...}
        value = value.get("content")
    return value if isinstance(value, str) else None
