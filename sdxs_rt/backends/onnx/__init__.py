"""The ONNX Runtime backend (torch-free): runs the graphs written by `sdxs-rt export onnx`."""

from sdxs_rt.backends.onnx.loader import load_components

__all__ = ["load_components"]
