"""safetensors headers: validated and read without touching tensor data (torch-free).

Every check of a multi-GB file costs a few kB: the 8-byte length, the JSON header, and a
comparison of the data offsets with the file size.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sdxs_rt.errors import ModelFormatError, ModelNotFoundError
from sdxs_rt.text_layout import TensorInfo


def check_safetensors(path: Path) -> None:
    """Validate a safetensors header (length, JSON, data offsets) without reading tensors."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"The weights file {path} does not exist.")
    size = path.stat().st_size
    try:
        header = _read_safetensors_header(path, size)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path} is truncated or corrupt: {exc}.") from None
    data_size = size - 8 - header.pop("_header_len")
    data_end = _data_end(header, path)
    if data_end > data_size:
        raise ModelFormatError(
            f"{path} is truncated or corrupt: its header describes {data_end} bytes of tensor "
            f"data but the file holds only {data_size}."
        )


def tensor_table(paths: Iterable[Path]) -> dict[str, TensorInfo]:
    """Every tensor's dtype and shape, from the safetensors headers (no tensor data read)."""
    table: dict[str, TensorInfo] = {}
    for path in paths:
        header = _read_safetensors_header(Path(path), Path(path).stat().st_size)
        for key, info in header.items():
            if key.startswith("_") or not isinstance(info, dict):
                continue
            table[key] = TensorInfo(str(info.get("dtype")), tuple(info.get("shape", ())))
    return table


def _read_safetensors_header(path: Path, size: int) -> dict[str, Any]:
    with path.open("rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise ValueError(f"the file is {size} bytes, shorter than the 8-byte header length")
        header_len = int.from_bytes(prefix, "little")
        if header_len > size - 8 or header_len > 100_000_000:
            raise ValueError(f"the header claims {header_len} bytes, the file has {size}")
        header = json.loads(stream.read(header_len))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    header["_header_len"] = header_len
    return header


def _data_end(header: dict[str, Any], path: Path) -> int:
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise ModelFormatError(f"{path} is truncated or corrupt: bad entry for tensor {key}.")
        end = max(end, int(offsets[1]))
    return end
