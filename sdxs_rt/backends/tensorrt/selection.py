"""Which cached engine runs a graph of an exported folder on this machine (torch/TRT-free).

The candidates are the cached engines built from the same ONNX content; the usable ones have
the requested precision and fit this machine (TensorRT version, compute capability, OS). When
none is usable, the error says why (stale, foreign, other precision, never built) and what to
run.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdxs_rt.backends.tensorrt.cache import CachedEngine, engine_cache_dir, list_engines
from sdxs_rt.backends.tensorrt.environment import Environment, check_engine
from sdxs_rt.errors import EngineError


@dataclass(frozen=True)
class EngineQuery:
    """One graph of an exported folder, in one precision."""

    graph: str
    onnx_sha256: str
    precision: str
    model_dir: str | Path = "DIR"
    recorded: Mapping[str, Any] | None = None  # the folder manifest's entry for the graph


def select_engine(query: EngineQuery, environment: Environment) -> CachedEngine:
    """The engine to run: the manifest's own when usable, else the newest usable one."""
    candidates = [e for e in list_engines() if _onnx_sha256(e.sidecar) == query.onnx_sha256]
    usable = [
        e
        for e in candidates
        if e.sidecar["key"].get("precision") == query.precision
        and check_engine(e.sidecar, environment) is None
    ]
    if usable:
        wanted = (query.recorded or {}).get("digest")
        return next((e for e in usable if e.digest == wanted), usable[0])
    raise EngineError(missing_engine_message(query, environment, candidates))


def missing_engine_message(
    query: EngineQuery, environment: Environment, candidates: list[CachedEngine]
) -> str:
    """Why no engine fits, the most specific reason first, and what to run."""
    folder, graph, precision = query.model_dir, query.graph, query.precision
    fitting = [e for e in candidates if check_engine(e.sidecar, environment) is None]
    if fitting:
        built = sorted({str(e.sidecar["key"].get("precision")) for e in fitting})
        return (
            f"the engine cache holds {'/'.join(built)} {graph} engines for {folder} but none "
            f"in {precision}: pass --precision {built[0]}, or build with "
            f"`sdxs-rt engine build --model {folder} --precision {precision}`"
        )
    if candidates:
        return str(check_engine(candidates[0].sidecar, environment, model_dir=folder))
    if query.recorded:
        stale = check_engine(query.recorded, environment, query.onnx_sha256, folder)
        if stale:
            return stale
    return (
        f"there is no TensorRT {graph} engine for {folder} in {engine_cache_dir()}; "
        f"build it with `sdxs-rt engine build --model {folder}`"
    )


def _onnx_sha256(sidecar: Mapping[str, Any]) -> str:
    return str(sidecar.get("key", {}).get("onnx_sha256", ""))
