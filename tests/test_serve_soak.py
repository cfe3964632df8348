"""Soak: 200 generations in one `sdxs-rt serve` process (demo model, 64x64 px, 2 steps, two
clients at a time) leave its resident memory within 5% of what it was after a warm-up.

The figures (RSS after the warm-up, at the end, the drift, the seconds) are printed and are in
the assertion's message. Every HTTP call has a timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from tests.serve_process import ServerProcess, start_server  # noqa: E402

GENERATIONS = 200
WARM_UP = 20
CLIENTS = 2
STEPS = 2
TOLERANCE = 0.05
TIMEOUT = 30.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path, ["--preview-every", "0", "--quiet"])
    try:
        yield proc
    finally:
        proc.stop()


def generate(client: httpx.Client, url: str, seed: int) -> None:
    body = {"prompt": "a red circle", "width": 64, "height": 64, "steps": STEPS, "seed": seed}
    response = client.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    assert len(response.json()["images"]) == 1


def run_concurrently(url: str, seeds: range) -> None:
    """`seeds` over CLIENTS threads (each its own keep-alive connection); raises any failure."""
    failures: list[BaseException] = []

    def client(share: list[int]) -> None:
        try:
            with httpx.Client() as http:
                for seed in share:
                    generate(http, url, seed)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [
        threading.Thread(target=client, args=(list(seeds)[i::CLIENTS],)) for i in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * len(seeds))
    assert not any(t.is_alive() for t in threads), "a client did not finish"
    assert not failures, failures[0]


def test_two_hundred_generations_keep_memory_flat(server: ServerProcess) -> None:
    started = time.monotonic()
    run_concurrently(server.url, range(WARM_UP))
    warm = server.rss_bytes()
    run_concurrently(server.url, range(WARM_UP, GENERATIONS))
    final = server.rss_bytes()
    seconds = time.monotonic() - started
    drift = (final - warm) / warm
    figures = (
        f"soak: {GENERATIONS} generations ({CLIENTS} clients, {STEPS} steps, 64x64) in "
        f"{seconds:.1f} s; RSS after {WARM_UP}: {warm / 2**20:.1f} MiB, at the end: "
        f"{final / 2**20:.1f} MiB, drift {drift:+.2%}"
    )
    print(figures)
    assert server.alive()
    assert abs(drift) <= TOLERANCE, figures
