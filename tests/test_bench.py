"""`sdxs-rt bench` on the tiny preset, end to end (a smoke check: no speed assertion), and the
presets' sizes (built on the meta device)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdxs_rt.bench.command import add_bench_arguments, run_bench
from sdxs_rt.bench.presets import PRESETS, count_parameters
from sdxs_rt.bench.runner import psnr

ROW_FIELDS = (
    "text_encode",
    "step_median",
    "decode",
    "total",
    "peak_rss_mb",
    "cuda_max_allocated_mb",
    "speedup_step_median",
    "speedup_total",
    "psnr_db",
)


def test_full_preset_counts_the_cards_two_point_two_six_billion_parameters() -> None:
    assert count_parameters(PRESETS["full"].unet) == pytest.approx(2.26e9, rel=0.03)


def test_cpu_small_halves_the_widths_of_the_card_layout() -> None:
    small, full = PRESETS["cpu-small"].unet, PRESETS["full"].unet
    assert [c * 2 for c in small["block_out_channels"]] == full["block_out_channels"]
    assert small["transformer_layers_per_block"] == full["transformer_layers_per_block"]
    assert count_parameters(small) < count_parameters(full) / 3


def test_psnr_of_identical_images_is_capped() -> None:
    import numpy as np

    image = np.zeros((4, 4, 3), np.uint8)
    assert psnr(image, image) == 100.0
    assert psnr(image + 1, image) == pytest.approx(48.13, abs=0.01)


def test_tiny_bench_runs_every_path_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(
        ["--preset", "tiny", "--json-out", str(out), "--cache-dir", str(tmp_path / "cache")]
    )
    assert run_bench(args) == 0
    result = json.loads(out.read_text())
    rows = {row["path"]: row for row in result["rows"]}
    assert {"reference", "torch", "onnx"} <= set(rows)
    for row in rows.values():
        assert row["status"] == "ok", row
        assert all(field in row for field in ROW_FIELDS), row
        assert row["peak_rss_mb"] > 0
    assert rows["torch"]["psnr_db"] >= 35.0
    assert result["environment"]["commit"]
    table = capsys.readouterr().out
    assert "reference" in table and "PSNR dB" in table


def test_the_cli_path_choices_match_the_runner() -> None:
    from sdxs_rt.bench.command import PATH_NAMES
    from sdxs_rt.bench.runner import ALL_PATHS

    assert PATH_NAMES == ALL_PATHS


def test_the_report_date_needs_no_datetime_utc(monkeypatch: pytest.MonkeyPatch) -> None:
    """`datetime.UTC` is Python 3.11+; the package declares 3.10, whose datetime lacks it."""
    import datetime

    from sdxs_rt.bench.report import environment

    monkeypatch.delattr(datetime, "UTC")
    assert environment("cpu")["date"].endswith(" UTC")
