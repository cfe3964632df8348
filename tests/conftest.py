"""Shared fixtures: tiny SDXS-format models built once per test session (about a second each).

Treat the built folders as read-only; a test that damages a model should build its own copy
(`build_tiny_model(tmp_path / "m")`) or copy one with `shutil.copytree`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.source_packages import alias_source_packages

# `export/`, `desktop/` install as `sdxs_rt_export`, `sdxs_rt_desktop`: tests use the working tree.
alias_source_packages()

# Tests never reach the hub, and the remote-code module transformers copies for
# `trust_remote_code` goes to a throwaway folder, not the user's cache. Set before any test
# imports transformers, which reads these once.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("SDXS_RT_CACHE", tempfile.mkdtemp(prefix="sdxs-rt-cache-"))
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="sdxs-rt-hf-modules-")


def _build(tmp_path_factory: pytest.TempPathFactory, name: str, **options: object) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from sdxs_rt.dev.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp(name) / "model", **options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Default layout: `unet/`, fp32 weights, scaling+shift VAE, native text encoder (seed 0)."""
    return _build(tmp_path_factory, "tiny_model")


@pytest.fixture(scope="session")
def tiny_model_remote(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As `tiny_model`, plus the text encoder's remote code (`auto_map` + modeling file)."""
    return _build(tmp_path_factory, "tiny_model_remote", remote_code=True)


@pytest.fixture(scope="session")
def tiny_model_sdxs_fp16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """U-Net in `sdxs/` and only `*.fp16.safetensors` weights (the card's `variant="fp16"`)."""
    return _build(tmp_path_factory, "tiny_model_sdxs_fp16", unet_folder="sdxs", variant="fp16")


@pytest.fixture(scope="session")
def tiny_model_mean_std(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """VAE with per-channel `latents_mean`/`latents_std` (later revisions) instead of a shift."""
    return _build(tmp_path_factory, "tiny_model_mean_std", latent_norm="mean_std")


def _export(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, precision: str) -> Path:
    onnx_export = pytest.importorskip("sdxs_rt_export.onnx_export")
    out = tmp_path_factory.mktemp(f"exported_{precision}") / "tiny-onnx"
    onnx_export.export_onnx(str(tiny_model), out, precision=precision)
    return out


@pytest.fixture(scope="session")
def exported_tiny_fp32(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_model` exported to ONNX (fp32) by `sdxs-rt export onnx`; read-only."""
    return _export(tiny_model, tmp_path_factory, "fp32")


@pytest.fixture(scope="session")
def exported_tiny_fp16(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`tiny_model` exported to ONNX in fp16; read-only."""
    return _export(tiny_model, tmp_path_factory, "fp16")


# --- hardware markers selected on purpose fail instead of skipping ------------------------------
# `pytest -m gpu` (or `-m tensorrt`) on a machine without the hardware must not pass by skipping
# every test: when the -m expression needs the marker to select a test, that test's skip
# (pytest.skip, importorskip, skipif) is reported as a failure, with the skip's reason.
HARDWARE_MARKERS = ("gpu", "tensorrt")


def _selects(markexpr: str, marks: set[str]) -> bool:
    from _pytest.mark.expression import Expression

    return Expression.compile(markexpr).evaluate(lambda name, **_kwargs: name in marks)


def _marker_selected_on_purpose(item: pytest.Item) -> str | None:
    """The hardware marker without which `-m` would not have selected `item`, if any."""
    markexpr = item.config.getoption("markexpr") or ""
    marks = {mark.name for mark in item.iter_markers()}
    for marker in HARDWARE_MARKERS:
        if markexpr and marker in marks and not _selects(markexpr, marks - {marker}):
            return marker
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    marker = _marker_selected_on_purpose(item) if report.skipped else None
    if marker is not None and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = (
            f"-m selected the {marker!r} tests on purpose, but this one skipped: {reason}"
        )
    return report
