"""torch -> ONNX export of the SDXS graphs (installed as `sdxs_rt_export`).

`export_onnx` (in `onnx_export`) is the library entry point; `command` holds the CLI glue and
imports nothing heavy, so `sdxs-rt --help` stays fast.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export_onnx"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package must not import torch or onnx.
    if name == "export_onnx":
        from .onnx_export import export_onnx

        return export_onnx
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
