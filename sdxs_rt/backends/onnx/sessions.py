"""ONNX Runtime sessions for the exported graphs: loading, input dtypes and how a graph runs.

On CUDA and TensorRT a graph runs through an IOBinding (its output is allocated on the GPU by
ONNX Runtime and copied out once); elsewhere through a plain `session.run`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from sdxs_rt.backends.onnx.providers import (
    DIRECTML,
    INSTALL_HINTS,
    ProviderPlan,
    check_session_providers,
)
from sdxs_rt.errors import DeviceError, EngineError, OutOfMemoryError, SdxsError
from sdxs_rt.graphs import GraphEntry
from sdxs_rt.stdout_guard import stdout_to_stderr

# `NodeArg.type` strings -> numpy dtypes, for the tensor types our graphs use.
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
# Manifest dtype strings; "float" means float32 or float16, per the graph's precision.
MANIFEST_TYPES = {
    "float32": np.float32,
    "float16": np.float16,
    "int64": np.int64,
    "int32": np.int32,
}
FLOAT_TYPES = (np.dtype(np.float32), np.dtype(np.float16))
OUT_OF_MEMORY_MARKERS = ("out of memory", "failed to allocate", "bfcarena")
ERRORS_ONLY = 3  # ONNX Runtime's log severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal


class GraphRunner(Protocol):
    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def session_options(plan: ProviderPlan) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Errors only: a provider fallback, ORT's usual warning, is our DeviceError instead.
    options.log_severity_level = ERRORS_ONLY
    if plan.primary == DIRECTML:  # the DirectML provider requires both (its documentation)
        options.enable_mem_pattern = False
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def open_session(folder: Path, entry: GraphEntry, plan: ProviderPlan) -> Any:
    """An InferenceSession for one graph of the manifest, on the planned providers."""
    path = Path(folder) / entry.file
    if not path.is_file():
        raise EngineError(f"{path} is missing; export the model again with 'sdxs-rt export onnx'")
    # ORT prints provider fallbacks and failed preloads on stdout, which belongs to results
    with stdout_to_stderr():
        prepare_runtime(plan)
        session = _create_session(path, plan)
    check_session_providers(session, plan, entry.file)
    # a provider that fails mid-run is then our error, not a fallback ORT prints on stdout
    disable_fallback = getattr(session, "disable_fallback", None)
    if disable_fallback is not None:
        disable_fallback()
    return session


def _create_session(path: Path, plan: ProviderPlan) -> Any:
    try:
        return ort.InferenceSession(
            str(path), sess_options=session_options(plan), providers=list(plan.providers)
        )
    except SdxsError:
        raise
    except Exception as exc:  # onnxruntime's own exceptions derive from Exception only
        raise EngineError(f"ONNX Runtime could not load {path}: {_first_line(exc)}") from None


def prepare_runtime(plan: ProviderPlan) -> None:
    """Before creating a session: ORT's process-wide logger to errors only (a provider that
    cannot start is our DeviceError, not its warning), and for CUDA and TensorRT plans the CUDA
    and cuDNN libraries loaded from the `[gpu]` extra's nvidia wheels, where this onnxruntime
    can (`preload_dlls`, onnxruntime-gpu 1.21+). Never for CPU or DirectML plans."""
    ort.set_default_logger_severity(ERRORS_ONLY)
    if plan.needs_cuda_libraries and hasattr(ort, "preload_dlls"):
        try:
            _preload_once(ort)
        except Exception as exc:
            raise DeviceError(
                f"ONNX Runtime could not load the CUDA and cuDNN libraries {plan.primary} needs "
                f"({_first_line(exc)}); install them with: {INSTALL_HINTS[plan.primary]}, "
                "or use --device cpu"
            ) from None


@functools.cache  # once per process (and per module object); a failure is retried next time
def _preload_once(runtime: Any) -> None:
    runtime.preload_dlls()


def input_dtypes(session: Any, entry: GraphEntry, required: tuple[str, ...]) -> dict[str, Any]:
    """Each input's numpy dtype, as the graph declares it; checked against the manifest."""
    declared = {node.name: node.type for node in session.get_inputs()}
    missing = [name for name in required if name not in declared]
    if missing:
        raise EngineError(
            f"{entry.file} has no input named {', '.join(missing)} (it has "
            f"{', '.join(declared)}); export the model again with this sdxs-rt version"
        )
    dtypes = {name: _numpy_type(entry, name, kind) for name, kind in declared.items()}
    for tensor in entry.inputs:
        _check_manifest_dtype(entry, tensor, dtypes)
    return dtypes


def _numpy_type(entry: GraphEntry, name: str, kind: str) -> np.dtype:
    if kind not in ORT_TYPES:
        raise EngineError(f"{entry.file} input {name!r} has type {kind}, which sdxs-rt never feeds")
    return np.dtype(ORT_TYPES[kind])


def _check_manifest_dtype(
    entry: GraphEntry, tensor: dict[str, Any], dtypes: dict[str, Any]
) -> None:
    name, stated = str(tensor.get("name")), str(tensor.get("dtype", ""))
    actual = dtypes.get(name)
    if actual is None or _dtype_fits(stated, actual):
        return
    raise EngineError(
        f"manifest.json says input {name!r} of {entry.file} is {stated}, but the graph "
        f"takes {actual}; the folder is stale: export the model again"
    )


def _dtype_fits(stated: str, actual: np.dtype) -> bool:
    if stated == "float":
        return actual in FLOAT_TYPES
    if stated in MANIFEST_TYPES:
        return bool(actual == np.dtype(MANIFEST_TYPES[stated]))
    return True  # a spelling this version does not know: the graph itself is the authority


class SessionRunner:
    """`session.run` with host arrays in and host arrays out."""

    def __init__(self, session: Any, graph_file: str) -> None:
        self.session = session
        self.graph_file = graph_file

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            return list(self.session.run(None, feeds))
        except Exception as exc:
            raise run_error(exc, self.graph_file) from None


class IOBindingRunner:
    """Host inputs bound with `bind_cpu_input`, outputs bound to the CUDA device, then copied out.

    API requirements (onnxruntime.IOBinding): a bound host array must stay alive until the run
    (the binding keeps a reference); an output bound by device only is allocated by ONNX Runtime
    at run time, so dynamic output shapes need no pre-allocated buffer.
    """

    def __init__(self, session: Any, graph_file: str, device_id: int) -> None:
        self.session = session
        self.graph_file = graph_file
        self.device_id = device_id
        self.output_names = [node.name for node in session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in self.output_names:
            binding.bind_output(name, "cuda", self.device_id)
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:
            raise run_error(exc, self.graph_file) from None
        return list(binding.copy_outputs_to_cpu())


def make_runner(session: Any, graph_file: str, plan: ProviderPlan) -> GraphRunner:
    if plan.uses_iobinding:
        return IOBindingRunner(session, graph_file, plan.device_id)
    return SessionRunner(session, graph_file)


def run_error(exc: Exception, graph_file: str) -> SdxsError:
    """An ONNX Runtime failure while running a graph, as one of our errors."""
    message = _first_line(exc)
    if any(marker in message.lower() for marker in OUT_OF_MEMORY_MARKERS):
        return OutOfMemoryError(
            f"{graph_file} ran out of memory ({message}); try a smaller size or batch"
        )
    return EngineError(f"ONNX Runtime failed running {graph_file}: {message}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
