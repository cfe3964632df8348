"""`sdxs-rt serve` against bad requests: each gets its 4xx (or, for free text such as a prompt,
a normal image) with a one-line JSON error, the server stays up, writes nothing outside its
--output-dir, and never reads a file that a request names.

One real server process for the module (auth on, a 100 kB body limit, a small queue, an
allow-list with a model that is not loaded). Each test is one group of cases; its assertion
message says how many cases it tried, and the module prints the total.
"""

from __future__ import annotations

import base64
import io
import os
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from tests.serve_process import ServerProcess, start_server  # noqa: E402

TIMEOUT = 60.0
KEY = "bad-requests-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_BODY = 100_000
MAX_QUEUE = 2
LOADED = "demo-shapes"
OTHER_MODEL = "other-model"  # in --models-dir, not loaded: 409
SENTINEL = "SENTINEL-7f3a9c-do-not-read"
TOTAL: dict[str, int] = {}

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"
OPTIONS = "/sdapi/v1/options"
OPENAI = "/v1/images/generations"
JOBS = "/v1/jobs"
POSTS = (TXT2IMG, IMG2IMG, OPTIONS, OPENAI, JOBS)


def png_b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


INIT = png_b64(Image.new("RGB", (64, 64), (120, 30, 200)))
MASK = png_b64(Image.new("L", (64, 64), 255))
T2I = {"prompt": "p", "width": 64, "height": 64, "steps": 1, "seed": 1}
I2I = {**T2I, "steps": 2, "init_images": [INIT]}  # strength 0.75 of 2 steps: 1 step
OAI = {"prompt": "p", "size": "64x64", "steps": 1, "seed": 1}
JOB = {"prompt": "p", "width": 64, "height": 64, "num_inference_steps": 1, "seed": 1}
BASES = {TXT2IMG: T2I, IMG2IMG: I2I, OPENAI: OAI, JOBS: JOB, OPTIONS: {}}


@dataclass
class Workspace:
    root: Path  # the server's cwd
    output_dir: Path
    sentinel: Path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    root = tmp_path_factory.mktemp("serve_bad")
    sentinel = root / "secret.txt"
    sentinel.write_text(SENTINEL)
    (root / "models" / OTHER_MODEL).mkdir(parents=True)
    (root / "models" / OTHER_MODEL / "model_index.json").write_text("{}")
    return Workspace(root, root / "out", sentinel)


@pytest.fixture(scope="module")
def server(workspace: Workspace) -> Iterator[ServerProcess]:
    args = [
        *("--api-key", KEY, "--max-body-bytes", str(MAX_BODY), "--max-queue", str(MAX_QUEUE)),
        *("--output-dir", "out", "--models-dir", "models", "--quiet"),
    ]
    proc = start_server(workspace.root, args)
    try:
        yield proc
    finally:
        proc.stop()
        print(f"\nbad requests: {sum(TOTAL.values())} cases tried ({TOTAL})")


def tree(root: Path, skip: Path) -> dict[str, int]:
    """Every file under `root` (but not under `skip`), with its size; server logs left out."""
    found = {}
    for folder, dirs, files in os.walk(root):
        if Path(folder) == skip:
            dirs.clear()
            continue
        for name in files:
            path = Path(folder) / name
            if not (name.startswith("server-") and name.endswith(".log")):
                found[str(path.relative_to(root))] = path.stat().st_size
    return found


def path_strings(workspace: Workspace) -> list[str]:
    secret = str(workspace.sentinel)
    return [
        "../../etc/passwd",
        "/etc/hostname",
        "C:\\Windows\\win.ini",
        "~/.ssh/id_rsa",
        "\x00",
        "..\\..\\secret.txt",
        secret,
        f"file://{secret}",
    ]


@dataclass
class Battery:
    """Sends cases, checks each answer, and collects failures (so one message lists all)."""

    server: ServerProcess
    workspace: Workspace
    group: str
    tried: int = 0
    failures: list[str] = field(default_factory=list)
    client: Any = None

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.server.url, timeout=TIMEOUT)
        self.before = tree(self.workspace.root, self.workspace.output_dir)

    def send(
        self,
        label: str,
        method: str,
        path: str,
        expect: int | set[int],
        *,
        json: Any = None,
        content: Any = None,
        headers: dict[str, str] | None = None,
        message_has: str = "",
    ) -> httpx.Response | None:
        self.tried += 1
        heads = {**AUTH, **(headers or {})}
        heads = {k: v for k, v in heads.items() if v}  # "" drops a header
        if content is not None:
            heads.setdefault("content-type", "application/json")
        try:
            response = self.client.request(method, path, json=json, content=content, headers=heads)
        except httpx.HTTPError as exc:
            self.failures.append(f"{label}: no answer ({type(exc).__name__}: {exc})")
            return None
        problem = self.problem(response, {expect} if isinstance(expect, int) else expect)
        if not problem and message_has and message_has not in response.text:
            problem = f"the message lacks {message_has!r}"
        if problem:
            self.failures.append(
                f"{label}: {problem}: {response.status_code} {response.text[:300]}"
            )
        return response

    def problem(self, response: httpx.Response, expect: set[int]) -> str:
        if SENTINEL in response.text or SENTINEL.encode() in response.content:
            return "the answer holds the contents of a file the request named"
        if response.status_code not in expect:
            return f"expected {sorted(expect)}"
        if response.status_code >= 400:
            return error_problem(response)
        body = response.json() if "json" in response.headers.get("content-type", "") else None
        if response.status_code == 200 and isinstance(body, dict) and "images" in body:
            return images_problem([base64.b64decode(i) for i in body["images"]])
        if response.status_code == 200 and isinstance(body, dict) and "data" in body:
            return images_problem([base64.b64decode(i["b64_json"]) for i in body["data"]])
        if response.status_code == 202:
            return self.job_problem(response.json()["id"])
        return ""

    def job_problem(self, job_id: str) -> str:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = self.client.get(f"{JOBS}/{job_id}", headers=AUTH).json()
            if status["status"] in ("done", "failed", "cancelled"):
                return "" if status["status"] == "done" else f"job {status}"
            time.sleep(0.05)
        return "the job did not finish within 30 s"

    def finish(self) -> None:
        """The server is up, nothing was written outside its output folder; then report."""
        TOTAL[self.group] = self.tried
        health = self.client.get("/healthz")
        if health.status_code != 200 or not self.server.alive():
            self.failures.append(f"/healthz answers {health.status_code} after the group")
        after = tree(self.workspace.root, self.workspace.output_dir)
        if after != self.before:
            self.failures.append(f"files changed outside --output-dir: {after} vs {self.before}")
        outputs = (
            list(self.workspace.output_dir.iterdir()) if self.workspace.output_dir.exists() else []
        )
        strays = [p.name for p in outputs if p.suffix != ".png" or not p.is_file()]
        if strays:
            self.failures.append(f"not our PNGs in --output-dir: {strays}")
        self.client.close()
        print(f"{self.group}: {self.tried} cases tried")
        assert not self.failures, (
            f"{self.group}: {len(self.failures)} of {self.tried} cases tried failed:\n"
            + "\n".join(self.failures)
        )
        assert self.tried > 0


def error_problem(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body["error"]["message"]
        kind = body["error"]["type"]
    except (ValueError, KeyError, TypeError):
        return "not our JSON error shape"
    if not isinstance(message, str) or not message or "\n" in message:
        return "the message is not one line"
    if body.get("detail") != message or not isinstance(kind, str):
        return "detail differs from error.message"
    if response.status_code == 429 and "Retry-After" not in response.headers:
        return "429 without Retry-After"
    return ""


def images_problem(blobs: list[bytes]) -> str:
    if not blobs:
        return "no images"
    for blob in blobs:
        image = Image.open(io.BytesIO(blob))
        if image.format != "PNG" or image.size != (64, 64):
            return f"not a 64x64 PNG: {image.format} {image.size}"
    return ""


@pytest.fixture
def battery(request: pytest.FixtureRequest, server: ServerProcess, workspace: Workspace) -> Battery:
    return Battery(server, workspace, request.node.name.removeprefix("test_"))


def with_field(base: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """`base` with `dotted` (a.b, or a[0]) set to `value`."""
    body = {**base}
    head, _, rest = dotted.partition(".")
    if head.endswith("[0]"):
        body[head[:-3]] = [with_field({}, rest, value) if rest else value]
    elif rest:
        body[head] = with_field(body.get(head) or {}, rest, value)
    else:
        body[head] = value
    return body


# -- groups ---------------------------------------------------------------------------------


INVALID_BODIES = [
    b"{not json",
    b"",
    b'{"prompt": "x",}',
    b"\xff\xfe\x00{",
    b"[" * 5000 + b"]" * 5000,
    b"null",
    b"[1, 2]",
    b'"a string"',
    b'{"prompt": "x", "width": 1e999}',
]


def test_invalid_json(battery: Battery) -> None:
    for path in POSTS:
        for raw in INVALID_BODIES:
            # options reads sd_model_checkpoint only: other keys of an object are ignored
            expect = {200} if path == OPTIONS and b"1e999" in raw else {400, 422}
            battery.send(f"{path} {raw[:20]!r}", "POST", path, expect, content=raw)
        battery.send(f"{path} not JSON at all", "POST", path, {400}, content=b"{oops",
                     message_has="not valid JSON")  # fmt: skip
    battery.finish()


WRONG_TYPES = {
    TXT2IMG: {
        "steps": "many", "width": "64px", "height": [64], "prompt": 5, "seed": "x",
        "cfg_scale": "high", "batch_size": 1.5, "enable_hr": "maybe", "styles": "s",
        "override_settings": "x", "n_iter": None, "sampler_name": 7, "alwayson_scripts": [],
    },
    IMG2IMG: {
        "init_images": "x", "mask": 5, "resize_mode": "crop", "denoising_strength": "x",
        "mask_blur": "x", "inpainting_mask_invert": "x", "include_init_images": "x",
    },
    OPENAI: {
        "prompt": None, "n": "two", "size": 64, "model": 1, "response_format": 3,
        "seed": "x", "steps": [], "guidance_scale": "x", "sampler": 0, "negative_prompt": 1,
        "user": 5, "unknown_field": 1,
    },
    JOBS: {
        "prompt": 1, "num_images": "x", "width": "x", "priority": 1000, "previews": "x",
        "image_prompts": [{"image": 5}], "outpaint": [1, 2], "strength": "x",
        "resize_mode": 1, "unknown_field": 1, "init_image": 5, "hires_scale": "x",
    },
}  # fmt: skip


def test_wrong_types(battery: Battery) -> None:
    for path, fields in WRONG_TYPES.items():
        for name, value in fields.items():
            battery.send(f"{path} {name}={value!r}", "POST", path, 422,
                         json=with_field(BASES[path], name, value))  # fmt: skip
    battery.send("openai without a prompt", "POST", OPENAI, 422, json={"size": "64x64"})
    battery.send("jobs without a prompt", "POST", JOBS, 422, json={"width": 64})
    battery.send("options: model not a string", "POST", OPTIONS, 400,
                 json={"sd_model_checkpoint": 5})  # fmt: skip
    battery.send("txt2img model not a string", "POST", TXT2IMG, 400,
                 json=with_field(T2I, "override_settings.sd_model_checkpoint", 5))  # fmt: skip
    battery.send("progress: skip_current_image", "GET",
                 "/sdapi/v1/progress?skip_current_image=maybe", 422)  # fmt: skip
    battery.send("job image index not a number", "GET", f"{JOBS}/x/images/one.png", {404, 422})
    battery.finish()


def test_sizes_not_multiples_of_64(battery: Battery) -> None:
    for path, sizes in (
        (TXT2IMG, [{"width": 65}, {"height": 100}, {"width": 63, "height": 63}]),
        (IMG2IMG, [{"width": 65}, {"height": 100}]),
        (JOBS, [{"width": 65}, {"height": 100}]),
    ):
        for size in sizes:
            battery.send(f"{path} {size}", "POST", path, 400, json={**BASES[path], **size},
                         message_has="multiple of 64")  # fmt: skip
    for size in ("65x64", "64x100", "100x100"):
        battery.send(f"openai size {size}", "POST", OPENAI, 400, json={**OAI, "size": size},
                     message_has="multiple of 64")  # fmt: skip
    for size in ("64", "64x", "x64", "64*64", "-64x64", "64x64x64", " 64x64", "1e3x64", "६४x६४"):
        battery.send(f"openai size {size!r}", "POST", OPENAI, 400, json={**OAI, "size": size})
    for size in ({"width": 0}, {"width": -64}, {"height": 0}):
        battery.send(f"txt2img {size}", "POST", TXT2IMG, 400, json={**T2I, **size})
    battery.finish()


HUGE = {
    TXT2IMG: [
        {"steps": 10**9}, {"steps": 10**30}, {"steps": 151}, {"width": 10**6},
        {"height": 4096}, {"width": 2112}, {"batch_size": 10**6}, {"n_iter": 100},
        {"batch_size": 3, "n_iter": 3}, {"n_iter": 0}, {"batch_size": -1}, {"steps": 0},
        {"steps": -5}, {"seed": 2**70}, {"cfg_scale": 1e308}, {"cfg_scale": -1},
        {"subseed_strength": 5}, {"enable_hr": True, "hr_scale": 64},
        {"enable_hr": True, "hr_scale": 4, "width": 1024},
        {"enable_hr": True, "hr_scale": 2, "hr_second_pass_steps": 10**6},
    ],
    IMG2IMG: [
        {"steps": 10**9}, {"width": 10**6}, {"batch_size": 10**6}, {"denoising_strength": 5},
        {"denoising_strength": -1}, {"resize_mode": 7}, {"mask_blur": -3, "mask": MASK},
    ],
    OPENAI: [
        {"n": 1000}, {"n": 9}, {"n": 0}, {"n": -1}, {"steps": 10**9}, {"steps": 0},
        {"size": "99999x64"}, {"size": "64x4096"}, {"size": "0x0"}, {"seed": 2**70},
        {"guidance_scale": 1e308}, {"seed": -5},
    ],
    JOBS: [
        {"num_images": 1000}, {"num_inference_steps": 10**9}, {"width": 10**6},
        {"batch_size": 10**6}, {"hires_scale": 64}, {"hires_scale": 4, "width": 1024},
        {"hires_steps": 10**6, "hires_scale": 2}, {"guidance_scale": 1e308},
        {"variation_strength": 5}, {"outpaint": [100000, 0, 0, 0], "init_image": INIT},
        {"strength": 5, "init_image": INIT}, {"mask_blur": -5, "init_image": INIT, "mask": MASK},
    ],
}  # fmt: skip


def test_huge_and_out_of_range_numbers(battery: Battery) -> None:
    for path, cases in HUGE.items():
        for case in cases:
            battery.send(f"{path} {case}", "POST", path, 400, json={**BASES[path], **case})
    battery.send("jobs priority 1000", "POST", JOBS, 422, json={**JOB, "priority": 1000})
    battery.finish()


def test_body_over_the_limit(battery: Battery) -> None:
    big = "x" * (MAX_BODY + 1)
    for path in POSTS:
        battery.send(f"{path} big prompt", "POST", path, 413, json={**BASES[path], "prompt": big},
                     message_has=str(MAX_BODY))  # fmt: skip
        chunks = iter([b'{"prompt": "', big.encode(), b'"}'])  # no Content-Length
        battery.send(f"{path} big, chunked", "POST", path, 413, content=chunks)
    huge_image = base64.b64encode(os.urandom(MAX_BODY)).decode()
    battery.send("img2img big init image", "POST", IMG2IMG, 413,
                 json={**I2I, "init_images": [huge_image]})  # fmt: skip
    battery.send("jobs big image prompt", "POST", JOBS, 413,
                 json={**JOB, "image_prompts": [{"image": huge_image}]})  # fmt: skip
    battery.send("just under the limit is fine", "POST", TXT2IMG, 200,
                 json={**T2I, "prompt": "y" * (MAX_BODY // 2)})  # fmt: skip
    battery.finish()


def test_unknown_samplers_and_models(battery: Battery) -> None:
    for name in ("Heun", "DPM++ SDE Karras", "euler-a", " ", "Euler" * 100, "\n"):
        battery.send(f"txt2img sampler {name[:20]!r}", "POST", TXT2IMG, 400,
                     json={**T2I, "sampler_name": name}, message_has="sampler")  # fmt: skip
        battery.send(f"openai sampler {name[:20]!r}", "POST", OPENAI, 400,
                     json={**OAI, "sampler": name})  # fmt: skip
        battery.send(f"jobs scheduler {name[:20]!r}", "POST", JOBS, 400,
                     json={**JOB, "scheduler": name})  # fmt: skip
    # an empty name is the default sampler (A1111: sampler_index, here: the model's own)
    battery.send("openai sampler ''", "POST", OPENAI, 200, json={**OAI, "sampler": ""})
    battery.send("jobs scheduler ''", "POST", JOBS, 202, json={**JOB, "scheduler": ""})
    battery.send("txt2img sampler ''", "POST", TXT2IMG, 200, json={**T2I, "sampler_name": ""})
    battery.send("txt2img Euler + schedule Exponential", "POST", TXT2IMG, 400,
                 json={**T2I, "sampler_name": "Euler", "scheduler": "exponential"})  # fmt: skip
    battery.send("txt2img hr_upscaler ESRGAN", "POST", TXT2IMG, 400,
                 json={**T2I, "enable_hr": True, "hr_upscaler": "R-ESRGAN 4x+"})  # fmt: skip
    for label, path, body in (
        ("txt2img", TXT2IMG, with_field(T2I, "override_settings.sd_model_checkpoint", "nope")),
        ("openai", OPENAI, {**OAI, "model": "dall-e-3"}),
        ("options", OPTIONS, {"sd_model_checkpoint": "nope"}),
    ):
        battery.send(f"{label} unknown model", "POST", path, 400, json=body)
    for label, path, body in (
        ("txt2img", TXT2IMG, with_field(T2I, "override_settings.sd_model_checkpoint", OTHER_MODEL)),
        ("img2img", IMG2IMG, with_field(I2I, "override_settings.sd_model_checkpoint", OTHER_MODEL)),
        ("openai", OPENAI, {**OAI, "model": OTHER_MODEL}),
        ("options", OPTIONS, {"sd_model_checkpoint": f"{OTHER_MODEL} [abc]"}),
    ):  # fmt: skip
        battery.send(f"{label} listed but not loaded", "POST", path, 409, json=body,
                     message_has="--model")  # fmt: skip
    for label, path, body in (
        ("txt2img", TXT2IMG, with_field(T2I, "override_settings.sd_model_checkpoint", LOADED)),
        ("openai", OPENAI, {**OAI, "model": LOADED}),
        ("options", OPTIONS, {"sd_model_checkpoint": f"{LOADED} [0123456789]"}),
    ):
        battery.send(f"{label} the loaded model is fine", "POST", path, 200, json=body)
    battery.finish()


def gif_b64() -> str:
    return png_b64(Image.new("P", (8, 8)), fmt="GIF")


def bomb_b64() -> str:
    """A small PNG of a huge picture (10000 x 10000, one bit): over the pixel limit."""
    return png_b64(Image.new("1", (10000, 10000)))


def test_malformed_images(battery: Battery) -> None:
    truncated = INIT[: len(INIT) // 2 // 4 * 4]
    bad = {
        "not base64": ("!!!!", "base64"),
        "odd length": ("AAA", "base64"),
        "base64 of text": (base64.b64encode(b"hello, world").decode(), "readable"),
        "data URL of junk": ("data:image/png;base64,@@@@", "base64"),
        "data URL without comma": ("data:image/png;base64", "base64"),
        "truncated PNG": (truncated, "readable"),
        "GIF": (gif_b64(), "GIF"),
        "bomb": (bomb_b64(), "limit"),
        "url": ("https://127.0.0.1:1/cat.png", "base64"),
        "whitespace": ("   ", "base64"),
    }
    for label, (text, why) in bad.items():
        for path, name in (
            (IMG2IMG, "init_images[0]"),
            (IMG2IMG, "mask"),
            (JOBS, "init_image"),
            (JOBS, "mask"),
            (JOBS, "image_prompts[0].image"),
        ):
            body = with_field(BASES[path], name, text)
            if name == "mask" and path == JOBS:
                body["init_image"] = INIT
            battery.send(f"{path} {name} {label}", "POST", path, 400, json=body,
                         message_has=why)  # fmt: skip
    battery.send("img2img without init_images", "POST", IMG2IMG, 400, json={**T2I})
    battery.send("img2img init_images []", "POST", IMG2IMG, 400, json={**I2I, "init_images": []})
    battery.send("data URL of a good PNG works", "POST", IMG2IMG, 200,
                 json={**I2I, "init_images": [f"data:image/png;base64,{INIT}"]})  # fmt: skip
    battery.finish()


# Each endpoint's string fields: the answer to a path-like value (200/202: free text, kept as
# text; 400/422: refused). Fields under "override_settings." or "[0]" are nested.
STRING_FIELDS: dict[str, dict[str, int]] = {
    TXT2IMG: {
        "prompt": 200, "negative_prompt": 200, "sampler_name": 400, "sampler_index": 400,
        "scheduler": 400, "override_settings.sd_model_checkpoint": 400, "styles[0]": 400,
        "script_name": 400, "refiner_checkpoint": 400, "hr_checkpoint_name": 400,
        "hr_sampler_name": 400, "hr_prompt": 400, "hr_negative_prompt": 400,
        "hr_scheduler": 200, "script_args[0]": 200,  # not A1111 fields we read: ignored
        "override_settings.sd_vae": 200,  # only sd_model_checkpoint is read
    },
    IMG2IMG: {
        "prompt": 200, "negative_prompt": 200, "sampler_name": 400, "scheduler": 400,
        "override_settings.sd_model_checkpoint": 400, "init_images[0]": 400, "mask": 400,
        "styles[0]": 400, "script_name": 400,
    },
    OPENAI: {
        "prompt": 200, "negative_prompt": 200, "model": 400, "size": 400,
        "response_format": 422, "sampler": 400, "quality": 200, "style": 200, "user": 200,
    },
    JOBS: {
        "prompt": 202, "negative_prompt": 202, "scheduler": 400, "init_image": 400,
        "mask": 400, "image_prompts[0].image": 400, "resize_mode": 422,
        "hires_upscaler": 422,
    },
    OPTIONS: {"sd_model_checkpoint": 400},
}  # fmt: skip


def test_path_like_strings_in_every_string_field(battery: Battery, workspace: Workspace) -> None:
    for path, fields in STRING_FIELDS.items():
        for name, expect in fields.items():
            for value in path_strings(workspace):
                body = with_field(BASES[path], name, value)
                if path == JOBS and name == "mask":
                    body["init_image"] = INIT
                if name == "sampler_index":
                    body.pop("sampler_name", None)
                why = "base64" if name in ("init_images[0]", "mask", "init_image") else ""
                why = why if value != "\x00" else ""
                battery.send(f"{path} {name}={value!r}", "POST", path, expect, json=body,
                             message_has=why)  # fmt: skip
        # A1111's hires upscaler is only read with enable_hr.
    for value in path_strings(workspace):
        battery.send(f"txt2img hr_upscaler={value!r}", "POST", TXT2IMG, 400,
                     json={**T2I, "enable_hr": True, "hr_upscaler": value})  # fmt: skip
        quoted = urllib.parse.quote(value, safe="")
        for method, url in (
            ("GET", f"{JOBS}/{quoted}"),
            ("DELETE", f"{JOBS}/{quoted}"),
            ("GET", f"{JOBS}/{quoted}/events"),
            ("GET", f"{JOBS}/{quoted}/images/0.png"),
        ):
            battery.send(f"{method} {url}", method, url, 404)
    battery.finish()


def test_missing_or_wrong_auth(battery: Battery) -> None:
    no_auth = {"Authorization": ""}
    heads = {
        "none": no_auth,
        "wrong bearer": {"Authorization": "Bearer nope"},
        "empty bearer": {"Authorization": "Bearer"},
        "key without scheme": {"Authorization": KEY},
        "basic junk": {"Authorization": "Basic !!!"},
        "basic with the key": {"Authorization": "Basic " + base64.b64encode(KEY.encode()).decode()},
        "token scheme": {"Authorization": f"Token {KEY}"},
    }  # fmt: skip
    for label, headers in heads.items():
        for path in POSTS:
            battery.send(f"{path} {label}", "POST", path, 401, json=BASES[path], headers=headers)
        for url in ("/metrics", "/sdapi/v1/progress", "/sdapi/v1/sd-models", JOBS, f"{JOBS}/x"):
            battery.send(f"GET {url} {label}", "GET", url, 401, headers=headers)
    for path in POSTS:  # credentials are checked before the body is read
        battery.send(f"{path} invalid JSON without auth", "POST", path, 401,
                     content=b"{oops", headers=no_auth)  # fmt: skip
        battery.send(f"{path} wrong types without auth", "POST", path, 401,
                     json={"prompt": 5, "steps": "x"}, headers=no_auth)  # fmt: skip
    battery.send("interrupt without auth", "POST", "/sdapi/v1/interrupt", 401, headers=no_auth)
    battery.send("DELETE a job without auth", "DELETE", f"{JOBS}/x", 401, headers=no_auth)
    battery.send("healthz is open", "GET", "/healthz", 200, headers=no_auth)
    battery.send("bearer in lower case works", "GET", "/metrics", 200,
                 headers={"Authorization": f"bearer {KEY}"})  # fmt: skip
    battery.finish()


def test_unknown_routes_and_methods(battery: Battery) -> None:
    for method, url, expect in (
        ("GET", "/sdapi/v1/nope", 404),
        ("GET", "/../../etc/passwd", 404),
        ("GET", "/%2e%2e/%2e%2e/etc/passwd", 404),
        ("GET", "/static/../../etc/passwd", 404),
        ("GET", "/sdapi/v1/txt2img", 405),
        ("PUT", JOBS, 405),
        ("GET", f"{JOBS}/no-such-job", 404),
        ("DELETE", f"{JOBS}/no-such-job", 404),
        ("GET", f"{JOBS}/no-such-job/images/0.png", 404),
    ):
        battery.send(f"{method} {url}", method, url, expect)
    battery.finish()


def test_full_queue(battery: Battery) -> None:
    """One job running and MAX_QUEUE waiting: every generating endpoint answers 429."""
    long = {**JOB, "num_inference_steps": 150}
    held = []
    try:
        for _ in range(MAX_QUEUE + 1):
            response = battery.client.post(JOBS, json=long, headers=AUTH)
            assert response.status_code == 202, response.text
            held.append(response.json()["id"])
            if len(held) == 1:  # running before the others queue behind it
                deadline = time.monotonic() + 30
                while (
                    battery.client.get(f"{JOBS}/{held[0]}", headers=AUTH).json()["status"]
                    == "pending"
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.05)
        for path in (TXT2IMG, IMG2IMG, OPENAI, JOBS):
            battery.send(f"{path} queue full", "POST", path, 429, json=BASES[path])
    finally:
        for job_id in held:
            battery.client.delete(f"{JOBS}/{job_id}", headers=AUTH)
    battery.send("after the queue drains", "POST", TXT2IMG, 200, json=T2I)
    battery.finish()
