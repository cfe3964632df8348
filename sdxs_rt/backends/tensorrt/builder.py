"""Build TensorRT engines from an exported folder's ONNX graphs, into the engine cache.

Needs TensorRT (imported when a build starts), not torch. The API in use, present in the
TensorRT 10.0 and 11.x Python bindings alike: a `Builder`; `create_network(flags)` with the
flags of the build mode (`build_mode.py`: strongly typed, or weakly typed with the FP16 flag on
10.x only); the `OnnxParser` reading the graph from its path (so external data beside it is
found); a builder config with a workspace pool limit, one optimization profile, the machine's
timing cache and a progress monitor; then `build_serialized_network`.

A build makes the text-to-image engines (`RUNTIME_GRAPHS`), then the optional ones whose graph
the export has (`OPTIONAL_GRAPHS`): the VAE encoder's (img2img, the pixel hires fix), with the
build's size profile, so the encoder takes every image the decoder can make; and the image
encoder's (image prompts), for the one image size of the manifest's `image_preprocessor` and
batches 1..the build's max batch (`profile.engine_shapes`). An export without one of them (made
before `export onnx` wrote it, or, for the image encoder, from a text encoder without a vision
tower) still builds the others, and one progress event per missing graph says so.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sdxs_rt import __version__
from sdxs_rt.backends.tensorrt.build_mode import (
    choose_build_mode,
    network_flags,
    set_precision_flags,
)
from sdxs_rt.backends.tensorrt.cache import (
    CachedEngine,
    EngineKey,
    find_cached,
    store_engine,
    timing_cache_path,
    write_atomic,
)
from sdxs_rt.backends.tensorrt.environment import (
    TENSORRT_MISSING,
    Environment,
    current_environment,
    require_gpu,
)
from sdxs_rt.backends.tensorrt.profile import (
    ENCODER_GRAPH,
    OPTIONAL_GRAPHS,
    check_profile,
    engine_shapes,
    image_encoder_preprocessor,
)
from sdxs_rt.errors import (
    DeviceError,
    EngineError,
    ModelFormatError,
    ModelNotFoundError,
    SdxsError,
    UsageError,
)
from sdxs_rt.graphs import (
    IMAGE_ENCODER_GRAPH,
    MANIFEST_NAME,
    Manifest,
    ShapeTriple,
    SizeProfile,
    read_manifest,
    write_manifest,
)

logger = logging.getLogger(__name__)

RUNTIME_GRAPHS = ("text_encoder", "unet", "vae_decoder")  # what text-to-image runs
ENGINE_GRAPHS = (*RUNTIME_GRAPHS, *OPTIONAL_GRAPHS)  # what a build makes from a full export
# What a build without the graph costs, and what gets it back (its progress note).
UNAVAILABLE_WITHOUT = {
    ENCODER_GRAPH: (
        "img2img and the pixel hires fix will be unavailable on TensorRT; export the model "
        "again with 'sdxs-rt export onnx' and build again"
    ),
    IMAGE_ENCODER_GRAPH: (
        "image prompts will be unavailable on TensorRT; export the model again with "
        "'sdxs-rt export onnx' (its text encoder needs a vision tower) and build again"
    ),
}
# Why an optional graph may be unlisted in a manifest.
UNLISTED_BECAUSE = {
    ENCODER_GRAPH: "an older export",
    IMAGE_ENCODER_GRAPH: "an older export, or a text encoder without a vision tower",
}
PRECISIONS = ("fp16", "fp32")
DEFAULT_PROFILE = SizeProfile()  # frozen: safe as a default


@dataclass(frozen=True)
class BuildEvent:
    """A progress report: `kind` is skip, start, phase_start, step, phase_finish, done, or
    note (`message`: a graph left out of the build, and what that costs)."""

    graph: str
    kind: str
    phase: str = ""
    parent: str | None = None  # the enclosing phase (phase_start only)
    step: int = 0
    total: int = 0  # the phase's number of steps (phase_start only)
    path: Path | None = None  # the engine file (skip and done)
    message: str = ""  # note only


# A callback that returns False (not None) from a "step" event cancels the build.
ProgressCallback = Callable[[BuildEvent], object]


@dataclass(frozen=True)
class BuildRequest:
    """What every engine of one build shares."""

    profile: SizeProfile
    precision: str
    build_mode: str
    environment: Environment


@dataclass(frozen=True)
class BuildJob:
    """One engine to build: the graph, its key and shapes, and what the sidecar records."""

    graph: str
    onnx_path: Path
    key: EngineKey
    shapes: dict[str, ShapeTriple]
    sidecar: dict[str, Any] = field(default_factory=dict)


def import_tensorrt() -> Any:
    try:
        import tensorrt
    except ImportError:
        raise DeviceError(TENSORRT_MISSING) from None
    return tensorrt


@functools.cache
def tensorrt_logger(trt: Any) -> Any:
    """One logger per process: TensorRT warns when builders and runtimes get different ones."""
    return trt.Logger(trt.Logger.WARNING)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UsageError(f"TensorRT engines are built in fp16 or fp32, not {precision!r}")
    return precision


def build_engines(
    exported_dir: str | Path,
    profile: SizeProfile = DEFAULT_PROFILE,
    precision: str = "fp16",
    force: bool = False,
    progress: ProgressCallback | None = None,
    workspace_bytes: int | None = None,
) -> list[Path]:
    """Build (or find in the cache) the engines of `graphs_to_build`; their paths, in that order.

    Each finished engine is recorded in the folder's manifest at once, so an interrupted build
    resumes where it stopped. `force` rebuilds engines that are already cached. For each optional
    graph it cannot build (the vae_encoder or image_encoder graph missing), one "note" event
    says why and what will be unavailable.
    """
    check_profile(profile)
    check_precision(precision)
    trt = import_tensorrt()
    folder = Path(exported_dir)
    manifest = read_manifest(folder)
    model = str(manifest.model.get("name") or "MODEL")
    mode = choose_build_mode(trt, precision, manifest.precision, folder, model)  # before any build
    request = BuildRequest(profile, precision, mode, require_gpu(current_environment()))
    notify = progress or (lambda event: None)
    graphs = graphs_to_build(folder, manifest)
    for graph in OPTIONAL_GRAPHS:
        why = skip_reason(folder, manifest, graph)
        if why is not None:
            notify(BuildEvent(graph, "note", message=skip_note(graph, why)))
    paths = []
    for graph in graphs:
        job = plan_job(folder, manifest, graph, request)
        engine = reuse_cached(job, notify) if not force else None
        engine = engine or build_engine(trt, job, notify, workspace_bytes)
        record_in_manifest(folder, engine)
        paths.append(engine.engine_path)
    return paths


def graphs_to_build(folder: Path, manifest: Manifest) -> tuple[str, ...]:
    """The text-to-image graphs, then the VAE encoder and the image encoder where the export has
    them (`skip_reason` None): those come last, so text-to-image is usable first."""
    optional = (g for g in OPTIONAL_GRAPHS if skip_reason(folder, manifest, g) is None)
    return (*RUNTIME_GRAPHS, *optional)


def engine_graphs(exported_dir: str | Path) -> tuple[str, ...]:
    """What `build_engines` will build for a folder (for progress counts); the text-to-image
    graphs when its manifest cannot be read, which the build itself then reports."""
    folder = Path(exported_dir)
    try:
        return graphs_to_build(folder, read_manifest(folder))
    except (SdxsError, OSError, ValueError):
        return RUNTIME_GRAPHS


def skip_reason(folder: Path, manifest: Manifest, graph: str) -> str | None:
    """Why a build cannot make an optional graph's engine (unlisted, its file missing, or, for
    the image encoder, no image size it can use), or None when it can."""
    entry = manifest.graphs.get(graph)
    if entry is None:
        return f"{folder / MANIFEST_NAME} lists no {graph} graph ({UNLISTED_BECAUSE[graph]})"
    if not (folder / entry.file).is_file():
        return f"{folder / entry.file} is missing"
    if graph == IMAGE_ENCODER_GRAPH:
        try:
            image_encoder_preprocessor(folder, manifest)
        except ModelFormatError as err:
            return str(err)
    return None


def skip_note(graph: str, why: str) -> str:
    """The progress line of a build without an optional graph's engine."""
    return f"not built: {why}, so {UNAVAILABLE_WITHOUT[graph]}"


def plan_job(folder: Path, manifest: Manifest, graph: str, request: BuildRequest) -> BuildJob:
    entry = manifest.graphs.get(graph)
    if entry is None:
        raise EngineError(
            f"{folder / MANIFEST_NAME} lists no {graph} graph; export the model again "
            "with 'sdxs-rt export onnx'"
        )
    onnx_path = folder / entry.file
    if not onnx_path.is_file():
        raise ModelNotFoundError(f"{onnx_path} is missing; export the model again")
    environment = request.environment
    key = EngineKey(
        onnx_sha256=entry.sha256,
        precision=request.precision,
        profile=request.profile,
        tensorrt_version=str(environment.tensorrt_version),
        compute_capability=str(environment.compute_capability),
        os=environment.os,
        build_mode=request.build_mode,
    )
    shapes = engine_shapes(folder, manifest, graph, request.profile)
    sidecar = {
        "graph": graph,
        "model": {"name": manifest.model.get("name", ""), "hash": manifest.model.get("hash", "")},
        "onnx_file": entry.file,
        # Strongly typed, an fp16 export's fp32 fallback graph (the VAE) stays an fp32 engine.
        "graph_precision": entry.precision,
        "profile": asdict(request.profile),
        "environment": environment.to_dict(),
        "sdxs_rt_version": __version__,
    }
    return BuildJob(graph, onnx_path, key, shapes, sidecar)


def reuse_cached(job: BuildJob, notify: ProgressCallback) -> CachedEngine | None:
    cached = find_cached(job.key)
    if cached is not None:
        notify(BuildEvent(job.graph, "skip", path=cached.engine_path))
    return cached


def build_engine(
    trt: Any, job: BuildJob, notify: ProgressCallback, workspace_bytes: int | None = None
) -> CachedEngine:
    """Build one engine and store it (atomically) with its sidecar."""
    notify(BuildEvent(job.graph, "start"))
    started = time.monotonic()
    serialized = serialize_network(trt, job, notify, workspace_bytes)
    sidecar = {
        **job.sidecar,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    engine = store_engine(job.key, memoryview(serialized), sidecar)
    notify(BuildEvent(job.graph, "done", path=engine.engine_path))
    return engine


def serialize_network(
    trt: Any, job: BuildJob, notify: ProgressCallback, workspace_bytes: int | None = None
) -> Any:
    """ONNX file -> serialized engine (TensorRT's IHostMemory, a buffer)."""
    trt_logger = tensorrt_logger(trt)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(network_flags(trt, job.key.build_mode))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(job.onnx_path)):
        raise EngineError(parse_error_message(parser, job.onnx_path))
    config = builder.create_builder_config()
    configure(trt, config, job.key.build_mode, workspace_bytes)
    config.add_optimization_profile(optimization_profile(builder, network, job))
    monitor = make_progress_monitor(trt, job.graph, notify)  # must outlive the build
    config.progress_monitor = monitor
    timing_file = timing_cache_path(job.key.tensorrt_version, job.key.compute_capability)
    use_timing_cache(config, timing_file)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(build_failure_message(job, cancelled=monitor.cancelled))
    save_timing_cache(config, timing_file)
    return serialized


def configure(trt: Any, config: Any, build_mode: str, workspace_bytes: int | None) -> None:
    set_precision_flags(trt, config, build_mode)
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))


def optimization_profile(builder: Any, network: Any, job: BuildJob) -> Any:
    """min/opt/max shapes for every dynamic input of the parsed network."""
    profile = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        dims = tuple(tensor.shape)
        if all(dim >= 0 for dim in dims):
            continue  # a static input (a scalar timestep, say): nothing to choose
        low, opt, high = job.shapes.get(tensor.name) or _unknown_input(job, tensor.name)
        if len(low) != len(dims):
            raise EngineError(
                f"{job.onnx_path}: input {tensor.name!r} has {len(dims)} dimensions, "
                f"sdxs-rt expects {len(low)}; export the model again with this sdxs-rt"
            )
        profile.set_shape(tensor.name, low, opt, high)
    return profile


def _unknown_input(job: BuildJob, name: str) -> ShapeTriple:
    expected = ", ".join(job.shapes) or "none"
    raise EngineError(
        f"{job.onnx_path} has an input {name!r} that sdxs-rt does not know (expected: "
        f"{expected}); export the model again with this sdxs-rt"
    )


def parse_error_message(parser: Any, path: Path) -> str:
    errors = [str(parser.get_error(index)) for index in range(parser.num_errors)]
    return f"TensorRT could not parse {path}: {'; '.join(errors) or 'no details given'}"


def build_failure_message(job: BuildJob, cancelled: bool) -> str:
    if cancelled:
        return f"the build of the {job.graph} engine was cancelled"
    return (
        f"TensorRT could not build the {job.graph} engine from {job.onnx_path} (see its "
        "messages above); a smaller --max-size or --max-batch needs less GPU memory"
    )


def use_timing_cache(config: Any, path: Path) -> None:
    """Load the machine's timing cache into the config; an unusable one is started afresh."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        logger.warning("ignoring the TensorRT timing cache %s: it does not fit this machine", path)
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def save_timing_cache(config: Any, path: Path) -> None:
    """Write the timing cache back, now with this build's measurements (best effort)."""
    try:
        write_atomic(path, memoryview(config.get_timing_cache().serialize()))
    except OSError as exc:
        logger.warning("could not save the TensorRT timing cache %s: %s", path, exc)


def make_progress_monitor(trt: Any, graph: str, notify: ProgressCallback) -> Any:
    """A `trt.IProgressMonitor` forwarding build phases and steps to `notify`."""

    class ProgressMonitor(trt.IProgressMonitor):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)  # the binding's base must be initialised
            self.cancelled = False

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            event = BuildEvent(graph, "phase_start", phase_name, parent_phase, total=num_steps)
            forward_event(notify, event)

        def step_complete(self, phase_name: str, step: int) -> bool:
            go_on = forward_event(notify, BuildEvent(graph, "step", phase_name, step=step))
            self.cancelled = self.cancelled or not go_on
            return go_on  # False asks TensorRT to cancel the build

        def phase_finish(self, phase_name: str) -> None:
            forward_event(notify, BuildEvent(graph, "phase_finish", phase_name))

    return ProgressMonitor()


def forward_event(notify: ProgressCallback, event: BuildEvent) -> bool:
    """Called from TensorRT's threads: a failing callback is logged, never raised into them."""
    try:
        return notify(event) is not False
    except Exception:
        logger.exception("the build progress callback failed")
        return True


def manifest_record(engine: CachedEngine) -> dict[str, Any]:
    """What the exported folder's manifest notes about an engine (a sidecar-like dict)."""
    sidecar = engine.sidecar
    return {
        "graph": engine.graph,
        "digest": engine.digest,
        "file": str(engine.engine_path),
        "key": sidecar["key"],
        "profile": sidecar["key"]["profile"],
        "graph_precision": sidecar.get("graph_precision", ""),
        "environment": sidecar.get("environment", {}),
        "built_at": sidecar.get("built_at", ""),
        "sdxs_rt_version": sidecar.get("sdxs_rt_version", ""),
    }


def record_in_manifest(folder: Path, engine: CachedEngine) -> None:
    """Note the engine in `manifest.json` (atomic write); a read-only folder only warns."""
    manifest = read_manifest(folder)  # read again: another process may have written it
    manifest.engines[engine.graph] = manifest_record(engine)
    try:
        write_manifest(folder, manifest)
    except OSError as exc:
        logger.warning("could not record the %s engine in %s: %s", engine.graph, folder, exc)
