"""`--device` -> ONNX Runtime execution providers, and the check that a session really uses them.

ONNX Runtime silently falls back to the CPU when a GPU provider cannot start (missing CUDA or
cuDNN libraries, say). A run that asked for a GPU and got the CPU is a `DeviceError` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdxs_rt.errors import DeviceError, UsageError
from sdxs_rt.loading import user_cache_dir

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
DIRECTML = "DmlExecutionProvider"

# `--device auto` picks the first available. The TensorRT provider is left out on purpose: it
# builds an engine for minutes at every new shape, which `auto` should not spring on anyone.
AUTO_ORDER = (CUDA, DIRECTML, CPU)

DEVICE_KINDS = {
    "cpu": CPU,
    "cuda": CUDA,
    "tensorrt": TENSORRT,
    "dml": DIRECTML,
    "directml": DIRECTML,
}
DEVICE_NAME_OF = {CPU: "cpu", CUDA: "cuda", TENSORRT: "tensorrt", DIRECTML: "dml"}
IOBINDING_PROVIDERS = (CUDA, TENSORRT)  # their outputs live in CUDA memory

INSTALL_HINTS = {
    CUDA: "pip uninstall onnxruntime && pip install 'sdxs-rt[gpu]' (onnxruntime-gpu with its "
    "CUDA and cuDNN wheels)",
    TENSORRT: "pip uninstall onnxruntime && pip install 'sdxs-rt[gpu]' (onnxruntime-gpu with its "
    "CUDA and cuDNN wheels) and the TensorRT libraries",
    DIRECTML: "pip uninstall onnxruntime && pip install onnxruntime-directml (Windows)",
}

ProviderSpec = tuple[str, dict[str, Any]]  # what `InferenceSession(providers=[...])` accepts


@dataclass(frozen=True)
class ProviderPlan:
    """The providers every session of a model is created with, most wanted first."""

    device: str  # e.g. "cpu", "cuda:1", "tensorrt:0", "dml:0"
    providers: tuple[ProviderSpec, ...]
    device_id: int = 0

    @property
    def primary(self) -> str:
        return self.providers[0][0]

    @property
    def uses_iobinding(self) -> bool:
        return self.primary in IOBINDING_PROVIDERS

    @property
    def needs_cuda_libraries(self) -> bool:
        """CUDA and TensorRT plans load CUDA and cuDNN (the TensorRT chain holds CUDA too)."""
        return any(name == CUDA for name, _ in self.providers)


def parse_device(device: str) -> tuple[str, int]:
    """'cuda:1' -> ('cuda', 1); 'cpu' -> ('cpu', 0); a name we do not know is a UsageError."""
    name, _, index = device.strip().lower().partition(":")
    if name != "auto" and name not in DEVICE_KINDS:
        raise UsageError(
            f"the onnx backend runs on cpu, cuda, cuda:N, tensorrt, dml (directml) or auto, "
            f"not {device!r}"
        )
    if not index:
        return name, 0
    if not index.isdigit() or name in ("cpu", "auto"):
        raise UsageError(f"device {device!r} is not valid; write e.g. cuda or cuda:1")
    return name, int(index)


def plan_providers(device: str, available: Sequence[str]) -> ProviderPlan:
    """Choose the providers for `device` among `available` (`ort.get_available_providers()`)."""
    name, device_id = parse_device(device)
    wanted = _auto_provider(available) if name == "auto" else DEVICE_KINDS[name]
    if wanted not in available:
        raise DeviceError(
            f"device {device!r} needs ONNX Runtime's {wanted}, but this onnxruntime offers only "
            f"{', '.join(available) or 'none'}; install it with: {INSTALL_HINTS[wanted]}"
        )
    providers = _provider_chain(wanted, device_id)
    label = "cpu" if wanted == CPU else f"{DEVICE_NAME_OF[wanted]}:{device_id}"
    return ProviderPlan(label, providers, device_id)


def _auto_provider(available: Sequence[str]) -> str:
    return next((provider for provider in AUTO_ORDER if provider in available), CPU)


def _provider_chain(wanted: str, device_id: int) -> tuple[ProviderSpec, ...]:
    """The wanted provider first, then the ones ONNX Runtime may hand unsupported nodes to."""
    cuda: ProviderSpec = (CUDA, {"device_id": device_id})
    cpu: ProviderSpec = (CPU, {})
    if wanted == CPU:
        return (cpu,)
    if wanted == CUDA:
        return (cuda, cpu)
    if wanted == TENSORRT:
        return ((TENSORRT, _tensorrt_options(device_id)), cuda, cpu)
    return ((DIRECTML, {"device_id": device_id}), cpu)


def _tensorrt_options(device_id: int) -> dict[str, Any]:
    # Engines take minutes to build: keep them in sdxs-rt's cache instead of rebuilding each run.
    cache = user_cache_dir() / "onnxruntime-tensorrt"
    return {
        "device_id": device_id,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
    }


def check_session_providers(session: Any, plan: ProviderPlan, graph_file: str) -> list[str]:
    """The providers `session` actually uses; DeviceError if the wanted one is not the first."""
    used = list(session.get_providers())
    if not used or used[0] != plan.primary:
        raise DeviceError(
            f"ONNX Runtime could not start {plan.primary} for {graph_file} and would run it on "
            f"{', '.join(used) or 'nothing'} instead; check the GPU driver, CUDA/cuDNN (or "
            "TensorRT/DirectML) libraries that this onnxruntime build needs, or use --device cpu"
        )
    return used
