"""The history folder: finished images saved with their metadata, and settings read back from PNGs.

Saving names files like the CLI's folder mode (`00012-SEED.png`, numbered after the folder's
highest number), writes them atomically, and embeds the metadata of CONVENTIONS.md ("Image
metadata") unless the user strips it. Restoring reads our `sdxs_rt` chunk when there is one, else
A1111's `parameters` text, so images from A1111, ComfyUI or Fooocus restore too.
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from PIL import Image
from PySide6.QtGui import QImage

from sdxs_rt.errors import UsageError
from sdxs_rt.images import output_paths, save_png
from sdxs_rt.infotext import parse_parameters, record_from_parameters
from sdxs_rt.metadata import ImageRecord, png_info, read_metadata

# ImageRecord fields with a plain type, so that a damaged or foreign chunk restores what it can.
# The image-input fields are optional (None: no such input); `init_image` and `mask` are digest
# dicts, and `image_prompts` a list of them, kept so that "Reuse all" can say that the inputs
# themselves are not restored.
PLAIN_TYPES: dict[str, type] = {
    "str": str, "int": int, "float": float, "str | None": str, "int | None": int,
    "float | None": float, "bool | None": bool, "list[int] | None": list,
    "dict[str, Any] | None": dict, "list[dict[str, Any]] | None": list,
}  # fmt: skip
FIELD_TYPES: dict[str, type] = {
    f.name: PLAIN_TYPES[str(f.type)] for f in fields(ImageRecord) if str(f.type) in PLAIN_TYPES
}


def qimage_to_pil(image: QImage) -> Image.Image:
    """An RGB copy of a QImage (any format) as a PIL image."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    width, height, stride = rgb.width(), rgb.height(), rgb.bytesPerLine()
    data = bytes(rgb.constBits())[: stride * height]
    return Image.frombuffer("RGB", (width, height), data, "raw", "RGB", stride, 1).copy()


def pil_to_qimage(image: Image.Image) -> QImage:
    """A QImage that owns its pixels (safe to hand to the GUI thread)."""
    rgb = image.convert("RGB")
    data = rgb.tobytes()
    width, height = rgb.size
    return QImage(data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()


def save_to_history(
    image: QImage | Image.Image,
    record: ImageRecord,
    folder: str | os.PathLike[str],
    strip_metadata: bool = False,
) -> Path:
    """Save one finished image in `folder` as `NNNNN-SEED.png`; the path it was written to."""
    pil_image = qimage_to_pil(image) if isinstance(image, QImage) else image
    path = output_paths(os.fspath(folder) + os.sep, [record.seed])[0]
    pnginfo = None if strip_metadata else png_info(record)
    return save_png(pil_image, path, pnginfo=pnginfo)


def settings_from_png(path: str | os.PathLike[str]) -> dict[str, Any]:
    """ImageRecord field values stored in a PNG (for `GenerationState.apply_record`).

    The `sdxs_rt` chunk wins; else A1111 `parameters` text. Raises UsageError (one sentence)
    when the file is not a readable PNG or carries neither.
    """
    parameters, chunk = read_metadata(path)
    if chunk is not None:
        return typed_settings(chunk)
    if parameters is not None:
        return typed_settings(record_from_parameters(parse_parameters(parameters)))
    raise UsageError(
        f"{Path(path).name} carries no generation settings "
        "(no 'sdxs_rt' or 'parameters' text chunk)"
    )


def typed_settings(values: dict[str, Any]) -> dict[str, Any]:
    """Known fields converted to their types; unreadable values are dropped, not guessed."""
    settings: dict[str, Any] = {}
    for name, value in values.items():
        kind = FIELD_TYPES.get(name)
        if kind is None or value is None:  # None: an optional field left unset
            continue
        try:
            settings[name] = convert(value, kind)
        except (TypeError, ValueError):
            continue
    return settings


def convert(value: Any, kind: type) -> Any:
    if kind is int and isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    if (kind is bool) != isinstance(value, bool) and kind is not str:
        raise TypeError(value)  # True is no number, and "false" is no bool
    return kind(value)
