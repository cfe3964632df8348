"""The ONNX Runtime backend: providers, IOBinding, tokenization, errors, and parity with torch.

Unit tests run on small hand-made graphs (written with `onnx.helper`) and fake sessions; the
end-to-end tests export the tiny model with `sdxs_rt_export` and compare images across backends.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from sdxs_rt.backends.onnx import load_components
from sdxs_rt.backends.onnx.components import OnnxUNet
from sdxs_rt.backends.onnx.providers import (
    CPU,
    CUDA,
    DIRECTML,
    TENSORRT,
    check_session_providers,
    parse_device,
    plan_providers,
)
from sdxs_rt.backends.onnx.sessions import (
    IOBindingRunner,
    SessionRunner,
    make_runner,
    session_options,
)
from sdxs_rt.errors import DeviceError, EngineError, ModelNotFoundError, UsageError
from sdxs_rt.graphs import GraphEntry, Manifest, graph_specs, write_manifest
from sdxs_rt.pipeline import Pipeline
from sdxs_rt.prompt_tokenizer import MAX_TOKENS, PromptTokenizer
from tests.tiny_tokenizer import tiny_tokenizer_dir

ROOT = Path(__file__).resolve().parents[1]
PACKAGED_TOKENIZER = tiny_tokenizer_dir()
WIDTH = 8  # text width of the hand-made graphs
CHANNELS = 16
OPSET = 17
DDPM_CONFIG = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}

# --- hand-made graphs ---------------------------------------------------------------------


def _float_type(precision: str) -> int:
    return TensorProto.FLOAT16 if precision == "fp16" else TensorProto.FLOAT


def _const(name: str, values: Any, precision: str) -> onnx.TensorProto:
    dtype = np.float16 if precision == "fp16" else np.float32
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _model(nodes, inputs, outputs, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def text_encoder_graph(precision: str) -> onnx.ModelProto:
    """text_embeds = (sum of ids * mask, number of tokens) @ a fixed (2, WIDTH) matrix."""
    f = _float_type(precision)
    mix = np.linspace(-0.01, 0.01, 2 * WIDTH).reshape(2, WIDTH)
    nodes = [
        helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
        helper.make_node("Cast", ["masked"], ["ids_f"], to=f),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=f),
        helper.make_node("ReduceSum", ["ids_f", "axes"], ["id_sum"], keepdims=1),
        helper.make_node("ReduceSum", ["mask_f", "axes"], ["count"], keepdims=1),
        helper.make_node("Concat", ["id_sum", "count"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "mix"], ["text_embeds"]),
    ]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
        for n in ("input_ids", "attention_mask")
    ]
    outputs = [helper.make_tensor_value_info("text_embeds", f, ["batch", WIDTH])]
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    return _model(nodes, inputs, outputs, [axes, _const("mix", mix, precision)])


def unet_graph(precision: str) -> onnx.ModelProto:
    """out_sample = 0.5 * sample + 0.001 * timestep + mean(encoder_hidden_states)."""
    f = _float_type(precision)
    nodes = [
        helper.make_node("Mul", ["sample", "half"], ["scaled"]),
        helper.make_node("Unsqueeze", ["timestep", "t_axes"], ["t4"]),
        helper.make_node("Mul", ["t4", "milli"], ["t_term"]),
        helper.make_node("ReduceMean", ["encoder_hidden_states"], ["ctx"], axes=[1, 2], keepdims=0),
        helper.make_node("Unsqueeze", ["ctx", "c_axes"], ["ctx4"]),
        helper.make_node("Add", ["scaled", "t_term"], ["partial"]),
        helper.make_node("Add", ["partial", "ctx4"], ["out_sample"]),
    ]
    latent = ["batch", CHANNELS, "height", "width"]
    inputs = [
        helper.make_tensor_value_info("sample", f, latent),
        helper.make_tensor_value_info("timestep", f, ["batch"]),
        helper.make_tensor_value_info("encoder_hidden_states", f, ["batch", 1, WIDTH]),
    ]
    outputs = [helper.make_tensor_value_info("out_sample", f, latent)]
    initializers = [
        _const("half", 0.5, precision),
        _const("milli", 0.001, precision),
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "t_axes"),
        numpy_helper.from_array(np.array([1, 2, 3], dtype=np.int64), "c_axes"),
    ]
    return _model(nodes, inputs, outputs, initializers)


def vae_decoder_graph(precision: str) -> onnx.ModelProto:
    """sample = 8x nearest upsampling of 2 * the first three latent channels (not clipped)."""
    f = _float_type(precision)
    nodes = [
        helper.make_node("Slice", ["latent_sample", "starts", "ends", "slice_axes"], ["rgb"]),
        helper.make_node("Mul", ["rgb", "two"], ["rgb2"]),
        helper.make_node("Resize", ["rgb2", "", "scales"], ["sample"], mode="nearest"),
    ]
    inputs = [helper.make_tensor_value_info("latent_sample", f, ["batch", CHANNELS, "h", "w"])]
    outputs = [helper.make_tensor_value_info("sample", f, ["batch", 3, "ih", "iw"])]
    initializers = [
        numpy_helper.from_array(np.array([0], dtype=np.int64), "starts"),
        numpy_helper.from_array(np.array([3], dtype=np.int64), "ends"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "slice_axes"),
        numpy_helper.from_array(np.array([1, 1, 8, 8], dtype=np.float32), "scales"),
        _const("two", 2.0, precision),
    ]
    return _model(nodes, inputs, outputs, initializers)


GRAPH_BUILDERS = {
    "text_encoder": text_encoder_graph,
    "unet": unet_graph,
    "vae_decoder": vae_decoder_graph,
}


def _entry(name: str, precision: str) -> GraphEntry:
    spec = graph_specs(CHANNELS, WIDTH)[name]

    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "dtype": t.dtype, "shape": list(t.shape)} for t in specs]

    return GraphEntry(spec.file, precision, "", tensors(spec.inputs), tensors(spec.outputs))


def write_handmade_export(folder: Path, precision: str = "fp32") -> Path:
    """An exported-folder lookalike: three tiny graphs, the packaged tokenizer, a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, build in GRAPH_BUILDERS.items():
        (folder / name).mkdir(exist_ok=True)
        onnx.save(build(precision), str(folder / name / "model.onnx"))
    shutil.copytree(PACKAGED_TOKENIZER, folder / "tokenizer", dirs_exist_ok=True)
    manifest = Manifest(
        model={"name": "handmade", "hash": "0123456789"},
        precision=precision,
        opset=OPSET,
        latent_channels=CHANNELS,
        vae_scale_factor=8,
        text_width=WIDTH,
        latent_scaling={"scaling_factor": 0.5, "mean": 0.1, "std": 1.0},
        scheduler_config=dict(DDPM_CONFIG),
        tokenizer="tokenizer/tokenizer.json",
        graphs={name: _entry(name, precision) for name in GRAPH_BUILDERS},
    )
    write_manifest(folder, manifest)
    return folder


@pytest.fixture(scope="module")
def handmade(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_handmade_export(tmp_path_factory.mktemp("handmade") / "fp32")


@pytest.fixture(scope="module")
def handmade_fp16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_handmade_export(tmp_path_factory.mktemp("handmade") / "fp16", "fp16")


# --- fakes --------------------------------------------------------------------------------


class FakeNode:
    def __init__(self, name: str, kind: str = "tensor(float)", shape: Any = ("batch",)) -> None:
        self.name, self.type, self.shape = name, kind, list(shape)


class FakeBinding:
    def __init__(self, result: list[np.ndarray]) -> None:
        self.inputs: dict[str, np.ndarray] = {}
        self.outputs: list[tuple[str, str, int]] = []
        self.result = result

    def bind_cpu_input(self, name: str, array: np.ndarray) -> None:
        self.inputs[name] = array

    def bind_output(self, name: str, device_type: str = "cpu", device_id: int = 0) -> None:
        self.outputs.append((name, device_type, device_id))

    def copy_outputs_to_cpu(self) -> list[np.ndarray]:
        return self.result


class FakeSession:
    """Just enough of InferenceSession for the provider check and the IOBinding runner."""

    def __init__(self, providers: list[str], result: np.ndarray | None = None) -> None:
        self.providers = providers
        self.result = result
        self.bindings: list[FakeBinding] = []
        self.ran: list[FakeBinding] = []

    def get_providers(self) -> list[str]:
        return self.providers

    def get_outputs(self) -> list[FakeNode]:
        return [FakeNode("out_sample")]

    def io_binding(self) -> FakeBinding:
        binding = FakeBinding([] if self.result is None else [self.result])
        self.bindings.append(binding)
        return binding

    def run_with_iobinding(self, binding: FakeBinding) -> None:
        self.ran.append(binding)


# --- providers ------------------------------------------------------------------------------

GPU_BUILD = [TENSORRT, CUDA, CPU]


@pytest.mark.parametrize(
    ("device", "available", "device_label", "chain"),
    [
        ("cpu", [CPU], "cpu", [CPU]),
        ("cuda", GPU_BUILD, "cuda:0", [CUDA, CPU]),
        ("cuda:1", GPU_BUILD, "cuda:1", [CUDA, CPU]),
        ("tensorrt", GPU_BUILD, "tensorrt:0", [TENSORRT, CUDA, CPU]),
        ("dml", [DIRECTML, CPU], "dml:0", [DIRECTML, CPU]),
        ("directml:1", [DIRECTML, CPU], "dml:1", [DIRECTML, CPU]),
        ("auto", GPU_BUILD, "cuda:0", [CUDA, CPU]),
        ("auto", [DIRECTML, CPU], "dml:0", [DIRECTML, CPU]),
        ("auto", ["AzureExecutionProvider", CPU], "cpu", [CPU]),
    ],
)
def test_devices_map_to_provider_chains(device, available, device_label, chain) -> None:
    plan = plan_providers(device, available)
    assert plan.device == device_label
    assert [name for name, _ in plan.providers] == chain
    assert plan.uses_iobinding == (chain[0] in (CUDA, TENSORRT))


def test_gpu_providers_get_the_device_id() -> None:
    plan = plan_providers("tensorrt:1", GPU_BUILD)
    assert all(options["device_id"] == 1 for name, options in plan.providers if name != CPU)
    assert plan.providers[0][1]["trt_engine_cache_enable"] is True


def test_missing_provider_names_what_is_there_and_what_to_install() -> None:
    with pytest.raises(DeviceError) as caught:
        plan_providers("cuda", ["AzureExecutionProvider", CPU])
    message = str(caught.value)
    assert CUDA in message and CPU in message and "sdxs-rt[gpu]" in message
    assert caught.value.exit_code == 4


@pytest.mark.parametrize("device", ["mps", "cuda:x", "cpu:1", "gpu"])
def test_unknown_devices_are_usage_errors(device: str) -> None:
    with pytest.raises(UsageError):
        parse_device(device)


def test_a_session_that_fell_back_to_the_cpu_is_a_device_error() -> None:
    plan = plan_providers("cuda", GPU_BUILD)
    assert check_session_providers(FakeSession([CUDA, CPU]), plan, "unet/model.onnx")
    with pytest.raises(DeviceError, match=r"unet/model\.onnx"):
        check_session_providers(FakeSession([CPU]), plan, "unet/model.onnx")


def test_load_components_refuses_a_silent_cpu_fallback(handmade: Path, monkeypatch) -> None:
    created: list[Any] = []

    def fake_session(path: str, sess_options: Any = None, providers: Any = None) -> FakeSession:
        created.append(providers)
        return FakeSession([CPU])  # what ORT does when CUDA libraries are missing

    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    monkeypatch.setattr(ort, "InferenceSession", fake_session)
    with pytest.raises(DeviceError, match="CUDAExecutionProvider"):
        load_components(str(handmade), device="cuda:0")
    assert created == [[(CUDA, {"device_id": 0}), (CPU, {})]]


def test_cpu_sessions_report_the_providers_used(handmade: Path) -> None:
    info = load_components(str(handmade)).info
    assert info["backend"] == "onnx" and info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["model"] == "handmade" and info["model_hash"] == "0123456789"
    assert info["providers"] == {name: [CPU] for name in GRAPH_BUILDERS}
    assert info["iobinding"] is False


# --- IOBinding ------------------------------------------------------------------------------


def test_iobinding_binds_host_inputs_and_device_outputs_then_copies_out() -> None:
    result = np.ones((2, CHANNELS, 4, 4), dtype=np.float16)
    session = FakeSession([CUDA, CPU], result)
    runner = make_runner(session, "unet/model.onnx", plan_providers("cuda:1", GPU_BUILD))
    assert isinstance(runner, IOBindingRunner)
    feeds = {"sample": np.zeros((2, CHANNELS, 4, 4), np.float16)}
    outputs = runner.run(feeds)
    (binding,) = session.bindings
    assert session.ran == [binding]
    assert list(binding.inputs) == ["sample"] and binding.inputs["sample"].flags.c_contiguous
    assert binding.outputs == [("out_sample", "cuda", 1)]
    assert outputs[0] is result


def test_unet_over_iobinding_casts_to_the_graph_dtypes_and_returns_float32() -> None:
    session = FakeSession([CUDA, CPU], np.full((2, CHANNELS, 4, 4), 0.5, np.float16))
    dtypes = {
        name: np.dtype(np.float16) for name in ("sample", "timestep", "encoder_hidden_states")
    }
    unet = OnnxUNet(IOBindingRunner(session, "unet/model.onnx", 0), dtypes)
    out = unet(
        np.zeros((2, CHANNELS, 4, 4), np.float32), 999.0, np.zeros((2, 1, WIDTH), np.float32)
    )
    inputs = session.bindings[0].inputs
    assert {name: a.dtype for name, a in inputs.items()} == dtypes
    assert inputs["timestep"].shape == (2,) and inputs["timestep"][0] == 999.0
    assert out.dtype == np.float32 and np.all(out == 0.5)


def test_directml_sessions_turn_off_memory_patterns() -> None:
    options = session_options(plan_providers("dml", [DIRECTML, CPU]))
    assert options.enable_mem_pattern is False
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    cpu = session_options(plan_providers("cpu", [CPU]))
    assert cpu.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert cpu.intra_op_num_threads == 0  # ONNX Runtime's default


def test_cpu_plans_run_without_iobinding() -> None:
    runner = make_runner(FakeSession([CPU]), "unet/model.onnx", plan_providers("cpu", [CPU]))
    assert isinstance(runner, SessionRunner)


# --- components on real ONNX Runtime sessions -----------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_components_take_float32_and_return_float32(
    precision: str, handmade: Path, handmade_fp16: Path
) -> None:
    folder = handmade if precision == "fp32" else handmade_fp16
    c = load_components(str(folder), precision=precision)
    embeds = c.text_encoder(["a red circle", "кот"])
    assert embeds.shape == (2, WIDTH) and embeds.dtype == np.float32
    sample = np.full((2, CHANNELS, 4, 4), 0.25, np.float32)
    out = c.unet(sample, 500.0, np.zeros((2, 1, WIDTH), np.float32))
    assert out.shape == sample.shape and out.dtype == np.float32
    assert np.allclose(out, 0.125 + 0.5, atol=1e-3)
    images = c.vae_decoder(np.full((1, CHANNELS, 2, 2), 0.75, np.float32))
    assert images.shape == (1, 3, 16, 16) and images.dtype == np.float32
    assert images.max() == 1.0  # 1.5 from the graph, clipped to [-1, 1]
    assert c.text_encoder([]).shape == (0, WIDTH)


def test_a_pipeline_over_handmade_graphs_makes_an_image(handmade: Path) -> None:
    pipe = Pipeline(load_components(str(handmade)))
    result = pipe("a red circle", num_inference_steps=3, width=64, height=64, seed=1)
    assert result.images[0].size == (64, 64)


# --- errors -----------------------------------------------------------------------------------


def test_a_folder_without_manifest_asks_for_an_export(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"sdxs-rt export onnx --model .* --out DIR"):
        load_components(str(tmp_path))
    with pytest.raises(ModelNotFoundError) as caught:
        load_components(str(tmp_path / "nowhere"))
    assert caught.value.exit_code == 3


def test_model_none_and_text_encoder_are_usage_errors(handmade: Path) -> None:
    with pytest.raises(UsageError, match="needs --model pointing at an exported folder"):
        load_components(None)
    with pytest.raises(UsageError, match="text encoder is part of the export"):
        load_components(str(handmade), text_encoder="some/encoder")


def test_precision_mismatch_names_what_the_folder_holds(handmade_fp16: Path) -> None:
    with pytest.raises(UsageError, match="holds fp16 graphs, not fp32"):
        load_components(str(handmade_fp16), precision="fp32")


def test_trust_remote_code_is_ignored(handmade: Path) -> None:
    assert load_components(str(handmade), trust_remote_code=True).info["backend"] == "onnx"


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


def test_a_missing_graph_is_an_engine_error_naming_the_file(handmade: Path, tmp_path: Path) -> None:
    folder = _copy(handmade, tmp_path)
    (folder / "unet" / "model.onnx").unlink()
    with pytest.raises(EngineError, match=r"unet[/\\]model\.onnx is missing") as caught:
        load_components(str(folder))
    assert caught.value.exit_code == 6


def test_a_broken_graph_is_an_engine_error_naming_the_file(handmade: Path, tmp_path: Path) -> None:
    folder = _copy(handmade, tmp_path)
    (folder / "vae_decoder" / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(EngineError, match=r"could not load .*vae_decoder[/\\]model\.onnx"):
        load_components(str(folder))


def test_a_stale_manifest_dtype_is_an_engine_error(handmade: Path, tmp_path: Path) -> None:
    folder = _copy(handmade, tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["graphs"]["unet"]["inputs"][0]["dtype"] = "float16"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EngineError, match=r"'sample' of unet/model\.onnx is float16"):
        load_components(str(folder))


# --- tokenization -----------------------------------------------------------------------------

PROMPTS = [
    "a red circle on a blue background",
    "Кот в сапогах сидит на крыше, закат",
    "",
    "mixed: 猫 and ünïcödé, punctuation!!! (weights:1.2)",
]


def _long_prompt() -> str:
    return " ".join(f"word{i} кот" for i in range(400))


def test_tokenization_matches_transformers_xlm_r(tiny_model: Path) -> None:
    transformers = pytest.importorskip("transformers")
    folder = tiny_model / "tokenizer"
    reference = transformers.AutoTokenizer.from_pretrained(str(folder))
    ours = PromptTokenizer.from_file(folder / "tokenizer.json")
    for batch in ([p] for p in [*PROMPTS, _long_prompt()]), [PROMPTS], [[*PROMPTS, _long_prompt()]]:
        for prompts in batch:
            expected = reference(prompts, padding="longest", truncation=True, max_length=MAX_TOKENS)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ids, mask = ours(prompts)
            assert ids.tolist() == expected["input_ids"]
            assert mask.tolist() == expected["attention_mask"]
            assert ids.dtype == mask.dtype == np.int64


def test_long_prompts_are_truncated_at_512_with_a_warning() -> None:
    tokenizer = PromptTokenizer.from_file(PACKAGED_TOKENIZER / "tokenizer.json")
    with pytest.warns(UserWarning, match=r"1 prompt\(s\) have \d+ tokens; .* first 512"):
        ids, mask = tokenizer([_long_prompt(), "short"])
    assert ids.shape == (2, MAX_TOKENS) and ids[0, 0] == 0 and ids[0, -1] == 2
    assert mask[1].sum() < MAX_TOKENS and ids[1, -1] == 1  # padded with <pad>, id 1


def test_short_batches_are_padded_to_the_longest_not_to_512() -> None:
    tokenizer = PromptTokenizer.from_file(PACKAGED_TOKENIZER / "tokenizer.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids, mask = tokenizer(["a", "a red circle on a blue background"])
    assert ids.shape[1] == mask[1].sum() < 32


# --- end to end: the exported tiny model against the torch backend -----------------------------

PARITY_RUN = {
    "prompt": "a red circle on a blue background",
    "num_inference_steps": 12,
    "width": 128,
    "height": 128,
    "seed": 1234,
}


def psnr(first: Any, second: Any) -> float:
    a = np.asarray(first, dtype=np.float64)
    b = np.asarray(second, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


@pytest.fixture(scope="module")
def exported_fp32(exported_tiny_fp32: Path) -> Path:
    return exported_tiny_fp32


@pytest.fixture(scope="module")
def exported_fp16(exported_tiny_fp16: Path) -> Path:
    return exported_tiny_fp16


@pytest.fixture(scope="module")
def torch_image(tiny_model: Path) -> Any:
    pipe = Pipeline.from_pretrained(str(tiny_model), backend="torch")
    return pipe(**PARITY_RUN).images[0]


def test_onnx_cpu_fp32_matches_torch_cpu_fp32(exported_fp32: Path, torch_image: Any) -> None:
    pipe = Pipeline.from_pretrained(str(exported_fp32), backend="onnx")
    image = pipe(**PARITY_RUN).images[0]
    value = psnr(image, torch_image)
    print(f"\nPSNR ONNX Runtime CPU fp32 vs torch CPU fp32: {value:.2f} dB")
    assert value >= 45.0


def test_onnx_cpu_fp16_is_close_to_torch_cpu_fp32(exported_fp16: Path, torch_image: Any) -> None:
    try:
        pipe = Pipeline.from_pretrained(str(exported_fp16), backend="onnx", dtype="fp16")
        image = pipe(**PARITY_RUN).images[0]
    except EngineError as exc:  # an fp16 kernel the CPU provider lacks
        pytest.skip(f"fp16 graphs do not run on ONNX Runtime's CPU provider: {exc}")
    value = psnr(image, torch_image)
    print(f"\nPSNR ONNX Runtime CPU fp16 vs torch CPU fp32: {value:.2f} dB")
    assert value >= 35.0


def test_exported_text_encoder_matches_torch_on_russian_and_long_prompts(
    exported_fp32: Path, tiny_model: Path
) -> None:
    torch_encoder = Pipeline.from_pretrained(str(tiny_model), backend="torch").components
    onnx_encoder = load_components(str(exported_fp32)).text_encoder
    prompts = [PROMPTS[0], PROMPTS[1], ""]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for batch in ([p] for p in [*prompts, _long_prompt()]), [prompts]:
            for group in batch:
                expected = torch_encoder.ops.to_host(torch_encoder.text_encoder(group))
                np.testing.assert_allclose(onnx_encoder(group), expected, atol=2e-4, rtol=1e-3)
