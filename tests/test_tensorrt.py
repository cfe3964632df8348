"""TensorRT backend: engine cache, environment checks, profiles, builder and runtime logic.

TensorRT is not installed where these tests run: a fake `tensorrt` module (injected into
sys.modules) records the API calls and plays the engine, so everything except TensorRT itself
is tested here. The tests marked `tensorrt` and `gpu` need the real thing (deselected by
default).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import shutil
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdxs_rt.backends.tensorrt import builder as builder_module
from sdxs_rt.backends.tensorrt import cache, commands, profile
from sdxs_rt.backends.tensorrt.cache import EngineKey
from sdxs_rt.backends.tensorrt.environment import Environment, check_engine
from sdxs_rt.backends.tensorrt.selection import EngineQuery, select_engine
from sdxs_rt.errors import DeviceError, EngineError, ModelNotFoundError, UsageError
from sdxs_rt.graphs import (
    GraphEntry,
    Manifest,
    SizeProfile,
    graph_specs,
    profile_shapes,
    read_manifest,
    write_manifest,
)
from tests.tiny_tokenizer import tiny_tokenizer_dir

REPO = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = tiny_tokenizer_dir()
TEXT_WIDTH = 32
SMALL = SizeProfile(min_size=64, opt_size=64, max_size=128, max_batch=2)
HERE = Environment("10.0.1", "12.4", "Test GPU", "8.9", "Linux-x86_64")


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture
def engine_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "engines"
    monkeypatch.setenv("SDXS_RT_ENGINE_CACHE", str(folder))
    return folder


def write_exported_folder(folder: Path) -> Path:
    """A folder as `sdxs-rt export onnx` writes it, with stand-in graph files."""
    folder.mkdir(parents=True)
    shutil.copytree(TINY_TOKENIZER, folder / "tokenizer")
    graphs = {}
    for name, spec in graph_specs(16, TEXT_WIDTH).items():
        path = folder / spec.file
        path.parent.mkdir()
        path.write_bytes(f"onnx graph {name}".encode())
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        graphs[name] = GraphEntry(spec.file, "fp32", digest, [], [])
    manifest = Manifest(
        model={"name": "tiny", "hash": "abc1234567"},
        precision="fp32",
        opset=17,
        latent_channels=16,
        vae_scale_factor=8,
        text_width=TEXT_WIDTH,
        latent_scaling={"scaling_factor": 1.0, "mean": 0.0, "std": 1.0},
        scheduler_config={"_class_name": "DDPMScheduler", "num_train_timesteps": 1000},
        tokenizer="tokenizer/tokenizer.json",
        graphs=graphs,
    )
    write_manifest(folder, manifest)
    return folder


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    return write_exported_folder(tmp_path / "exported")


@pytest.fixture
def here(monkeypatch: pytest.MonkeyPatch) -> Environment:
    """This machine, as the builder and loader see it."""
    monkeypatch.setattr(builder_module, "current_environment", lambda index=0: HERE)
    return HERE


def make_key(**changes: Any) -> EngineKey:
    key = EngineKey("0" * 64, "fp16", SizeProfile(), "10.0.1", "8.9", "Linux-x86_64")
    return replace(key, **changes)


def sidecar_for(key: EngineKey, graph: str = "unet", **extra: Any) -> dict[str, Any]:
    return {"graph": graph, "digest": key.digest, "key": key.to_dict(), **extra}


# --- a fake tensorrt module ---------------------------------------------------------------

DTYPE_SIZES = {"FLOAT": 4, "HALF": 2, "INT64": 8, "INT32": 4, "BOOL": 1}


def graph_of(path: str) -> str:
    return Path(path).parent.name


def dynamic_dims(shape: tuple[Any, ...]) -> tuple[int, ...]:
    return tuple(dim if isinstance(dim, int) else -1 for dim in shape)


class FakeTrt:
    """Records every TensorRT call; `module` is what `import tensorrt` returns."""

    def __init__(self, scalar_timestep: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.scalar_timestep = scalar_timestep
        self.parse_errors: list[str] = []
        self.build_result: Any = "engine"
        self.stored_timing = b""
        self.module = self._module()

    def input_dims(self, graph: str) -> dict[str, tuple[int, ...]]:
        spec = graph_specs(16, TEXT_WIDTH)[graph]
        dims = {t.name: dynamic_dims(t.shape) for t in spec.inputs}
        if graph == "unet" and self.scalar_timestep:
            dims["timestep"] = ()
        return dims

    def _module(self) -> types.ModuleType:
        fake = self
        trt = types.ModuleType("tensorrt")
        trt.__version__ = "10.0.1"  # type: ignore[attr-defined]
        trt.BuilderFlag = types.SimpleNamespace(FP16="FP16")  # type: ignore[attr-defined]
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
        trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")  # type: ignore[attr-defined]
        trt.DataType = types.SimpleNamespace(**{k: k for k in DTYPE_SIZES})  # type: ignore[attr-defined]

        class Logger:
            WARNING = "WARNING"

            def __init__(self, severity: str) -> None:
                fake.calls.append(("Logger", severity))

        class IProgressMonitor:
            def __init__(self) -> None:
                fake.calls.append(("IProgressMonitor.__init__",))

        trt.Logger = Logger  # type: ignore[attr-defined]
        trt.IProgressMonitor = IProgressMonitor  # type: ignore[attr-defined]
        trt.Builder = lambda logger: FakeBuilder(fake)  # type: ignore[attr-defined]
        trt.OnnxParser = lambda network, logger: FakeParser(fake, network)  # type: ignore[attr-defined]
        trt.Runtime = lambda logger: FakeRuntime(fake)  # type: ignore[attr-defined]
        return trt


class FakeTensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


class FakeNetwork:
    def __init__(self) -> None:
        self.inputs: list[FakeTensor] = []

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]


def onnx_input_dims(path: Path) -> dict[str, tuple[int, ...]] | None:
    """The inputs of a real ONNX file as TensorRT sees them (-1: dynamic); None for stand-ins."""
    if path.read_bytes()[:10] == b"onnx graph":
        return None
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return {
        tensor.name: tuple(
            dim.dim_value if dim.HasField("dim_value") else -1
            for dim in tensor.type.tensor_type.shape.dim
        )
        for tensor in graph.input
    }


class FakeParser:
    def __init__(self, fake: FakeTrt, network: FakeNetwork) -> None:
        self.fake, self.network = fake, network

    def parse_from_file(self, path: str) -> bool:
        self.fake.calls.append(("parse_from_file", path))
        dims = onnx_input_dims(Path(path)) or self.fake.input_dims(graph_of(path))
        self.network.inputs = [FakeTensor(n, d) for n, d in dims.items()]
        self.network.graph = graph_of(path)  # type: ignore[attr-defined]
        return not self.fake.parse_errors

    @property
    def num_errors(self) -> int:
        return len(self.fake.parse_errors)

    def get_error(self, index: int) -> str:
        return self.fake.parse_errors[index]


class FakeTimingCache:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def serialize(self) -> bytes:
        return self.data + b"+measured"


class FakeConfig:
    def __init__(self, fake: FakeTrt) -> None:
        self.fake = fake
        self.progress_monitor: Any = None
        self.timing_cache: FakeTimingCache | None = None
        self.accept_timing_cache = True

    def set_flag(self, flag: str) -> None:
        self.fake.calls.append(("set_flag", flag))

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.fake.calls.append(("set_memory_pool_limit", pool, size))

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.fake.calls.append(("add_optimization_profile", dict(profile.shapes)))
        return 0

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        self.fake.calls.append(("create_timing_cache", bytes(data)))
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.fake.calls.append(("set_timing_cache", cache.data, ignore_mismatch))
        self.timing_cache = cache
        return self.accept_timing_cache or cache.data == b""

    def get_timing_cache(self) -> FakeTimingCache:
        assert self.timing_cache is not None
        return self.timing_cache


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Any, ...]] = {}

    def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
        self.shapes[name] = (tuple(low), tuple(opt), tuple(high))


class FakeBuilder:
    def __init__(self, fake: FakeTrt) -> None:
        self.fake = fake
        fake.calls.append(("Builder",))
        self.config = FakeConfig(fake)

    def create_network(self, flags: int) -> FakeNetwork:
        self.fake.calls.append(("create_network", flags))
        return FakeNetwork()

    def create_builder_config(self) -> FakeConfig:
        return self.config

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> Any:
        monitor = config.progress_monitor
        self.fake.calls.append(("build_serialized_network", network.graph))  # type: ignore[attr-defined]
        monitor.phase_start("Building engine", None, 2)
        monitor.phase_start("Tactic search", "Building engine", 1)
        go_on = monitor.step_complete("Building engine", 0)
        monitor.phase_finish("Tactic search")
        monitor.phase_finish("Building engine")
        if not go_on or self.fake.build_result is None:
            return None
        return f"ENGINE:{network.graph}".encode()  # type: ignore[attr-defined]


# The runtime side: an engine per graph that runs on CPU memory through the bound addresses.


class FakeRuntime:
    def __init__(self, fake: FakeTrt) -> None:
        self.fake = fake

    def deserialize_cuda_engine(self, data: bytes) -> Any:
        self.fake.calls.append(("deserialize_cuda_engine", bytes(data)))
        text = bytes(data).decode(errors="replace")
        if not text.startswith("ENGINE:"):
            return None
        return FakeEngine(self.fake, text.removeprefix("ENGINE:"))


class FakeEngine:
    def __init__(self, fake: FakeTrt, graph: str) -> None:
        self.fake, self.graph = fake, graph
        self.spec = graph_specs(16, TEXT_WIDTH)[graph]
        self.dims = fake.input_dims(graph)
        self.names = [*self.dims, *(t.name for t in self.spec.outputs)]

    @property
    def num_io_tensors(self) -> int:
        return len(self.names)

    def get_tensor_name(self, index: int) -> str:
        return self.names[index]

    def get_tensor_mode(self, name: str) -> str:
        return "INPUT" if name in self.dims else "OUTPUT"

    def get_tensor_dtype(self, name: str) -> str:
        return "INT64" if name in ("input_ids", "attention_mask") else "FLOAT"

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self.dims:
            return self.dims[name]
        return dynamic_dims(next(t.shape for t in self.spec.outputs if t.name == name))

    def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple[int, ...]]:
        assert index == 0
        return list(profile_shapes(self.spec, SMALL)[name])

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    """Copies `sample` to `out_sample` (the U-Net); other outputs are filled with 0.5."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executed: list[int] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name == "out_sample":
            return self.shapes["sample"]
        if name == "text_embeds":
            return (self.shapes["input_ids"][0], TEXT_WIDTH)
        b, _, h, w = self.shapes["latent_sample"]
        return (b, 3, 8 * h, 8 * w)

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.executed.append(stream_handle)
        for name in (t.name for t in self.engine.spec.outputs):
            count = int(np.prod(self.get_tensor_shape(name)))
            if name == "out_sample":
                ctypes.memmove(self.addresses[name], self.addresses["sample"], 4 * count)
            else:
                values = np.full(count, 0.5, dtype=np.float32)
                ctypes.memmove(self.addresses[name], values.ctypes.data, 4 * count)
        return True


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> FakeTrt:
    fake = FakeTrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    return fake


# --- cache: keys, folder, atomic writes, list and clear -------------------------------------


def test_same_key_inputs_give_the_same_digest() -> None:
    assert make_key().digest == make_key().digest
    assert len(make_key().digest) == cache.DIGEST_LENGTH
    assert int(make_key().digest, 16) >= 0


@pytest.mark.parametrize(
    "change",
    [
        {"onnx_sha256": "1" * 64},
        {"precision": "fp32"},
        {"profile": SizeProfile(max_size=768)},
        {"profile": SizeProfile(max_batch=2)},
        {"profile": SizeProfile(opt_size=512)},
        {"tensorrt_version": "10.3.0"},
        {"compute_capability": "8.6"},
        {"os": "Windows-AMD64"},
    ],
)
def test_each_key_component_changes_the_digest(change: dict[str, Any]) -> None:
    assert make_key(**change).digest != make_key().digest


def test_key_round_trips_through_its_dict() -> None:
    key = make_key(profile=SMALL)
    assert EngineKey.from_dict(json.loads(json.dumps(key.to_dict()))) == key


def test_cache_dir_prefers_the_engine_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDXS_RT_ENGINE_CACHE", "/x/engines-here")
    monkeypatch.setenv("SDXS_RT_CACHE", "/y/cache")
    assert cache.engine_cache_dir() == Path("/x/engines-here")


def test_cache_dir_under_the_sdxs_rt_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDXS_RT_ENGINE_CACHE", raising=False)
    monkeypatch.setenv("SDXS_RT_CACHE", "/y/cache")
    assert cache.engine_cache_dir() == Path("/y/cache/engines")


def test_cache_dir_falls_back_to_the_platform_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDXS_RT_ENGINE_CACHE", raising=False)
    monkeypatch.delenv("SDXS_RT_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    if sys.platform.startswith("linux"):
        assert cache.engine_cache_dir() == Path("/xdg/sdxs-rt/engines")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("LOCALAPPDATA", "/local")
    assert cache.platform_cache_dir("linux") == Path.home() / ".cache"
    assert cache.platform_cache_dir("win32") == Path("/local")
    assert cache.platform_cache_dir("darwin") == Path.home() / "Library" / "Caches"


def test_store_then_find_and_list(engine_dir: Path) -> None:
    key = make_key()
    stored = cache.store_engine(key, b"plan", {"graph": "unet", "built_at": "2025-01-01"})
    assert stored.engine_path == engine_dir / f"{key.digest}.engine"
    assert stored.engine_path.read_bytes() == b"plan"
    sidecar = json.loads(stored.sidecar_path.read_text())
    assert sidecar["key"] == key.to_dict() and sidecar["digest"] == key.digest
    found = cache.find_cached(key)
    assert found is not None and found.key == key and found.graph == "unet"
    assert [e.digest for e in cache.list_engines()] == [key.digest]
    assert cache.find_cached(make_key(precision="fp32")) is None


def test_list_is_newest_first_and_skips_broken_entries(engine_dir: Path) -> None:
    old = cache.store_engine(make_key(), b"a", {"built_at": "2024-01-01T00:00:00"})
    new = cache.store_engine(make_key(os="x"), b"b", {"built_at": "2025-01-01T00:00:00"})
    (engine_dir / "deadbeef.json").write_text("{not json")
    (engine_dir / "cafebabe.json").write_text(json.dumps({"no": "key"}))
    orphan_sidecar = cache.store_engine(make_key(os="y"), b"c", {})
    orphan_sidecar.engine_path.unlink()
    assert [e.digest for e in cache.list_engines()] == [new.digest, old.digest]


def test_a_failed_write_leaves_no_engine_and_no_temp_file(
    engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(cache.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        cache.store_engine(make_key(), b"x" * 1000, {})
    assert list(engine_dir.iterdir()) == []


def test_a_failed_sidecar_write_removes_the_engine(
    engine_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_replace = os.replace

    def replace_engines_only(source: str, target: Any) -> None:
        if str(target).endswith(".json"):
            raise OSError("no space for the sidecar")
        real_replace(source, target)

    monkeypatch.setattr(cache.os, "replace", replace_engines_only)
    with pytest.raises(OSError, match="sidecar"):
        cache.store_engine(make_key(), b"plan", {})
    assert list(engine_dir.iterdir()) == []


def test_clear_one_model_or_all(engine_dir: Path) -> None:
    mine = cache.store_engine(make_key(), b"a", {"model": {"hash": "abc1234567"}})
    other = cache.store_engine(make_key(onnx_sha256="f" * 64), b"b", {"model": {"hash": "fff"}})
    (engine_dir / f"{cache.TEMP_PREFIX}x.engine.123").write_bytes(b"half")
    timing = cache.timing_cache_path("10.0.1", "8.9")
    timing.write_bytes(b"timing")
    removed = cache.clear_engines("ABC123")
    assert set(removed) == {mine.engine_path, mine.sidecar_path}
    assert other.engine_path.exists()
    assert cache.clear_engines(other.key.onnx_sha256[:8]) == [other.engine_path, other.sidecar_path]
    cache.clear_engines()
    assert [p.name for p in engine_dir.iterdir()] == [timing.name]


def test_timing_cache_is_per_tensorrt_version_and_gpu_kind(engine_dir: Path) -> None:
    path = cache.timing_cache_path("10.0.1", "8.9")
    assert path.parent == engine_dir
    assert path != cache.timing_cache_path("10.3.0", "8.9")
    assert path != cache.timing_cache_path("10.0.1", "9.0")


# --- environment: stale and foreign engines -------------------------------------------------


def test_an_engine_built_here_passes_the_check() -> None:
    key = make_key()
    assert check_engine(sidecar_for(key), HERE, onnx_sha256=key.onnx_sha256) is None


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"tensorrt_version": "8.6.1"}, "TensorRT 8.6.1 (this machine: 10.0.1)"),
        ({"compute_capability": "7.5"}, "GPU compute capability 7.5 (this machine: 8.9)"),
        ({"os": "Windows-AMD64"}, "OS Windows-AMD64 (this machine: Linux-x86_64)"),
    ],
)
def test_a_foreign_engine_is_named_with_what_differs(change: dict[str, str], words: str) -> None:
    message = check_engine(sidecar_for(make_key(**change)), HERE, model_dir="/m/sdxs-onnx")
    assert message is not None
    assert words in message and "stale or foreign" in message
    assert message.endswith("rebuild with `sdxs-rt engine build --model /m/sdxs-onnx`")


def test_an_engine_of_an_older_export_is_stale() -> None:
    message = check_engine(sidecar_for(make_key()), HERE, onnx_sha256="9" * 64)
    assert message is not None and "exported again" in message and "--model DIR" in message


def test_require_gpu_names_what_is_missing() -> None:
    from sdxs_rt.backends.tensorrt.environment import require_gpu

    with pytest.raises(DeviceError, match=r"pip install 'sdxs-rt\[tensorrt\]'"):
        require_gpu(replace(HERE, tensorrt_version=None))
    with pytest.raises(DeviceError, match="no CUDA device is visible"):
        require_gpu(replace(HERE, compute_capability=None))


def test_current_environment_without_tensorrt_or_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdxs_rt.backends.tensorrt import environment

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    monkeypatch.setattr(environment, "_cuda_driver", lambda: None)
    found = environment.current_environment()
    assert found.tensorrt_version is None
    assert found.os == environment.os_name() and found.os
    assert environment.current_environment().to_dict()["os"] == found.os


def test_current_environment_reads_the_tensorrt_version(fake_trt: FakeTrt) -> None:
    from sdxs_rt.backends.tensorrt import environment

    assert environment.tensorrt_version() == "10.0.1"


# --- profiles and request validation --------------------------------------------------------


def test_profile_shapes_per_graph() -> None:
    specs = graph_specs(16, 1152)
    text = profile_shapes(specs["text_encoder"], SizeProfile())
    assert text["input_ids"] == ((1, 1), (1, 77), (4, 512))
    assert text["attention_mask"] == text["input_ids"]
    unet = profile_shapes(specs["unet"], SizeProfile())
    # batch 1 at guidance <= 1, up to 2 x 4 with classifier-free guidance
    assert unet["sample"] == ((1, 16, 40, 40), (2, 16, 72, 72), (8, 16, 128, 128))
    assert unet["timestep"] == ((1,), (2,), (8,))
    assert unet["encoder_hidden_states"] == ((1, 1, 1152), (2, 1, 1152), (8, 1, 1152))
    vae = profile_shapes(specs["vae_decoder"], SizeProfile())
    assert vae["latent_sample"] == ((1, 16, 40, 40), (1, 16, 72, 72), (4, 16, 128, 128))


def test_validate_request_accepts_what_the_profile_covers() -> None:
    profile.validate_request(SizeProfile(), 576, 576, 1)
    profile.validate_request(SizeProfile(), 320, 1024, 4)


@pytest.mark.parametrize(
    ("size", "batch", "words"),
    [
        ((576, 1280), 1, "576x1280 is outside this engine's profile (320..1024 px per side, "
         "batch 1..4); rebuild with `sdxs-rt engine build --model DIR --max-size 1280`"),
        ((256, 576), 1, "--min-size 256"),
        ((576, 576), 6, "576x576 with batch 6 is outside"),
        ((576, 576), 6, "--max-batch 6"),
    ],
)  # fmt: skip
def test_validate_request_refuses_and_names_the_covered_sizes(
    size: tuple[int, int], batch: int, words: str
) -> None:
    with pytest.raises(UsageError) as caught:
        profile.validate_request(SizeProfile(), size[0], size[1], batch)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        (SizeProfile(min_size=640, opt_size=576), "min <= opt <= max"),
        (SizeProfile(max_size=1000), "multiples of 64"),
        (SizeProfile(max_batch=0, opt_batch=0, min_batch=0), "batch sizes"),
    ],
)
def test_check_profile_refuses_nonsense(bad: SizeProfile, words: str) -> None:
    with pytest.raises(UsageError, match=words):
        profile.check_profile(bad)


def test_common_profile_is_what_every_engine_covers() -> None:
    common = profile.common_profile([SizeProfile(), replace(SMALL, max_size=768)])
    assert (common.min_size, common.max_size, common.max_batch) == (320, 768, 2)
    assert common.min_size <= common.opt_size <= common.max_size


def test_check_size_reads_the_components_info() -> None:
    components = types.SimpleNamespace(info={"engine_profile": profile.profile_info(SMALL)})
    profile.check_size(components, 128, 64, 2)
    with pytest.raises(UsageError, match=r"64\.\.128 px per side"):
        profile.check_size(components, 192, 64, 1)
    profile.check_size(types.SimpleNamespace(info={"backend": "torch"}), 4096, 4096, 64)


def test_check_size_for_model_uses_the_manifest_engines(exported: Path) -> None:
    profile.check_size_for_model(exported, 4096, 4096, 99)  # nothing built yet: quiet
    manifest = read_manifest(exported)
    manifest.engines["unet"] = {"profile": profile.profile_info(SMALL)}
    write_manifest(exported, manifest)
    with pytest.raises(UsageError, match="256x64 is outside"):
        profile.check_size_for_model(exported, 256, 64, 1)


# --- builder (fake TensorRT) ----------------------------------------------------------------


def calls_named(fake: FakeTrt, name: str) -> list[tuple[Any, ...]]:
    return [call for call in fake.calls if call[0] == name]


def test_build_engines_makes_the_right_tensorrt_calls(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    events: list[builder_module.BuildEvent] = []
    paths = builder_module.build_engines(exported, SMALL, progress=events.append)
    assert [p.parent for p in paths] == [engine_dir] * 3
    assert [p.read_bytes() for p in paths] == [
        b"ENGINE:text_encoder", b"ENGINE:unet", b"ENGINE:vae_decoder"
    ]  # fmt: skip
    assert calls_named(fake_trt, "create_network") == [("create_network", 0)] * 3
    parsed = [Path(call[1]) for call in calls_named(fake_trt, "parse_from_file")]
    assert parsed == [exported / n / "model.onnx" for n in builder_module.RUNTIME_GRAPHS]
    assert calls_named(fake_trt, "set_flag") == [("set_flag", "FP16")] * 3
    assert calls_named(fake_trt, "set_memory_pool_limit") == []
    profiles = [call[1] for call in calls_named(fake_trt, "add_optimization_profile")]
    specs = graph_specs(16, TEXT_WIDTH)
    for graph, shapes in zip(builder_module.RUNTIME_GRAPHS, profiles, strict=True):
        assert shapes == profile_shapes(specs[graph], SMALL)
    assert len(calls_named(fake_trt, "IProgressMonitor.__init__")) == 3


def test_build_reports_progress_phases(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    events: list[builder_module.BuildEvent] = []
    builder_module.build_engines(exported, SMALL, progress=events.append)
    unet = [(e.kind, e.phase) for e in events if e.graph == "unet"]
    assert unet == [
        ("start", ""),
        ("phase_start", "Building engine"),
        ("phase_start", "Tactic search"),
        ("step", "Building engine"),
        ("phase_finish", "Tactic search"),
        ("phase_finish", "Building engine"),
        ("done", ""),
    ]
    first = next(e for e in events if e.kind == "phase_start")
    assert (first.parent, first.total) == (None, 2)


def test_build_loads_uses_and_saves_the_timing_cache(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    timing = cache.timing_cache_path("10.0.1", "8.9")
    builder_module.build_engines(exported, SMALL)
    created = [call[1] for call in calls_named(fake_trt, "create_timing_cache")]
    assert created == [b"", b"+measured", b"+measured+measured"]  # each build reads the last
    assert all(call[2] is False for call in calls_named(fake_trt, "set_timing_cache"))
    assert timing.read_bytes() == b"+measured+measured+measured"


def test_an_unusable_timing_cache_is_started_afresh(
    fake_trt: FakeTrt,
    exported: Path,
    engine_dir: Path,
    here: Environment,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine_dir.mkdir()
    cache.timing_cache_path("10.0.1", "8.9").write_bytes(b"from another gpu")
    monkeypatch.setattr(FakeConfig, "set_timing_cache", rejecting_set_timing_cache)
    builder_module.build_engines(exported, SMALL)
    assert cache.timing_cache_path("10.0.1", "8.9").read_bytes() == b"+measured"


def rejecting_set_timing_cache(
    self: FakeConfig, cache: FakeTimingCache, ignore_mismatch: bool
) -> bool:
    self.timing_cache = cache
    return cache.data == b""


def test_build_records_sidecars_and_the_manifest(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    paths = builder_module.build_engines(exported, SMALL)
    sidecar = json.loads(paths[1].with_suffix(".json").read_text())
    assert sidecar["graph"] == "unet"
    assert sidecar["key"]["precision"] == "fp16"
    assert sidecar["key"]["profile"]["max_size"] == 128
    assert sidecar["key"]["onnx_sha256"] == read_manifest(exported).graphs["unet"].sha256
    assert sidecar["environment"] == HERE.to_dict()
    assert sidecar["model"] == {"name": "tiny", "hash": "abc1234567"}
    assert sidecar["built_at"] and sidecar["sdxs_rt_version"] and sidecar["profile"]
    engines = read_manifest(exported).engines
    assert sorted(engines) == sorted(builder_module.RUNTIME_GRAPHS)
    assert engines["unet"]["digest"] == paths[1].stem
    assert engines["unet"]["environment"]["gpu_name"] == "Test GPU"
    assert engines["unet"]["file"] == str(paths[1])


def test_cached_engines_are_skipped_unless_forced(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    first = builder_module.build_engines(exported, SMALL)
    events: list[builder_module.BuildEvent] = []
    again = builder_module.build_engines(exported, SMALL, progress=events.append)
    assert again == first
    assert [e.kind for e in events] == ["skip"] * 3
    assert len(calls_named(fake_trt, "build_serialized_network")) == 3
    builder_module.build_engines(exported, SMALL, force=True)
    assert len(calls_named(fake_trt, "build_serialized_network")) == 6
    other = builder_module.build_engines(exported, replace(SMALL, max_batch=1))
    assert set(other).isdisjoint(first)  # another profile is another engine


def test_workspace_limit_and_fp32(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    builder_module.build_engines(exported, SMALL, "fp32", workspace_bytes=1 << 30)
    assert calls_named(fake_trt, "set_flag") == []
    assert calls_named(fake_trt, "set_memory_pool_limit")[0] == (
        "set_memory_pool_limit", "WORKSPACE", 1 << 30
    )  # fmt: skip


def test_a_static_scalar_timestep_gets_no_profile(
    exported: Path, engine_dir: Path, here: Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeTrt(scalar_timestep=True)
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    builder_module.build_engines(exported, SMALL)
    unet_profile = calls_named(fake, "add_optimization_profile")[1][1]
    assert sorted(unet_profile) == ["encoder_hidden_states", "sample"]


def test_parse_errors_are_listed(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    fake_trt.parse_errors = ["In node 3 (Conv): bad weights", "In node 9: unsupported op"]
    with pytest.raises(EngineError) as caught:
        builder_module.build_engines(exported, SMALL)
    message = str(caught.value)
    assert "could not parse" in message and "text_encoder/model.onnx" in message
    assert "bad weights; In node 9: unsupported op" in message
    assert caught.value.exit_code == 6


def test_a_failed_build_writes_nothing(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    fake_trt.build_result = None
    with pytest.raises(EngineError, match="could not build the text_encoder engine"):
        builder_module.build_engines(exported, SMALL)
    assert not any(engine_dir.glob("*.engine"))
    assert read_manifest(exported).engines == {}


def test_a_progress_callback_can_cancel_the_build(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    def cancel_on_first_step(event: builder_module.BuildEvent) -> bool:
        return event.kind != "step"

    with pytest.raises(EngineError, match="cancelled"):
        builder_module.build_engines(exported, SMALL, progress=cancel_on_first_step)


def test_a_failing_progress_callback_does_not_break_the_build(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    def broken(event: builder_module.BuildEvent) -> None:
        if event.kind == "step":
            raise RuntimeError("oops")

    assert len(builder_module.build_engines(exported, SMALL, progress=broken)) == 3


def test_missing_tensorrt_is_a_device_error(
    exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(DeviceError) as caught:
        builder_module.build_engines(exported)
    assert str(caught.value) == (
        "TensorRT is not installed; pip install 'sdxs-rt[tensorrt]' on a machine with an NVIDIA GPU"
    )
    assert caught.value.exit_code == 4


def test_build_without_a_gpu_is_a_device_error(
    fake_trt: FakeTrt, exported: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_gpu = replace(HERE, compute_capability=None, gpu_name=None)
    monkeypatch.setattr(builder_module, "current_environment", lambda index=0: no_gpu)
    with pytest.raises(DeviceError, match="no CUDA device"):
        builder_module.build_engines(exported)


def test_build_checks_its_request_first(fake_trt: FakeTrt, exported: Path) -> None:
    with pytest.raises(UsageError, match="fp16 or fp32"):
        builder_module.build_engines(exported, precision="bf16")
    with pytest.raises(UsageError, match="multiples of 64"):
        builder_module.build_engines(exported, SizeProfile(max_size=1000))
    with pytest.raises(ModelNotFoundError, match=r"manifest\.json"):
        builder_module.build_engines(exported.parent / "nowhere")


def test_a_missing_graph_file_is_named(
    fake_trt: FakeTrt, exported: Path, engine_dir: Path, here: Environment
) -> None:
    (exported / "unet" / "model.onnx").unlink()
    with pytest.raises(ModelNotFoundError, match=r"unet/model.onnx is missing"):
        builder_module.build_engines(exported, SMALL)


@pytest.fixture(scope="module")
def real_exported(exported_tiny_fp32: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny model exported by `export/` (the builder writes to its manifest)."""
    import shutil

    return Path(shutil.copytree(exported_tiny_fp32, tmp_path_factory.mktemp("trt") / "exported"))


def test_the_profiles_fit_the_graphs_export_writes(
    real_exported: Path, fake_trt: FakeTrt, engine_dir: Path, here: Environment
) -> None:
    """Every dynamic input of the real graphs gets a profile of its rank and static dims."""
    builder_module.build_engines(real_exported, SMALL)
    profiles = [call[1] for call in calls_named(fake_trt, "add_optimization_profile")]
    for graph, shapes in zip(builder_module.RUNTIME_GRAPHS, profiles, strict=True):
        dims = onnx_input_dims(real_exported / graph / "model.onnx")
        assert dims is not None and sorted(shapes) == sorted(dims)
        for name, triple in shapes.items():
            for shape in triple:
                assert len(shape) == len(dims[name])
                assert all(d < 0 or d == s for d, s in zip(dims[name], shape, strict=True))


# --- selecting the engine to load -----------------------------------------------------------


def built_key(exported: Path, graph: str, **changes: Any) -> EngineKey:
    sha = read_manifest(exported).graphs[graph].sha256
    return make_key(**{"onnx_sha256": sha, "profile": SMALL, **changes})


def query_for(exported: Path, graph: str, precision: str = "fp16") -> EngineQuery:
    manifest = read_manifest(exported)
    sha = manifest.graphs[graph].sha256
    return EngineQuery(graph, sha, precision, exported, manifest.engines.get(graph))


def test_select_prefers_the_manifest_engine(exported: Path, engine_dir: Path) -> None:
    newer = cache.store_engine(built_key(exported, "unet", profile=SizeProfile()), b"1", {
        "graph": "unet", "built_at": "2025-06-01"})  # fmt: skip
    recorded = cache.store_engine(built_key(exported, "unet"), b"2", {
        "graph": "unet", "built_at": "2025-01-01"})  # fmt: skip
    query = query_for(exported, "unet")
    assert select_engine(query, HERE).digest == newer.digest
    query = replace(query, recorded={"digest": recorded.digest})
    assert select_engine(query, HERE).digest == recorded.digest


def test_select_explains_another_precision(exported: Path, engine_dir: Path) -> None:
    cache.store_engine(built_key(exported, "unet"), b"1", {"graph": "unet"})
    with pytest.raises(EngineError) as caught:
        select_engine(query_for(exported, "unet", "fp32"), HERE)
    assert "holds fp16 unet engines" in str(caught.value)
    assert "pass --precision fp16" in str(caught.value)


def test_select_explains_a_foreign_engine(exported: Path, engine_dir: Path) -> None:
    key = built_key(exported, "unet", tensorrt_version="8.6.1")
    cache.store_engine(key, b"1", {"graph": "unet"})
    with pytest.raises(EngineError) as caught:
        select_engine(query_for(exported, "unet"), HERE)
    assert "TensorRT 8.6.1 (this machine: 10.0.1)" in str(caught.value)
    assert f"sdxs-rt engine build --model {exported}" in str(caught.value)


def test_select_explains_a_stale_manifest_record(exported: Path, engine_dir: Path) -> None:
    old = make_key(onnx_sha256="e" * 64, profile=SMALL)
    query = replace(query_for(exported, "unet"), recorded=sidecar_for(old))
    with pytest.raises(EngineError, match="exported again since"):
        select_engine(query, HERE)


def test_select_says_what_to_build_when_nothing_is_there(exported: Path, engine_dir: Path) -> None:
    with pytest.raises(EngineError) as caught:
        select_engine(query_for(exported, "vae_decoder"), HERE)
    assert str(caught.value) == (
        f"there is no TensorRT vae_decoder engine for {exported} in {engine_dir}; "
        f"build it with `sdxs-rt engine build --model {exported}`"
    )


# --- runtime (fake TensorRT on CPU memory) --------------------------------------------------


class FakeStream:
    handle = 1234

    def __init__(self) -> None:
        self.events: list[str] = []

    def before(self) -> None:
        self.events.append("before")

    def after(self) -> None:
        self.events.append("after")

    def capture(self, enqueue: Any) -> Any:
        self.events.append("capture")
        return lambda: enqueue(self.handle)


def fake_engine(fake: FakeTrt, graph: str, cuda_graph: bool = False) -> Any:
    torch = pytest.importorskip("torch")
    from sdxs_rt.backends.tensorrt.runtime import TrtEngine

    engine = FakeEngine(fake, graph)
    return TrtEngine(fake.module, engine, torch.device("cpu"), FakeStream(), cuda_graph)


def test_trt_engine_sets_shapes_binds_buffers_and_runs(fake_trt: FakeTrt) -> None:
    torch = pytest.importorskip("torch")
    engine = fake_engine(fake_trt, "unet")
    sample = torch.randn(2, 16, 8, 8)
    feeds = {
        "sample": sample,
        "timestep": torch.full((2,), 999.0),
        "encoder_hidden_states": torch.zeros(2, 1, TEXT_WIDTH),
    }
    out = engine(feeds)["out_sample"]
    context = engine.context
    assert context.shapes == {
        "sample": (2, 16, 8, 8), "timestep": (2,), "encoder_hidden_states": (2, 1, TEXT_WIDTH)
    }  # fmt: skip
    assert context.addresses["out_sample"] == out.data_ptr()
    assert context.executed == [FakeStream.handle]
    assert engine.stream.events == ["before", "after"]
    assert torch.equal(out, sample)


def test_trt_engine_casts_to_the_engine_dtypes(fake_trt: FakeTrt) -> None:
    torch = pytest.importorskip("torch")
    engine = fake_engine(fake_trt, "text_encoder")
    ids = torch.tensor([[0, 5, 2]], dtype=torch.int32)
    out = engine({"input_ids": ids, "attention_mask": torch.ones(1, 3)})["text_embeds"]
    assert engine.dtypes["input_ids"] == torch.int64
    assert out.shape == (1, TEXT_WIDTH) and float(out[0, 0]) == 0.5


def test_trt_engine_refuses_shapes_outside_its_profile(fake_trt: FakeTrt) -> None:
    torch = pytest.importorskip("torch")
    engine = fake_engine(fake_trt, "vae_decoder")
    with pytest.raises(UsageError, match=r"latent_sample of shape 1x16x32x8 is outside"):
        engine({"latent_sample": torch.zeros(1, 16, 32, 8)})
    assert engine.context.executed == []


def test_cuda_graph_is_captured_once_per_shape(fake_trt: FakeTrt) -> None:
    torch = pytest.importorskip("torch")
    engine = fake_engine(fake_trt, "unet", cuda_graph=True)

    def run(batch: int, size: int, value: float) -> Any:
        feeds = {
            "sample": torch.full((batch, 16, size, size), value),
            "timestep": torch.full((batch,), 1.0),
            "encoder_hidden_states": torch.zeros(batch, 1, TEXT_WIDTH),
        }
        return engine(feeds)["out_sample"]

    assert float(run(1, 8, 1.0).mean()) == 1.0
    assert float(run(1, 8, 2.0).mean()) == 2.0  # replayed with the new input values
    assert engine.stream.events.count("capture") == 1
    assert float(run(2, 16, 3.0).mean()) == 3.0
    assert engine.stream.events.count("capture") == 2
    assert engine.captured.shapes[0] == (2, 16, 16, 16)


def test_deserialize_checks_the_sidecar_before_tensorrt_runs(
    fake_trt: FakeTrt, engine_dir: Path
) -> None:
    pytest.importorskip("torch")
    from sdxs_rt.backends.tensorrt.runtime import deserialize

    foreign = cache.store_engine(make_key(compute_capability="7.5"), b"ENGINE:unet", {})
    with pytest.raises(EngineError, match=r"compute capability 7\.5"):
        deserialize(fake_trt.module, foreign, HERE, "/m")
    assert calls_named(fake_trt, "deserialize_cuda_engine") == []
    damaged = cache.store_engine(make_key(), b"garbage", {"graph": "unet"})
    with pytest.raises(EngineError) as caught:
        deserialize(fake_trt.module, damaged, HERE, "/m")
    assert "could not load the unet engine" in str(caught.value)
    assert "rebuild with `sdxs-rt engine build --model /m`" in str(caught.value)
    runtime, engine = deserialize(fake_trt.module, cache.store_engine(
        make_key(os="Linux-x86_64", precision="fp32"), b"ENGINE:unet", {}), HERE)  # fmt: skip
    assert engine.graph == "unet" and runtime is not None


# --- load_components and the pipeline over fake engines -------------------------------------


@pytest.fixture
def loadable(
    fake_trt: FakeTrt,
    exported: Path,
    engine_dir: Path,
    here: Environment,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """Engines built (by the fake) for `exported`; the loader runs on CPU with fake streams."""
    torch = pytest.importorskip("torch")
    from sdxs_rt.backends.tensorrt import loader, runtime

    builder_module.build_engines(exported, SMALL)
    monkeypatch.setattr(loader, "current_environment", lambda index=0: HERE)
    monkeypatch.setattr(loader, "cuda_device", lambda name: torch.device("cpu"))
    monkeypatch.setattr(runtime, "StreamSync", lambda device: FakeStream())
    return exported


def test_load_components_exposes_the_engine_profile(loadable: Path) -> None:
    from sdxs_rt.backends.tensorrt import load_components

    components = load_components(str(loadable), device="cuda", precision="fp16")
    info = components.info
    assert info["backend"] == "tensorrt" and info["model_hash"] == "abc1234567"
    assert info["engine_profile"]["max_size"] == 128
    assert info["engine_profile"]["description"] == "64..128 px per side, batch 1..2"
    assert sorted(info["engines"]) == sorted(builder_module.RUNTIME_GRAPHS)
    profile.check_size(components, 128, 128, 2)
    with pytest.raises(UsageError, match="outside this engine's profile"):
        profile.check_size(components, 576, 576, 1)


def test_the_pipeline_runs_on_the_components(loadable: Path) -> None:
    from sdxs_rt.pipeline import Pipeline

    pipeline = Pipeline.from_pretrained(str(loadable), backend="tensorrt", dtype="fp16")
    result = pipeline("a red circle", width=64, height=128, num_inference_steps=2, seed=1)
    assert result.images[0].size == (64, 128)
    assert np.asarray(result.images[0]).std() == 0  # the fake VAE paints flat 0.5


def test_load_components_refuses_what_it_cannot_load(loadable: Path, tmp_path: Path) -> None:
    from sdxs_rt.backends.tensorrt import load_components

    with pytest.raises(UsageError, match="needs --model"):
        load_components(None)
    with pytest.raises(UsageError, match="takes no --text-encoder"):
        load_components(str(loadable), text_encoder="x")
    with pytest.raises(ModelNotFoundError, match="sdxs-rt export onnx"):
        load_components(str(tmp_path))
    with pytest.raises(EngineError, match="pass --precision fp16"):
        load_components(str(loadable), precision="fp32")
    with pytest.raises(UsageError, match="fp16 or fp32"):
        load_components(str(loadable), precision="bf16")


def test_the_cpu_device_is_refused() -> None:
    pytest.importorskip("torch")
    from sdxs_rt.backends.tensorrt.ops import cuda_device

    with pytest.raises(DeviceError, match="pass --device cuda"):
        cuda_device("cpu")


def test_the_vae_decoder_refuses_nan(fake_trt: FakeTrt) -> None:
    torch = pytest.importorskip("torch")
    from sdxs_rt.backends.tensorrt.wrappers import TrtVAEDecoder

    decoder = TrtVAEDecoder(types.SimpleNamespace(), "/m")  # type: ignore[arg-type]
    decoder.engine = lambda feeds: {"sample": torch.full((1, 3, 8, 8), float("nan"))}  # type: ignore[assignment]
    with pytest.raises(EngineError, match="--model /m --precision fp32"):
        decoder(torch.zeros(1, 16, 1, 1))


# --- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_pads_to_the_longest_prompt_only() -> None:
    from sdxs_rt.prompt_tokenizer import PromptTokenizer

    tokenizer = PromptTokenizer.from_file(TINY_TOKENIZER / "tokenizer.json", max_tokens=8)
    ids, mask = tokenizer(["a red circle", ""])
    assert ids.dtype == mask.dtype == np.int64
    assert ids.shape == mask.shape and ids.shape[1] < 8
    assert mask[0].all() and mask[1].sum() == 2  # "" is <s></s>
    with pytest.warns(UserWarning, match="reads only the first 8"):
        ids, _ = tokenizer(["red " * 20])
    assert ids.shape == (1, 8)


def test_tokenizer_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    from sdxs_rt.prompt_tokenizer import PromptTokenizer

    ours = PromptTokenizer.from_file(TINY_TOKENIZER / "tokenizer.json")
    theirs = transformers.AutoTokenizer.from_pretrained(str(TINY_TOKENIZER))
    prompts = ["a red circle on a blue background", "кот", ""]
    expected = theirs(prompts, padding="longest", truncation=True, max_length=512)
    ids, mask = ours(prompts)
    assert ids.tolist() == expected["input_ids"]
    assert mask.tolist() == expected["attention_mask"]


# --- CLI hooks ----------------------------------------------------------------------------------


def engine_cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sdxs-rt")
    subcommands = parser.add_subparsers(dest="command")
    commands.add_engine_parser(subcommands)
    export = subcommands.add_parser("export").add_subparsers(dest="format")
    commands.add_engine_arguments(export.add_parser("tensorrt"))
    return parser.parse_args(argv)


def test_engine_build_and_list(
    fake_trt: FakeTrt,
    exported: Path,
    engine_dir: Path,
    here: Environment,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = engine_cli("export", "tensorrt", "--model", str(exported), "--max-size", "128",
                      "--min-size", "64", "--max-batch", "2")  # fmt: skip
    assert commands.run_export_tensorrt(args) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 3 and "unet: building the TensorRT engine" in err
    assert "the engines cover 64..128 px per side, batch 1..2" in err
    assert commands.run_engine(engine_cli("engine", "list")) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["KEY", "GRAPH", "MODEL"]
    assert len(table) == 4 and "abc1234567" in table[1] and "64-128px b1-2" in table[1]
    assert "Test GPU (sm 8.9)" in table[1]
    assert commands.run_engine(engine_cli("engine", "list", "--json")) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {row["graph"] for row in rows} == set(builder_module.RUNTIME_GRAPHS)
    assert rows[0]["tensorrt_version"] == "10.0.1" and rows[0]["size_bytes"] > 0


def test_engine_build_again_says_cached_and_clear_removes(
    fake_trt: FakeTrt,
    exported: Path,
    engine_dir: Path,
    here: Environment,
    capsys: pytest.CaptureFixture[str],
) -> None:
    build = engine_cli("engine", "build", "--model", str(exported), "--min-size", "64")
    assert commands.run_engine(build) == 0
    assert commands.run_engine(build) == 0
    assert capsys.readouterr().err.count("in the cache") == 3
    assert commands.run_engine(engine_cli("engine", "clear", "--model-hash", "nope")) == 0
    assert "removed 0 engine(s)" in capsys.readouterr().err
    assert commands.run_engine(engine_cli("engine", "clear", "--model-hash", "abc")) == 0
    assert "removed 3 engine(s)" in capsys.readouterr().err
    assert commands.run_engine(engine_cli("engine", "list")) == 0
    assert "no engines in" in capsys.readouterr().err


def test_profile_from_args_moves_the_default_opt_size_into_range() -> None:
    args = engine_cli("engine", "build", "--model", "m", "--max-size", "512")
    assert commands.profile_from_args(args).opt_size == 512
    args = engine_cli("engine", "build", "--model", "m", "--min-size", "640")
    assert commands.profile_from_args(args).opt_size == 640
    with pytest.raises(UsageError, match="multiples of 64"):
        commands.profile_from_args(
            engine_cli("engine", "build", "--model", "m", "--max-size", "1000")
        )
    with pytest.raises(UsageError, match="choose an action"):
        commands.run_engine(engine_cli("engine"))


def test_progress_printer_shows_top_level_phases_only() -> None:
    import io

    stream = io.StringIO()
    printer = commands.ProgressPrinter(stream)
    for event in (
        builder_module.BuildEvent("unet", "start"),
        builder_module.BuildEvent("unet", "phase_start", "Building engine", None, total=2),
        builder_module.BuildEvent("unet", "phase_start", "Inner", "Building engine", total=5),
        builder_module.BuildEvent("unet", "step", "Building engine", step=0),
        builder_module.BuildEvent("unet", "phase_finish", "Building engine"),
        builder_module.BuildEvent("unet", "done", path=Path("/c/x.engine")),
    ):
        printer(event)
    assert stream.getvalue().splitlines() == [
        "unet: building the TensorRT engine (this takes a while)",
        "unet: Building engine",
        "unet: wrote /c/x.engine",
    ]


def test_the_cli_modules_import_neither_torch_nor_tensorrt() -> None:
    code = (
        "import sys, sdxs_rt.backends.tensorrt.commands, sdxs_rt.backends.tensorrt; "
        "print(sorted(m for m in ('torch', 'tensorrt', 'numpy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


# --- real TensorRT (deselected by default) --------------------------------------------------


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@pytest.mark.tensorrt
@pytest.mark.gpu
def test_tensorrt_end_to_end_matches_onnx_runtime(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Export the tiny model, build engines, generate, compare with ONNX Runtime on the CPU."""
    pytest.importorskip("tensorrt")
    pytest.importorskip("onnxruntime")
    export_onnx = pytest.importorskip("sdxs_rt_export.onnx_export").export_onnx

    from sdxs_rt.pipeline import Pipeline

    monkeypatch.setenv("SDXS_RT_ENGINE_CACHE", str(tmp_path / "engines"))
    exported = tmp_path / "exported"
    export_onnx(str(tiny_model), exported)
    small = SizeProfile(min_size=64, opt_size=128, max_size=192, max_batch=2)
    assert len(builder_module.build_engines(exported, small)) == 3
    precision = read_manifest(exported).precision
    options = {"width": 128, "height": 64, "num_inference_steps": 4, "seed": 7}
    trt_pipe = Pipeline.from_pretrained(str(exported), backend="tensorrt", device="cuda",
                                        dtype="fp16")  # fmt: skip
    profile.check_size(trt_pipe.components, 128, 64, 1)
    trt_image = np.asarray(trt_pipe("a red circle", **options).images[0])
    ort_pipe = Pipeline.from_pretrained(str(exported), backend="onnx", dtype=precision)
    ort_image = np.asarray(ort_pipe("a red circle", **options).images[0])
    assert psnr(trt_image, ort_image) >= 35.0
    assert len(cache.list_engines()) == 3
    assert read_manifest(exported).engines["unet"]["environment"]["gpu_name"]
