"""The exported graphs as data: I/O specs, TensorRT shape profiles and the manifest.

One place for what `export/` writes and what the ONNX Runtime and TensorRT backends read
(CONVENTIONS.md "ONNX graphs", DESIGN.md "Export and engines"). Torch-free.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sdxs_rt.components import LatentScaling
from sdxs_rt.errors import EngineError, ModelNotFoundError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
GRAPH_NAMES = ("text_encoder", "unet", "vae_decoder", "vae_encoder", "image_encoder")
# Exported only from a text encoder with a vision tower, and optional at load (older exports
# lack it): image prompts, SigLIP's pooled output, in the text vectors' space.
IMAGE_ENCODER_GRAPH = "image_encoder"
SO400M_IMAGE_SIZE = (384, 384)  # google/siglip-so400m-patch14-384's preprocessor size

Dim = int | str  # a fixed size or a symbolic (dynamic) axis name


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # "int64", or "float": float32 or float16 per the graph's precision
    shape: tuple[Dim, ...]


@dataclass(frozen=True)
class GraphSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def file(self) -> str:
        return f"{self.name}/model.onnx"


def graph_specs(
    latent_channels: int = 16,
    text_width: int = 1152,
    image_size: tuple[int, int] = SO400M_IMAGE_SIZE,
) -> dict[str, GraphSpec]:
    """The graphs with the names of CONVENTIONS.md; batch, height and width are dynamic, except
    the image encoder's input: SigLIP takes one fixed `image_size` (height, width), the size its
    preprocessor resizes to, and returns vectors as wide as the text encoder's."""
    c, d = latent_channels, text_width
    latent = ("batch", c, "height", "width")
    image = ("batch", 3, "image_height", "image_width")
    return {
        "text_encoder": GraphSpec(
            "text_encoder",
            (
                TensorSpec("input_ids", "int64", ("batch", "sequence")),
                TensorSpec("attention_mask", "int64", ("batch", "sequence")),
            ),
            (TensorSpec("text_embeds", "float", ("batch", d)),),
        ),
        "unet": GraphSpec(
            "unet",
            (
                TensorSpec("sample", "float", latent),
                TensorSpec("timestep", "float", ("batch",)),
                TensorSpec("encoder_hidden_states", "float", ("batch", 1, d)),
            ),
            (TensorSpec("out_sample", "float", latent),),
        ),
        "vae_decoder": GraphSpec(
            "vae_decoder",
            (TensorSpec("latent_sample", "float", latent),),
            (TensorSpec("sample", "float", image),),
        ),
        "vae_encoder": GraphSpec(
            "vae_encoder",
            (TensorSpec("sample", "float", image),),
            (TensorSpec("latent_sample", "float", latent),),
        ),
        IMAGE_ENCODER_GRAPH: GraphSpec(
            IMAGE_ENCODER_GRAPH,
            (TensorSpec("pixel_values", "float", ("batch", 3, *image_size)),),
            (TensorSpec("image_embeds", "float", ("batch", d)),),
        ),
    }


@dataclass(frozen=True)
class SizeProfile:
    """The image sizes and batch an engine must cover (TensorRT optimization profiles).

    Batches count images: the U-Net's are doubled for guidance (`profile_shapes`).
    """

    # The defaults fit an 8 GB card: 320..768 px per side, one image (U-Net batch 2, the CFG
    # pair), opt 576x576. TensorRT gives each execution context activation memory for the
    # profile's max shape, whatever is asked. Estimates at the max shape, fp16, from the live
    # tensors of one eager forward with fused attention (traced on the meta device; U-Net of the
    # card, 48-wide heads; VAE assumed SD-shaped, 128..512 channels):
    #   U-Net 768x768, batch 2: 0.36 GB (largest: the top level's feed-forward, 2 x 9216 tokens
    #     x 3072 x 2 B = 113 MB); unfused attention would add 2 x 8 heads x 9216^2 x 2 B = 2.7 GB
    #   VAE decoder 768x768, batch 1: 0.91 GB; text encoder, 512 tokens: under 0.05 GB
    #   weights: U-Net 2.26B x 2 B = 4.53 GB, text tower 0.56B x 2 B = 1.12 GB, VAE decoder
    #     0.10 GB; in all about 7.0 GB.
    # The former default (1024 px, 4 images = U-Net batch 8) needed 2.6 GB (U-Net) + 6.4 GB (VAE
    # decoder) of activations on top of the weights. Bigger profiles are a build option:
    # `sdxs-rt engine build --model DIR --max-size 1024 --max-batch 4`.
    min_size: int = 320
    opt_size: int = 576
    max_size: int = 768
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    max_sequence: int = 512

    def covers(self, width: int, height: int, batch: int) -> bool:
        sizes_ok = all(self.min_size <= s <= self.max_size for s in (width, height))
        return sizes_ok and self.min_batch <= batch <= self.max_batch

    def describe(self) -> str:
        batches = f"{self.min_batch}..{self.max_batch}"
        if self.min_batch == self.max_batch:  # the default: "batch 1", not "batch 1..1"
            batches = str(self.max_batch)
        return f"{self.min_size}..{self.max_size} px per side, batch {batches}"


ShapeTriple = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def profile_shapes(
    spec: GraphSpec, profile: SizeProfile, vae_scale: int = 8
) -> dict[str, ShapeTriple]:
    """min/opt/max shape per input.

    The U-Net's opt and max batch are doubled for classifier-free guidance; its min stays
    `min_batch`, since at guidance <= 1 it runs the conditional branch alone.
    """
    batch_factor = 2 if spec.name == "unet" else 1
    batches = (
        profile.min_batch,
        profile.opt_batch * batch_factor,
        profile.max_batch * batch_factor,
    )
    sizes = (profile.min_size, profile.opt_size, profile.max_size)
    shapes: dict[str, ShapeTriple] = {}
    for tensor in spec.inputs:
        triple = tuple(
            _concrete(tensor.shape, batch, size, profile, vae_scale, which)
            for which, (batch, size) in enumerate(zip(batches, sizes, strict=True))
        )
        shapes[tensor.name] = triple  # type: ignore[assignment]
    return shapes


def _concrete(
    shape: tuple[Dim, ...], batch: int, size: int, profile: SizeProfile, vae_scale: int, which: int
) -> tuple[int, ...]:
    sequence = (1, 77, profile.max_sequence)[which]
    values = {
        "batch": batch,
        "height": size // vae_scale,
        "width": size // vae_scale,
        "image_height": size,
        "image_width": size,
        "sequence": sequence,
    }
    return tuple(dim if isinstance(dim, int) else values[dim] for dim in shape)


@dataclass
class GraphEntry:
    """One exported graph in the manifest."""

    file: str
    precision: str  # "fp32" or "fp16"
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    parity: dict[str, float] = field(default_factory=dict)
    external_data: bool = False


@dataclass
class Manifest:
    """`manifest.json` beside the graphs: everything a runtime needs besides the graphs."""

    model: dict[str, Any]  # name, hash
    precision: str
    opset: int
    latent_channels: int
    vae_scale_factor: int
    text_width: int
    latent_scaling: dict[str, Any]  # scaling_factor, mean, std
    scheduler_config: dict[str, Any]
    tokenizer: str  # path of tokenizer.json, relative to the folder
    graphs: dict[str, GraphEntry] = field(default_factory=dict)
    engines: dict[str, Any] = field(default_factory=dict)
    # The image encoder's preprocessor_config.json settings (`ImagePreprocessor.to_dict`);
    # empty when the export has no image_encoder graph.
    image_preprocessor: dict[str, Any] = field(default_factory=dict)
    sdxs_rt_version: str = ""
    format: int = MANIFEST_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != MANIFEST_FORMAT:
            raise EngineError(
                f"manifest format {data.get('format')!r} is not {MANIFEST_FORMAT}; "
                "export the model again with this sdxs-rt version"
            )
        values = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        values["graphs"] = {k: GraphEntry(**v) for k, v in data.get("graphs", {}).items()}
        return cls(**values)


def read_manifest(folder: Path) -> Manifest:
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        raise ModelNotFoundError(
            f"{path} does not exist; export the model with 'sdxs-rt export onnx'"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EngineError(f"{path} is not a readable manifest: {exc}") from None
    try:
        return Manifest.from_dict(data)
    except TypeError as exc:
        raise EngineError(f"{path} lacks fields this sdxs-rt needs: {exc}") from None


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    """Atomic: a reader never sees half a manifest."""
    path = Path(folder) / MANIFEST_NAME
    text = json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".manifest-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        os.chmod(temp, 0o666 & ~_current_umask())  # mkstemp makes 0600; follow the umask
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def latent_scaling_from_manifest(values: dict[str, Any]) -> LatentScaling:
    """The manifest's `latent_scaling` ({scaling_factor, mean, std}; lists per channel)."""

    def number_or_tuple(value: Any) -> float | tuple[float, ...]:
        if isinstance(value, (list, tuple)):
            return tuple(float(v) for v in value)
        return float(value)

    return LatentScaling(
        scaling_factor=float(values.get("scaling_factor", 1.0)),
        mean=number_or_tuple(values.get("mean", 0.0)),
        std=number_or_tuple(values.get("std", 1.0)),
    )
