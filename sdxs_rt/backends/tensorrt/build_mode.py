"""How an engine gets its precision: decided once per build, by what the installed TensorRT has.

TensorRT 11 builds strongly typed networks only: every tensor keeps the dtype the ONNX graph
gives it, and the precision flags of weak typing (`BuilderFlag.FP16` among them) are removed.
Every TensorRT 10.x (like 9.1+) offers both: `NetworkDefinitionCreationFlag.STRONGLY_TYPED`, and
weakly typed networks in which `BuilderFlag.FP16` (deprecated since 10.12) lets the builder pick
fp16 kernels for an fp32 graph. The flag's value differs (1 in 10.x, 0 in 11.x, where it is
ignored because strong typing is always on), so it is read from the module, never hard-coded.

The rule: graphs already in the requested precision -> strongly typed (the engine runs the graph
the exporter checked, float32 islands included); fp32 graphs and an fp16 request -> the FP16
flag where it still exists (10.x); anything else is refused, naming the export that fixes it.
Nothing here imports tensorrt: the module is handed in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdxs_rt.errors import DeviceError, UsageError

STRONGLY_TYPED = "strongly-typed"
FP16_FLAG = "fp16-flag"  # weakly typed network + BuilderFlag.FP16 (TensorRT 10.x only)
# Sidecars written before the mode was recorded: create_network(0), plus the FP16 flag for fp16.
LEGACY_WEAKLY_TYPED = "weakly-typed"


def has_strong_typing(trt: Any) -> bool:
    return hasattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED")


def has_fp16_flag(trt: Any) -> bool:
    return hasattr(getattr(trt, "BuilderFlag", None), "FP16")


def choose_build_mode(trt: Any, requested: str, graphs: str, folder: Path, model: str) -> str:
    """The mode that builds `requested` engines from `graphs`-precision ONNX graphs, or refuse.

    `model` is the exported model's name, for the export command the refusal names.
    """
    if requested == graphs and has_strong_typing(trt):
        return STRONGLY_TYPED
    if (requested, graphs) == ("fp16", "fp32") and has_fp16_flag(trt):
        return FP16_FLAG
    raise refusal(trt, requested, graphs, folder, model)


def refusal(trt: Any, requested: str, graphs: str, folder: Path, model: str) -> Exception:
    """Why no mode fits, as one sentence with the command that would make one fit."""
    version = getattr(trt, "__version__", "unknown")
    if not has_strong_typing(trt):
        return DeviceError(
            f"TensorRT {version} has no strongly typed networks; sdxs-rt builds engines with "
            "TensorRT 10 or 11: pip install 'sdxs-rt[tensorrt]'"
        )
    export = (
        f"`sdxs-rt export onnx --model {model} --precision {requested} --out {folder}-{requested}`"
    )
    if requested == "fp16":  # fp32 graphs, and no BuilderFlag.FP16 (TensorRT 11)
        return UsageError(
            f"{folder} holds fp32 ONNX graphs, and TensorRT {version} builds fp16 engines "
            f"from fp16 graphs only (strong typing; BuilderFlag.FP16 is gone): export them "
            f"with {export} and build from that folder, or pass --precision fp32"
        )
    return UsageError(
        f"{folder} holds {graphs} ONNX graphs, which TensorRT builds into {graphs} engines "
        f"only: export {requested} graphs with {export} and build from that folder, "
        f"or pass --precision {graphs}"
    )


def network_flags(trt: Any, mode: str) -> int:
    """The `create_network` flags of a mode (0: weakly typed, TensorRT 10.x only)."""
    if mode == STRONGLY_TYPED:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0


def set_precision_flags(trt: Any, config: Any, mode: str) -> None:
    """Builder flags of a mode: strongly typed networks take none (the graph's dtypes rule)."""
    if mode == FP16_FLAG:
        config.set_flag(trt.BuilderFlag.FP16)
