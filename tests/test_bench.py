"""`sdxs-rt bench` on the tiny preset, end to end (a smoke check: no speed assertion), and the
presets' sizes (built on the meta device)."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdxs_rt.dev.bench.command import add_bench_arguments, run_bench
from sdxs_rt.dev.bench.presets import PRESETS, count_parameters
from sdxs_rt.dev.bench.runner import BenchConfig, ensure_model, psnr, run_bench_rows

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


def _bench_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_bench_arguments(parser)
    return parser.parse_args(["--cache-dir", str(tmp_path / "cache"), *extra])


def test_a_preset_written_as_the_fp16_variant_runs_every_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The `full` preset writes only `*.fp16.safetensors`: the tiny preset with that variant,
    built and loaded by the bench's own functions (not only the reference may run)."""
    monkeypatch.setitem(PRESETS, "tiny", replace(PRESETS["tiny"], variant="fp16"))
    out = tmp_path / "bench.json"
    args = _bench_args(tmp_path, "--preset", "tiny", "--paths", "torch", "--json-out", str(out))
    assert run_bench(args) == 0
    model = Path(json.loads(out.read_text())["model"])
    assert sorted(p.name for p in (model / "unet").glob("*.safetensors")) == [
        "diffusion_pytorch_model.fp16.safetensors"
    ]
    rows = {row["path"]: row for row in json.loads(out.read_text())["rows"]}
    assert [rows[p]["status"] for p in ("reference", "torch")] == ["ok", "ok"], rows


def test_the_gpu_checks_load_the_fp16_variant_as_the_bench_builds_it(tmp_path: Path) -> None:
    """The GPU check's own functions, on the CPU: they pass the preset's variant on."""
    from sdxs_rt.dev.bench.correctness import CheckSetup, folded_vs_unfolded, sdxs_vs_card

    preset = replace(PRESETS["tiny"], variant="fp16")
    setup = CheckSetup(ensure_model(preset, tmp_path), "fp16", device="cpu", precision="fp32")
    fold = folded_vs_unfolded(setup, side=8)
    assert fold["ok"], fold
    card = sdxs_vs_card(setup, size=64, steps=2)
    assert card["ok"] and card["psnr_db"] >= 35.0, card


def test_a_time_budget_cuts_paths_and_gives_compile_paths_what_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eager paths keep their own limit; the compile path, run last, gets the rest of the budget,
    and running out of it is "over-budget", not a failure."""
    from sdxs_rt.dev.bench import runner

    limits: dict[str, float] = {}

    def time_out(job: runner.Job, timeout_s: float) -> dict:
        limits[job.path] = timeout_s
        return {"path": job.path, "status": "failed", "reason": "timed out", "timed_out": True}

    monkeypatch.setattr(runner, "run_in_subprocess", time_out)
    config = BenchConfig(
        paths=["torch-compile"], cache_dir=str(tmp_path), timeout_s=5.0, budget_s=1000.0
    )
    rows = {row["path"]: row for row in run_bench_rows(config, log=lambda _m: None)["rows"]}
    assert limits["reference"] == 5.0 and 990.0 < limits["torch-compile"] <= 1000.0
    assert rows["reference"]["status"] == "failed"
    assert rows["torch-compile"]["status"] == "over-budget"
    spent = run_bench_rows(replace(config, budget_s=10.0), log=lambda _m: None)["rows"]
    assert [row["status"] for row in spent] == ["failed", "over-budget"]
    assert "not started" in spent[1]["reason"]


def test_the_cli_path_choices_match_the_runner() -> None:
    from sdxs_rt.dev.bench.command import PATH_NAMES
    from sdxs_rt.dev.bench.runner import ALL_PATHS

    assert PATH_NAMES == ALL_PATHS
