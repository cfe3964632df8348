"""The tiny models' tokenizer: XLM-R-style SentencePiece Unigram over a bilingual corpus."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

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

from sdxs_rt.dev.tiny_files import write_json

TOKENIZER_MAX_LENGTH = 512
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3 as in XLM-R; <mask> comes last
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
