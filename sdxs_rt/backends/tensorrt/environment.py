"""The machine an engine runs on, and the check that an engine was built for it.

TensorRT engines only load with the TensorRT version and GPU kind they were built with. The
check compares an engine's sidecar with the running environment BEFORE deserialising, so a
stale or foreign engine becomes a clear "rebuild" message instead of a crash. Nothing here
imports torch or tensorrt at import time.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdxs_rt.errors import DeviceError

TENSORRT_MISSING = (
    "TensorRT is not installed; pip install 'sdxs-rt[tensorrt]' on a machine with an NVIDIA GPU"
)

# The key fields that must match the running machine, with their names for messages.
MACHINE_FIELDS = (
    ("tensorrt_version", "TensorRT"),
    ("compute_capability", "GPU compute capability"),
    ("os", "OS"),
)

# CUdevice_attribute values of the CUDA driver API (cuda.h).
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


@dataclass(frozen=True)
class Environment:
    """What an engine build depends on (the key's machine part) plus facts for the record."""

    tensorrt_version: str | None
    cuda_version: str | None
    gpu_name: str | None
    compute_capability: str | None  # "8.9"
    os: str  # "Linux-x86_64"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GpuFacts:
    name: str | None = None
    compute_capability: str | None = None
    cuda_version: str | None = None


def current_environment(device_index: int = 0) -> Environment:
    gpu = gpu_facts(device_index)
    return Environment(
        tensorrt_version=tensorrt_version(),
        cuda_version=gpu.cuda_version,
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        os=os_name(),
    )


def os_name() -> str:
    return f"{platform.system()}-{platform.machine()}"


def tensorrt_version() -> str | None:
    try:
        import tensorrt
    except Exception:  # ImportError, or a wheel whose native libraries do not load
        return None
    return str(getattr(tensorrt, "__version__", "")) or None


def gpu_facts(device_index: int = 0) -> GpuFacts:
    """GPU name, compute capability and CUDA version: via torch.cuda, else the CUDA driver."""
    return _torch_gpu_facts(device_index) or _driver_gpu_facts(device_index) or GpuFacts()


def _torch_gpu_facts(device_index: int) -> GpuFacts | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability(device_index)
    return GpuFacts(
        name=torch.cuda.get_device_name(device_index),
        compute_capability=f"{major}.{minor}",
        cuda_version=torch.version.cuda,
    )


def _driver_gpu_facts(device_index: int) -> GpuFacts | None:
    """Without a CUDA torch: cuInit, cuDeviceGet, cuDeviceGetAttribute, cuDeviceGetName."""
    driver = _cuda_driver()
    if driver is None:
        return None
    device, major, minor, version = (ctypes.c_int() for _ in range(4))
    name = ctypes.create_string_buffer(256)
    if driver.cuInit(0) != 0 or driver.cuDeviceGet(ctypes.byref(device), device_index) != 0:
        return None
    driver.cuDeviceGetAttribute(
        ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device
    )
    driver.cuDeviceGetAttribute(
        ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device
    )
    driver.cuDeviceGetName(name, len(name), device)
    driver.cuDriverGetVersion(ctypes.byref(version))
    return GpuFacts(
        name=name.value.decode(errors="replace") or None,
        compute_capability=f"{major.value}.{minor.value}",
        cuda_version=f"{version.value // 1000}.{version.value % 1000 // 10} (driver)",
    )


def _cuda_driver() -> Any:
    names = ["nvcuda.dll"] if platform.system() == "Windows" else ["libcuda.so.1", "libcuda.so"]
    found = ctypes.util.find_library("cuda")
    for name in [*names, *([found] if found else [])]:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def require_gpu(environment: Environment) -> Environment:
    """TensorRT importable and a CUDA GPU visible, or a DeviceError saying which is missing."""
    if environment.tensorrt_version is None:
        raise DeviceError(TENSORRT_MISSING)
    if environment.compute_capability is None:
        raise DeviceError(
            "TensorRT needs an NVIDIA GPU, but no CUDA device is visible "
            "(check the driver with nvidia-smi, and CUDA_VISIBLE_DEVICES)"
        )
    return environment


def rebuild_advice(model_dir: str | Path | None = None) -> str:
    return f"rebuild with `sdxs-rt engine build --model {model_dir or 'DIR'}`"


def engine_mismatches(
    sidecar: Mapping[str, Any], environment: Environment, onnx_sha256: str | None = None
) -> list[str]:
    """What differs between the engine's key and this machine (and the current graph)."""
    key = sidecar.get("key", {})
    problems = []
    for field, label in MACHINE_FIELDS:
        built, here = key.get(field), getattr(environment, field)
        if built != here:
            problems.append(f"{label} {built or 'unknown'} (this machine: {here or 'none'})")
    if onnx_sha256 is not None and key.get("onnx_sha256") != onnx_sha256:
        problems.append("a different ONNX graph (the model was exported again since)")
    return problems


def check_engine(
    sidecar: Mapping[str, Any],
    environment: Environment,
    onnx_sha256: str | None = None,
    model_dir: str | Path | None = None,
) -> str | None:
    """None when the engine fits this machine, else one sentence: what differs, and the fix."""
    problems = engine_mismatches(sidecar, environment, onnx_sha256)
    if not problems:
        return None
    graph = sidecar.get("graph") or "TensorRT"
    digest = sidecar.get("digest", "")
    return (
        f"the {graph} engine {digest} is stale or foreign: it was built for "
        f"{'; '.join(problems)}; {rebuild_advice(model_dir)}"
    ).replace("  ", " ")
