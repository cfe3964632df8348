"""The ONNX Runtime backend (torch-free): runs the graphs written by `sdxs-rt export onnx`."""

from __future__ import annotations

from typing import Any

__all__ = ["load_components"]


def __getattr__(name: str) -> Any:
    # Lazy: importing a submodule (e.g. for its helpers) must not start onnxruntime.
    if name == "load_components":
        from sdxs_rt.backends.onnx.loader import load_components

        return load_components
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
