"""Generation metadata: the `ImageRecord` of an image and the PNG text chunks that carry it.

Two chunks: A1111's `parameters` text (written and parsed by `sdxs_rt.infotext`) so that A1111,
ComfyUI, Fooocus and Civitai read it, and our own `sdxs_rt` JSON, which holds everything needed
to replay the image exactly (`sdxs_rt.replay`). Also what `sdxs-rt info` prints.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from sdxs_rt import __version__
from sdxs_rt.errors import ModelNotFoundError, UsageError
from sdxs_rt.infotext import format_parameters, parse_parameters
from sdxs_rt.plan import GenerationPlan, hires_size
from sdxs_rt.prompt_syntax import BlendPart
from sdxs_rt.rng import RNG_NAME
from sdxs_rt.scheduler_table import SCHEDULER_LABELS

FORMAT_VERSION = 1
PARAMETERS_KEY = "parameters"
SDXS_RT_KEY = "sdxs_rt"


@dataclass
class ImageRecord:
    """Everything needed to replay one image exactly (stored as the `sdxs_rt` chunk)."""

    prompt: str
    negative_prompt: str
    steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    scheduler: str
    scheduler_label: str
    model: str
    model_hash: str
    backend: str
    precision: str
    device: str
    rng: str
    version: str
    text_encoder: str
    variant: str | None = None
    revision: str | None = None  # the hub revision of the model; None for local folders
    extra: dict[str, Any] = field(default_factory=dict)
    # Image inputs (None when the image was drawn from noise); the inputs are named by digest,
    # `{"sha256", "source": "file" | "pixels", "name"}`, so a replay can find them again.
    strength: float | None = None
    resize_mode: str | None = None
    mask_blur: int | None = None
    paste_back: bool | None = None
    outpaint: list[int] | None = None  # left, right, top, bottom
    init_image: dict[str, Any] | None = None
    mask: dict[str, Any] | None = None
    variation_seed: int | None = None
    variation_strength: float | None = None
    # Hires fix (None without one); width and height stay the first pass's, as A1111 records.
    hires_scale: float | None = None
    hires_strength: float | None = None
    hires_steps: int | None = None
    hires_upscaler: str | None = None
    # Blends and image prompts: each part as parsed ({"text"|"image", "weight"} as written) of
    # the prompt and the negative when they are not plain, and the image prompts in order
    # ({"sha256", "source", "name", "weight"}), for a replay to find them by hash.
    prompt_parts: list[dict[str, Any]] | None = None
    negative_parts: list[dict[str, Any]] | None = None
    image_prompts: list[dict[str, Any]] | None = None
    # A latent walk's frame (sdxs_rt.walk; None otherwise): the target keyframe's prompt,
    # negative prompt and image prompts (as `image_prompts`), and how far towards it (t).
    walk_prompt: str | None = None
    walk_negative_prompt: str | None = None
    walk_image_prompts: list[dict[str, Any]] | None = None
    walk_t: float | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """The saved image's (width, height): the hires size when there was a second pass."""
        if self.hires_scale is None:
            return self.width, self.height
        return hires_size(self.width, self.height, self.hires_scale)

    @property
    def loras(self) -> list[dict[str, Any]]:
        """The LoRAs merged for this image (`extra["loras"]`: name, file, scale, hash), if any."""
        loras = self.extra.get("loras")
        if not isinstance(loras, list):
            return []
        return [lora for lora in loras if isinstance(lora, dict) and "name" in lora]

    def to_json(self) -> str:
        return json.dumps({"format": FORMAT_VERSION, **asdict(self)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ImageRecord:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"the sdxs_rt metadata is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UsageError("the sdxs_rt metadata is not a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageRecord:
        """Build a record from the chunk's dict; unknown keys (newer writers) land in `extra`."""
        known = {f.name for f in fields(cls)}
        # Fields with a default are optional: older records lack them.
        required = {f.name for f in fields(cls) if f.default is MISSING}
        required -= {f.name for f in fields(cls) if f.default_factory is not MISSING}
        missing = sorted(n for n in required if n not in data)
        if missing:
            raise UsageError(f"the sdxs_rt metadata lacks {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        unknown = {k: v for k, v in data.items() if k not in known and k != "format"}
        values["extra"] = {**unknown, **dict(values.get("extra") or {})}
        return cls(**values)


class RecordSource(Protocol):
    """What `make_record` reads from a loaded pipeline (`sdxs_rt.pipeline.Pipeline`)."""

    @property
    def info(self) -> Mapping[str, Any]: ...


def make_record(pipe: RecordSource, plan: GenerationPlan, index: int) -> ImageRecord:
    """The record of image `index` of a planned run (the CLI and the desktop save the same)."""
    info = pipe.info
    params = plan.params
    width, height = plan.size
    return ImageRecord(
        prompt=params.prompt,
        negative_prompt=params.negative_prompt,
        steps=params.num_inference_steps,
        guidance_scale=params.guidance_scale,
        seed=plan.seeds[index],
        width=width,
        height=height,
        scheduler=plan.scheduler,
        scheduler_label=SCHEDULER_LABELS[plan.scheduler],
        model=str(info.get("model", "")),
        model_hash=str(info.get("model_hash", "")),
        backend=str(info.get("backend", "")),
        precision=str(info.get("precision", "")),
        device=str(info.get("device", "")),
        rng=RNG_NAME,
        version=__version__,
        text_encoder=str(info.get("text_encoder", "")),
        variant=info.get("variant"),
        revision=info.get("revision"),
        extra={"loras": list(info["loras"])} if info.get("loras") else {},
        **_image_input_fields(plan),
        **_variation_fields(plan, index),
        **_hires_fields(plan),
        **_prompt_fields(plan),
        **_walk_fields(plan),
    )


def _prompt_fields(plan: GenerationPlan) -> dict[str, Any]:
    prompts = plan.prompts
    if prompts is None:
        return {}
    fields: dict[str, Any] = {}
    for name, program in (("prompt_parts", prompts.prompt), ("negative_parts", prompts.negative)):
        if not program.is_plain:
            fields[name] = [_part(part) for part in program.parts]
    if prompts.image_prompts:
        fields["image_prompts"] = [
            {**image.digest.as_dict(), "weight": image.weight} for image in prompts.image_prompts
        ]
    return fields


def _walk_fields(plan: GenerationPlan) -> dict[str, Any]:
    walk, target = plan.walk, plan.params.walk_to
    if walk is None or target is None:
        return {}
    images = [
        {**image.digest.as_dict(), "weight": image.weight} for image in walk.prompts.image_prompts
    ]
    return {
        "walk_prompt": target.prompt,
        "walk_negative_prompt": target.negative_prompt,
        "walk_image_prompts": images or None,
        "walk_t": walk.t,
    }


def _part(part: BlendPart) -> dict[str, Any]:
    if part.image is not None:
        return {"image": part.image, "weight": part.weight}
    return {"text": part.text, "weight": part.weight}


def _hires_fields(plan: GenerationPlan) -> dict[str, Any]:
    hires = plan.hires
    if hires is None:
        return {}
    return {
        "hires_scale": hires.scale,
        "hires_strength": hires.strength,
        "hires_steps": hires.steps,
        "hires_upscaler": hires.upscaler,
    }


def _image_input_fields(plan: GenerationPlan) -> dict[str, Any]:
    inputs, params = plan.inputs, plan.params
    if inputs is None:
        return {}
    with_mask = inputs.mask is not None
    return {
        "strength": inputs.strength,
        "resize_mode": params.resize_mode,
        "mask_blur": params.mask_blur if with_mask else None,
        "paste_back": inputs.paste_back if with_mask else None,
        "outpaint": list(params.outpaint) if params.outpaint else None,
        "init_image": inputs.init_digest.as_dict(),
        "mask": None if inputs.mask_digest is None else inputs.mask_digest.as_dict(),
    }


def _variation_fields(plan: GenerationPlan, index: int) -> dict[str, Any]:
    variation = plan.variation_for(index)
    if variation is None:
        return {}
    return {"variation_seed": variation.seed, "variation_strength": variation.strength}


# ---------------------------------------------------------------- PNG chunks


def png_info(record: ImageRecord) -> PngImagePlugin.PngInfo:
    """Both text chunks; Pillow writes tEXt for latin-1 text and iTXt (UTF-8) otherwise."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, format_parameters(record))
    info.add_text(SDXS_RT_KEY, record.to_json())
    return info


def read_png_text(path: str | os.PathLike[str]) -> tuple[tuple[int, int], dict[str, str]]:
    """The image size and all its tEXt, iTXt and zTXt chunks, with clear errors."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            if not isinstance(image, PngImagePlugin.PngImageFile):
                raise UsageError(
                    f"{path} is a {image.format} image; sdxs-rt metadata lives in PNG text chunks"
                )
            # `.text` also loads chunks after the pixel data, where some tools append them.
            return image.size, {str(k): str(v) for k, v in image.text.items()}
    except FileNotFoundError:
        raise ModelNotFoundError(f"image file {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a folder, not a PNG image") from None
    except UnidentifiedImageError:
        raise UsageError(f"{path} is not an image sdxs-rt can read") from None
    except UsageError:
        raise
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt chunks
        raise UsageError(f"cannot read the PNG {path}: {exc}") from None


def _decode_sdxs_rt(text: str | None) -> dict[str, Any] | None:
    # A damaged chunk must not hide the A1111 text: report it as absent.
    if text is None:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def read_metadata(path: str | os.PathLike[str]) -> tuple[str | None, dict[str, Any] | None]:
    """(`parameters` text or None, decoded `sdxs_rt` JSON or None) of a PNG file."""
    _, texts = read_png_text(path)
    return texts.get(PARAMETERS_KEY), _decode_sdxs_rt(texts.get(SDXS_RT_KEY))


# ---------------------------------------------------------------- `sdxs-rt info`


def describe_image(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What `sdxs-rt info IMAGE --json` prints."""
    (width, height), texts = read_png_text(path)
    parameters = texts.get(PARAMETERS_KEY)
    return {
        "path": str(path),
        "width": width,
        "height": height,
        "parameters": parameters,
        "sdxs_rt": _decode_sdxs_rt(texts.get(SDXS_RT_KEY)),
        "parsed": asdict(parse_parameters(parameters)) if parameters is not None else None,
    }


def _row(label: str, value: object, width: int = 18) -> str:
    # Continuation lines of multi-line prompts line up under the first one.
    width = max(width, len(label) + 2)  # a long label still gets a space before its value
    text = str(value).replace("\n", "\n" + " " * width)
    return f"{label + ':':<{width}}{text}"


def format_description(description: dict[str, Any]) -> str:
    """What `sdxs-rt info IMAGE` prints: the A1111 fields, then the replay record."""
    d = description
    lines = [f"{d['path']}: {d['width']}x{d['height']} PNG"]
    parsed, record = d.get("parsed"), d.get("sdxs_rt")
    if parsed is None and record is None:
        lines.append("no generation metadata (no 'parameters' or 'sdxs_rt' text chunk)")
    if parsed is not None:
        lines.append(_row("Prompt", parsed["prompt"]))
        if parsed["negative_prompt"]:
            lines.append(_row("Negative prompt", parsed["negative_prompt"]))
        lines.extend(_row(key, value) for key, value in parsed["params"].items())
    if record is not None:
        lines.append("sdxs-rt replay record:")
        shown = ("prompt", "negative_prompt") if parsed is not None else ()
        lines.extend(
            _row(f"  {key}", json.dumps(value, ensure_ascii=False) if key == "extra" else value)
            for key, value in record.items()
            if key not in shown
        )
    return "\n".join(lines)
