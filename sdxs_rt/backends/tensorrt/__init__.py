"""The TensorRT backend: builds engines from the exported ONNX graphs and runs them.

Importing this package imports neither tensorrt nor torch: the builder imports TensorRT when a
build starts, and `load_components` (which needs torch and TensorRT) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sdxs_rt.backends.tensorrt.builder import (
    ENGINE_GRAPHS,
    RUNTIME_GRAPHS,
    BuildEvent,
    build_engines,
    engine_graphs,
    import_tensorrt,
)
from sdxs_rt.backends.tensorrt.cache import (
    CachedEngine,
    EngineKey,
    clear_engines,
    engine_cache_dir,
    list_engines,
)
from sdxs_rt.backends.tensorrt.environment import Environment, check_engine, current_environment
from sdxs_rt.backends.tensorrt.profile import (
    check_size,
    check_size_for_model,
    engine_sizes,
    validate_request,
)
from sdxs_rt.errors import DeviceError

if TYPE_CHECKING:
    from sdxs_rt.backends.tensorrt.runtime import TrtEngine
    from sdxs_rt.components import Components

__all__ = [
    "ENGINE_GRAPHS",
    "RUNTIME_GRAPHS",
    "BuildEvent",
    "CachedEngine",
    "EngineKey",
    "Environment",
    "TrtEngine",
    "build_engines",
    "check_engine",
    "check_size",
    "check_size_for_model",
    "clear_engines",
    "current_environment",
    "engine_cache_dir",
    "engine_graphs",
    "engine_sizes",
    "import_tensorrt",
    "list_engines",
    "load_components",
    "validate_request",
]


def load_components(model: Any, **options: Any) -> Components:
    """Components over the cached engines of an exported folder (see `loader.load_components`)."""
    try:
        from sdxs_rt.backends.tensorrt.loader import load_components as load
    except ModuleNotFoundError as exc:
        raise DeviceError(
            f"the tensorrt backend needs the Python package {exc.name!r} (torch runs its "
            "CUDA buffers); install it on the machine with the NVIDIA GPU"
        ) from None
    return load(model, **options)


def __getattr__(name: str) -> Any:
    if name == "TrtEngine":
        from sdxs_rt.backends.tensorrt.runtime import TrtEngine

        return TrtEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
