"""Which sizes an engine covers, and the refusal of a request outside them (torch- and TRT-free).

A TensorRT engine only runs the shapes of its optimization profile, so a request is checked
against the profile before anything is generated, with a message that names the sizes covered.
`engine_shapes` turns a build's profile into each graph's shapes: the VAE encoder gets the
decoder's sizes, the image encoder its one image size (the manifest's `image_preprocessor`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sdxs_rt.errors import ModelFormatError, SdxsError, UsageError
from sdxs_rt.graphs import (
    IMAGE_ENCODER_GRAPH,
    MANIFEST_NAME,
    Manifest,
    ShapeTriple,
    SizeProfile,
    graph_specs,
    profile_shapes,
    read_manifest,
)

if TYPE_CHECKING:
    from sdxs_rt.image_preprocess import ImagePreprocessor

SIZE_STEP = 64  # image sides are multiples of 64 (sdxs_rt.params)
INFO_KEY = "engine_profile"  # Components.info[INFO_KEY]: the sizes the loaded engines cover
ENCODER_GRAPH = "vae_encoder"  # optional (img2img); its engine has the decoder's sizes
# Optional too (image prompts): its engine takes the one image size of the export's
# image_preprocessor, batches 1..the build's max batch.
OPTIONAL_GRAPHS = (ENCODER_GRAPH, IMAGE_ENCODER_GRAPH)  # built last; not in INFO_KEY


def check_profile(profile: SizeProfile) -> SizeProfile:
    """A profile the builder can use: ordered, positive, sides multiples of 64."""
    sides = (profile.min_size, profile.opt_size, profile.max_size)
    if not 0 < sides[0] <= sides[1] <= sides[2]:
        raise UsageError(
            f"sizes must satisfy 0 < min <= opt <= max, got {sides[0]}/{sides[1]}/{sides[2]}"
        )
    bad = [side for side in sides if side % SIZE_STEP]
    if bad:
        raise UsageError(f"profile sizes must be multiples of {SIZE_STEP}, got {bad[0]}")
    batches = (profile.min_batch, profile.opt_batch, profile.max_batch)
    if not 0 < batches[0] <= batches[1] <= batches[2]:
        raise UsageError(f"batch sizes must satisfy 0 < min <= opt <= max, got {batches}")
    if profile.max_sequence < 2:
        raise UsageError(f"max sequence must be at least 2 tokens, got {profile.max_sequence}")
    return profile


def validate_request(profile: SizeProfile, width: int, height: int, batch: int) -> None:
    """Refuse (UsageError) a size or batch the engines cannot run, naming what they cover."""
    if profile.covers(width, height, batch):
        return
    if profile.min_batch <= batch <= profile.max_batch:
        what = f"{width}x{height}"
    else:
        what = f"{width}x{height} with batch {batch}"
    raise UsageError(
        f"{what} is outside this engine's profile ({profile.describe()}); "
        f"rebuild with `sdxs-rt engine build {rebuild_hint(profile, width, height, batch)}`"
    )


def rebuild_hint(profile: SizeProfile, width: int, height: int, batch: int) -> str:
    """The build options that would cover the request, e.g. `--model DIR --max-size 1280`."""
    options = ["--model DIR"]
    if min(width, height) < profile.min_size:
        options.append(f"--min-size {min(width, height)}")
    if max(width, height) > profile.max_size:
        options.append(f"--max-size {max(width, height)}")
    if batch > profile.max_batch:
        options.append(f"--max-batch {batch}")
    return " ".join(options)


def profile_info(profile: SizeProfile) -> dict[str, Any]:
    """The profile as `Components.info["engine_profile"]`: its fields plus a sentence."""
    return {**asdict(profile), "description": profile.describe()}


def profile_from_dict(values: Mapping[str, Any]) -> SizeProfile:
    """A SizeProfile from a dict that may hold extra keys (a sidecar, the info dict)."""
    names = {f.name for f in fields(SizeProfile)}
    return SizeProfile(**{k: int(v) for k, v in values.items() if k in names})


def common_profile(profiles: Iterable[SizeProfile]) -> SizeProfile:
    """The sizes every engine of a set covers (graphs built with different profiles)."""
    profiles = list(profiles)
    first = profiles[0]
    min_size = max(p.min_size for p in profiles)
    max_size = min(p.max_size for p in profiles)
    return replace(
        first,
        min_size=min_size,
        opt_size=min(max(first.opt_size, min_size), max_size),
        max_size=max_size,
        min_batch=max(p.min_batch for p in profiles),
        max_batch=min(p.max_batch for p in profiles),
        max_sequence=min(p.max_sequence for p in profiles),
    )


def check_size(components: Any, width: int, height: int, batch: int) -> None:
    """What the CLI calls after loading, before generating; a no-op for other backends."""
    values = getattr(components, "info", {}).get(INFO_KEY)
    if values:
        validate_request(profile_from_dict(values), width, height, batch)


def check_size_for_model(model_dir: str | Path, width: int, height: int, batch: int) -> None:
    """The same check before loading, from the engines recorded in the folder's manifest.

    Quiet when the folder records no engines (the loader then says what to build).
    """
    profiles = built_profiles(model_dir)
    if profiles:
        validate_request(common_profile(profiles), width, height, batch)


def engine_sizes(model_dir: str | Path) -> str:
    """What the folder's built engines cover, e.g. "320..768 px per side, batch 1", for display:
    "no engines built yet", or "" when its manifest cannot be read."""
    try:
        profiles = built_profiles(model_dir)
    except (SdxsError, OSError, ValueError):
        return ""
    return common_profile(profiles).describe() if profiles else "no engines built yet"


def built_profiles(model_dir: str | Path) -> list[SizeProfile]:
    """The profiles of the text-to-image engines the folder's manifest records (the VAE and
    image encoders', built with the same key profile, are left out as in the loader's INFO_KEY)."""
    engines = read_manifest(Path(model_dir)).engines
    return [
        profile_from_dict(e["profile"])
        for graph, e in engines.items()
        if "profile" in e and graph not in OPTIONAL_GRAPHS
    ]


def engine_shapes(
    folder: Path, manifest: Manifest, graph: str, profile: SizeProfile
) -> dict[str, ShapeTriple]:
    """min/opt/max shapes of one graph's engine in a build with `profile`.

    The VAE encoder's follow from the build's sizes as the decoder's do, so it takes every image
    the decoder makes. The image encoder takes one fixed image size (the manifest's
    `image_preprocessor`: SigLIP resizes every image prompt to it) and batches 1 (the pipeline
    encodes one image prompt at a time) up to the build's max batch.
    """
    if graph == IMAGE_ENCODER_GRAPH:
        size = image_encoder_preprocessor(folder, manifest).size
        spec = graph_specs(manifest.latent_channels, manifest.text_width, size)[graph]
        return profile_shapes(spec, image_encoder_profile(profile), manifest.vae_scale_factor)
    spec = graph_specs(manifest.latent_channels, manifest.text_width)[graph]
    return profile_shapes(spec, profile, manifest.vae_scale_factor)


def image_encoder_profile(profile: SizeProfile) -> SizeProfile:
    """The batches of an image encoder engine: 1..the build's max batch, tuned for 1."""
    return replace(profile, min_batch=1, opt_batch=1)


def image_encoder_preprocessor(folder: Path, manifest: Manifest) -> ImagePreprocessor:
    """How image prompts are prepared for the exported image_encoder graph: the manifest's
    `image_preprocessor`, which must agree with the graph's recorded input size.
    ModelFormatError says in one sentence why not."""
    from sdxs_rt.image_preprocess import preprocessor_from_config  # numpy, Pillow: on use only

    where = f"the image_preprocessor of {folder / MANIFEST_NAME}"
    if not manifest.image_preprocessor:
        raise ModelFormatError(
            f"{folder / MANIFEST_NAME} has no image_preprocessor for its {IMAGE_ENCODER_GRAPH} "
            "graph (the image size its engine takes)"
        )
    preprocessor = preprocessor_from_config(manifest.image_preprocessor, where)
    entry = manifest.graphs.get(IMAGE_ENCODER_GRAPH)
    if entry is None:
        return preprocessor
    recorded = [
        list(t.get("shape") or [])[2:] for t in entry.inputs if t.get("name") == "pixel_values"
    ]
    if recorded and recorded[0] and recorded[0] != list(preprocessor.size):
        raise ModelFormatError(
            f"{folder / entry.file} takes {recorded[0]} images but {where} prepares them at "
            f"{list(preprocessor.size)}"
        )
    return preprocessor
