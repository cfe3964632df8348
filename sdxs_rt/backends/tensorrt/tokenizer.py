"""Prompt tokenization for the text-encoder engine, with the `tokenizers` library alone.

As the other backends: `<s> ... </s>`, truncated at the engine's longest sequence, padded only
to the longest prompt of the batch, with an attention mask (MODEL.md, fact 2).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from sdxs_rt.errors import EngineError

DEFAULT_PAD_TOKEN = "<pad>"
SPECIAL_TOKEN_FILES = ("tokenizer_config.json", "special_tokens_map.json")


class PromptTokenizer:
    """Prompts -> (input_ids, attention_mask), int64 arrays of shape (batch, longest)."""

    def __init__(self, tokenizer: Tokenizer, pad_token: str, max_tokens: int = 512) -> None:
        pad_id = tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise EngineError(f"the tokenizer has no pad token {pad_token!r}")
        self.max_tokens = max_tokens
        self.counter = _plain_copy(tokenizer)  # untruncated: to warn about long prompts
        self.batcher = _plain_copy(tokenizer)
        self.batcher.enable_truncation(max_length=max_tokens)
        self.batcher.enable_padding(pad_id=pad_id, pad_token=pad_token)

    @classmethod
    def from_file(cls, path: Path, max_tokens: int = 512) -> PromptTokenizer:
        if not path.is_file():
            raise EngineError(
                f"{path} is missing; export the model again with 'sdxs-rt export onnx'"
            )
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a plain Exception on a bad file
            raise EngineError(f"{path} is not a tokenizer file: {exc}") from None
        return cls(tokenizer, pad_token_for(path), max_tokens)

    def __call__(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        prompts = list(prompts)
        longest = max(len(e.ids) for e in self.counter.encode_batch(prompts))
        if longest > self.max_tokens:
            warnings.warn(
                f"a prompt has {longest} tokens; the text encoder reads only the first "
                f"{self.max_tokens}, the rest is ignored.",
                UserWarning,
                stacklevel=3,
            )
        encodings = self.batcher.encode_batch(prompts)
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return input_ids, attention_mask


def _plain_copy(tokenizer: Tokenizer) -> Tokenizer:
    """A copy without the padding or truncation a tokenizer.json may carry."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def pad_token_for(path: Path) -> str:
    """The pad token named by the config files beside tokenizer.json, else `<pad>`."""
    for name in SPECIAL_TOKEN_FILES:
        try:
            value = json.loads((path.parent / name).read_text(encoding="utf-8")).get("pad_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, dict):  # {"content": "<pad>", "lstrip": false, ...}
            value = value.get("content")
        if isinstance(value, str) and value:
            return value
    return DEFAULT_PAD_TOKEN
