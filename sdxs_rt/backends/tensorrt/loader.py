"""Assemble the TensorRT backend's components from an exported folder and the engine cache."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdxs_rt.backends.tensorrt.builder import RUNTIME_GRAPHS, check_precision, import_tensorrt
from sdxs_rt.backends.tensorrt.cache import CachedEngine
from sdxs_rt.backends.tensorrt.environment import Environment, current_environment, require_gpu
from sdxs_rt.backends.tensorrt.ops import cuda_device
from sdxs_rt.backends.tensorrt.profile import (
    ENCODER_GRAPH,
    INFO_KEY,
    common_profile,
    image_encoder_preprocessor,
    profile_from_dict,
    profile_info,
)
from sdxs_rt.backends.tensorrt.runtime import TrtEngine, deserialize
from sdxs_rt.backends.tensorrt.selection import EngineQuery, select_engine
from sdxs_rt.backends.tensorrt.wrappers import (
    DeferredEngine,
    TrtImageEncoder,
    TrtTextEncoder,
    TrtUNet,
    TrtVAEDecoder,
    TrtVAEEncoder,
)
from sdxs_rt.backends.torch.ops import TorchOps
from sdxs_rt.components import Components
from sdxs_rt.errors import EngineError, ModelFormatError, ModelNotFoundError, UsageError
from sdxs_rt.graphs import (
    IMAGE_ENCODER_GRAPH,
    MANIFEST_NAME,
    Manifest,
    graph_specs,
    latent_scaling_from_manifest,
    read_manifest,
)
from sdxs_rt.prompt_tokenizer import PromptTokenizer

# SDXS_RT_CUDA_GRAPHS=1 replays the U-Net through a CUDA graph (captured again per shape).
CUDA_GRAPHS_VARIABLE = "SDXS_RT_CUDA_GRAPHS"


@dataclass(frozen=True)
class LoadPlan:
    """What opening each engine needs."""

    trt: Any
    folder: Path
    manifest: Manifest
    precision: str
    environment: Environment
    device: torch.device


def load_components(
    model: str | Path | None,
    *,
    text_encoder: str | None = None,
    device: str = "cuda",
    precision: str = "fp16",
    variant: str | None = None,
    revision: str | None = None,  # an exported folder is local: its source's is in the manifest
    trust_remote_code: bool = False,  # nothing runs from the hub here: ignored
) -> Components:
    """Components over the cached engines of `model`, an exported folder.

    The VAE encoder (img2img) and the image encoder (image prompts) are optional: without a
    usable vae_encoder engine, `Components.vae_encoder` is None and
    info["vae_encoder_unavailable"] says why; likewise `image_encoder` and
    info["image_encoder_unavailable"]. Both engines open on first use."""
    folder = exported_folder(model, text_encoder)
    manifest = read_manifest(folder)
    check_precision(precision)
    trt = import_tensorrt()
    torch_device = cuda_device(device)
    environment = require_gpu(current_environment(torch_device.index or 0))
    plan = LoadPlan(trt, folder, manifest, precision, environment, torch_device)
    opened = {graph: open_engine(plan, graph) for graph in RUNTIME_GRAPHS}
    engines = {graph: engine for graph, (engine, _) in opened.items()}
    cached = {graph: entry for graph, (_, entry) in opened.items()}
    vae_encoder, vae_engine_or_reason = vae_encoder_component(plan)
    image_encoder, image_engine_or_reason = image_encoder_component(plan)
    info = components_info(plan, cached, variant)
    for graph, engine_or_reason in (
        (ENCODER_GRAPH, vae_engine_or_reason),
        (IMAGE_ENCODER_GRAPH, image_engine_or_reason),
    ):
        if isinstance(engine_or_reason, CachedEngine):
            info["engines"][graph] = str(engine_or_reason.engine_path)
        else:
            info[f"{graph}_unavailable"] = engine_or_reason
    return Components(
        text_encoder=text_encoder_component(plan, engines["text_encoder"], cached),
        unet=TrtUNet(engines["unet"]),
        vae_decoder=TrtVAEDecoder(engines["vae_decoder"], str(folder)),
        vae_encoder=vae_encoder,
        image_encoder=image_encoder,
        ops=TorchOps(torch_device, torch.float32),
        scheduler_config=dict(manifest.scheduler_config),
        latent_scaling=latent_scaling_from_manifest(manifest.latent_scaling),
        latent_channels=manifest.latent_channels,
        vae_scale_factor=manifest.vae_scale_factor,
        info=info,
    )


def exported_folder(model: str | Path | None, text_encoder: str | None) -> Path:
    """The folder to load, or a clear error for what this backend cannot load."""
    if model is None:
        raise UsageError("the tensorrt backend needs --model pointing at an exported folder")
    if text_encoder is not None:
        raise UsageError(
            "the tensorrt backend takes no --text-encoder: the text encoder is part of the "
            "export (give --text-encoder to 'sdxs-rt export onnx' instead)"
        )
    folder = Path(model)
    if not (folder / MANIFEST_NAME).is_file():
        what = "has no manifest.json" if folder.is_dir() else "is not a folder"
        raise ModelNotFoundError(
            f"{folder} {what}; the tensorrt backend runs exported graphs: run "
            f"'sdxs-rt export onnx --model {model} --out DIR', then "
            "'sdxs-rt engine build --model DIR', and pass --model DIR"
        )
    return folder


def open_engine(plan: LoadPlan, graph: str) -> tuple[TrtEngine, CachedEngine]:
    entry = plan.manifest.graphs.get(graph)
    if entry is None:
        raise EngineError(f"{plan.folder / MANIFEST_NAME} lists no {graph} graph; export again")
    query = EngineQuery(
        graph, entry.sha256, plan.precision, plan.folder, plan.manifest.engines.get(graph)
    )
    cached = select_engine(query, plan.environment)
    runtime, engine = deserialize(plan.trt, cached, plan.environment, plan.folder)
    use_graphs = graph == "unet" and os.environ.get(CUDA_GRAPHS_VARIABLE) == "1"
    trt_engine = TrtEngine(plan.trt, engine, plan.device, cuda_graph=use_graphs)
    trt_engine.runtime = runtime
    check_io_names(trt_engine, graph, plan)
    return trt_engine, cached


def vae_encoder_component(plan: LoadPlan) -> tuple[TrtVAEEncoder | None, CachedEngine | str]:
    """(the encoder, its cached engine), or (None, why there is none).

    The engine is chosen now, so a missing one is known at load; it is opened on the first
    encode (`DeferredEngine`). Its profile stays out of "engine_profile", which says what sizes
    text-to-image can run (a build gives it the decoder's sizes)."""
    graph = ENCODER_GRAPH
    entry = plan.manifest.graphs.get(graph)
    if entry is None:
        return None, (
            f"{plan.folder / MANIFEST_NAME} lists no {graph} graph; export the model again "
            "with 'sdxs-rt export onnx' and run 'sdxs-rt engine build' to encode init images"
        )
    chosen = choose_deferred_engine(plan, graph, entry.sha256)
    if isinstance(chosen, str):
        return None, chosen
    engine, cached = chosen
    return TrtVAEEncoder(engine, str(plan.folder), plan.manifest.vae_scale_factor), cached


def choose_deferred_engine(
    plan: LoadPlan, graph: str, graph_sha256: str
) -> tuple[DeferredEngine, CachedEngine] | str:
    """An optional graph's engine chosen now (a missing one is known at load) and opened on
    first use, or why there is none."""
    recorded = plan.manifest.engines.get(graph)
    query = EngineQuery(graph, graph_sha256, plan.precision, plan.folder, recorded)
    try:
        cached = select_engine(query, plan.environment)
    except EngineError as err:
        return missing_encoder_reason(err, plan, graph)
    return DeferredEngine(lambda: open_engine(plan, graph)[0]), cached


def missing_encoder_reason(err: EngineError, plan: LoadPlan, graph: str = ENCODER_GRAPH) -> str:
    """Why an optional encoder's engine (`graph`: vae_encoder or image_encoder) cannot be used:
    the selection's reason (never built, stale, foreign, another precision), each with what to
    run; a missing graph file first, since a build skips the engine without one."""
    entry = plan.manifest.graphs.get(graph)
    if entry is not None and not (plan.folder / entry.file).is_file():
        return (
            f"{plan.folder / entry.file} is missing, so 'sdxs-rt engine build' builds no "
            f"{graph} engine; export the model again with 'sdxs-rt export onnx'"
        )
    return str(err)


def image_encoder_component(plan: LoadPlan) -> tuple[TrtImageEncoder | None, CachedEngine | str]:
    """(the image-prompt encoder, its cached engine), or (None, why there is none).

    As with the VAE encoder, the engine is chosen now and opened on the first image prompt
    (`DeferredEngine`): text-to-image does not hold the vision tower's context. Images are
    prepared as the manifest's `image_preprocessor` says, at the size the engine was built for;
    its profile stays out of "engine_profile"."""
    graph = IMAGE_ENCODER_GRAPH
    manifest_path = plan.folder / MANIFEST_NAME
    entry = plan.manifest.graphs.get(graph)
    if entry is None:
        return None, (
            f"{manifest_path} lists no {graph} graph (an export made before it existed, or from "
            "a text encoder without a vision tower); export the model again with 'sdxs-rt "
            "export onnx' and run 'sdxs-rt engine build' to use image prompts"
        )
    try:
        preprocessor = image_encoder_preprocessor(plan.folder, plan.manifest)
    except ModelFormatError as err:
        return None, (
            f"{err}, so 'sdxs-rt engine build' builds no {graph} engine; export the model "
            "again with 'sdxs-rt export onnx'"
        )
    chosen = choose_deferred_engine(plan, graph, entry.sha256)
    if isinstance(chosen, str):
        return None, chosen
    engine, cached = chosen
    width = plan.manifest.text_width
    return TrtImageEncoder(engine, preprocessor, width, str(plan.folder)), cached


def check_io_names(engine: TrtEngine, graph: str, plan: LoadPlan) -> None:
    spec = graph_specs(plan.manifest.latent_channels, plan.manifest.text_width)[graph]
    expected = sorted(t.name for t in (*spec.inputs, *spec.outputs))
    found = sorted([*engine.inputs, *engine.outputs])
    if found != expected:
        raise EngineError(
            f"the {graph} engine has tensors {', '.join(found)}, sdxs-rt expects "
            f"{', '.join(expected)}; export the model again and rebuild the engines"
        )


def text_encoder_component(
    plan: LoadPlan, engine: TrtEngine, cached: dict[str, CachedEngine]
) -> TrtTextEncoder:
    max_tokens = profile_from_dict(cached["text_encoder"].sidecar["key"]["profile"]).max_sequence
    tokenizer = PromptTokenizer.from_file(plan.folder / plan.manifest.tokenizer, max_tokens)
    return TrtTextEncoder(tokenizer, engine, plan.manifest.text_width)


def components_info(
    plan: LoadPlan, cached: dict[str, CachedEngine], variant: str | None
) -> dict[str, Any]:
    """Components.info, with the sizes the engines cover under "engine_profile"."""
    model = plan.manifest.model
    profiles = [profile_from_dict(e.sidecar["key"]["profile"]) for e in cached.values()]
    return {
        "backend": "tensorrt",
        "device": str(plan.device),
        "precision": plan.precision,
        "model": str(model.get("name", "")),
        "model_hash": str(model.get("hash", "")),
        "text_encoder": str(model.get("text_encoder", "")),
        "variant": variant,
        "revision": model.get("revision"),  # the hub revision the graphs were exported from
        "tensorrt_version": plan.environment.tensorrt_version,
        "gpu": plan.environment.gpu_name,
        "engines": {graph: str(entry.engine_path) for graph, entry in cached.items()},
        INFO_KEY: profile_info(common_profile(profiles)),
    }
