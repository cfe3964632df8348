"""The engine cache: per-machine TensorRT engines built from the portable ONNX graphs.

Torch-free and TensorRT-free. An engine is keyed by (ONNX content hash, precision, profile,
TensorRT version, GPU compute capability, OS) (DESIGN.md "Export and engines"), plus how the
builder got that precision (`build_mode.py`: strongly typed or the FP16 flag); the key's short
digest names two files in the cache folder: `<digest>.engine` and the JSON sidecar
`<digest>.json` with the full key and the build environment. Writes are atomic: a reader (or a
crash) never sees half an engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sdxs_rt.backends.tensorrt.build_mode import LEGACY_WEAKLY_TYPED
from sdxs_rt.backends.tensorrt.profile import profile_from_dict
from sdxs_rt.graphs import SizeProfile

logger = logging.getLogger(__name__)

ENGINE_SUFFIX = ".engine"
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = 1
DIGEST_LENGTH = 16  # hex digits: 64 bits, plenty for one machine's handful of engines
TEMP_PREFIX = ".partial-"


def engine_cache_dir() -> Path:
    """$SDXS_RT_ENGINE_CACHE, else $SDXS_RT_CACHE/engines, else the platform cache dir."""
    if override := os.environ.get("SDXS_RT_ENGINE_CACHE"):
        return Path(override).expanduser()
    if shared := os.environ.get("SDXS_RT_CACHE"):
        return Path(shared).expanduser() / "engines"
    return platform_cache_dir() / "sdxs-rt" / "engines"


def platform_cache_dir(platform: str = sys.platform) -> Path:
    """The user cache dir: %LOCALAPPDATA%, ~/Library/Caches, or $XDG_CACHE_HOME / ~/.cache."""
    if platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        return Path(local) if local else Path.home() / "AppData" / "Local"
    if platform == "darwin":
        return Path.home() / "Library" / "Caches"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) if xdg else Path.home() / ".cache"


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine's validity depends on; equal keys mean interchangeable engines."""

    onnx_sha256: str
    precision: str
    profile: SizeProfile
    tensorrt_version: str
    compute_capability: str
    os: str
    build_mode: str  # build_mode.STRONGLY_TYPED or FP16_FLAG

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EngineKey:
        data = {"build_mode": LEGACY_WEAKLY_TYPED, **values}  # older sidecars lack the mode
        data["profile"] = profile_from_dict(data["profile"])
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})

    @property
    def digest(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:DIGEST_LENGTH]


@dataclass(frozen=True)
class CachedEngine:
    """One engine in the cache: its files and the sidecar's contents."""

    engine_path: Path
    sidecar: dict[str, Any]

    @property
    def digest(self) -> str:
        return self.engine_path.name.removesuffix(ENGINE_SUFFIX)

    @property
    def sidecar_path(self) -> Path:
        return self.engine_path.with_suffix(SIDECAR_SUFFIX)

    @property
    def key(self) -> EngineKey:
        return EngineKey.from_dict(self.sidecar["key"])

    @property
    def graph(self) -> str:
        return str(self.sidecar.get("graph", ""))

    @property
    def size_bytes(self) -> int:
        try:
            return self.engine_path.stat().st_size
        except OSError:
            return 0


def engine_path(key: EngineKey, folder: Path | None = None) -> Path:
    return (folder or engine_cache_dir()) / f"{key.digest}{ENGINE_SUFFIX}"


def timing_cache_path(
    tensorrt_version: str, compute_capability: str, folder: Path | None = None
) -> Path:
    """The machine's timing cache, one per TensorRT version and GPU kind."""
    sm = compute_capability.replace(".", "")
    return (folder or engine_cache_dir()) / f"timing-trt{tensorrt_version}-sm{sm}.cache"


def write_atomic(path: Path, data: Any) -> Path:
    """Write bytes (or any buffer) to `path` via a temp file and os.replace; all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def store_engine(
    key: EngineKey, engine_bytes: Any, sidecar: Mapping[str, Any], folder: Path | None = None
) -> CachedEngine:
    """Write the engine, then its sidecar; an engine whose sidecar failed is removed again."""
    path = engine_path(key, folder)
    record = {**sidecar, "format": SIDECAR_FORMAT, "digest": key.digest, "key": key.to_dict()}
    write_atomic(path, engine_bytes)
    try:
        text = json.dumps(record, indent=2, ensure_ascii=False) + "\n"
        write_atomic(path.with_suffix(SIDECAR_SUFFIX), text.encode("utf-8"))
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return CachedEngine(path, record)


def find_cached(key: EngineKey, folder: Path | None = None) -> CachedEngine | None:
    """The engine for exactly this key, if both its files are there."""
    path = engine_path(key, folder)
    sidecar = read_sidecar(path.with_suffix(SIDECAR_SUFFIX))
    if sidecar is None or not path.is_file():
        return None
    return CachedEngine(path, sidecar)


def read_sidecar(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable engine sidecar %s: %s", path, exc)
        return None
    if not isinstance(data, dict) or not isinstance(data.get("key"), dict):
        logger.warning("ignoring engine sidecar %s: it has no key", path)
        return None
    return data


def list_engines(folder: Path | None = None) -> list[CachedEngine]:
    """Every complete engine in the cache (engine file and readable sidecar), newest first."""
    folder = folder or engine_cache_dir()
    if not folder.is_dir():
        return []
    found = []
    for sidecar_file in folder.glob(f"*{SIDECAR_SUFFIX}"):
        sidecar = read_sidecar(sidecar_file)
        engine_file = sidecar_file.with_suffix(ENGINE_SUFFIX)
        if sidecar is not None and engine_file.is_file():
            found.append(CachedEngine(engine_file, sidecar))
    return sorted(found, key=lambda e: str(e.sidecar.get("built_at", "")), reverse=True)


def matches_model(engine: CachedEngine, model_hash: str) -> bool:
    """`model_hash` is a prefix of the model hash, the ONNX sha256 or the engine digest."""
    wanted = model_hash.strip().lower()
    candidates = (
        str(engine.sidecar.get("model", {}).get("hash", "")),
        str(engine.sidecar.get("key", {}).get("onnx_sha256", "")),
        engine.digest,
    )
    return bool(wanted) and any(c.lower().startswith(wanted) for c in candidates if c)


def clear_engines(model_hash: str | None = None, folder: Path | None = None) -> list[Path]:
    """Remove the engines of one model (or all, and leftover partial files); the removed paths.

    The timing cache stays: it only makes the next build faster.
    """
    folder = folder or engine_cache_dir()
    engines = list_engines(folder)
    if model_hash is not None:
        engines = [e for e in engines if matches_model(e, model_hash)]
    removed = []
    for engine in engines:
        for path in (engine.engine_path, engine.sidecar_path):
            path.unlink(missing_ok=True)
            removed.append(path)
    if model_hash is None and folder.is_dir():
        removed += _remove_leftovers(folder)
    return removed


def _remove_leftovers(folder: Path) -> list[Path]:
    """Partial writes of a killed build and engines whose sidecar is gone."""
    leftovers = list(folder.glob(f"{TEMP_PREFIX}*"))
    leftovers += [
        p for p in folder.glob(f"*{ENGINE_SUFFIX}") if not p.with_suffix(SIDECAR_SUFFIX).exists()
    ]
    for path in leftovers:
        path.unlink(missing_ok=True)
    return leftovers
