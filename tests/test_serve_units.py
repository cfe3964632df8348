"""The server's plain parts, in process: auth parsing, limits, the model allow-list, the error
table, image decoding and the serve command's settings (the HTTP behaviour is tested against a
real server process in tests/test_serve_*.py)."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from sdxs_rt.commands.cli import build_parser
from sdxs_rt.commands.serve import is_loopback, model_from_allow_list, server_config
from sdxs_rt.errors import DeviceError, ModelNotFoundError, OutOfMemoryError, UsageError
from sdxs_rt.jobs import QueueClosed, QueueFull, UnknownJob
from sdxs_rt.params import GenerationParams
from sdxs_rt.serve.config import Auth, Limits
from sdxs_rt.serve.http_errors import (
    ModelNotServed,
    StorageFull,
    error_body,
    kind_of,
    kind_of_class,
)
from sdxs_rt.serve.image_codec import decode_image
from sdxs_rt.serve.models import check_model_name, listed_models


def test_api_auth_takes_user_pass_pairs_separated_by_commas() -> None:
    auth = Auth.parse(["k1"], "alice:secret, bob:pa:ss")
    assert auth.api_keys == ("k1",)
    assert auth.basic == (("alice", "secret"), ("bob", "pa:ss"))  # a password may hold ':'
    assert auth.enabled and not Auth.parse([], None).enabled


@pytest.mark.parametrize("bad", ["alice", "alice:", ":secret"])
def test_a_malformed_api_auth_is_refused(bad: str) -> None:
    with pytest.raises(UsageError, match="user:pass"):
        Auth.parse([], bad)


def test_an_empty_api_key_is_refused() -> None:
    with pytest.raises(UsageError, match="must not be empty"):
        Auth.parse([""], None)


def test_limits_allow_up_to_the_limit_and_refuse_past_it() -> None:
    limits = Limits(max_side=512, max_steps=50, max_images=4)
    limits.check(GenerationParams("a", width=512, height=512, num_inference_steps=50, num_images=4))
    for params, words in [
        (GenerationParams("a", width=576, height=64), "width 576"),
        (GenerationParams("a", width=64, height=576), "height 576"),
        (GenerationParams("a", num_inference_steps=51), "steps 51"),
        (GenerationParams("a", num_images=5), "5 images"),
        (GenerationParams("a", width=320, height=320, hires_scale=2.0), "x hires 2.0"),
        (GenerationParams("a", hires_scale=1.5, hires_steps=51), "hires steps 51"),
    ]:
        with pytest.raises(UsageError, match=words):
            limits.check(params)


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(UsageError, match="max_steps"):
        Limits(max_steps=0)


def make_model(folder, name: str) -> None:  # type: ignore[no-untyped-def]
    (folder / name).mkdir()
    (folder / name / "model_index.json").write_text("{}")


def test_models_are_named_never_pathed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    make_model(tmp_path, "other")
    (tmp_path / "not-a-model").mkdir()
    assert listed_models(tmp_path) == ["other"]
    check_model_name(None, "demo", tmp_path)
    check_model_name("demo", "demo", tmp_path)
    check_model_name("demo [4dc67a06a8]", "demo", tmp_path)  # an A1111 title
    with pytest.raises(ModelNotServed, match="restart it with --model"):
        check_model_name("other", "demo", tmp_path)
    with pytest.raises(UsageError, match="unknown model"):
        check_model_name("not-a-model", "demo", tmp_path)
    for path in ["../demo", "/etc/passwd", "C:\\x", "a/b", "..", "x\x00"]:
        with pytest.raises(UsageError, match="looks like a path"):
            check_model_name(path, "demo", tmp_path)


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (QueueFull("full"), 429, "queue_full"),
        (QueueClosed("closed"), 503, "shutting_down"),
        (UnknownJob("no"), 404, "unknown_job"),
        (StorageFull("full"), 507, "storage_full"),
        (ModelNotServed("no"), 409, "model_not_loaded"),
        (UsageError("bad"), 400, "bad_request"),
        (ModelNotFoundError("gone"), 404, "not_found"),
        (OutOfMemoryError("oom"), 503, "out_of_memory"),
        (RuntimeError("bug"), 500, "unexpected"),
    ],
)
def test_each_error_has_its_status(error: BaseException, status: int, kind: str) -> None:
    assert (kind_of(error).status, kind_of(error).kind) == (status, kind)


def test_a_failed_jobs_kind_comes_from_its_class_before_its_exit_code() -> None:
    # A full output folder fails a job with the exit code of any unavailable device (4).
    assert kind_of_class(StorageFull, 4).status == 507
    assert kind_of_class(DeviceError, 4).status == 503
    assert kind_of_class(RuntimeError, 1).kind == "unexpected"


def test_error_bodies_are_one_line() -> None:
    body = error_body(kind_of(UsageError("x")), "first line\nsecond   line", 2)
    assert body["error"] == {"message": "first line second line", "type": "bad_request", "code": 2}
    assert body["detail"] == "first line second line"


def png_b64(size: tuple[int, int] = (8, 8), fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def test_images_decode_from_base64_and_data_urls() -> None:
    assert decode_image(png_b64(), "init", 10_000).size == (8, 8)
    assert decode_image("data:image/png;base64," + png_b64(), "init", 10_000).size == (8, 8)
    assert decode_image(png_b64(fmt="JPEG"), "init", 10_000).size == (8, 8)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("/etc/hostname", "not valid base64"),
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"plain text, not an image").decode(), "not a readable"),
        (png_b64(fmt="GIF"), "GIF image"),
        (png_b64((200, 200)), "more than this server's limit"),
        ("", "must be a base64"),
    ],
)
def test_bad_images_are_refused_in_one_sentence(text: str, words: str) -> None:
    with pytest.raises(UsageError, match=words) as caught:
        decode_image(text, "init_images[0]", 10_000)
    assert "init_images[0]" in str(caught.value) or "must be" in str(caught.value)


def serve_args(*argv: str):  # type: ignore[no-untyped-def]
    return build_parser().parse_args(["serve", *argv])


def test_serve_flags_become_one_config(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SDXS_RT_API_KEY", "from-env")
    config = server_config(
        serve_args("--api-key", "k", "--max-queue", "3", "--output-dir", str(tmp_path / "o"))
    )
    assert config.auth.api_keys == ("k", "from-env")
    assert config.limits.max_pending == 3
    assert config.output_dir == (tmp_path / "o").resolve()
    with pytest.raises(UsageError, match="--port"):
        server_config(serve_args("--port", "70000"))
    with pytest.raises(UsageError, match="max_side"):
        server_config(serve_args("--max-size", "0"))


def test_loopback_hosts_and_the_allow_list_model(tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    make_model(tmp_path, "mine")
    assert model_from_allow_list("mine", tmp_path) == str(tmp_path / "mine")
    assert model_from_allow_list("AiArtLab/sdxs", tmp_path) == "AiArtLab/sdxs"
    assert model_from_allow_list("mine", None) == "mine"


def test_serve_without_its_extra_says_which_package_is_missing(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib.util

    from sdxs_rt.commands import serve
    from sdxs_rt.commands.cli import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "uvicorn" else real_find_spec(name, *a),
    )
    with pytest.raises(DeviceError, match=r"'uvicorn'.*sdxs-rt\[serve\]"):
        serve.check_serve_installed()
    assert main(["serve", "--port", "0"]) == 4  # before any model loads
