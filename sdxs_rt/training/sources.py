"""Training images as one list, whatever the layout: caption folder, metadata.jsonl, parquet.

Each source knows its identity (what the latent cache is keyed by: path, size and mtime, plus
the row for parquet data), its caption, its pixel size and how to open the image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sdxs_rt.errors import UsageError
from sdxs_rt.training.data import load_examples, load_hf_dataset

IMAGE_COLUMNS = ("image", "img", "file_name")
CAPTION_COLUMNS = ("text", "caption", "prompt")


@dataclass(frozen=True)
class ImageSource:
    identity: str
    caption: str
    size: tuple[int, int]  # (width, height)
    open: Callable[[], Image.Image]


def file_identity(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def load_sources(data: str | Path) -> list[ImageSource]:
    """A folder of images (captions or metadata.jsonl), or parquet file(s) read with datasets."""
    root = Path(data).expanduser()
    if root.suffix.lower() == ".parquet" or (root.is_dir() and _only_parquet(root)):
        return _parquet_sources(root)
    return [_file_source(example.path, example.caption) for example in load_examples(root)]


def _only_parquet(root: Path) -> bool:
    return any(root.rglob("*.parquet")) and not (root / "metadata.jsonl").is_file()


def _file_source(path: Path, caption: str) -> ImageSource:
    with Image.open(path) as image:  # reads the header only
        size = image.size
    return ImageSource(file_identity(path), caption, size, lambda: _open_rgb(path))


def _open_rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def _parquet_sources(root: Path) -> list[ImageSource]:
    dataset = load_hf_dataset(root)
    image_column = _column(dataset.column_names, IMAGE_COLUMNS, "image", root)
    caption_column = _column(dataset.column_names, CAPTION_COLUMNS, "caption", root)
    stamp = "|".join(file_identity(p) for p in sorted(_parquet_files(root)))
    sources = []
    for row, record in enumerate(dataset):
        size = record[image_column].size  # no RGB copy here: `open` converts when caching
        sources.append(
            ImageSource(f"{stamp}|row {row}", str(record[caption_column] or "").strip(),
                        size, _row_loader(dataset, row, image_column))
        )  # fmt: skip
    return sources


def _parquet_files(root: Path) -> list[Path]:
    return [root] if root.is_file() else list(root.rglob("*.parquet"))


def _row_loader(dataset: Any, row: int, column: str) -> Callable[[], Image.Image]:
    return lambda: dataset[row][column].convert("RGB")


def _column(names: list[str], wanted: tuple[str, ...], what: str, root: Path) -> str:
    for name in wanted:
        if name in names:
            return name
    raise UsageError(
        f"The dataset {root} has no {what} column (looked for {', '.join(wanted)}; "
        f"it has {', '.join(names)})."
    )
