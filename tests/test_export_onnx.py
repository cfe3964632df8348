"""`sdxs-rt export onnx` on the tiny model: graphs, parity, folding, fp16, reruns, failures."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import numpy as np
import onnx
from sdxs_rt_export import fp16, graph_files, parity
from sdxs_rt_export.command import add_export_onnx_arguments, run_export_onnx
from sdxs_rt_export.model_info import graph_dims
from sdxs_rt_export.onnx_export import export_onnx, export_source, trace_to_onnx
from sdxs_rt_export.wrappers import ExportSource, load_graph_module

from sdxs_rt.errors import EXIT_ENGINE, EngineError, UsageError
from sdxs_rt.graphs import GRAPH_NAMES, graph_specs, read_manifest

ROOT = Path(__file__).resolve().parents[1]
TINY_IMAGE_SIZE = (36, 36)  # the tiny vision tower's preprocessor size (the image_encoder input)


class Export:
    def __init__(self, model: Path, out: Path, precision: str) -> None:
        self.lines: list[str] = []
        self.out = out
        self.manifest = export_onnx(
            str(model), out, precision=precision, progress=self.lines.append
        )


@pytest.fixture(scope="module")
def fp32_export(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Export:
    return Export(tiny_model, tmp_path_factory.mktemp("onnx32") / "out", "fp32")


@pytest.fixture(scope="module")
def fp16_export(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Export:
    return Export(tiny_model, tmp_path_factory.mktemp("onnx16") / "out", "fp16")


def _source(model: Path, **options: bool) -> ExportSource:
    """What export_onnx exports from (with the text encoder's vision tower, when it has one)."""
    from sdxs_rt.loading import resolve_model

    source, _no_image_encoder = export_source(resolve_model(str(model)), None, False)
    return dataclasses.replace(source, **options)


def _graph(folder: Path, name: str) -> onnx.ModelProto:
    return onnx.load(str(folder / name / "model.onnx"))


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# --- graphs -------------------------------------------------------------------------------


def test_graphs_have_the_spec_names_dtypes_and_dynamic_axes(fp32_export: Export) -> None:
    specs = graph_specs(16, 1152, TINY_IMAGE_SIZE)
    for name in GRAPH_NAMES:
        graph = _graph(fp32_export.out, name).graph
        for values, tensors in (
            (graph.input, specs[name].inputs),
            (graph.output, specs[name].outputs),
        ):
            assert [v.name for v in values] == [t.name for t in tensors]
            for value, tensor in zip(values, tensors, strict=True):
                want = onnx.TensorProto.INT64 if tensor.dtype == "int64" else onnx.TensorProto.FLOAT
                assert value.type.tensor_type.elem_type == want, (name, value.name)
                assert _dims(value) == list(tensor.shape), (name, value.name)


def test_every_graph_passes_the_checker_and_its_entry_matches(fp32_export: Export) -> None:
    for entry in fp32_export.manifest.graphs.values():
        path = fp32_export.out / entry.file
        onnx.checker.check_model(str(path))
        assert entry.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry.precision == "fp32" and not entry.external_data
    assert [line.split(":")[0] for line in fp32_export.lines if "graph written" in line] == list(
        GRAPH_NAMES
    )


def measure(session: object, module: object, cases: list[dict[str, np.ndarray]]) -> dict:
    """max-abs, rel (max-abs over the reference's peak) and PSNR (against the reference's own
    range) of ONNX Runtime against PyTorch, the worst over `cases`; computed here, not by the
    exporter's parity module, so a wrong figure there cannot agree with itself."""
    import torch

    worst = {"max_abs": 0.0, "rel": 0.0, "psnr": float("inf")}
    for feeds in cases:
        with torch.inference_mode():
            tensors = [torch.from_numpy(array) for array in feeds.values()]
            reference = module(*tensors).double().numpy()  # type: ignore[operator]
        output = np.asarray(session.run(None, feeds)[0], dtype=np.float64)  # type: ignore[attr-defined]
        assert output.shape == reference.shape and np.isfinite(output).all()
        error = output - reference
        max_abs = float(np.abs(error).max())
        span = float(reference.max() - reference.min())
        psnr = 20 * np.log10(span / np.sqrt(np.mean(error**2)))
        worst["max_abs"] = max(worst["max_abs"], max_abs)
        worst["rel"] = max(worst["rel"], max_abs / float(np.abs(reference).max()))
        worst["psnr"] = min(worst["psnr"], float(psnr))
    return worst


@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_onnx_matches_torch_at_two_sizes_with_batch_2(
    fp32_export: Export, tiny_model: Path, name: str
) -> None:
    source = _source(tiny_model)
    dims = graph_dims(source)
    module = load_graph_module(name, source)
    session = parity.cpu_session(fp32_export.out / name / "model.onnx")
    for seed, size in enumerate(((8, 8), (16, 24))):
        feeds = parity.graph_inputs(name, dims, batch=2, size=size, seed=seed)
        figures = measure(session, module, [feeds])
        print(f"{name} batch 2 latent {size}: {parity.describe(figures)}")
        assert figures["rel"] <= 1e-4
    # the figures the manifest records are the ones its own cases measure
    measured = measure(session, module, parity.parity_cases(name, dims))
    recorded = fp32_export.manifest.graphs[name].parity
    assert measured["rel"] <= parity.FP32_MAX_REL
    assert recorded["max_abs"] == pytest.approx(measured["max_abs"], rel=0.25)
    assert recorded["psnr"] == pytest.approx(measured["psnr"], abs=1.0)


def test_the_unet_graph_has_no_context_attention(
    fp32_export: Export, tiny_model: Path, tmp_path: Path
) -> None:
    from diffusers.models.attention import BasicTransformerBlock

    source = _source(tiny_model, fold_cross_attention=False)
    dims = graph_dims(source)
    unfolded_module = load_graph_module("unet", source)
    blocks = sum(isinstance(m, BasicTransformerBlock) for m in unfolded_module.modules())
    spec = graph_specs(dims.latent_channels, dims.text_width)["unet"]
    trace_to_onnx(unfolded_module, parity.trace_inputs("unet", dims), spec, tmp_path / "u.onnx", 17)

    def context_nodes(graph: onnx.GraphProto) -> tuple[int, int]:
        q_or_k = sum("/attn2/to_q/" in n.name or "/attn2/to_k/" in n.name for n in graph.node)
        matmuls = sum(n.op_type in ("MatMul", "Gemm") and "/attn2/" in n.name for n in graph.node)
        return q_or_k, matmuls

    folded = context_nodes(_graph(fp32_export.out, "unet").graph)
    unfolded = context_nodes(onnx.load(str(tmp_path / "u.onnx")).graph)
    print(f"{blocks} cross-attention blocks; (q/k nodes, attn2 MatMuls): {unfolded} -> {folded}")
    assert folded[0] == 0 and unfolded[0] >= 2 * blocks
    # unfolded: to_q, to_k, to_v, q.k, attention.v, to_out; folded: to_v, to_out
    assert unfolded[1] - folded[1] == 4 * blocks


# --- manifest, tokenizer, reruns ----------------------------------------------------------


def test_manifest_round_trips_and_describes_the_model(
    fp32_export: Export, tiny_model: Path
) -> None:
    from sdxs_rt.backends.torch.vae import latent_scaling_from_config
    from sdxs_rt.loading import read_json_config

    manifest = read_manifest(fp32_export.out)
    assert manifest == fp32_export.manifest
    assert (manifest.precision, manifest.opset, manifest.text_width) == ("fp32", 17, 1152)
    assert (manifest.latent_channels, manifest.vae_scale_factor) == (16, 8)
    vae_config = read_json_config(tiny_model / "vae" / "config.json")
    scaling = latent_scaling_from_config(vae_config, 16)
    assert manifest.latent_scaling == {"scaling_factor": 1.5, "mean": scaling.mean, "std": 1.0}
    scheduler = read_json_config(tiny_model / "scheduler" / "scheduler_config.json")
    assert manifest.scheduler_config == scheduler
    assert manifest.model["hash"] and manifest.model["name"] == "model"
    tokenizer = fp32_export.out / manifest.tokenizer
    assert tokenizer.read_bytes() == (tiny_model / "text_encoder" / "tokenizer.json").read_bytes()
    assert (tokenizer.parent / "special_tokens_map.json").is_file()
    unet_inputs = manifest.graphs["unet"].inputs
    assert unet_inputs[1] == {"name": "timestep", "dtype": "float32", "shape": ["batch"]}


def test_the_hub_revision_goes_into_the_manifest_and_the_onnx_info(
    fp32_export: Export, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdxs_rt.pipeline import Pipeline

    sha = "89abcdef0123456789abcdef0123456789abcdef"
    shutil.copytree(tiny_model, tmp_path / "hf/hub/models--org--tiny/snapshots" / sha)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    shutil.copytree(fp32_export.out, out)  # the same weights: only the manifest is written again
    manifest = export_onnx("org/tiny", out, revision=sha)
    assert (manifest.model["name"], manifest.model["revision"]) == ("org/tiny", sha)
    assert fp32_export.manifest.model["revision"] is None  # a local folder has none
    assert Pipeline.from_pretrained(str(out), backend="onnx").info["revision"] == sha


def test_a_rerun_skips_finished_graphs(fp32_export: Export, tiny_model: Path) -> None:
    files = [fp32_export.out / name / "model.onnx" for name in GRAPH_NAMES]
    before = [path.stat().st_mtime_ns for path in files]
    lines: list[str] = []
    manifest = export_onnx(str(tiny_model), fp32_export.out, progress=lines.append)
    assert [path.stat().st_mtime_ns for path in files] == before
    assert [line for line in lines if "skipped" in line] == [
        f"{name}: up to date, skipped" for name in GRAPH_NAMES
    ]
    assert manifest == fp32_export.manifest


def test_a_damaged_graph_is_exported_again_alone(
    fp32_export: Export, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(fp32_export.out, out)
    with (out / "vae_encoder" / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    lines: list[str] = []
    export_onnx(str(tiny_model), out, progress=lines.append)
    assert [line.split(":")[0] for line in lines if "graph written" in line] == ["vae_encoder"]


# --- failures -----------------------------------------------------------------------------


def _leftovers(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if "model.onnx" in p.name)


def test_a_graph_that_misses_the_bar_is_refused_and_nothing_is_left(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(parity, "FP32_MAX_REL", 0.0)
    out = tmp_path / "out"
    with pytest.raises(EngineError, match=r"text_encoder.*over the bar of 0") as caught:
        export_onnx(str(tiny_model), out)
    assert caught.value.exit_code == EXIT_ENGINE
    assert "\n" not in str(caught.value)
    assert _leftovers(out) == []
    assert sorted(p.name for p in out.iterdir()) == []  # no work folders, no manifest


def test_a_failure_midway_keeps_finished_graphs_and_writes_no_manifest(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_check = parity.check_bar

    def unet_fails(graph: str, precision: str, figures: dict[str, float]) -> None:
        if graph == "unet":
            raise EngineError("forced failure")
        real_check(graph, precision, figures)

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(parity, "check_bar", unet_fails)
        with pytest.raises(EngineError, match="forced failure"):
            export_onnx(str(tiny_model), out)
    assert _leftovers(out) == ["text_encoder/model.onnx"]
    assert not (out / "manifest.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    lines: list[str] = []
    export_onnx(str(tiny_model), out, progress=lines.append)  # resumes
    assert lines[0] == "text_encoder: up to date, skipped"
    assert (out / "manifest.json").is_file()


def test_an_out_folder_holding_other_files_is_refused(tiny_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    before = sorted(p.name for p in (model / "unet").iterdir())
    with pytest.raises(UsageError, match="did not write"):
        export_onnx(str(model), model)  # --out is the model folder itself
    assert sorted(p.name for p in (model / "unet").iterdir()) == before


def test_bad_options_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="precision"):
        export_onnx(None, tmp_path, precision="bf16")
    with pytest.raises(UsageError, match="opset 13"):
        export_onnx(None, tmp_path, opset=13)


# --- external data ------------------------------------------------------------------------


def test_save_graph_switches_to_external_data_by_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from onnx import helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["n", 64])
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["n", 64])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y], [weight]))
    for threshold, external in ((10**9, False), (1000, True)):
        monkeypatch.setattr(graph_files, "EXTERNAL_DATA_THRESHOLD", threshold)
        folder = tmp_path / str(threshold)
        folder.mkdir()
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        assert graph_files.save_graph(copy, folder / "model.onnx") is external
        assert (folder / "model.onnx.data").is_file() is external
        onnx.checker.check_model(str(folder / "model.onnx"))
        out = parity.cpu_session(folder / "model.onnx").run(
            None, {"x": np.ones((2, 64), np.float32)}
        )
        assert float(out[0][0, 0]) == 64.0


def test_large_graphs_are_exported_with_external_data(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the text encoder and U-Net (about 2.1 MB of weights each) and the image encoder (44 MB),
    # not the VAE graphs (< 0.3 MB)
    monkeypatch.setattr(graph_files, "EXTERNAL_DATA_THRESHOLD", 1_000_000)
    manifest = export_onnx(str(tiny_model), tmp_path / "out")
    flags = {name: entry.external_data for name, entry in manifest.graphs.items()}
    assert flags == {
        "text_encoder": True,
        "unet": True,
        "vae_decoder": False,
        "vae_encoder": False,
        "image_encoder": True,
    }
    unet = tmp_path / "out" / "unet"
    assert (unet / "model.onnx.data").stat().st_size > 1_000_000
    assert (unet / "model.onnx").stat().st_size < 1_000_000
    onnx.checker.check_model(str(unet / "model.onnx"))
    listing = "".join(
        f"{hashlib.sha256((unet / f).read_bytes()).hexdigest()}  {f}\n"
        for f in ("model.onnx", "model.onnx.data")
    )
    assert manifest.graphs["unet"].sha256 == hashlib.sha256(listing.encode()).hexdigest()


# --- fp16 ---------------------------------------------------------------------------------


def test_fp16_graphs_meet_the_psnr_bar_with_float32_io(
    fp16_export: Export, tiny_model: Path
) -> None:
    source = _source(tiny_model)
    dims = graph_dims(source)
    for name, entry in fp16_export.manifest.graphs.items():
        module = load_graph_module(name, source)  # the float32 model: the truth
        session = parity.cpu_session(fp16_export.out / name / "model.onnx")
        cases = parity.parity_cases(name, dims)
        other = parity.graph_inputs(name, dims, batch=2, size=(16, 8), seed=99)
        measured = measure(session, module, [*cases, other])
        print(f"{name} fp16: {parity.describe(measured)}")
        assert entry.precision == "fp16"
        assert measured["psnr"] >= parity.FP16_MIN_PSNR
        # the PSNR the manifest records is the one its own cases measure
        assert entry.parity["psnr"] == pytest.approx(
            measure(session, module, cases)["psnr"], abs=0.5
        )
        floats = [t for t in (*entry.inputs, *entry.outputs) if t["dtype"] != "int64"]
        assert {t["dtype"] for t in floats} == {"float32"}
        graph = _graph(fp16_export.out, name).graph
        weight_types = {t.data_type for t in graph.initializer if t.dims and np.prod(t.dims) > 64}
        assert onnx.TensorProto.FLOAT16 in weight_types


def test_fp16_keeps_time_embedding_and_normalisations_in_float32(fp16_export: Export) -> None:
    model = _graph(fp16_export.out, "unet")
    typed = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*typed.value_info, *typed.input)}
    types |= {t.name: t.data_type for t in typed.initializer}
    float32 = onnx.TensorProto.FLOAT
    watched = [n for n in typed.node if n.op_type in (*fp16.SINUSOID_OPS, *fp16.NORMALIZATION_OPS)]
    assert len(watched) > 2
    for node in watched:
        assert types[node.input[0]] == float32, node.name
    # `timestep` reaches the time embedding unrounded: no Cast to fp16 reads it
    readers = [n for n in typed.node if "timestep" in n.input]
    assert readers and all(n.op_type != "Cast" for n in readers)


def test_fp16_graphs_run_on_onnxruntime_cpu(fp16_export: Export, tiny_model: Path) -> None:
    dims = graph_dims(_source(tiny_model))
    for name in GRAPH_NAMES:
        feeds = parity.graph_inputs(name, dims, batch=2, size=(8, 16), seed=7)
        output = parity.cpu_session(fp16_export.out / name / "model.onnx").run(None, feeds)[0]
        assert output.dtype == np.float32 and np.isfinite(output).all()


def test_an_fp16_vae_that_misses_the_bar_is_kept_in_float32(
    fp16_export: Export, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "copy"
    shutil.copytree(fp16_export.out, out)
    shutil.rmtree(out / "vae_decoder")
    monkeypatch.setattr(parity, "FP16_MIN_PSNR", 1000.0)  # only the missing graph is rebuilt
    lines: list[str] = []
    manifest = export_onnx(str(tiny_model), out, precision="fp16", progress=lines.append)
    assert manifest.graphs["vae_decoder"].precision == "fp32"
    assert manifest.graphs["unet"].precision == "fp16"
    assert any("keeping this graph in float32" in line for line in lines)
    weights = {t.data_type for t in _graph(out, "vae_decoder").graph.initializer}
    assert onnx.TensorProto.FLOAT16 not in weights  # the file is float32, not just the entry


# --- command ------------------------------------------------------------------------------


def test_command_runs_and_prints_the_folder(
    fp32_export: Export, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_export_onnx_arguments(parser)
    args = parser.parse_args(["--model", str(tiny_model), "--out", str(fp32_export.out)])
    assert (args.precision, args.opset, args.trust_remote_code, args.quiet) == (
        "fp32",
        17,
        False,
        False,
    )
    assert run_export_onnx(args) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(fp32_export.out)
    assert "unet: up to date, skipped" in captured.err


def test_the_command_module_imports_nothing_heavy() -> None:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.source_packages import alias_source_packages; alias_source_packages();"
        "import sdxs_rt_export.command;"
        "heavy = ('torch', 'onnx', 'onnxruntime', 'diffusers');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, env=env, check=True
    )
    assert result.stdout.strip() == "[]"
