"""The torch backend's GPU fast path (`sdxs_rt.backends.torch.fast`).

On CPU: torch.compile and channels-last give the eager output; the CUDA-graph wrapper's logic
(capture once per shape, replay into the same static buffers, re-capture on a new shape) runs
with an injected capture that records the ATen operations and replays only them, on the
captured tensors (`RecordedGraph`: a stale static buffer shows as a stale output); the
text-encoder offload moves weights as it should; the whole pipeline with every option on
gives the same image. The `gpu` tests run the real thing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten, tree_unflatten  # noqa: E402

from sdxs_rt.backends.torch.fast import (  # noqa: E402
    ENV_CHANNELS_LAST,
    ENV_COMPILE,
    ENV_CUDA_GRAPHS,
    CudaGraphUNet,
    FastPathOptions,
    OffloadedTextEncoder,
    StaticStep,
    accelerate_unet,
    channels_last_unet,
    compile_unet,
    load_timestep,
)
from sdxs_rt.backends.torch.loader import load_components  # noqa: E402
from sdxs_rt.backends.torch.ops import TorchOps  # noqa: E402
from sdxs_rt.backends.torch.unet import TorchUNet  # noqa: E402
from sdxs_rt.errors import UsageError  # noqa: E402
from sdxs_rt.loading import resolve_model  # noqa: E402
from sdxs_rt.pipeline import Pipeline, StepEvent  # noqa: E402

CONTEXT_DIM = 1152
RTOL = 1e-4


def load_unet(model: Path, device: str = "cpu", dtype: Any = None) -> TorchUNet:
    files = resolve_model(str(model))
    return TorchUNet.load(files.unet_dir, files.unet_weights, device, dtype or torch.float32)


def inputs(batch: int = 1, side: int = 8, seed: int = 0) -> tuple[Any, Any]:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 16, side, side, generator=generator)
    context = torch.randn(batch, 1, CONTEXT_DIM, generator=generator)
    return sample, context


def assert_close(actual: Any, expected: Any, rtol: float = RTOL) -> None:
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= rtol * max(scale, 1.0)


# --- torch.compile and channels-last ------------------------------------------------------------


def test_compiled_unet_traces_to_the_eager_output(tiny_model: Path) -> None:
    # dynamo traces the diffusers U-Net (folded attention included); aot_eager keeps it quick
    unet = load_unet(tiny_model)
    compiled = compile_unet(unet, "default", backend="aot_eager")
    sample, context = inputs()
    expected = unet(sample, 500.0, context)
    assert compiled.unet is not unet.unet  # the original stays eager
    assert_close(compiled(sample, 500.0, context), expected)
    assert_close(compiled(sample, 20.0, context), unet(sample, 20.0, context))


@pytest.mark.slow
def test_inductor_compiled_unet_equals_eager(tiny_model: Path) -> None:
    unet = load_unet(tiny_model)
    compiled = compile_unet(unet, "default")
    sample, context = inputs()
    assert_close(compiled(sample, 500.0, context), unet(sample, 500.0, context))


def test_compile_refuses_an_unknown_mode(tiny_model: Path) -> None:
    with pytest.raises(UsageError, match="compile mode"):
        compile_unet(load_unet(tiny_model), "fastest")


def test_channels_last_equals_contiguous(tiny_model: Path) -> None:
    sample, context = inputs(batch=2)
    expected = load_unet(tiny_model)(sample, 300.0, context)
    unet = channels_last_unet(load_unet(tiny_model))
    conv_weight = unet.unet.conv_in.weight
    assert conv_weight.is_contiguous(memory_format=torch.channels_last)
    out = unet(sample, 300.0, context)
    assert out.is_contiguous()  # the pipeline's latents stay plain NCHW
    assert_close(out, expected)


def test_timestep_tensor_is_a_0d_float32_device_tensor(tiny_model: Path) -> None:
    unet = load_unet(tiny_model)
    for value in (999, 12.5, np.int64(7), torch.tensor([3.0])):
        t = unet.timestep_tensor(value)
        assert t.shape == () and t.dtype == torch.float32 and t.device == unet.device


# --- CUDA graphs, with an injected capture ------------------------------------------------------


class Slot:
    """Output `position` of recorded operation `op`: a tensor made during capture."""

    def __init__(self, op: int, position: int) -> None:
        self.op, self.position = op, position


class OperationRecorder(TorchDispatchMode):
    """Records every ATen operation run inside it, each input either a Slot (made during the
    recording) or the very tensor object it read (a static buffer, a weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, list[Any], Any]] = []
        self.slots: dict[int, Slot] = {}
        self.made: list[Any] = []  # alive until the end, so no id() is reused

    def ref(self, value: Any) -> Any:
        return self.slots.get(id(value), value) if isinstance(value, torch.Tensor) else value

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        flat, spec = tree_flatten((args, kwargs or {}))
        self.ops.append((func, [self.ref(v) for v in flat], spec))
        for position, value in enumerate(tree_flatten(out)[0]):
            if isinstance(value, torch.Tensor) and id(value) not in self.slots:
                self.slots[id(value)] = Slot(len(self.ops) - 1, position)
                self.made.append(value)
        return out


class RecordedGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU, with its semantics.

    Capture records the tensor operations `fn` runs, bound to the tensors they read (as a
    graph records kernels bound to addresses); replay re-runs only those operations, on the
    current contents of the same tensors, into the same output tensor. The Python that ran
    during capture is not run again: whatever it decided (a cache hit, a branch, a value read
    to the host) stays frozen. So a replay sees new inputs only when they were copied into the
    captured buffers; fed any other way, it returns what the capture computed.
    """

    def __init__(self, fn: Callable[[], Any]) -> None:
        recorder = OperationRecorder()
        with recorder:
            self.output = fn()
        self.ops, self.result = recorder.ops, recorder.ref(self.output)
        assert isinstance(self.result, Slot), "the captured function must compute its output"
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        made: list[list[Any]] = []
        for func, refs, spec in self.ops:
            flat = [made[r.op][r.position] if isinstance(r, Slot) else r for r in refs]
            args, kwargs = tree_unflatten(flat, spec)
            made.append(tree_flatten(func(*args, **kwargs))[0])
        self.output.copy_(made[self.result.op][self.result.position])


class RecordingCapture:
    """`GraphCapture` for CudaGraphUNet: warms `fn` up once (as capture_cuda_graph does, so
    anything cached during warm-up would be frozen into the graph), then records it."""

    def __init__(self) -> None:
        self.graphs: list[RecordedGraph] = []

    def __call__(self, fn: Callable[[], Any]) -> tuple[RecordedGraph, Any]:
        fn()
        graph = RecordedGraph(fn)
        self.graphs.append(graph)
        return graph, graph.output


def buffer_pointers(step: Any) -> list[int]:
    return [t.data_ptr() for t in (step.sample, step.timestep, step.context, step.output)]


def test_cuda_graph_unet_captures_once_per_shape_and_replays_in_place(tiny_model: Path) -> None:
    eager = load_unet(tiny_model)
    capture = RecordingCapture()
    graphed = CudaGraphUNet(eager, capture=capture)
    sample, context = inputs()
    first = graphed(sample, 900.0, context)
    step = next(iter(graphed.steps.values()))
    pointers = buffer_pointers(step)
    for t_value, seed in ((500.0, 1), (20.0, 2)):
        sample, context = inputs(seed=seed)
        out = graphed(sample, t_value, context)
        assert_close(out, eager(sample, t_value, context))
        assert torch.equal(step.sample, sample) and torch.equal(step.context, context)
        assert step.timestep.item() == t_value
        assert out.data_ptr() != step.output.data_ptr()  # a copy: the next replay overwrites
    assert len(capture.graphs) == 1 and capture.graphs[0].replays == 3
    assert buffer_pointers(step) == pointers  # the same static buffers, refilled in place
    assert not torch.equal(first, out)


def check_fresh_inputs_reach_every_replay(tiny_model: Path) -> None:
    """After the capture, two different inputs give two different outputs, each the eager one."""
    eager = load_unet(tiny_model)
    graphed = CudaGraphUNet(eager, capture=RecordingCapture())
    sample, context = inputs(seed=10)
    captured = graphed(sample, 900.0, context)
    outputs = []
    for t_value, seed in ((500.0, 11), (20.0, 12)):
        sample, context = inputs(seed=seed)
        outputs.append(graphed(sample, t_value, context))
        assert_close(outputs[-1], eager(sample, t_value, context))
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], captured)


def test_fresh_inputs_reach_every_replay(tiny_model: Path) -> None:
    check_fresh_inputs_reach_every_replay(tiny_model)


def test_a_step_that_fills_new_tensors_instead_of_its_buffers_is_caught(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def rebinding_load(step: StaticStep, sample: Any, timestep: Any, context: Any) -> None:
        # the broken variant: fresh tensors, which the captured graph never reads
        step.sample = sample.to(step.sample.dtype).clone()
        step.timestep = torch.full((), float(timestep))
        step.context = context.to(step.context.dtype).clone()

    monkeypatch.setattr(StaticStep, "load", rebinding_load)
    with pytest.raises(AssertionError):
        check_fresh_inputs_reach_every_replay(tiny_model)


def test_what_python_read_during_capture_stays_frozen(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The stand-in's own fidelity: a step that reads the timestep to the host bakes the capture's
    # value into a real graph; RecordedGraph replays that value too, where re-running the
    # Python (as a plain fake would) would quietly follow the new timesteps.
    real_run = TorchUNet.run

    def host_timestep(unet: TorchUNet, x: Any, t: Any, context: Any) -> Any:
        return real_run(unet, x, torch.full((), t.item()), context)

    monkeypatch.setattr(TorchUNet, "run", host_timestep)
    with pytest.raises(AssertionError):
        check_fresh_inputs_reach_every_replay(tiny_model)


def test_cuda_graph_unet_recaptures_for_a_new_shape(tiny_model: Path) -> None:
    eager = load_unet(tiny_model)
    capture = RecordingCapture()
    graphed = CudaGraphUNet(eager, capture=capture)
    small, small_context = inputs(batch=1, side=8)
    batch, batch_context = inputs(batch=2, side=16, seed=3)
    for _ in range(2):
        assert_close(graphed(small, 100.0, small_context), eager(small, 100.0, small_context))
        assert_close(graphed(batch, 100.0, batch_context), eager(batch, 100.0, batch_context))
    assert len(capture.graphs) == 2 and len(graphed.steps) == 2
    graphed.clear()
    graphed(small, 100.0, small_context)
    assert len(capture.graphs) == 3


def test_a_new_context_in_the_same_buffer_is_not_served_from_the_fold_cache(
    tiny_model: Path,
) -> None:
    # a captured graph must compute the folded cross-attention from its static context buffer
    eager = load_unet(tiny_model)
    graphed = CudaGraphUNet(eager, capture=RecordingCapture())
    sample, context_a = inputs(seed=4)
    _, context_b = inputs(seed=5)
    graphed(sample, 400.0, context_a)
    assert_close(graphed(sample, 400.0, context_b), eager(sample, 400.0, context_b))


def test_cuda_graph_unet_is_eager_off_cuda(tiny_model: Path) -> None:
    eager = load_unet(tiny_model)
    graphed = CudaGraphUNet(eager)
    sample, context = inputs()
    assert not graphed.enabled
    assert_close(graphed(sample, 250.0, context), eager(sample, 250.0, context))
    assert graphed.steps == {} and graphed.folded_blocks == eager.folded_blocks


def test_timestep_is_loaded_in_place() -> None:
    buffer = torch.zeros(())
    pointer = buffer.data_ptr()
    load_timestep(buffer, 981)
    assert buffer.item() == 981.0
    load_timestep(buffer, torch.tensor([42.0]))
    assert buffer.item() == 42.0 and buffer.data_ptr() == pointer


def test_accelerate_unet_off_cuda_skips_graphs(tiny_model: Path) -> None:
    options = FastPathOptions(cuda_graphs=True, channels_last=True)
    unet = accelerate_unet(load_unet(tiny_model), options)
    assert isinstance(unet, TorchUNet) and unet.memory_format == torch.channels_last


# --- options ------------------------------------------------------------------------------------


def test_options_from_env() -> None:
    assert FastPathOptions.from_env({}) is None
    env = {ENV_CUDA_GRAPHS: "1", ENV_COMPILE: "max-autotune-no-cudagraphs", ENV_CHANNELS_LAST: "0"}
    options = FastPathOptions.from_env(env)
    assert options == FastPathOptions(cuda_graphs=True, compile="max-autotune-no-cudagraphs")
    info = options.info(torch.device("cpu"))
    assert info["cuda_graphs"] and not info["cuda_graphs_active"]


def test_options_refuse_bad_combinations() -> None:
    with pytest.raises(UsageError, match="unknown compile mode"):
        FastPathOptions(compile="turbo")
    with pytest.raises(UsageError, match="records CUDA graphs itself"):
        FastPathOptions(cuda_graphs=True, compile="reduce-overhead")


# --- text encoder offload -----------------------------------------------------------------------


class RecordingLinear(nn.Linear):
    def __init__(self, moves: list[str]) -> None:
        super().__init__(2, 2)
        self.moves = moves

    def to(self, *args: Any, **kwargs: Any) -> RecordingLinear:  # type: ignore[override]
        self.moves.append(str(args[0]))
        return self


class FakeEncoder:
    def __init__(self) -> None:
        self.moves: list[str] = []
        self.width = 2
        self.tower = RecordingLinear(self.moves)
        self.projection = RecordingLinear(self.moves)
        self.calls: list[list[str]] = []

    def __call__(self, prompts: list[str]) -> Any:
        self.calls.append(list(prompts))
        self.moves.append("encode")
        return torch.full((len(prompts), 2), float(len(self.calls)))


def test_offload_parks_weights_and_brings_them_back_only_for_a_new_prompt() -> None:
    inner = FakeEncoder()
    encoder = OffloadedTextEncoder(inner, torch.device("cuda"), active=True)
    assert inner.moves == ["cpu", "cpu"] and encoder.width == 2  # parked at once
    inner.moves.clear()
    first = encoder(["a cat"])
    assert inner.moves == ["cuda", "cuda", "encode", "cpu", "cpu"]
    inner.moves.clear()
    assert encoder(["a cat"]) is first and inner.moves == []  # seen: no weights move
    second = encoder(["a dog"])
    assert inner.moves == ["cuda", "cuda", "encode", "cpu", "cpu"]
    assert not torch.equal(first, second) and encoder.loads == 2


def test_offload_is_a_no_op_on_cpu() -> None:
    inner = FakeEncoder()
    encoder = OffloadedTextEncoder(inner, torch.device("cpu"))
    encoder(["a cat"])
    assert inner.moves == ["encode"] and encoder.loads == 0


def test_offload_forgets_the_oldest_prompt() -> None:
    inner = FakeEncoder()
    encoder = OffloadedTextEncoder(inner, torch.device("cpu"), cache_size=2)
    for prompt in ("a", "b", "c", "a"):
        encoder([prompt])
    assert inner.calls == [["a"], ["b"], ["c"], ["a"]]


# --- pinned staging ------------------------------------------------------------------------------


def test_pinned_staging_is_a_no_op_on_cpu() -> None:
    ops = TorchOps("cpu", pinned_staging=True)
    assert not ops.pinned_staging
    noise = np.random.default_rng(0).standard_normal((1, 16, 4, 4), dtype=np.float32)
    out = ops.from_host(noise)
    assert torch.equal(out, TorchOps("cpu").from_host(noise)) and out.device.type == "cpu"


# --- the whole pipeline -------------------------------------------------------------------------


def generate(components: Any, steps: int = 3, guidance: float = 5.5) -> np.ndarray:
    pipe = Pipeline(components)
    result = pipe("a red fox", num_inference_steps=steps, guidance_scale=guidance,
                  width=64, height=64, seed=7)  # fmt: skip
    return np.asarray(result.images[0], dtype=np.int16)


def test_pipeline_image_is_the_same_with_the_fast_path(tiny_model: Path) -> None:
    reference = generate(load_components(str(tiny_model), fast=None))
    options = FastPathOptions(cuda_graphs=True, channels_last=True, offload_text_encoder=True)
    components = load_components(str(tiny_model), fast=options)
    assert components.info["fast_path"]["channels_last"]
    assert "fast_path" not in load_components(str(tiny_model)).info
    assert np.abs(generate(components) - reference).max() <= 1


def test_pipeline_image_is_the_same_through_graph_replays(tiny_model: Path) -> None:
    components = load_components(str(tiny_model))
    reference = generate(components, steps=4)
    capture = RecordingCapture()
    components.unet = CudaGraphUNet(components.unet, capture=capture)  # type: ignore[arg-type]
    assert np.abs(generate(components, steps=4) - reference).max() <= 1
    assert len(capture.graphs) == 1 and capture.graphs[0].replays == 4


def test_fast_path_from_the_environment(tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_CHANNELS_LAST, "1")
    components = load_components(str(tiny_model))
    assert components.info["fast_path"]["channels_last"]
    assert components.unet.memory_format == torch.channels_last  # type: ignore[attr-defined]


@pytest.mark.slow
def test_pipeline_image_is_the_same_compiled(tiny_model: Path) -> None:
    reference = generate(load_components(str(tiny_model)))
    components = load_components(str(tiny_model), fast=FastPathOptions(compile="default"))
    assert np.abs(generate(components) - reference).max() <= 1


# --- on a real GPU ------------------------------------------------------------------------------


def _cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@contextmanager
def sync_debug_errors() -> Iterator[None]:
    """Any host<->device synchronisation inside raises."""
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager_fp16(tiny_model: Path) -> None:
    _cuda()
    eager = load_unet(tiny_model, "cuda", torch.float16)
    graphed = CudaGraphUNet(eager)
    for batch, side, seed in ((2, 8, 0), (2, 8, 1), (1, 16, 2), (2, 8, 3)):
        sample, context = (t.cuda() for t in inputs(batch, side, seed))
        for t_value in (999.0, 500.0, 1.0):
            assert_close(graphed(sample, t_value, context), eager(sample, t_value, context), 2e-3)
    assert len(graphed.steps) == 2


@pytest.mark.gpu
def test_sampling_loop_never_synchronises_the_host(tiny_model: Path) -> None:
    _cuda()
    options = FastPathOptions(cuda_graphs=True, channels_last=True, offload_text_encoder=True)
    components = load_components(str(tiny_model), device="cuda", precision="fp16", fast=options)
    reference = generate(components, steps=4)  # captures the graphs, caches the embeddings
    pipe = Pipeline(components)
    events = pipe.generate("a red fox", num_inference_steps=4, width=64, height=64, seed=7)
    steps = 0
    with sync_debug_errors():
        for event in events:
            assert isinstance(event, StepEvent)
            steps += 1
            if event.step == event.total_steps - 1:  # stop before decoding, which may sync
                break
    assert steps == 4
    assert np.abs(generate(components, steps=4) - reference).max() <= 1


@pytest.mark.gpu
def test_fast_path_image_matches_eager_on_cuda(tiny_model: Path) -> None:
    _cuda()
    eager = generate(load_components(str(tiny_model), device="cuda", precision="fp16"))
    options = FastPathOptions(cuda_graphs=True, channels_last=True, offload_text_encoder=True)
    fast = load_components(str(tiny_model), device="cuda", precision="fp16", fast=options)
    assert fast.info["fast_path"]["cuda_graphs_active"]
    assert isinstance(fast.unet, CudaGraphUNet)
    assert np.abs(generate(fast) - eager).max() <= 2


@pytest.mark.gpu
@pytest.mark.slow
def test_compiled_cuda_graph_unet_equals_eager(tiny_model: Path) -> None:
    _cuda()
    eager = load_unet(tiny_model, "cuda", torch.float16)
    graphed = CudaGraphUNet(compile_unet(eager, "max-autotune-no-cudagraphs"))
    sample, context = (t.cuda() for t in inputs(2))
    assert_close(graphed(sample, 700.0, context), eager(sample, 700.0, context), 5e-3)
