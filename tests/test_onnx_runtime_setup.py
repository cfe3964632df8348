"""What happens around ONNX Runtime session creation: the CUDA/cuDNN preload and a clean stdout.

The preload tests swap `sessions.ort` for a stand-in module (the real onnxruntime's attributes,
with its own `preload_dlls` and, for GPU plans, a session factory a CPU machine can satisfy).
The stdout test runs `sdxs-rt generate --json` in a subprocess whose session creation prints
on Python's stdout, on file descriptor 1 and through C's stdio, as ORT and the native libraries
it loads do on GPU machines.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
import pytest

from sdxs_rt.backends.onnx import sessions
from sdxs_rt.backends.onnx.providers import CPU, CUDA, DIRECTML, TENSORRT, plan_providers
from sdxs_rt.errors import DeviceError
from sdxs_rt.graphs import GraphEntry, read_manifest
from tests.test_onnx_backend import FakeSession, write_handmade_export

ROOT = Path(__file__).resolve().parents[1]
GPU_BUILD = [TENSORRT, CUDA, DIRECTML, CPU]


def broken_preload() -> None:
    raise OSError("libcudnn.so.9: cannot open shared object file")


def stand_in_ort(
    preload: Callable[[], None] | None, make_session: Callable[..., Any] | None = None
) -> types.ModuleType:
    """The real onnxruntime's attributes, with `preload_dlls` (absent when None) and, when
    given, an `InferenceSession` that a machine without a GPU can satisfy."""
    module = types.ModuleType("onnxruntime")
    module.__dict__.update({k: v for k, v in vars(ort).items() if not k.startswith("__")})
    module.__dict__.pop("preload_dlls", None)
    if preload is not None:
        module.preload_dlls = preload  # type: ignore[attr-defined]
    if make_session is not None:
        module.InferenceSession = make_session  # type: ignore[attr-defined]
    return module


def gpu_session(providers: list[str]) -> Callable[..., FakeSession]:
    """A session that got the planned GPU provider (what a working GPU machine returns)."""
    return lambda *args, **kwargs: FakeSession(providers)


@pytest.fixture(scope="module")
def unet_graph(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GraphEntry]:
    folder = write_handmade_export(tmp_path_factory.mktemp("preload") / "export")
    return folder, read_manifest(folder).graphs["unet"]


def open_with(monkeypatch, runtime: types.ModuleType, device: str, graph) -> Any:
    monkeypatch.setattr(sessions, "ort", runtime)
    folder, entry = graph
    return sessions.open_session(folder, entry, plan_providers(device, GPU_BUILD))


@pytest.mark.parametrize(("device", "primary"), [("cuda:0", CUDA), ("tensorrt", TENSORRT)])
def test_gpu_plans_fail_in_one_sentence_when_the_cuda_libraries_do_not_load(
    monkeypatch, unet_graph, device: str, primary: str
) -> None:
    runtime = stand_in_ort(broken_preload, gpu_session([primary, CUDA, CPU]))
    with pytest.raises(DeviceError) as caught:
        open_with(monkeypatch, runtime, device, unet_graph)
    message = str(caught.value)
    assert "could not load the CUDA and cuDNN libraries" in message and primary in message
    assert "libcudnn.so.9" in message and "sdxs-rt[gpu]" in message and "--device cpu" in message
    assert caught.value.exit_code == 4 and "\n" not in message


def test_gpu_plans_open_once_the_libraries_are_preloaded(monkeypatch, unet_graph) -> None:
    runtime = stand_in_ort(lambda: None, gpu_session([CUDA, CPU]))
    session = open_with(monkeypatch, runtime, "cuda", unet_graph)
    assert session.get_providers()[0] == CUDA


def test_the_preload_runs_once_per_process(monkeypatch, unet_graph) -> None:
    """A preload that only works the first time: a second GPU session still opens."""
    calls = iter([None])

    def works_once() -> None:
        if next(calls, "again") == "again":
            raise RuntimeError("preloaded twice")

    runtime = stand_in_ort(works_once, gpu_session([CUDA, CPU]))
    for _ in range(2):
        assert open_with(monkeypatch, runtime, "cuda", unet_graph).get_providers()[0] == CUDA


@pytest.mark.parametrize("device", ["cpu", "dml"])
def test_cpu_and_directml_plans_never_preload(monkeypatch, unet_graph, device: str) -> None:
    make = None if device == "cpu" else gpu_session([DIRECTML, CPU])  # cpu: the real session
    runtime = stand_in_ort(broken_preload, make)
    session = open_with(monkeypatch, runtime, device, unet_graph)
    assert session.get_providers()[0] == plan_providers(device, GPU_BUILD).primary


def test_an_onnxruntime_without_preload_dlls_still_opens_gpu_sessions(
    monkeypatch, unet_graph
) -> None:
    """onnxruntime-gpu before 1.21 has no preload_dlls: the libraries must be found as before."""
    runtime = stand_in_ort(None, gpu_session([CUDA, CPU]))
    assert open_with(monkeypatch, runtime, "cuda", unet_graph).get_providers()[0] == CUDA


# --- stdout stays pure JSON ---------------------------------------------------------------------

RUN_WITH_NOISY_SESSIONS = """
import ctypes, os, sys
import onnxruntime

real_session = onnxruntime.InferenceSession


class NoisySession(real_session):
    def __init__(self, *args, **kwargs):
        print("EP Error: stand-in for ORT's fallback message")  # Python's stdout
        os.write(1, b"stand-in for a native library writing to fd 1\\n")
        if sys.platform != "win32":
            ctypes.CDLL(None).printf(b"stand-in for C stdio output\\n")  # block-buffered
        super().__init__(*args, **kwargs)


onnxruntime.InferenceSession = NoisySession
from sdxs_rt.commands.cli import main

sys.exit(main(sys.argv[1:]))
"""
NOISE = ("EP Error: stand-in", "stand-in for a native library", "stand-in for C stdio")


def test_json_stdout_holds_only_json_while_sessions_print(
    exported_tiny_fp32: Path, tmp_path: Path
) -> None:
    argv = [
        "generate", "a red circle", "--backend", "onnx", "--model", str(exported_tiny_fp32),
        "--size", "64x64", "--steps", "2", "--count", "2", "--seed", "3",
        "-o", str(tmp_path / "{index}.png"), "--json",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITH_NOISY_SESSIONS, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]  # every line is JSON
    assert [row["seed"] for row in rows] == [3, 4]
    expected_noise = NOISE if sys.platform != "win32" else NOISE[:2]
    # nothing was lost: it went to stderr, once per session opened at load (text encoder,
    # U-Net, VAE decoder and VAE encoder; the image encoder's opens on the first image prompt)
    for text in expected_noise:
        assert done.stderr.count(text) == 4, (text, done.stderr)
