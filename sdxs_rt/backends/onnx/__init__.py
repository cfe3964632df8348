"""The ONNX Runtime backend (torch-free): runs the graphs written by `sdxs-rt export onnx`."""
