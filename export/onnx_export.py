"""`sdxs-rt export onnx`: the graphs checked against PyTorch, the tokenizer, `manifest.json`.

Five graphs: text encoder, U-Net, VAE decoder and encoder, and the image encoder (image
prompts: the text encoder's SigLIP vision tower) when the text encoder has a vision tower; one
progress line says why it is left out otherwise.

Exporter: torch's TorchScript-based `torch.onnx.export(..., dynamo=False)`, opset 17 by
default (17..20 accepted). Measured on the tiny model: it exports the U-Net in 2 s and every
graph within 2e-6 of PyTorch at other shapes than the traced one. The dynamo exporter needs
onnxscript (not otherwise a dependency), took 29 s for the same U-Net, and its conversion to
opset 17 wrote a Split node that fails `onnx.checker`. Opset 17 is the first with a
LayerNormalization op (one node, which the fp16 conversion can keep float32 and TensorRT maps
to its normalisation layer) and is read by every ONNX Runtime and TensorRT release we target.

Each graph is built in a work folder beside its target, checked (`onnx.checker`, I/O names,
parity against PyTorch on random inputs through ONNX Runtime on the CPU) and only then renamed
into place; a failure raises EngineError and leaves no graph file. A rerun skips graphs whose
stamp matches the source weights and options. The manifest is written last.
"""

from __future__ import annotations

import gc
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from sdxs_rt import __version__
from sdxs_rt.errors import EngineError, ModelFormatError, UsageError
from sdxs_rt.graphs import (
    GRAPH_NAMES,
    IMAGE_ENCODER_GRAPH,
    MANIFEST_NAME,
    SO400M_IMAGE_SIZE,
    GraphEntry,
    GraphSpec,
    Manifest,
    graph_specs,
    write_manifest,
)
from sdxs_rt.hub import check_revision
from sdxs_rt.image_encoder_files import image_encoder_or_reason
from sdxs_rt.loading import ModelFiles, file_sha256, resolve_model
from sdxs_rt.text_encoder_files import check_text_width, resolve_text_encoder

from . import parity
from .fp16 import convert_to_fp16, emulated_fp16_graph, plan_fp32_nodes
from .graph_files import (
    GRAPH_FILE,
    GRAPH_FOLDER_FILES,
    check_replaceable,
    fresh_entry,
    graph_digest,
    install_dir,
    partial_dir,
    save_graph,
    stamp_key,
    write_stamp,
)
from .model_info import (
    TOKENIZER_FILES,
    TOKENIZER_FOLDER,
    copy_tokenizer,
    graph_dims,
    manifest_fields,
)
from .wrappers import ExportSource, load_graph_module

PRECISIONS = ("fp32", "fp16")
SUPPORTED_OPSETS = range(17, 21)  # 17: LayerNormalization; 20: the TorchScript exporter's last
DEFAULT_OPSET = 17
FP32_FALLBACK_GRAPHS = ("vae_decoder", "vae_encoder")  # an fp16 VAE that loses the image
EXPORTER = "torch.onnx.export (TorchScript)"
ONNX_DTYPES = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportJob:
    """Everything one export needs: sources, sizes, specs, options and where to write."""

    source: ExportSource
    dims: parity.GraphDims
    specs: dict[str, GraphSpec]
    precision: str
    opset: int
    out_dir: Path
    progress: Progress
    graphs: tuple[str, ...] = GRAPH_NAMES  # without the image encoder when there is none


def export_onnx(
    model: str | None,
    out_dir: Path,
    *,
    text_encoder: str | None = None,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    variant: str | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    progress: Progress | None = None,
) -> Manifest:
    """Export the model's graphs to `out_dir` and return the manifest written there.
    `revision`: the hub branch, tag or commit of `model`, recorded in the manifest."""
    _check_options(precision, opset)
    check_revision(model, revision)
    files = resolve_model(model, variant, revision)
    source, no_image = export_source(files, text_encoder, trust_remote_code)
    dims = graph_dims(source)
    image_size = dims.image_size or SO400M_IMAGE_SIZE
    job = ExportJob(
        source=source,
        dims=dims,
        specs=graph_specs(dims.latent_channels, dims.text_width, image_size),
        precision=precision,
        opset=opset,
        out_dir=Path(out_dir),
        progress=progress or (lambda _message: None),
        graphs=tuple(g for g in GRAPH_NAMES if g != IMAGE_ENCODER_GRAPH or not no_image),
    )
    if no_image:
        job.progress(
            f"{IMAGE_ENCODER_GRAPH}: not exported: {no_image}; image prompts will be unavailable"
        )
    job.out_dir.mkdir(parents=True, exist_ok=True)
    entries = _export_graphs(job)
    tokenizer = copy_tokenizer(source.text_encoder, job.out_dir)
    manifest = Manifest(
        **manifest_fields(source, dims),
        precision=precision,
        opset=opset,
        tokenizer=tokenizer,
        graphs=entries,
        sdxs_rt_version=__version__,
    )
    path = write_manifest(job.out_dir, manifest)
    job.progress(f"manifest: {path}")
    return manifest


def export_source(
    files: ModelFiles, text_encoder: str | None, trust_remote_code: bool
) -> tuple[ExportSource, str | None]:
    """The export's sources, and why there is no image encoder (None: there is one)."""
    text = resolve_text_encoder(text_encoder, files)
    check_text_width(text, files)  # before any weight is read
    width = text.layout.width if text.layout is not None else files.cross_attention_dim
    image, no_image = image_encoder_or_reason(text, width)
    return ExportSource(files, text, trust_remote_code, image_encoder=image), no_image


def _check_options(precision: str, opset: int) -> None:
    if precision not in PRECISIONS:
        raise UsageError(f"unknown export precision {precision!r}; use fp32 or fp16")
    if opset not in SUPPORTED_OPSETS:
        raise UsageError(
            f"opset {opset} is not supported; use {SUPPORTED_OPSETS.start}.."
            f"{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})"
        )


def _export_graphs(job: ExportJob) -> dict[str, GraphEntry]:
    for name in job.graphs:
        check_replaceable(job.out_dir / name, GRAPH_FOLDER_FILES)
    check_replaceable(job.out_dir / TOKENIZER_FOLDER, TOKENIZER_FILES)
    keys = {name: graph_key(job, name) for name in job.graphs}
    fresh = {name: fresh_entry(job.out_dir / name, keys[name]) for name in job.graphs}
    if not all(fresh.values()):
        # From here on the folder changes: no manifest may describe a half-updated set.
        (job.out_dir / MANIFEST_NAME).unlink(missing_ok=True)
    entries: dict[str, GraphEntry] = {}
    for name in job.graphs:
        entry = fresh[name]
        if entry is not None:
            job.progress(f"{name}: up to date, skipped")
        else:
            entry = export_graph(job, name, keys[name])
        entries[name] = entry
    return entries


def graph_key(job: ExportJob, name: str) -> dict[str, Any]:
    """What a finished graph depends on: its source files (by content) and the options."""
    model, encoder, image = job.source.model, job.source.text_encoder, job.source.image_encoder
    if name == "text_encoder":
        weights, config = list(encoder.weights), encoder.config
    elif name == IMAGE_ENCODER_GRAPH and image is not None:
        weights = list(image.weights)
        config = {"vision": image.layout.config, "preprocessor": image.preprocessor.to_dict()}
    elif name == "unet":
        weights, config = [model.unet_weights], model.unet_config
    else:
        weights, config = [model.vae_weights], model.vae_config
    return stamp_key(
        {
            "graph": name,
            "weights_sha256": [file_sha256(path) for path in weights],
            "config": config,
            "precision": job.precision,
            "opset": job.opset,
            "trust_remote_code": job.source.trust_remote_code and name == "text_encoder",
            "fold_cross_attention": job.source.fold_cross_attention,
            "exporter": EXPORTER,
            "sdxs_rt_version": __version__,
        }
    )


def export_graph(job: ExportJob, name: str, key: dict[str, Any]) -> GraphEntry:
    """Build, check and install one graph; EngineError (nothing written) when a check fails."""
    job.progress(f"{name}: exporting ({job.precision}, opset {job.opset}) ...")
    started = time.monotonic()
    work = partial_dir(job.out_dir, name)
    try:
        entry = _build_graph(job, name, work)
        install_dir(work, job.out_dir / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    folder = job.out_dir / name
    entry.sha256 = graph_digest(folder)
    write_stamp(folder, key, entry)
    size = sum(p.stat().st_size for p in folder.glob(f"{GRAPH_FILE}*")) / 1e6
    job.progress(
        f"{name}: {entry.precision} graph written ({size:.1f} MB, {time.monotonic() - started:.1f}"
        f" s); parity vs PyTorch: {parity.describe(entry.parity)}"
    )
    return entry


def _build_graph(job: ExportJob, name: str, work: Path) -> GraphEntry:
    spec = job.specs[name]
    cases = parity.parity_cases(name, job.dims)
    module = load_graph_module(name, job.source)
    references = parity.torch_outputs(module, cases)
    _check_reference_shapes(spec, references)
    raw = work / "raw" / GRAPH_FILE
    raw.parent.mkdir()
    trace_to_onnx(module, parity.trace_inputs(name, job.dims), spec, raw, job.opset)
    del module
    gc.collect()  # the float32 torch weights are not needed any more: free them before ORT runs
    try:
        return _finish_graph(job, spec, raw, cases, references, job.precision)
    except EngineError as failure:
        if job.precision != "fp16" or name not in FP32_FALLBACK_GRAPHS:
            raise
        job.progress(f"{name}: {failure}; keeping this graph in float32")
        return _finish_graph(job, spec, raw, cases, references, "fp32")


def _finish_graph(
    job: ExportJob,
    spec: GraphSpec,
    raw: Path,
    cases: list[parity.Feeds],
    references: list[Any],
    precision: str,
) -> GraphEntry:
    """Convert (fp16), save, check and measure the graph; EngineError if it misses the bar."""
    extra: dict[str, float] = {}
    if precision == "fp16":
        keep = plan_fp32_nodes(raw, cases)
        emulated = emulated_fp16_graph(raw, keep)
        extra["psnr_fp16_emulated"] = parity.compare(
            parity.onnx_outputs(emulated, cases), references
        )["psnr"]
        emulated.unlink()
        model = convert_to_fp16(raw, keep)
        job.progress(f"{spec.name}: {keep.describe(model.graph)}")
    else:
        model = onnx.load(str(raw))
    declare_io_shapes(model.graph, spec)
    path = raw.parent.parent / GRAPH_FILE
    external = save_graph(model, path)
    del model
    graph = check_graph(path, spec)
    figures = parity.compare(parity.onnx_outputs(path, cases), references) | extra
    parity.check_bar(spec.name, precision, figures)
    shutil.rmtree(raw.parent)
    return GraphEntry(
        file=spec.file,
        precision=precision,
        sha256="",  # set once the folder is in place
        inputs=_io_entries(graph.input, spec.inputs),
        outputs=_io_entries(graph.output, spec.outputs),
        parity=figures,
        external_data=external,
    )


def _check_reference_shapes(spec: GraphSpec, references: list[Any]) -> None:
    """The fixed sizes of the spec (channels, widths) must be what PyTorch returns."""
    expected = spec.outputs[0].shape
    for result in references:
        fixed_ok = all(
            isinstance(want, str) or want == got
            for want, got in zip(expected, result.shape, strict=False)
        )
        if len(expected) != result.ndim or not fixed_ok:
            raise ModelFormatError(
                f"the PyTorch {spec.name} returns shape {tuple(result.shape)} where "
                f"{tuple(expected)} is expected; do the text encoder, U-Net and VAE "
                "belong together?"
            )


def trace_to_onnx(
    module: Any, inputs: parity.Feeds, spec: GraphSpec, path: Path, opset: int
) -> None:
    """torch -> ONNX with the spec's names and its symbolic dims as dynamic axes."""
    import torch

    args = tuple(torch.from_numpy(array) for array in inputs.values())
    dynamic_axes = {
        tensor.name: {axis: dim for axis, dim in enumerate(tensor.shape) if isinstance(dim, str)}
        for tensor in (*spec.inputs, *spec.outputs)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about Python-level shape checks
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=[t.name for t in spec.inputs],
                output_names=[t.name for t in spec.outputs],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:
            raise EngineError(
                f"torch could not export the {spec.name} graph to ONNX (opset {opset}): "
                f"{_first_line(exc)}"
            ) from None


def declare_io_shapes(graph: onnx.GraphProto, spec: GraphSpec) -> None:
    """Write the spec's dims on the graph's inputs and outputs.

    The tracer cannot always tell a fixed size from a dynamic one (the VAE encoder's latent
    channels come out of a chunk along a traced dim); the spec knows.
    """
    values = {v.name: v for v in (*graph.input, *graph.output)}
    for tensor in (*spec.inputs, *spec.outputs):
        if tensor.name not in values:
            continue  # check_graph names what is missing
        dims = values[tensor.name].type.tensor_type.shape.dim
        if len(dims) != len(tensor.shape):
            raise EngineError(
                f"the exported {spec.name} graph gives {tensor.name} {len(dims)} dimensions, "
                f"not {len(tensor.shape)}"
            )
        for dim, wanted in zip(dims, tensor.shape, strict=True):
            if isinstance(wanted, str):
                dim.dim_param = wanted
            else:
                dim.dim_value = wanted


def check_graph(path: Path, spec: GraphSpec) -> onnx.GraphProto:
    """`onnx.checker` (by path: works with external data) and the spec's I/O names."""
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise EngineError(f"the exported {spec.name} graph is not valid ONNX: {exc}") from None
    graph = onnx.load(str(path), load_external_data=False).graph
    for kind, found, wanted in (
        ("inputs", graph.input, spec.inputs),
        ("outputs", graph.output, spec.outputs),
    ):
        names, expected = [v.name for v in found], [t.name for t in wanted]
        if names != expected:
            raise EngineError(
                f"the exported {spec.name} graph has {kind} {names}, not {expected} "
                "(an input the model ignores is dropped by the exporter)"
            )
    return graph


def _io_entries(values: Any, tensors: Any) -> list[dict[str, Any]]:
    return [
        {
            "name": tensor.name,
            "dtype": ONNX_DTYPES.get(value.type.tensor_type.elem_type, "unknown"),
            "shape": list(tensor.shape),
        }
        for value, tensor in zip(values, tensors, strict=True)
    ]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
