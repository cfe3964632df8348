"""Run a TensorRT engine on torch CUDA tensors, optionally replaying a captured CUDA graph.

The tensor-name API in use, the same in the TensorRT 10.0 and 11.x Python bindings (none of it is
among 11.x's removals): `Runtime.deserialize_cuda_engine`; the engine's I/O tensors
(`num_io_tensors`, `get_tensor_name`, `get_tensor_mode`, `get_tensor_dtype`,
`get_tensor_shape`, `get_tensor_profile_shape`); an execution context's `set_input_shape`,
`get_tensor_shape`, `set_tensor_address` and `execute_async_v3(stream)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdxs_rt.backends.tensorrt.builder import tensorrt_logger
from sdxs_rt.backends.tensorrt.cache import CachedEngine
from sdxs_rt.backends.tensorrt.environment import Environment, check_engine, rebuild_advice
from sdxs_rt.errors import EngineError, UsageError

Shape = tuple[int, ...]


def torch_dtypes(trt: Any) -> dict[Any, torch.dtype]:
    """trt.DataType -> torch dtype, for the I/O types the exported graphs use."""
    pairs = [
        ("FLOAT", torch.float32),
        ("HALF", torch.float16),
        ("BF16", torch.bfloat16),
        ("INT32", torch.int32),
        ("INT64", torch.int64),
        ("BOOL", torch.bool),
    ]
    return {
        getattr(trt.DataType, name): dtype for name, dtype in pairs if hasattr(trt.DataType, name)
    }


class StreamSync:
    """TensorRT's own CUDA stream, ordered after and before torch's current stream."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    @property
    def handle(self) -> int:
        return int(self.stream.cuda_stream)

    def before(self) -> None:
        self.stream.wait_stream(torch.cuda.current_stream(self.device))

    def after(self) -> None:
        torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def capture(self, enqueue: Callable[[int], object]) -> Callable[[], None]:
        """Record `enqueue(stream)` into a CUDA graph; returns its replay."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=self.stream):
            enqueue(self.handle)
        return graph.replay


def deserialize(
    trt: Any, cached: CachedEngine, environment: Environment, model_dir: str | Path | None = None
) -> tuple[Any, Any]:
    """(runtime, engine), after checking the sidecar against this machine."""
    reason = check_engine(cached.sidecar, environment, model_dir=model_dir)
    if reason:
        raise EngineError(reason)
    runtime = trt.Runtime(tensorrt_logger(trt))
    engine = runtime.deserialize_cuda_engine(cached.engine_path.read_bytes())
    if engine is None:
        raise EngineError(
            f"TensorRT could not load the {cached.graph} engine {cached.engine_path} "
            f"(damaged, or written by another TensorRT); {rebuild_advice(model_dir)}"
        )
    return runtime, engine


@dataclass
class CapturedGraph:
    shapes: tuple[Shape, ...]
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    replay: Callable[[], None]


class TrtEngine:
    """A deserialised engine as a callable: {input name: tensor} -> {output name: tensor}."""

    def __init__(
        self,
        trt: Any,
        engine: Any,
        device: torch.device,
        stream: Any = None,
        cuda_graph: bool = False,
    ) -> None:
        self.trt, self.engine, self.device = trt, engine, torch.device(device)
        self.context = engine.create_execution_context()
        if self.context is None:
            raise EngineError("TensorRT could not create an execution context (GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.inputs = [n for n in names if is_input[n]]
        self.outputs = [n for n in names if not is_input[n]]
        self.dtypes = {n: self._torch_dtype(n) for n in names}
        self.profiles = {n: self._profile(n) for n in self.inputs if self._dynamic(n)}
        self.stream = stream if stream is not None else StreamSync(self.device)
        self.cuda_graph = cuda_graph
        self.captured: CapturedGraph | None = None
        self.runtime: Any = None  # set by the loader: TensorRT's runtime must outlive the engine

    def input_rank(self, name: str) -> int:
        return len(tuple(self.engine.get_tensor_shape(name)))

    def __call__(self, feeds: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {name: self._prepare(name, feeds) for name in self.inputs}
        for name, tensor in inputs.items():
            self._check_profile(name, tuple(tensor.shape))
        if self.cuda_graph:
            return self._replay(inputs)
        return self._run(inputs)

    def _torch_dtype(self, name: str) -> torch.dtype:
        trt_dtype = self.engine.get_tensor_dtype(name)
        dtype = torch_dtypes(self.trt).get(trt_dtype)
        if dtype is None:
            raise EngineError(f"the engine's tensor {name!r} has type {trt_dtype}, not supported")
        return dtype

    def _dynamic(self, name: str) -> bool:
        return any(dim < 0 for dim in tuple(self.engine.get_tensor_shape(name)))

    def _profile(self, name: str) -> tuple[Shape, Shape, Shape]:
        low, opt, high = self.engine.get_tensor_profile_shape(name, 0)
        return tuple(low), tuple(opt), tuple(high)

    def _prepare(self, name: str, feeds: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if name not in feeds:
            raise EngineError(f"the engine needs an input {name!r}; got {', '.join(feeds)}")
        return feeds[name].to(self.device, self.dtypes[name]).contiguous()

    def _check_profile(self, name: str, shape: Shape) -> None:
        if name not in self.profiles:
            return
        low, _, high = self.profiles[name]
        fits = len(shape) == len(low) and all(
            lo <= dim <= hi for dim, lo, hi in zip(shape, low, high, strict=True)
        )
        if not fits:
            raise UsageError(
                f"input {name} of shape {_dims(shape)} is outside this engine's profile "
                f"({_dims(low)} to {_dims(high)}); rebuild with "
                "`sdxs-rt engine build --model DIR --min-size/--max-size/--max-batch`"
            )

    def _bind(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Set the input shapes and addresses; allocate and bind the outputs."""
        for name, tensor in inputs.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise UsageError(f"the engine refused input {name} of shape {tuple(tensor.shape)}")
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {
            name: torch.empty(
                tuple(self.context.get_tensor_shape(name)),
                dtype=self.dtypes[name],
                device=self.device,
            )
            for name in self.outputs
        }
        for name, tensor in outputs.items():
            self.context.set_tensor_address(name, tensor.data_ptr())
        return outputs

    def _enqueue(self, stream_handle: int) -> None:
        if not self.context.execute_async_v3(stream_handle):
            raise EngineError("TensorRT failed to run the engine (see its messages above)")

    def _run(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        outputs = self._bind(inputs)
        self.stream.before()
        try:
            self._enqueue(self.stream.handle)
        finally:
            self.stream.after()
        return outputs

    def _replay(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run through a CUDA graph captured for these shapes (captured again when they change)."""
        shapes = tuple(tuple(t.shape) for t in inputs.values())
        if self.captured is None or self.captured.shapes != shapes:
            self.captured = None  # release the old graph and buffers before capturing anew
            self.captured = self._capture(inputs, shapes)
        else:
            for name, tensor in inputs.items():
                self.captured.inputs[name].copy_(tensor)
        self.captured.replay()
        return {name: tensor.clone() for name, tensor in self.captured.outputs.items()}

    def _capture(
        self, inputs: Mapping[str, torch.Tensor], shapes: tuple[Shape, ...]
    ) -> CapturedGraph:
        static_inputs = {name: tensor.clone() for name, tensor in inputs.items()}
        # TensorRT needs one run after input shapes change before a capture.
        static_outputs = self._run(static_inputs)
        replay = self.stream.capture(self._enqueue)
        return CapturedGraph(shapes, static_inputs, static_outputs, replay)


def _dims(shape: Shape) -> str:
    return "x".join(str(dim) for dim in shape) or "scalar"
