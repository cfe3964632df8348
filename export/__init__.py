"""torch -> ONNX export of the SDXS graphs (installed as `sdxs_rt_export`)."""
