"""A fake `tensorrt` module: the API of TensorRT 11.x or of 10.x, played on CPU memory.

Only what sdxs-rt calls exists, under the names and enum values of the real Python bindings
(NVIDIA/TensorRT python/src/infer/pyCore.cpp at 10.0.1 and 11.1): 11.x has
`NetworkDefinitionCreationFlag.STRONGLY_TYPED = 0`, ignored because every network is strongly
typed, and no `BuilderFlag.FP16`; 10.x has `STRONGLY_TYPED = 1` and `BuilderFlag.FP16`.

Like the real builder, the fake decides what precision an engine computes in: a strongly typed
network in its graph's dtype, a weakly typed one in fp16 only with the FP16 flag (else fp32). It
writes that into the serialized engine (JSON: graph, precision, typing, profile, workspace), so
tests check the engine that came out, not the calls that went in.

Engines run on CPU memory through the bound addresses: the U-Net copies its input, the image
encoder returns each image's channel means (tests/test_image_encoder.py's numeric stand-in),
every other output is 0.5.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdxs_rt.graphs import GraphSpec, SizeProfile, graph_specs, profile_shapes

TEXT_WIDTH = 32
LATENT_CHANNELS = 16
VAE_SCALE = 8
IMAGE_SIZE = (36, 36)  # the image encoder's (height, width), the tiny model's tower's
SMALL = SizeProfile(min_size=64, opt_size=64, max_size=128, max_batch=2)
DTYPE_NAMES = ("FLOAT", "HALF", "BF16", "INT64", "INT32", "BOOL")
ENGINE_MAGIC = b"ENGINE:"
FOREIGN_PLAN = b"FOREIGN"  # a plan whose deserialisation would crash the process


@dataclass(frozen=True)
class Release:
    """The parts of one TensorRT release's Python API that differ between 10.x and 11.x."""

    version: str
    creation_flags: dict[str, int]  # NetworkDefinitionCreationFlag members and values
    builder_flags: tuple[str, ...]
    always_strongly_typed: bool


TRT_11 = Release(
    "11.4.0.106",
    {"STRONGLY_TYPED": 0, "PREFER_JIT_PYTHON_PLUGINS": 1, "PREFER_AOT_PYTHON_PLUGINS": 2},
    ("DEBUG", "TF32", "REFIT"),
    always_strongly_typed=True,
)
TRT_10 = Release(
    "10.0.1",
    {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1},
    ("FP16", "INT8", "DEBUG", "TF32", "REFIT"),
    always_strongly_typed=False,
)
RELEASES = {"trt11": TRT_11, "trt10": TRT_10}


def fake_specs() -> dict[str, GraphSpec]:
    """The graphs as the fake's stand-in export has them (`graphs.graph_specs`)."""
    return graph_specs(LATENT_CHANNELS, TEXT_WIDTH, IMAGE_SIZE)


def dynamic_dims(shape: tuple[Any, ...]) -> tuple[int, ...]:
    return tuple(dim if isinstance(dim, int) else -1 for dim in shape)


def standin_graph(name: str, precision: str) -> bytes:
    """The bytes of a stand-in `model.onnx` (tests that need no real graph)."""
    return f"onnx graph {name} {precision}".encode()


def engine_bytes(graph: str, **facts: Any) -> bytes:
    """A serialized fake engine, as the fake builder writes it."""
    return ENGINE_MAGIC + json.dumps({"graph": graph, **facts}).encode()


def read_engine(path: Path) -> dict[str, Any]:
    """What a fake engine file says was built: graph, precision, strongly_typed, profile, ..."""
    data = path.read_bytes()
    assert data.startswith(ENGINE_MAGIC), path
    facts: dict[str, Any] = json.loads(data[len(ENGINE_MAGIC) :])
    return facts


class FakeTrt:
    """`module` is what `import tensorrt` returns."""

    def __init__(self, release: Release = TRT_11, scalar_timestep: bool = False) -> None:
        self.release = release
        self.scalar_timestep = scalar_timestep
        self.parse_errors: list[str] = []
        self.build_result: Any = "engine"
        self.module = self._module()

    def input_dims(self, graph: str) -> dict[str, tuple[int, ...]]:
        spec = fake_specs()[graph]
        dims = {t.name: dynamic_dims(t.shape) for t in spec.inputs}
        if graph == "unet" and self.scalar_timestep:
            dims["timestep"] = ()
        return dims

    def _module(self) -> types.ModuleType:
        fake, release = self, self.release
        trt = types.ModuleType("tensorrt")
        trt.__version__ = release.version  # type: ignore[attr-defined]
        trt.NetworkDefinitionCreationFlag = enum.IntEnum(  # type: ignore[attr-defined]
            "NetworkDefinitionCreationFlag", release.creation_flags
        )
        trt.BuilderFlag = types.SimpleNamespace(**{f: f for f in release.builder_flags})  # type: ignore[attr-defined]
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")  # type: ignore[attr-defined]
        trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")  # type: ignore[attr-defined]
        trt.DataType = types.SimpleNamespace(**{k: k for k in DTYPE_NAMES})  # type: ignore[attr-defined]
        trt.Logger = FakeLogger  # type: ignore[attr-defined]
        trt.IProgressMonitor = FakeProgressMonitorBase  # type: ignore[attr-defined]
        trt.Builder = lambda logger: FakeBuilder(fake)  # type: ignore[attr-defined]
        trt.OnnxParser = lambda network, logger: FakeParser(fake, network)  # type: ignore[attr-defined]
        trt.Runtime = lambda logger: FakeRuntime(fake)  # type: ignore[attr-defined]
        return trt


class FakeLogger:
    WARNING = "WARNING"

    def __init__(self, severity: str) -> None:
        self.severity = severity


class FakeProgressMonitorBase:
    def __init__(self) -> None:
        self.base_initialised = True


# --- building -----------------------------------------------------------------------------


class FakeTensor:
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        self.name, self.shape = name, shape


class FakeNetwork:
    def __init__(self, strongly_typed: bool) -> None:
        self.strongly_typed = strongly_typed
        self.inputs: list[FakeTensor] = []
        self.graph = ""
        self.dtype = "fp32"  # the float type the parsed graph computes in

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]


def onnx_facts(path: Path) -> tuple[dict[str, tuple[int, ...]], str] | None:
    """(input dims as TensorRT sees them, float type) of a real ONNX file; None for stand-ins."""
    if path.read_bytes()[:10] == b"onnx graph":
        return None
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dims = {
        tensor.name: tuple(
            dim.dim_value if dim.HasField("dim_value") else -1
            for dim in tensor.type.tensor_type.shape.dim
        )
        for tensor in graph.input
    }
    half = any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    return dims, "fp16" if half else "fp32"


class FakeParser:
    def __init__(self, fake: FakeTrt, network: FakeNetwork) -> None:
        self.fake, self.network = fake, network

    def parse_from_file(self, path: str) -> bool:
        graph = Path(path).parent.name
        facts = onnx_facts(Path(path))
        if facts is None:
            dims, dtype = self.fake.input_dims(graph), Path(path).read_text().split()[-1]
        else:
            dims, dtype = facts
        self.network.inputs = [FakeTensor(n, d) for n, d in dims.items()]
        self.network.graph, self.network.dtype = graph, dtype
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
    def __init__(self) -> None:
        self.flags: set[str] = set()
        self.pools: dict[str, int] = {}
        self.profiles: list[FakeProfile] = []
        self.progress_monitor: Any = None
        self.timing_cache: FakeTimingCache | None = None

    def set_flag(self, flag: str) -> None:
        self.flags.add(flag)

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def create_timing_cache(self, data: bytes) -> FakeTimingCache:
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache:
        assert self.timing_cache is not None
        return self.timing_cache


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, list[list[int]]] = {}

    def set_shape(self, name: str, low: Any, opt: Any, high: Any) -> None:
        self.shapes[name] = [list(low), list(opt), list(high)]


class FakeBuilder:
    def __init__(self, fake: FakeTrt) -> None:
        self.fake = fake

    def create_network(self, flags: int = 0) -> FakeNetwork:
        release = self.fake.release
        bit = 1 << release.creation_flags["STRONGLY_TYPED"]
        return FakeNetwork(release.always_strongly_typed or bool(flags & bit))

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig()

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: FakeNetwork, config: FakeConfig) -> Any:
        if not report_phases(config.progress_monitor) or self.fake.build_result is None:
            return None
        if network.strongly_typed and "FP16" in config.flags:
            return None  # precision flags on a strongly typed network: no engine
        return engine_bytes(
            network.graph,
            precision=engine_precision(network, config),
            strongly_typed=network.strongly_typed,
            profiles=[p.shapes for p in config.profiles],
            workspace=config.pools.get("WORKSPACE"),
        )


def engine_precision(network: FakeNetwork, config: FakeConfig) -> str:
    """What the engine computes in: the graph's dtype, or (weakly typed) the FP16 flag's say."""
    if network.strongly_typed:
        return network.dtype
    return "fp16" if "FP16" in config.flags else "fp32"


def report_phases(monitor: Any) -> bool:
    """Two phases and one step, as TensorRT reports them; False when the monitor cancels."""
    assert getattr(monitor, "base_initialised", False), "IProgressMonitor.__init__ not called"
    monitor.phase_start("Building engine", None, 2)
    monitor.phase_start("Tactic search", "Building engine", 1)
    go_on = monitor.step_complete("Building engine", 0)
    monitor.phase_finish("Tactic search")
    monitor.phase_finish("Building engine")
    return bool(go_on)


# --- running: an engine per graph on CPU memory, through the bound addresses ---------------


class FakeRuntime:
    def __init__(self, fake: FakeTrt) -> None:
        self.fake = fake

    def deserialize_cuda_engine(self, data: bytes) -> Any:
        data = bytes(data)
        if data.startswith(FOREIGN_PLAN):
            raise RuntimeError("deserialising a foreign plan crashed")
        if not data.startswith(ENGINE_MAGIC):
            return None
        facts = json.loads(data[len(ENGINE_MAGIC) :])
        profiles = facts.get("profiles") or [None]
        return FakeEngine(self.fake, facts["graph"], profiles[0])


class FakeEngine:
    def __init__(self, fake: FakeTrt, graph: str, profile: dict[str, Any] | None = None) -> None:
        self.fake, self.graph = fake, graph
        self.spec = fake_specs()[graph]
        self.dims = fake.input_dims(graph)
        self.names = [*self.dims, *(t.name for t in self.spec.outputs)]
        self.profile = profile or profile_shapes(self.spec, SMALL)

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
        return [tuple(shape) for shape in self.profile[name]]

    def create_execution_context(self) -> FakeContext:
        return FakeContext(self)


class FakeContext:
    """Copies `sample` to `out_sample` (the U-Net); `image_embeds` are each image's channel
    means, tiled to TEXT_WIDTH (`channel_means`); other outputs (text embeddings, the VAE
    decoder's images, the VAE encoder's latents) are filled with 0.5."""

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
        if name == "image_embeds":  # pixel_values (B, 3, H, W) -> (B, TEXT_WIDTH)
            return (self.shapes["pixel_values"][0], TEXT_WIDTH)
        if self.engine.graph == "vae_encoder":  # images (B, 3, H, W) -> latents
            b, _, h, w = self.shapes["sample"]
            return (b, LATENT_CHANNELS, h // VAE_SCALE, w // VAE_SCALE)
        b, _, h, w = self.shapes["latent_sample"]  # the decoder: latents -> images
        return (b, 3, VAE_SCALE * h, VAE_SCALE * w)

    def set_tensor_address(self, name: str, address: int) -> None:
        self.addresses[name] = address

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.executed.append(stream_handle)
        for name in (t.name for t in self.engine.spec.outputs):
            count = int(np.prod(self.get_tensor_shape(name)))
            if name == "out_sample":
                ctypes.memmove(self.addresses[name], self.addresses["sample"], 4 * count)
            elif name == "image_embeds":
                values = channel_means(self.bound_input("pixel_values"), TEXT_WIDTH)
                ctypes.memmove(self.addresses[name], values.ctypes.data, 4 * count)
            else:
                values = np.full(count, 0.5, dtype=np.float32)
                ctypes.memmove(self.addresses[name], values.ctypes.data, 4 * count)
        return True

    def bound_input(self, name: str) -> np.ndarray:
        """A copy of a float32 input, read through its bound address."""
        shape = self.shapes[name]
        buffer = (ctypes.c_float * int(np.prod(shape))).from_address(self.addresses[name])
        return np.frombuffer(buffer, dtype=np.float32).reshape(shape).copy()


def channel_means(pixels: np.ndarray, width: int) -> np.ndarray:
    """(B, 3, H, W) -> (B, width) float32, C-contiguous: value j is the mean of channel j % 3
    (tests/test_image_encoder.py's MeanEngine, which tiles the same means to 1152)."""
    means = pixels.astype(np.float32).mean(axis=(2, 3))
    return np.ascontiguousarray(means[:, [j % 3 for j in range(width)]])
