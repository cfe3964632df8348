"""The TensorRT backend: builds fp16 engines from the exported ONNX graphs and runs them."""
