"""`sdxs-rt serve` against real clients: the official `openai` package, `webuiapi` (A1111's
client), and plain httpx for the jobs API and its server-sent events.

Each server is a real process on the built-in demo model (64x64 px), started once per module
(`tests.serve_process`). Every HTTP call has a timeout and every wait a deadline.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")
webuiapi = pytest.importorskip("webuiapi")
requests = pytest.importorskip("requests")

from PIL import Image  # noqa: E402

from tests.serve_process import ServerProcess, start_server, wait_for  # noqa: E402

TIMEOUT = 60.0  # seconds, for any one HTTP call
KEY = "test-key-5e1f"
USER, PASSWORD = "alice", "s3cret"
LONG_STEPS = 150  # the default --max-steps: seconds of work on this CPU


# -- servers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module (each start costs seconds): auth by bearer key and by basic
    user:pass, a queue of one waiting job, a preview at every step."""
    workdir = tmp_path_factory.mktemp("serve_clients")
    args = [
        *("--api-key", KEY, "--api-auth", f"{USER}:{PASSWORD}", "--max-queue", "1"),
        *("--preview-every", "1", "--output-dir", "out", "--quiet"),
    ]
    proc = start_server(workdir, args)
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(autouse=True)
def requests_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """webuiapi calls `requests` without a timeout: give every call one."""
    original = requests.Session.request

    def request(self: Any, method: str, url: str, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", TIMEOUT)
        return original(self, method, url, **kwargs)

    monkeypatch.setattr(requests.Session, "request", request)


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


AUTH = bearer()


def png(data: bytes) -> Image.Image:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def solid(color: tuple[int, int, int] | int, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (64, 64), color)


def job_status(url: str, job_id: str, headers: dict[str, str] = AUTH) -> dict[str, Any]:
    response = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=TIMEOUT, headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def submit_job(url: str, body: dict[str, Any], headers: dict[str, str] = AUTH) -> httpx.Response:
    return httpx.post(f"{url}/v1/jobs", json=body, timeout=TIMEOUT, headers=headers)


def long_job(url: str, headers: dict[str, str] = AUTH) -> str:
    body = {"prompt": "a long one", "width": 64, "height": 64, "num_inference_steps": LONG_STEPS}
    response = submit_job(url, body, headers)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def cancel_job(url: str, job_id: str, headers: dict[str, str] = AUTH) -> None:
    response = httpx.delete(f"{url}/v1/jobs/{job_id}", timeout=TIMEOUT, headers=headers)
    assert response.status_code == 200, response.text
    wait_for(
        f"job {job_id} to end",
        lambda: job_status(url, job_id, headers)["status"] in ("cancelled", "done", "failed"),
        30,
    )


# -- OpenAI ---------------------------------------------------------------------------------


def openai_client(url: str, key: str = KEY) -> Any:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, timeout=TIMEOUT, max_retries=0)


def test_openai_b64_json_images_and_same_seed_same_pixels(server: ServerProcess) -> None:
    client = openai_client(server.url)

    def generate() -> list[Image.Image]:
        response = client.images.generate(
            prompt="a red circle",
            size="64x64",
            n=2,
            response_format="b64_json",
            extra_body={"seed": 7, "steps": 4},
        )
        assert len(response.data) == 2
        return [png(base64.b64decode(item.b64_json)) for item in response.data]

    first, again = generate(), generate()
    for image in first + again:
        assert image.size == (64, 64)
    assert [i.tobytes() for i in first] == [i.tobytes() for i in again]
    assert first[0].tobytes() != first[1].tobytes()  # two seeds, two pictures


def test_openai_url_response_downloads_the_png(server: ServerProcess) -> None:
    client = openai_client(server.url)
    common: dict[str, Any] = {
        "prompt": "a blue square",
        "size": "64x64",
        "extra_body": {"seed": 7, "steps": 4},
    }
    by_url = client.images.generate(response_format="url", **common)
    inline = client.images.generate(response_format="b64_json", **common)
    url = by_url.data[0].url
    assert url is not None and url.startswith(f"{server.url}/v1/jobs/"), url
    download = httpx.get(url, timeout=TIMEOUT, headers=AUTH)
    assert download.status_code == 200
    assert download.headers["content-type"] == "image/png"
    image = png(download.content)
    assert image.size == (64, 64)
    assert image.tobytes() == png(base64.b64decode(inline.data[0].b64_json)).tobytes()


# -- A1111 (webuiapi) -----------------------------------------------------------------------


def webui(server: ServerProcess, **kwargs: Any) -> Any:
    kwargs.setdefault("username", USER)
    kwargs.setdefault("password", PASSWORD)
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, **kwargs)


def test_webuiapi_txt2img(server: ServerProcess) -> None:
    api = webui(server)
    result = api.txt2img(
        prompt="a green triangle", width=64, height=64, steps=4, seed=11, batch_size=2
    )
    assert len(result.images) == 2
    assert all(image.size == (64, 64) for image in result.images)
    info = result.info
    assert isinstance(info, dict), info
    assert info["all_seeds"][0] == 11 and len(info["all_seeds"]) == 2
    assert info["width"] == 64 and info["steps"] == 4
    assert len(info["infotexts"]) == 2
    for text, seed in zip(info["infotexts"], info["all_seeds"], strict=True):
        assert text.startswith("a green triangle\n")
        assert f"Seed: {seed}," in text and "Steps: 4," in text and "Size: 64x64" in text
    assert result.parameters["prompt"] == "a green triangle"
    again = api.txt2img(prompt="a green triangle", width=64, height=64, steps=4, seed=11)
    assert again.image.tobytes() == result.images[0].tobytes()


def test_webuiapi_img2img_with_and_without_mask(server: ServerProcess) -> None:
    api = webui(server)
    init = solid((200, 40, 40))
    plain = api.img2img(
        images=[init], prompt="a cat", width=64, height=64, steps=4, seed=3,
        denoising_strength=0.5,
    )  # fmt: skip
    assert len(plain.images) == 1 and plain.image.size == (64, 64)
    assert plain.image.tobytes() != init.tobytes()

    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half only
    masked = api.img2img(
        images=[init], mask_image=mask, mask_blur=0, prompt="a cat", width=64, height=64,
        steps=4, seed=3, denoising_strength=0.9,
    )  # fmt: skip
    assert len(masked.images) == 1 and masked.image.size == (64, 64)
    out = masked.image.convert("RGB")
    right = out.crop((40, 0, 64, 64))
    left = out.crop((0, 0, 24, 64))
    assert right.tobytes() == init.crop((40, 0, 64, 64)).tobytes()  # pasted back
    assert left.tobytes() != init.crop((0, 0, 24, 64)).tobytes()  # repainted


def test_webuiapi_progress_preview_and_interrupt(server: ServerProcess) -> None:
    """A long txt2img in a thread; progress shows steps and a preview; interrupt stops it.

    After an interrupt the txt2img answer is 200 with the images finished so far (none, for a
    one-image job) and info["interrupted"] true; A1111 instead returns the half-done image.
    """
    api = webui(server)
    outcome: dict[str, Any] = {}

    def generate() -> None:
        try:
            outcome["result"] = api.txt2img(
                prompt="slow", width=64, height=64, steps=LONG_STEPS, seed=5
            )
        except Exception as exc:  # reported below
            outcome["error"] = exc

    worker = threading.Thread(target=generate, daemon=True)
    started = time.monotonic()
    worker.start()
    progress = wait_for(
        "progress with a preview",
        lambda: (p := api.get_progress())["progress"] > 0 and p["current_image"] and p,
        30,
    )
    assert 0 < progress["progress"] < 1
    assert progress["state"]["sampling_steps"] == LONG_STEPS
    assert 0 < progress["state"]["sampling_step"] < LONG_STEPS
    assert png(base64.b64decode(progress["current_image"])).size == (64, 64)

    assert api.interrupt() == {}
    worker.join(TIMEOUT)
    assert not worker.is_alive(), "txt2img did not return after the interrupt"
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.images == []
    assert result.info["interrupted"] is True
    assert time.monotonic() - started < 30  # stopped early, not after all the steps
    idle = api.get_progress()
    assert idle["progress"] == 0 and idle["state"]["job"] == ""


def test_webuiapi_models_samplers_options(server: ServerProcess) -> None:
    api = webui(server)
    models = api.get_sd_models()
    assert [m["model_name"] for m in models] == ["demo-shapes"]
    assert "/" not in models[0]["filename"]
    samplers = {s["name"] for s in api.get_samplers()}
    assert {"Euler", "Euler a", "DPM++ 2M"} <= samplers
    options = api.get_options()
    assert options["sd_model_checkpoint"] == "demo-shapes"
    assert options["show_progress_every_n_steps"] == 1
    assert api.set_options({"sd_model_checkpoint": "demo-shapes"}) is None


# -- jobs API (httpx) -----------------------------------------------------------------------


def read_events(url: str, job_id: str, seconds: float = 60) -> list[tuple[str, dict[str, Any]]]:
    """The whole SSE stream of one job as (event, data) pairs."""
    events: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + seconds
    name, data = "message", ""
    with httpx.stream(
        "GET", f"{url}/v1/jobs/{job_id}/events", timeout=TIMEOUT, headers=AUTH
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            assert time.monotonic() < deadline, f"the stream ran past {seconds} s: {events}"
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data += line[5:].strip()
            elif not line and data:
                events.append((name, json.loads(data)))
                name, data = "message", ""
    return events


def test_jobs_sse_stream_to_the_end(server: ServerProcess) -> None:
    body = {
        "prompt": "a yellow star",
        "width": 64,
        "height": 64,
        "num_inference_steps": 6,
        "seed": 21,
        "previews": True,
    }
    # The stream does not replay past events: hold the queue with a long job so that this one
    # is still pending when its stream starts, then let it run.
    blocker = long_job(server.url)
    try:
        response = submit_job(server.url, body)
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["status"] == "pending" and job["seeds"] == [21]
        threading.Timer(0.5, cancel_job, (server.url, blocker)).start()
        events = read_events(server.url, job["id"])
    finally:
        cancel_job(server.url, blocker)

    names = [name for name, _ in events]
    statuses = [data["status"] for name, data in events if name == "status"]
    assert statuses == ["pending", "running", "done"], events
    assert names[-1] == "status"
    progress = [data for name, data in events if name == "progress"]
    assert [p["step"] for p in progress] == list(range(1, 7)), progress
    assert all(p["total_steps"] == 6 for p in progress)
    assert all("preview" in p for p in progress)  # --preview-every 1
    assert png(base64.b64decode(progress[-1]["preview"])).size == (64, 64)
    images = [data for name, data in events if name == "image"]
    assert len(images) == 1 and images[0]["seed"] == 21
    assert names.index("image") > names.index("progress")
    download = httpx.get(images[0]["url"], timeout=TIMEOUT, headers=AUTH)
    assert download.status_code == 200 and png(download.content).size == (64, 64)

    status = job_status(server.url, job["id"])
    assert status["status"] == "done" and status["error"] is None
    assert [image["url"] for image in status["images"]] == [images[0]["url"]]
    # a finished job's stream is its final status only
    assert read_events(server.url, job["id"]) == [("status", {"status": "done"})]


def test_jobs_cancel_pending_and_list(server: ServerProcess) -> None:
    running = long_job(server.url)
    wait_for("running", lambda: job_status(server.url, running)["status"] == "running", 30)
    response = submit_job(server.url, {"prompt": "waits", "width": 64, "height": 64})
    assert response.status_code == 202, response.text
    pending = response.json()["id"]
    assert job_status(server.url, pending)["status"] == "pending"

    listed = httpx.get(f"{server.url}/v1/jobs", timeout=TIMEOUT, headers=AUTH)
    assert listed.status_code == 200
    by_id = {job["id"]: job["status"] for job in listed.json()}
    assert by_id[running] == "running" and by_id[pending] == "pending"

    cancelled = httpx.delete(f"{server.url}/v1/jobs/{pending}", timeout=TIMEOUT, headers=AUTH)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    cancel_job(server.url, running)
    assert job_status(server.url, running)["status"] == "cancelled"
    missing = httpx.get(f"{server.url}/v1/jobs/no-such-job", timeout=TIMEOUT, headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "unknown_job"


# -- metrics, docs --------------------------------------------------------------------------


def metric_values(text: str) -> dict[str, float]:
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_after_jobs(server: ServerProcess) -> None:
    ok = httpx.post(
        f"{server.url}/sdapi/v1/txt2img",
        json={"prompt": "m", "width": 64, "height": 64, "steps": 2},
        timeout=TIMEOUT,
        headers=AUTH,
    )
    assert ok.status_code == 200
    bad = httpx.post(
        f"{server.url}/sdapi/v1/txt2img", json={"width": 65}, timeout=TIMEOUT, headers=AUTH
    )
    assert bad.status_code == 400
    response = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT, headers=AUTH)
    assert response.status_code == 200
    values = metric_values(response.text)
    assert "sdxs_queue_depth" in values
    assert values["sdxs_job_seconds_count"] > 0
    assert values["sdxs_steps_per_second"] > 0
    assert values['sdxs_errors_total{kind="bad_request"}'] >= 1


def test_docs_and_openapi(server: ServerProcess) -> None:
    docs = httpx.get(f"{server.url}/docs", timeout=TIMEOUT)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = httpx.get(f"{server.url}/openapi.json", timeout=TIMEOUT).json()
    for path in ("/sdapi/v1/txt2img", "/v1/images/generations", "/v1/jobs", "/healthz"):
        assert path in schema["paths"], path


# -- auth and 429 ---------------------------------------------------------------------------


def test_auth_clients(server: ServerProcess) -> None:
    url = server.url
    ok = openai_client(url, KEY).images.generate(
        prompt="x", size="64x64", response_format="b64_json", extra_body={"steps": 2}
    )
    assert png(base64.b64decode(ok.data[0].b64_json)).size == (64, 64)
    with pytest.raises(openai.AuthenticationError) as raised:
        openai_client(url, "wrong-key").images.generate(prompt="x", size="64x64")
    assert raised.value.status_code == 401
    assert raised.value.body["type"] == "unauthorized"  # openai unwraps "error"

    api = webui(server, username=USER, password=PASSWORD)
    result = api.txt2img(prompt="x", width=64, height=64, steps=2)
    assert result.image.size == (64, 64)
    wrong = webui(server, username=USER, password="nope")
    with pytest.raises(RuntimeError) as refused:
        wrong.txt2img(prompt="x", width=64, height=64, steps=2)
    assert refused.value.args[0] == 401

    assert httpx.get(f"{url}/healthz", timeout=TIMEOUT).status_code == 200
    assert httpx.get(f"{url}/metrics", timeout=TIMEOUT).status_code == 401
    assert httpx.get(f"{url}/metrics", timeout=TIMEOUT, headers=bearer()).status_code == 200
    basic = httpx.get(f"{url}/metrics", timeout=TIMEOUT, auth=(USER, PASSWORD))
    assert basic.status_code == 200
    unauthorized = httpx.get(f"{url}/v1/jobs", timeout=TIMEOUT)
    assert unauthorized.status_code == 401
    assert unauthorized.json()["error"]["type"] == "unauthorized"
    assert "WWW-Authenticate" in unauthorized.headers


def test_full_queue_answers_429_with_retry_after(server: ServerProcess) -> None:
    url, headers = server.url, bearer()
    running = long_job(url, headers)
    try:
        wait_for("running", lambda: job_status(url, running, headers)["status"] == "running", 30)
        waiting = long_job(url, headers)  # the one place in the queue
        try:
            response = submit_job(url, {"prompt": "one too many"}, headers)
            assert response.status_code == 429, response.text
            assert int(response.headers["Retry-After"]) >= 1
            error = response.json()["error"]
            assert error["type"] == "queue_full" and "\n" not in error["message"]
            openai_full = openai_client(url, KEY)
            with pytest.raises(openai.RateLimitError):
                openai_full.images.generate(prompt="x", size="64x64")
        finally:
            cancel_job(url, waiting, headers)
    finally:
        cancel_job(url, running, headers)
    assert server.alive()
    assert httpx.get(f"{url}/healthz", timeout=TIMEOUT).status_code == 200
    metrics = httpx.get(f"{url}/metrics", timeout=TIMEOUT, headers=headers).text
    assert metric_values(metrics)['sdxs_errors_total{kind="queue_full"}'] >= 1
