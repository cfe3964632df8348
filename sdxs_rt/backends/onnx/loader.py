"""Assemble the ONNX Runtime backend's components from a folder written by `sdxs-rt export onnx`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnxruntime as ort

from sdxs_rt.array_ops import NumpyOps
from sdxs_rt.backends.onnx.components import (
    IMAGE_ENCODER_INPUTS,
    TEXT_ENCODER_INPUTS,
    UNET_INPUTS,
    VAE_DECODER_INPUTS,
    VAE_ENCODER_INPUTS,
    OnnxImageEncoder,
    OnnxTextEncoder,
    OnnxUNet,
    OnnxVAEDecoder,
    OnnxVAEEncoder,
)
from sdxs_rt.backends.onnx.providers import ProviderPlan, plan_providers
from sdxs_rt.backends.onnx.sessions import GraphRunner, input_dtypes, make_runner, open_session
from sdxs_rt.components import Components
from sdxs_rt.errors import EngineError, ModelFormatError, ModelNotFoundError, UsageError
from sdxs_rt.graphs import (
    IMAGE_ENCODER_GRAPH,
    MANIFEST_NAME,
    Manifest,
    latent_scaling_from_manifest,
    read_manifest,
)
from sdxs_rt.image_preprocess import preprocessor_from_config
from sdxs_rt.prompt_tokenizer import PromptTokenizer


def load_components(
    model: str | Path | None,
    *,
    text_encoder: str | None = None,
    device: str = "cpu",
    precision: str | None = None,
    variant: str | None = None,
    revision: str | None = None,  # an exported folder is local: its source's is in the manifest
    trust_remote_code: bool = False,  # nothing runs from the hub here: ignored
) -> Components:
    """Components over the graphs in `model`, an exported folder (manifest.json beside them).

    The VAE encoder (img2img) is optional: without a usable vae_encoder graph,
    `Components.vae_encoder` is None and info["vae_encoder_unavailable"] says why. So is the
    image encoder (image prompts; `image_encoder`, info["image_encoder_unavailable"]), whose
    session opens on the first image prompt."""
    folder = exported_folder(model, text_encoder)
    manifest = read_manifest(folder)
    check_precision(manifest, precision, folder)
    plan = plan_providers(device, ort.get_available_providers())
    loaded = {name: LoadedGraph.open(folder, manifest, name, plan) for name in GRAPHS_USED}
    encoder_graph, unavailable = open_vae_encoder(folder, manifest, plan)
    if encoder_graph is not None:
        loaded["vae_encoder"] = encoder_graph
    info = components_info(manifest, plan, loaded, variant)
    if unavailable:
        info["vae_encoder_unavailable"] = unavailable
    image_encoder, no_image_encoder = image_encoder_component(folder, manifest, plan)
    if no_image_encoder:
        info["image_encoder_unavailable"] = no_image_encoder
    return Components(
        text_encoder=OnnxTextEncoder(
            PromptTokenizer.from_file(folder / manifest.tokenizer),
            loaded["text_encoder"].runner,
            loaded["text_encoder"].dtypes,
            manifest.text_width,
        ),
        unet=OnnxUNet(
            loaded["unet"].runner, loaded["unet"].dtypes, loaded["unet"].scalar_input("timestep")
        ),
        vae_decoder=OnnxVAEDecoder(
            loaded["vae_decoder"].runner, loaded["vae_decoder"].dtypes, manifest.precision
        ),
        vae_encoder=vae_encoder_component(encoder_graph, manifest),
        image_encoder=image_encoder,
        ops=NumpyOps(),
        scheduler_config=dict(manifest.scheduler_config),
        latent_scaling=latent_scaling_from_manifest(manifest.latent_scaling),
        latent_channels=manifest.latent_channels,
        vae_scale_factor=manifest.vae_scale_factor,
        info=info,
    )


# The graphs text-to-image needs and the inputs each must have (the VAE encoder is for img2img).
GRAPHS_USED = {
    "text_encoder": TEXT_ENCODER_INPUTS,
    "unet": UNET_INPUTS,
    "vae_decoder": VAE_DECODER_INPUTS,
}
GRAPH_INPUTS = {
    **GRAPHS_USED,
    "vae_encoder": VAE_ENCODER_INPUTS,
    IMAGE_ENCODER_GRAPH: IMAGE_ENCODER_INPUTS,
}


def open_vae_encoder(
    folder: Path, manifest: Manifest, plan: ProviderPlan
) -> tuple[LoadedGraph | None, str | None]:
    """The img2img graph, or None and why. Text-to-image never needs it, so a folder without
    it (written before it was exported, or trimmed) or with a damaged one still loads."""
    if "vae_encoder" not in manifest.graphs:
        return None, (
            f"{folder / MANIFEST_NAME} lists no vae_encoder graph; export the model again "
            "with 'sdxs-rt export onnx' to encode init images"
        )
    try:
        return LoadedGraph.open(folder, manifest, "vae_encoder", plan), None
    except EngineError as err:
        return None, str(err)


def vae_encoder_component(graph: LoadedGraph | None, manifest: Manifest) -> OnnxVAEEncoder | None:
    if graph is None:
        return None
    precision = manifest.graphs["vae_encoder"].precision  # fp16 exports may keep the VAE fp32
    latent = (manifest.latent_channels, manifest.vae_scale_factor)
    return OnnxVAEEncoder(graph.runner, graph.dtypes, precision, latent)


def image_encoder_component(
    folder: Path, manifest: Manifest, plan: ProviderPlan
) -> tuple[OnnxImageEncoder | None, str | None]:
    """The image-prompt encoder, or None and why. Checked now (listed, file present, its
    preprocessing understood); its session opens on the first image prompt."""
    entry = manifest.graphs.get(IMAGE_ENCODER_GRAPH)
    if entry is None:
        return None, (
            f"{folder / MANIFEST_NAME} lists no {IMAGE_ENCODER_GRAPH} graph (an export made "
            "before it existed, or from a text encoder without a vision tower); export the "
            "model again with 'sdxs-rt export onnx'"
        )
    if not (folder / entry.file).is_file():
        return None, f"{folder / entry.file} is missing; export the model again"
    where = f"the image_preprocessor of {folder / MANIFEST_NAME}"
    try:
        preprocessor = preprocessor_from_config(manifest.image_preprocessor, where)
    except ModelFormatError as err:
        return None, str(err)
    shapes = [list(t.get("shape") or []) for t in entry.inputs if t.get("name") == "pixel_values"]
    if shapes and shapes[0][2:] != list(preprocessor.size):
        return None, (
            f"{folder / entry.file} takes {shapes[0][2:]} images but the manifest prepares "
            f"them at {list(preprocessor.size)}; export the model again"
        )

    def open_graph() -> tuple[GraphRunner, dict[str, Any]]:
        graph = LoadedGraph.open(folder, manifest, IMAGE_ENCODER_GRAPH, plan)
        return graph.runner, graph.dtypes

    encoder = OnnxImageEncoder(open_graph, preprocessor, manifest.text_width, entry.precision)
    return encoder, None


class LoadedGraph:
    """One graph's session, the dtypes its inputs take and the runner that feeds it."""

    def __init__(self, session: Any, dtypes: dict[str, Any], runner: GraphRunner) -> None:
        self.session = session
        self.dtypes = dtypes
        self.runner = runner

    @classmethod
    def open(cls, folder: Path, manifest: Manifest, name: str, plan: ProviderPlan) -> LoadedGraph:
        entry = manifest.graphs.get(name)
        if entry is None:
            raise EngineError(
                f"{folder / MANIFEST_NAME} lists no {name} graph; export the model again"
            )
        session = open_session(folder, entry, plan)
        dtypes = input_dtypes(session, entry, GRAPH_INPUTS[name])
        return cls(session, dtypes, make_runner(session, entry.file, plan))

    def scalar_input(self, name: str) -> bool:
        return any(node.name == name and not node.shape for node in self.session.get_inputs())

    @property
    def providers(self) -> list[str]:
        return list(self.session.get_providers())


def exported_folder(model: str | Path | None, text_encoder: str | None) -> Path:
    """The folder to load, or a clear error for what this backend cannot load."""
    if model is None:
        raise UsageError("the onnx backend needs --model pointing at an exported folder")
    if text_encoder is not None:
        raise UsageError(
            "the onnx backend takes no --text-encoder: the text encoder is part of the export "
            "(give --text-encoder to 'sdxs-rt export onnx' instead)"
        )
    folder = Path(model)
    if not folder.exists():
        raise ModelNotFoundError(
            f"{folder} does not exist; the onnx backend needs a folder written by "
            "'sdxs-rt export onnx --model MODEL --out DIR'"
        )
    if not (folder / MANIFEST_NAME).is_file():
        raise ModelNotFoundError(
            f"{folder} has no {MANIFEST_NAME}, so it is not an exported model; run "
            f"'sdxs-rt export onnx --model {model} --out DIR' first and pass --model DIR"
        )
    return folder


def check_precision(manifest: Manifest, precision: str | None, folder: Path) -> None:
    """None takes whatever the folder holds; an explicit precision must match it."""
    if precision is not None and precision != manifest.precision:
        raise UsageError(
            f"{folder} holds {manifest.precision} graphs, not {precision}; pass --precision "
            f"{manifest.precision} or export again with --precision {precision}"
        )


def components_info(
    manifest: Manifest, plan: ProviderPlan, loaded: dict[str, LoadedGraph], variant: str | None
) -> dict[str, Any]:
    model = manifest.model
    return {
        "backend": "onnx",
        "device": plan.device,
        "precision": manifest.precision,
        "model": str(model.get("name", "")),
        "model_hash": str(model.get("hash", "")),
        "text_encoder": str(model.get("text_encoder", "")),
        "variant": variant,
        "revision": model.get("revision"),  # the hub revision the graphs were exported from
        "providers": {name: graph.providers for name, graph in loaded.items()},
        "iobinding": plan.uses_iobinding,
    }
