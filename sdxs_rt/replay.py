"""Replay an image from its `sdxs_rt` record and compare the pixels (`sdxs-rt info --replay`).

The record names everything the image came from: prompts, steps, guidance, the image's own seed,
size, sampler, the image inputs (by SHA-256), the variation seed, the model (name, variant,
revision, backend, precision, device) and any LoRAs (file name and hash). `prepare_replay`
turns it back into a request, finding the inputs by hash in a folder (the image's own by
default); `replay` draws that one image with a loaded pipeline and compares it pixel by pixel.

The model: `--model` when given; the built-in model when the record names it (`demo-shapes`);
else the recorded name (a hub id, or a folder name, which must then be in the current folder).
A loaded model or text encoder whose name or hash differs from the record's is reported in
`notes`, not refused: the comparison says whether it mattered. An image drawn in a batch is
replayed alone, which its seed allows (README, "Noise contract"); on some backends a batch's
arithmetic may round differently by a few levels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdxs_rt import image_inputs
from sdxs_rt.backend_table import backend as backend_entry
from sdxs_rt.backend_table import names_with
from sdxs_rt.errors import ModelNotFoundError, UsageError
from sdxs_rt.loading import DEFAULT_MODEL_NAME, file_sha256
from sdxs_rt.metadata import SDXS_RT_KEY, ImageRecord, read_png_text
from sdxs_rt.params import GenerationParams, WalkTarget
from sdxs_rt.pipeline import ImageEvent, Pipeline
from sdxs_rt.rng import RNG_NAME

LORA_SUFFIX = ".safetensors"
LORA_HASH_DIGITS = 12  # A1111's LoRA hash: the first 12 hex digits of the file's SHA-256


@dataclass(frozen=True)
class ReplayOptions:
    """Where the inputs are, and what to load instead of the recorded model (None: recorded)."""

    inputs_dir: str | os.PathLike[str] | None = None  # None: the image's own folder
    model: str | None = None
    text_encoder: str | None = None
    backend: str | None = None
    device: str | None = None
    precision: str | None = None


@dataclass(frozen=True)
class ReplayJob:
    """A replay prepared before any model loads: the request and how to load its model."""

    path: Path
    record: ImageRecord
    params: GenerationParams
    load: dict[str, Any]  # keyword arguments of Pipeline.from_pretrained


@dataclass(frozen=True)
class Comparison:
    """The replayed image against the stored one."""

    size: tuple[int, int]  # the stored image's (width, height)
    replay_size: tuple[int, int]
    differing_pixels: int  # pixels with any channel different
    max_abs_diff: int  # the largest channel difference, 0..255

    @property
    def identical(self) -> bool:
        return self.size == self.replay_size and self.differing_pixels == 0

    def summary(self) -> str:
        if self.size != self.replay_size:
            return (
                f"replay: differs: the replay is {_size(self.replay_size)}, "
                f"the image {_size(self.size)}"
            )
        if self.identical:
            width, height = self.size
            return f"replay: identical ({width} x {height})"
        plural = "" if self.differing_pixels == 1 else "s"
        return (
            f"replay: differs: {self.differing_pixels} pixel{plural}, "
            f"max |diff| {self.max_abs_diff}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "width": self.size[0],
            "height": self.size[1],
            "replay_width": self.replay_size[0],
            "replay_height": self.replay_size[1],
            "differing_pixels": self.differing_pixels,
            "max_abs_diff": self.max_abs_diff,
        }


@dataclass(frozen=True)
class ReplayResult:
    job: ReplayJob
    image: Image.Image  # the replayed image
    comparison: Comparison
    notes: list[str] = field(default_factory=list)  # recorded and loaded model that differ


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# ---------------------------------------------------------------- preparing


def read_record(path: str | os.PathLike[str]) -> ImageRecord:
    """The `sdxs_rt` record of a PNG; one sentence when there is none, or when the record
    describes an image of another size (an option it does not hold, such as the hires fix)."""
    size, texts = read_png_text(path)
    text = texts.get(SDXS_RT_KEY)
    if text is None:
        raise UsageError(
            f"{path} has no sdxs_rt record; only images sdxs-rt saved with metadata can be replayed"
        )
    record = ImageRecord.from_json(text)
    if size != record.image_size:
        raise UsageError(
            f"{path} is {_size(size)} but its record describes a "
            f"{_size(record.image_size)} image (resized after it was saved?), so it cannot be "
            "replayed"
        )
    return record


def prepare_replay(path: str | os.PathLike[str], options: ReplayOptions | None = None) -> ReplayJob:
    """Read the record, find its inputs and LoRAs, and build the request; loads no model."""
    options = options or ReplayOptions()
    path = Path(path)
    record = read_record(path)
    if record.rng != RNG_NAME:
        raise UsageError(f"{path} was drawn with the {record.rng} noise, which sdxs-rt lacks")
    folder = Path(options.inputs_dir) if options.inputs_dir is not None else path.parent
    params = replay_params(
        record,
        init_image=find_input(record.init_image, "init image", folder),
        mask=find_input(record.mask, "mask", folder),
    )
    params = replace(params, image_prompts=find_image_prompts(record, folder))
    params = replace(params, walk_to=find_walk_target(record, folder))
    return ReplayJob(path, record, params, load_arguments(record, options, folder))


def replay_params(
    record: ImageRecord, init_image: Path | None = None, mask: Path | None = None
) -> GenerationParams:
    """The request that draws this one image: its own seed (and variation seed), one image."""
    defaults = GenerationParams(prompt="")
    return GenerationParams(
        prompt=record.prompt,
        negative_prompt=record.negative_prompt,
        num_inference_steps=record.steps,
        guidance_scale=record.guidance_scale,
        width=record.width,
        height=record.height,
        seed=record.seed,
        scheduler=record.scheduler,
        init_image=init_image,
        strength=record.strength,
        resize_mode=record.resize_mode or defaults.resize_mode,
        mask=mask,
        mask_blur=defaults.mask_blur if record.mask_blur is None else record.mask_blur,
        paste_back=defaults.paste_back if record.paste_back is None else record.paste_back,
        outpaint=tuple(record.outpaint) if record.outpaint else None,  # type: ignore[arg-type]
        variation_seed=record.variation_seed,
        variation_strength=record.variation_strength or 0.0,
        hires_scale=record.hires_scale,
        hires_strength=_or(record.hires_strength, defaults.hires_strength),
        hires_steps=record.hires_steps,
        hires_upscaler=_or(record.hires_upscaler, defaults.hires_upscaler),
    )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def find_image_prompts(record: ImageRecord, folder: Path) -> tuple[tuple[Path, float], ...]:
    """The recorded image prompts, in order, found by hash with their weights."""
    found = []
    for entry in record.image_prompts or []:
        path = find_input(entry, "image prompt", folder)
        assert path is not None
        found.append((path, float(entry.get("weight", 1.0))))
    return tuple(found)


def find_walk_target(record: ImageRecord, folder: Path) -> WalkTarget | None:
    """A latent walk's frame: the keyframe it moves towards, its image prompts found by hash."""
    if record.walk_t is None:
        return None
    images = []
    for entry in record.walk_image_prompts or []:
        path = find_input(entry, "walk target's image prompt", folder)
        assert path is not None
        images.append((path, float(entry.get("weight", 1.0))))
    return WalkTarget(
        prompt=record.walk_prompt or "",
        t=float(record.walk_t),
        negative_prompt=record.walk_negative_prompt or "",
        image_prompts=tuple(images),
    )


def find_input(digest: dict[str, Any] | None, what: str, folder: Path) -> Path | None:
    """The file in `folder` whose SHA-256 the record names; one sentence when it is not there."""
    if digest is None:
        return None
    sha256 = str(digest.get("sha256", ""))
    if digest.get("source") != "file":
        raise ModelNotFoundError(
            f"the {what} was given as pixels in memory, not as a file, so no file can be "
            "found by its hash and this image cannot be replayed"
        )
    found = image_inputs.find_by_hash(folder, sha256)
    if found is None:
        name = digest.get("name") or "unnamed"
        raise ModelNotFoundError(
            f"the {what} ({name}, sha256 {sha256[:12]}) is not in {folder}; "
            "give the folder that holds it with --inputs DIR"
        )
    return found


def find_loras(record: ImageRecord, folder: Path) -> list[str]:
    """The recorded LoRAs as FILE:SCALE, each found in `folder` by file name or by hash."""
    specs = []
    for lora in record.loras:
        found = _find_lora(lora, folder)
        if found is None:
            raise ModelNotFoundError(
                f"the image was drawn with the LoRA {lora.get('file') or lora['name']} "
                f"(hash {lora.get('hash', '?')}), which is not in {folder}; "
                "give the folder that holds it with --inputs DIR"
            )
        specs.append(f"{found}:{float(lora.get('scale', 1.0))!r}")
    return specs


def _find_lora(lora: dict[str, Any], folder: Path) -> Path | None:
    wanted = str(lora.get("hash") or "").lower()

    def matches(candidate: Path) -> bool:
        return candidate.is_file() and (
            not wanted or file_sha256(candidate)[:LORA_HASH_DIGITS] == wanted
        )

    named = folder / str(lora.get("file") or f"{lora['name']}{LORA_SUFFIX}")
    if matches(named):
        return named
    if not wanted or not folder.is_dir():
        return None
    return next((p for p in sorted(folder.glob(f"*{LORA_SUFFIX}")) if matches(p)), None)


def load_arguments(record: ImageRecord, options: ReplayOptions, folder: Path) -> dict[str, Any]:
    """Pipeline.from_pretrained's arguments: the recorded model, unless options say otherwise."""
    backend = options.backend or record.backend
    loras = find_loras(record, folder)
    if loras and not backend_entry(backend).runtime_lora:
        raise UsageError(
            f"the image was drawn with LoRAs, which only --backend "
            f"{' or '.join(names_with('runtime_lora'))} merges at load time"
        )
    model = options.model or recorded_model(record)
    return {
        "model": model,
        "text_encoder": options.text_encoder,
        "backend": backend,
        "device": options.device or record.device or None,
        "dtype": options.precision or record.precision or None,
        "variant": record.variant,
        # The recorded revision pins the recorded hub model only, not one given instead.
        "revision": record.revision if options.model is None and model is not None else None,
        "backend_options": {"loras": loras} if loras else None,
    }


def recorded_model(record: ImageRecord) -> str | None:
    """The model to load for the record: None (the built-in one), a hub id or a folder."""
    name = record.model
    if name == DEFAULT_MODEL_NAME and not Path(name).is_dir():
        return None
    if not name or ("/" not in name and not Path(name).is_dir()):
        raise ModelNotFoundError(
            f"the image was drawn with the model folder {name!r}, which is not in the current "
            "folder; give its path with --model"
        )
    return name


# ---------------------------------------------------------------- drawing and comparing


def replay(pipe: Pipeline, job: ReplayJob) -> ReplayResult:
    """Draw the job's image with `pipe` and compare it with the stored one."""
    image = None
    for event in pipe.generate(params=job.params):
        if isinstance(event, ImageEvent):
            image = event.image
    if image is None:
        raise UsageError("the replay was cancelled before its image was finished")
    with Image.open(job.path) as stored:
        comparison = compare_images(stored, image)
    return ReplayResult(job, image, comparison, model_notes(job.record, pipe.info))


def replay_image(
    path: str | os.PathLike[str], options: ReplayOptions | None = None
) -> ReplayResult:
    """Prepare, load the recorded model and replay: `sdxs-rt info --replay` in one call."""
    job = prepare_replay(path, options)
    return replay(Pipeline.from_pretrained(**job.load), job)


def compare_images(stored: Image.Image, replayed: Image.Image) -> Comparison:
    """Pixel-by-pixel comparison in RGB (0..255 per channel)."""
    expected = np.asarray(stored.convert("RGB"), dtype=np.int16)
    actual = np.asarray(replayed.convert("RGB"), dtype=np.int16)
    if expected.shape != actual.shape:
        return Comparison(stored.size, replayed.size, -1, -1)
    diff = np.abs(expected - actual)
    return Comparison(
        size=stored.size,
        replay_size=replayed.size,
        differing_pixels=int(np.count_nonzero(diff.max(axis=2))),
        max_abs_diff=int(diff.max(initial=0)),
    )


def model_notes(record: ImageRecord, info: dict[str, Any]) -> list[str]:
    """What the loaded model says that the record does not (each may explain a difference)."""
    notes = []
    for key, what in (("model_hash", "model hash"), ("text_encoder", "text encoder")):
        loaded, recorded = str(info.get(key, "")), str(getattr(record, key))
        if loaded and recorded and loaded != recorded:
            notes.append(f"the loaded {what} is {loaded}, the image's record says {recorded}")
    return notes
