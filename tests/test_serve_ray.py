"""The Ray Serve deployment (`sdxs_rt.serve.ray_app`): two CPU replicas of the built-in model
behind Ray's HTTP proxy on 127.0.0.1, 20 concurrent requests (A1111 and OpenAI), each image the
same as the single-process server's for the same seed, and both replicas answering.

Every wait is bounded (deployment, each request, the whole burst); Ray is shut down in the
fixture's teardown whatever happens. Ray runs locally only: a fresh local instance
(`address="local"`), no dashboard, the proxy bound to 127.0.0.1 on a free port.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from tests.serve_process import HOST, free_port

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
pytest.importorskip("torch")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

REPLICAS = 2
REQUESTS = 20
STEPS = 4
SIZE = 64
PROMPT = "a red circle on a blue background"
DEPLOY_SECONDS = 240.0  # two replicas load the model (torch imports) on 2 cores
REQUEST_SECONDS = 120.0
BURST_SECONDS = 240.0


def a1111_body(seed: int) -> dict[str, Any]:
    return {"prompt": PROMPT, "seed": seed, "steps": STEPS, "width": SIZE, "height": SIZE}


def openai_body(seed: int) -> dict[str, Any]:
    return {"prompt": PROMPT, "n": 1, "size": f"{SIZE}x{SIZE}", "seed": seed, "steps": STEPS}


def request_for(seed: int) -> tuple[str, dict[str, Any]]:
    """Even seeds through A1111's endpoint, odd ones through OpenAI's."""
    if seed % 2 == 0:
        return "/sdapi/v1/txt2img", a1111_body(seed)
    return "/v1/images/generations", openai_body(seed)


def image_of(path: str, body: dict[str, Any], seed: int) -> np.ndarray:
    """The answer's one image as pixels, after checking it is the asked seed's."""
    if path.startswith("/sdapi"):
        assert json.loads(body["info"])["all_seeds"] == [seed]
        encoded = body["images"][0]
    else:
        assert body["data"][0]["seed"] == seed
        encoded = body["data"][0]["b64_json"]
    with Image.open(io.BytesIO(base64.b64decode(encoded))) as image:
        return np.asarray(image.convert("RGB"))


@pytest.fixture(scope="module")
def reference_images() -> dict[int, np.ndarray]:
    """The single-process server's images: the same app over the same model, in this process,
    with one torch thread as each replica has (OMP_NUM_THREADS=1, set in `ray_url`): the thread
    count changes how sums split, which moves a few pixels by one."""
    import torch
    from fastapi.testclient import TestClient

    from sdxs_rt.pipeline import Pipeline
    from sdxs_rt.serve.app import create_app
    from sdxs_rt.serve.config import ServerConfig
    from sdxs_rt.serve.runtime import ServerRuntime

    pipe = Pipeline.from_pretrained(None)
    runtime = ServerRuntime(pipe, ServerConfig(), model_title=str(pipe.info["model"]))
    images = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with TestClient(create_app(runtime)) as client:
            for seed in range(REQUESTS):
                path, body = request_for(seed)
                response = client.post(path, json=body)
                assert response.status_code == 200, response.text
                images[seed] = image_of(path, response.json(), seed)
    finally:
        torch.set_num_threads(threads)
    return images


@pytest.fixture(scope="module")
def ray_url() -> Iterator[str]:
    """Two CPU replicas of the built-in model behind Ray's proxy; yields the proxy's URL."""
    from sdxs_rt.serve.ray_app import run_app

    port = free_port()
    ray.init(
        address="local",
        num_cpus=REPLICAS,
        num_gpus=0,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        _node_ip_address=HOST,
        # one torch thread per replica, whatever this machine's environment says (the reference
        # images are drawn with one thread too)
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    try:
        serve.start(http_options={"host": HOST, "port": port})
        run_app(
            {"replicas": REPLICAS, "num_gpus": 0, "num_cpus": 1, "preview_every": 0},
            timeout_s=DEPLOY_SECONDS,
        )
        yield f"http://{HOST}:{port}"
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def test_two_replicas_answer_like_one_process(
    ray_url: str, reference_images: dict[int, np.ndarray]
) -> None:
    health = httpx.get(f"{ray_url}/healthz", timeout=REQUEST_SECONDS)
    assert health.status_code == 200, health.text
    assert health.json()["model"] == "demo-shapes"
    assert health.headers["x-sdxs-replica"]

    def send(seed: int) -> tuple[int, httpx.Response]:
        path, body = request_for(seed)
        return seed, httpx.post(f"{ray_url}{path}", json=body, timeout=REQUEST_SECONDS)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=REQUESTS) as pool:
        answers = list(pool.map(send, range(REQUESTS), timeout=BURST_SECONDS))
    elapsed = time.monotonic() - started

    replicas = set()
    for seed, response in answers:
        assert response.status_code == 200, f"seed {seed}: {response.text}"
        replicas.add(response.headers["x-sdxs-replica"])
        path, _ = request_for(seed)
        pixels = image_of(path, response.json(), seed)
        expected = reference_images[seed]
        assert pixels.shape == expected.shape == (SIZE, SIZE, 3)
        # Same backend, device and precision in both processes: the same pixels.
        assert np.array_equal(pixels, expected), (
            f"seed {seed}: the replica's image differs from the single process's by up to "
            f"{np.abs(pixels.astype(int) - expected.astype(int)).max()}"
        )
    assert len(replicas) == REPLICAS, f"only {replicas} answered {REQUESTS} requests"
    assert elapsed < BURST_SECONDS
