"""Training data: a folder of images with captions, or a Hugging Face `datasets` folder on disk.

Two folder layouts are read without extra packages:

* `metadata.jsonl` in the folder: one JSON object per line with `file_name` (relative to the
  folder) and `text` (the caption). When this file exists it is the only source used.
* otherwise every image (.png, .jpg, .jpeg, .webp, in the folder or below) with a same-name
  `.txt` caption next to it (`cat.png` + `cat.txt`).

Examples come back sorted by their path relative to the folder, so runs are deterministic.
`load_hf_dataset` opens an image folder or parquet files with `datasets` (installed by
`pip install 'sdxs-rt[train]'`), imported only when called.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sdxs_rt.errors import ModelNotFoundError, UsageError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
METADATA_FILE = "metadata.jsonl"
MissingCaption = Literal["error", "empty"]


@dataclass(frozen=True)
class TrainingExample:
    path: Path
    caption: str


def load_examples(
    folder: str | Path, missing_caption: MissingCaption = "error"
) -> list[TrainingExample]:
    """The (image, caption) pairs of `folder`, sorted by relative path.

    `missing_caption` applies to the image + `.txt` layout: "error" (the default) refuses images
    without a caption file, naming up to three; "empty" gives them the empty caption.
    """
    if missing_caption not in ("error", "empty"):
        raise UsageError(f"missing_caption must be 'error' or 'empty'; got {missing_caption!r}.")
    root = _existing_folder(folder)
    metadata = root / METADATA_FILE
    if metadata.is_file():
        examples = _from_metadata(root, metadata)
    else:
        examples = _from_caption_files(root, missing_caption)
    if not examples:
        raise UsageError(f"The training folder {root} holds no images (.png, .jpg, .jpeg, .webp).")
    return sorted(examples, key=lambda e: e.path.relative_to(root).as_posix())


def _existing_folder(folder: str | Path) -> Path:
    root = Path(folder).expanduser()
    if not root.exists():
        raise ModelNotFoundError(f"The training data folder {root} does not exist.")
    if not root.is_dir():
        raise ModelNotFoundError(f"The training data path {root} is not a folder.")
    return root


def _from_metadata(root: Path, metadata: Path) -> list[TrainingExample]:
    examples = []
    with metadata.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                examples.append(_parse_metadata_line(root, metadata, number, line))
    return examples


def _parse_metadata_line(root: Path, metadata: Path, number: int, line: str) -> TrainingExample:
    where = f"{metadata} line {number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise UsageError(f"{where} is not valid JSON ({error.msg}).") from None
    if not isinstance(record, dict):
        raise UsageError(f"{where} must be a JSON object with 'file_name' and 'text'.")
    file_name, text = record.get("file_name"), record.get("text")
    if not isinstance(file_name, str) or not file_name:
        raise UsageError(f"{where} needs a 'file_name' string.")
    if not isinstance(text, str):
        raise UsageError(f"{where} needs a 'text' string (the caption).")
    path = root / file_name
    if not path.is_file():
        raise ModelNotFoundError(f"{where} names {file_name}, which is not in {root}.")
    return TrainingExample(path, text.strip())


def _from_caption_files(root: Path, missing_caption: MissingCaption) -> list[TrainingExample]:
    images = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    missing = [p for p in images if not p.with_suffix(".txt").is_file()]
    if missing and missing_caption == "error":
        names = sorted(p.relative_to(root).as_posix() for p in missing)
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise UsageError(
            f"{len(names)} image(s) in {root} have no same-name .txt caption: {shown} "
            "(add captions, or use metadata.jsonl, or allow empty captions)."
        )
    return [TrainingExample(p, _read_caption(p)) for p in images]


def _read_caption(image: Path) -> str:
    caption = image.with_suffix(".txt")
    return caption.read_text(encoding="utf-8").strip() if caption.is_file() else ""


def load_hf_dataset(path: str | Path, split: str = "train") -> Any:
    """A `datasets.Dataset` from an image folder or parquet file(s) on disk.

    A folder with .parquet files (or a .parquet file) is read with the "parquet" builder; any
    other folder with the "imagefolder" builder (which reads metadata.jsonl/csv captions).
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise ModelNotFoundError(f"The dataset path {source} does not exist.")
    if source.is_file() and source.suffix.lower() != ".parquet":
        raise UsageError(f"The dataset path {source} must be a folder or a .parquet file.")
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise UsageError(
            f"Reading {source} as a Hugging Face dataset needs the 'datasets' package: "
            "pip install 'sdxs-rt[train]'"
        ) from None
    parquet = _parquet_files(source)
    if parquet:
        return datasets.load_dataset("parquet", data_files=parquet, split=split)
    return datasets.load_dataset("imagefolder", data_dir=str(source), split=split)


def _parquet_files(source: Path) -> list[str]:
    if source.is_file():
        return [str(source)]
    return sorted(str(p) for p in source.rglob("*.parquet"))
