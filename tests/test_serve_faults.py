"""`sdxs-rt serve` under faults, against real server processes on the demo model (64x64 px).

The rules checked (README, "Serving"; sdxs_rt/serve/runtime.py):
- a client that leaves a waiting A1111 request cancels its job; the next request runs at once;
- DELETE /v1/jobs/{id} racing the job's end leaves it `done` (with its image, saved) or
  `cancelled` (no image), never stuck or failed;
- SIGTERM: pending jobs are cancelled and never run, the running one stops at its next step,
  waiting clients get an answer (503 shutting_down), the process exits by the signal
  (uvicorn re-raises it: -15 in Popen terms, 143 in a shell), only whole PNGs are left;
- a full output folder (RLIMIT_FSIZE) fails the job with 507 and a one-line JSON error; the
  server goes on and no partial file is left;
- the model folder changing on disk does not change what the server makes: the loaded weights
  keep serving until a restart.
Every HTTP call has a timeout and every wait a deadline.
"""

from __future__ import annotations

import base64
import io
import os
import resource
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from tests.serve_process import ServerProcess, start_server, wait_for  # noqa: E402

TIMEOUT = 30.0  # seconds, for any one HTTP call
LONG_STEPS = 1000  # the most the model takes: 25+ s of work here, only ever cancelled
DEMO_MODEL = Path(__file__).resolve().parent.parent / "sdxs_rt" / "models" / "demo-shapes"
FAST = ["--preview-every", "0", "--max-steps", str(LONG_STEPS), "--quiet"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("serve_faults")
    proc = start_server(workdir, [*FAST, "--output-dir", "out"])
    try:
        yield proc
    finally:
        proc.stop()


def txt2img(url: str, steps: int = 2, seed: int = 1, timeout: float = TIMEOUT) -> Any:
    body = {"prompt": "a red circle", "width": 64, "height": 64, "steps": steps, "seed": seed}
    return httpx.post(f"{url}/sdapi/v1/txt2img", json=body, timeout=timeout)


def submit(url: str, steps: int = 2, seed: int | None = None) -> dict[str, Any]:
    body = {"prompt": "a blue square", "width": 64, "height": 64, "num_inference_steps": steps}
    if seed is not None:
        body["seed"] = seed
    response = httpx.post(f"{url}/v1/jobs", json=body, timeout=TIMEOUT)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def jobs(url: str) -> list[dict[str, Any]]:
    listing: list[dict[str, Any]] = httpx.get(f"{url}/v1/jobs", timeout=TIMEOUT).json()
    return listing


def final_state(url: str, job_id: str) -> dict[str, Any] | None:
    state: dict[str, Any] = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=TIMEOUT).json()
    return state if state["status"] not in ("pending", "running") else None


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=TIMEOUT).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def check_whole_pngs(folder: Path) -> list[str]:
    """Every entry is a visible .png that decodes and ends with IEND; returns the names."""
    names = sorted(os.listdir(folder))
    for name in names:
        assert name.endswith(".png") and not name.startswith("."), f"stray file {name}"
        data = (folder / name).read_bytes()
        assert data.endswith(b"IEND\xaeB`\x82"), f"{name} is cut short"
        with Image.open(folder / name) as image:
            image.load()
            assert image.size == (64, 64)
    return names


# -- a client that leaves -------------------------------------------------------------------


def test_a_client_that_disconnects_cancels_its_job(server: ServerProcess) -> None:
    before = metric(server.url, "sdxs_client_disconnects_total")
    with pytest.raises(httpx.ReadTimeout):  # httpx closes the connection on the timeout
        txt2img(server.url, steps=LONG_STEPS, timeout=1.5)
    left = time.monotonic()
    long_job = wait_for(
        "the abandoned job is cancelled",
        lambda: next(
            (
                j
                for j in jobs(server.url)
                if j["total_steps"] == LONG_STEPS and j["status"] != "running"
            ),
            None,
        ),
        seconds=10,
    )
    assert long_job["status"] == "cancelled" and long_job["images"] == []
    assert long_job["step"] is None or long_job["step"] < LONG_STEPS
    assert metric(server.url, "sdxs_client_disconnects_total") == before + 1
    started = time.monotonic()
    response = txt2img(server.url, timeout=10)  # would wait a minute behind the long job
    assert response.status_code == 200 and len(response.json()["images"]) == 1
    assert time.monotonic() - started < 5, "the next request waited behind the cancelled job"
    assert time.monotonic() - left < 15
    assert server.alive()


# -- cancel racing completion ----------------------------------------------------------------


def test_cancel_racing_the_end_of_a_job_leaves_it_done_or_cancelled(
    server: ServerProcess,
) -> None:
    out = server.log_path.parent / "out"
    delays = [i * 0.008 for i in range(20)] + [0.0, 0.5]  # 0 .. 0.15 s, a job is ~0.05-0.1 s
    ids = []
    for i, delay in enumerate(delays):
        job = submit(server.url, steps=1 + i % 2, seed=100 + i)
        time.sleep(delay)
        response = httpx.delete(f"{server.url}/v1/jobs/{job['id']}", timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        ids.append(job["id"])
    burst = [submit(server.url, steps=2, seed=200 + i)["id"] for i in range(6)]  # queued
    for job_id in reversed(burst):  # the pending ones first, the running one last
        httpx.delete(f"{server.url}/v1/jobs/{job_id}", timeout=TIMEOUT)
    ids += burst

    def final() -> list[dict[str, Any]] | None:
        states = [final_state(server.url, job_id) for job_id in ids]
        return None if None in states else states

    states = wait_for("every raced job ends", final, seconds=30)
    outcomes = {s["id"]: s["status"] for s in states}
    assert set(outcomes.values()) <= {"done", "cancelled"}, outcomes
    assert outcomes[ids[21]] == "done"  # cancelled 0.5 s after: long finished
    assert "cancelled" in outcomes.values()
    saved = set(os.listdir(out))
    for state in states:
        on_disk = [name for name in saved if name.startswith(state["id"] + "-")]
        if state["status"] == "done":
            assert len(state["images"]) == 1
            image = httpx.get(state["images"][0]["url"], timeout=TIMEOUT)
            assert image.status_code == 200
            assert Image.open(io.BytesIO(image.content)).size == (64, 64)
            assert on_disk == [f"{state['id']}-0-{state['seeds'][0]}.png"]
        else:
            assert state["images"] == [] and on_disk == [], state
    check_whole_pngs(out)
    assert httpx.get(f"{server.url}/healthz", timeout=TIMEOUT).status_code == 200


# -- SIGTERM -----------------------------------------------------------------------------------


def test_sigterm_cancels_pending_jobs_stops_the_running_one_and_leaves_whole_files(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path, [*FAST, "--output-dir", "out"])
    out = tmp_path / "out"
    try:
        for seed in (1, 2):
            assert txt2img(server.url, seed=seed).status_code == 200
        answers: dict[str, Any] = {}

        def wait_on(name: str, steps: int) -> None:
            try:
                answers[name] = txt2img(server.url, steps=steps, seed=7, timeout=TIMEOUT)
            except httpx.HTTPError as exc:  # a closed connection is an answer too; a timeout not
                answers[name] = exc

        running = threading.Thread(target=wait_on, args=("running", LONG_STEPS))
        running.start()
        wait_for(
            "the long job runs",
            lambda: any(j["status"] == "running" and j["step"] for j in jobs(server.url)),
        )
        waiting = threading.Thread(target=wait_on, args=("waiting", 2))
        waiting.start()
        pending = [submit(server.url, seed=300 + i)["id"] for i in range(3)]
        wait_for(
            "four jobs wait", lambda: sum(j["status"] == "pending" for j in jobs(server.url)) == 4
        )

        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=20)
        seconds = time.monotonic() - started
        running.join(10)
        waiting.join(10)
    finally:
        server.stop(signal.SIGKILL, timeout=10)
    log = server.log()
    shown = {
        k: v.status_code if isinstance(v, httpx.Response) else repr(v) for k, v in answers.items()
    }
    print(f"SIGTERM: exit status {code} after {seconds:.2f} s; the waiting clients got {shown}")
    assert code == -signal.SIGTERM, f"exit status {code}:\n{log}"  # uvicorn re-raises SIGTERM
    assert seconds < 10, f"took {seconds:.1f} s to stop:\n{log}"
    assert not running.is_alive() and not waiting.is_alive(), "a client still waits"
    for name in ("running", "waiting"):
        answer = answers[name]
        assert not isinstance(answer, httpx.TimeoutException), f"{name}: {answer!r}"
        if isinstance(answer, httpx.Response):  # else the connection closed: an answer too
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["type"] == "shutting_down"
    names = check_whole_pngs(out)
    assert len(names) == 2, names  # the two made before; none of the cancelled ones
    assert not any(name.startswith(job_id) for name in names for job_id in pending)


# -- a full output folder ----------------------------------------------------------------------


def limit_file_size() -> None:
    """In the server process: files it writes stop at 512 bytes (below one PNG) with EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))


def test_a_full_output_folder_fails_the_job_with_507_and_the_server_goes_on(
    tmp_path: Path,
) -> None:
    server = start_server(
        tmp_path, [*FAST, "--output-dir", "out"], preexec_fn=limit_file_size, log_pipe=True
    )
    try:
        response = txt2img(server.url)
        assert response.status_code == 507, response.text
        assert "\n" not in response.text.strip()
        error = response.json()["error"]
        assert error["type"] == "storage_full" and "full" in error["message"]
        assert httpx.get(f"{server.url}/healthz", timeout=TIMEOUT).status_code == 200
        job = submit(server.url)
        state = wait_for("the queued job ends", lambda: final_state(server.url, job["id"]))
        assert state["status"] == "failed" and "not saved" in state["error"]
        assert metric(server.url, 'sdxs_errors_total{kind="storage_full"}') == 2  # once each
        assert metric(server.url, 'sdxs_errors_total{kind="unavailable"}') == 0
        assert server.alive()
        assert os.listdir(tmp_path / "out") == []  # no partial PNG, no temp file
    finally:
        server.stop()


# -- the model folder changing on disk -------------------------------------------------------


def test_a_replaced_model_folder_keeps_serving_the_loaded_weights(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    server = start_server(tmp_path, [*FAST, "--model", str(model)])
    try:
        first = txt2img(server.url, seed=1234)
        assert first.status_code == 200
        shutil.rmtree(model)
        second = txt2img(server.url, seed=1234)
        model.mkdir()
        (model / "model_index.json").write_text("{}")
        for part in ("unet", "vae", "text_encoder"):
            (model / part).mkdir()
            (model / part / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 4096)
        third = txt2img(server.url, seed=1234)
        assert second.status_code == third.status_code == 200, (second.text, third.text)
        expected = pixels(first.json()["images"][0])
        assert np.array_equal(pixels(second.json()["images"][0]), expected)
        assert np.array_equal(pixels(third.json()["images"][0]), expected)
        assert server.alive()
    finally:
        server.stop()


def test_weights_overwritten_in_place_keep_serving_the_loaded_weights(tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(DEMO_MODEL, model)
    server = start_server(tmp_path, [*FAST, "--model", str(model)])
    try:
        expected = pixels(txt2img(server.url, seed=1234).json()["images"][0])
        weights = sorted(model.glob("*/*.safetensors"))
        for path in weights:  # same size, new bytes
            with path.open("r+b") as handle:
                handle.write(b"\0" * path.stat().st_size)
        overwritten = txt2img(server.url, seed=1234)
        for path in weights:
            os.truncate(path, 0)
        try:
            truncated: Any = txt2img(server.url, seed=1234)
        except httpx.HTTPError as exc:
            truncated = exc
        alive, code = server.alive(), server.proc.returncode
    finally:
        server.stop()
    assert np.array_equal(pixels(overwritten.json()["images"][0]), expected), "pixels changed"
    assert alive, f"the server died with {code} (-7: SIGBUS)"
    assert isinstance(truncated, httpx.Response) and truncated.status_code == 200
    assert np.array_equal(pixels(truncated.json()["images"][0]), expected)
