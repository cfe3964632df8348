"""`sdxs-rt serve --backend onnx` with torch unimportable: the server is core code over any
backend. The served image matches the torch backend's on the same tiny model and seed."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serve_process import start_server
from tests.test_torch_free import RUN_WITHOUT_TORCH

TIMEOUT = 120.0
MIN_PSNR = 45.0  # ONNX fp32 graphs against torch fp32, as the image-mode tests require


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    mse = float(np.mean((first.astype(np.float64) - second.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_the_server_runs_onnx_graphs_without_torch(
    tmp_path: Path, tiny_model: Path, exported_tiny_fp32: Path
) -> None:
    pytest.importorskip("onnxruntime")
    from sdxs_rt.pipeline import Pipeline

    args = ["--backend", "onnx", "--model", str(exported_tiny_fp32), "--quiet"]
    server = start_server(tmp_path, args, launcher=(sys.executable, "-c", RUN_WITHOUT_TORCH))
    try:
        health = httpx.get(f"{server.url}/healthz", timeout=TIMEOUT).json()
        body = {"prompt": "a red circle", "size": "64x64", "seed": 11, "steps": 4}
        answer = httpx.post(f"{server.url}/v1/images/generations", json=body, timeout=TIMEOUT)
    finally:
        server.stop()
    assert health["backend"] == "onnx", health
    assert answer.status_code == 200, answer.text + server.log()
    item = answer.json()["data"][0]
    assert "Backend: onnx" in item["infotext"]
    served = np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB"))

    pipe = Pipeline.from_pretrained(str(tiny_model))
    expected = pipe("a red circle", width=64, height=64, seed=11, num_inference_steps=4).images[0]
    value = psnr(served, np.asarray(expected.convert("RGB")))
    print(f"ONNX server vs torch in process: {value:.1f} dB PSNR")
    assert value >= MIN_PSNR, f"ONNX server vs torch: {value:.1f} dB"
