"""The backend table: importable without numpy or torch, every plugin there, capabilities that
drive the CLI's refusals instead of backend names."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from sdxs_rt.backend_table import (
    ALL_PRECISIONS,
    BACKEND_NAMES,
    BACKENDS,
    DEFAULT_BACKEND,
    backend,
    find_backend,
    import_backend,
    names_with,
)
from sdxs_rt.commands.cli import build_parser, main
from sdxs_rt.errors import EXIT_USAGE, DeviceError, UsageError

ROOT = Path(__file__).resolve().parents[1]


def test_the_table_imports_without_numpy_or_torch() -> None:
    code = (
        "import sys\n"
        "from sdxs_rt.backend_table import BACKENDS, backend\n"
        "assert backend('tensorrt').fixed_sizes and len(BACKENDS) == 3\n"
        "heavy = {'torch', 'onnxruntime', 'tensorrt', 'diffusers', 'transformers', 'numpy'}\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "assert not heavy & loaded, sorted(heavy & loaded)\n"
        "assert not [m for m in sys.modules if m.startswith('sdxs_rt.backends')]\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("entry", BACKENDS, ids=BACKEND_NAMES)
def test_every_backend_names_a_plugin_that_exists(entry) -> None:
    assert importlib.util.find_spec(entry.module) is not None, entry.module
    assert entry.default_precision is None or entry.default_precision in entry.precisions
    assert entry.extra.startswith("sdxs-rt[")
    assert set(entry.precisions) <= set(ALL_PRECISIONS)


def test_fixed_size_backends_offer_the_size_checks() -> None:
    for name in names_with("fixed_sizes"):
        plugin = import_backend(name)
        for function in ("check_size", "check_size_for_model", "engine_sizes"):
            assert callable(getattr(plugin, function)), (name, function)


def test_an_unknown_backend_is_one_sentence_listing_the_choices() -> None:
    with pytest.raises(UsageError) as raised:
        backend("jax")
    assert str(raised.value) == "unknown backend 'jax'; choose one of: torch, onnx, tensorrt"
    assert find_backend("jax") is None and find_backend(None) is None
    assert backend(DEFAULT_BACKEND).name == "torch"


def test_a_missing_plugin_is_a_device_error(monkeypatch) -> None:
    from dataclasses import replace

    from sdxs_rt import backend_table

    gone = tuple(
        replace(b, module="sdxs_rt.backends.not_there") if b.name == "onnx" else b
        for b in backend_table.BACKENDS
    )
    monkeypatch.setattr(backend_table, "BACKENDS", gone)
    with pytest.raises(DeviceError, match="the onnx backend is not part of this sdxs-rt version"):
        import_backend("onnx")


def test_the_cli_offers_the_table() -> None:
    parser = build_parser()
    for name in BACKEND_NAMES:
        assert parser.parse_args(["generate", "x", "--backend", name]).backend == name
    for precision in ALL_PRECISIONS:
        assert parser.parse_args(["generate", "x", "--precision", precision]).precision
    assert parser.parse_args(["generate", "x"]).backend == DEFAULT_BACKEND


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--cuda-graphs"], "--offload-text-encoder apply to --backend torch only"),
        (["--compile", "default"], "apply to --backend torch only"),
        (["--low-vram"], "--low-vram applies to --backend torch only"),
        (["--lora", "x.safetensors"], "--lora applies to --backend torch only; for onnx or"),
    ],
)
def test_the_cli_refuses_torch_only_options_on_onnx(
    flags: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "x", "--backend", "onnx", "--model", str(tmp_path), *flags]
    code = main([*argv, "--steps", "1", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and words in err, err
    assert not (tmp_path / "x.png").exists()


def test_low_vram_on_tensorrt_points_at_the_engine_profile() -> None:
    from sdxs_rt.commands.generate_run import backend_options

    args = build_parser().parse_args(["generate", "x", "--backend", "tensorrt", "--low-vram"])
    with pytest.raises(UsageError) as raised:
        backend_options(args)
    message = str(raised.value)
    assert message.startswith("--low-vram applies to --backend torch only; TensorRT engines")
    assert "'sdxs-rt engine build --max-size/--max-batch'" in message
