"""Image prompts on the host: files opened, images turned into SigLIP's `pixel_values` (numpy).

Torch-free (numpy + Pillow), shared by every backend's image encoder. The recipe is
transformers' SiglipImageProcessor, read from the text encoder's `preprocessor_config.json`
(google/siglip-so400m-patch14-384 ships: resize to 384x384 with bicubic, rescale by 1/255,
normalise with mean 0.5 and std 0.5, so pixels land in [-1, 1]):

1. RGB: an image with transparency is composited onto white first (what transformers 5's
   `convert_to_rgb` does; 4.x dropped the alpha and kept the colour beneath, often black or
   junk in transparent areas, which an image prompt should not describe). 16-bit greyscale is
   scaled to 8 bits as `sdxs_rt.image_inputs` does; floating-point images are refused.
2. Resize: Pillow's `Image.resize((width, height), resample)` of the 8-bit RGB image, straight
   to the configured size, ignoring the aspect ratio (SigLIP does not crop).
3. Rescale: `pixels.astype(float64) * rescale_factor`, then float32.
4. Normalise: `(x - mean) / std` per channel, in float32.

Steps 2-4 are transformers' PIL backend step for step (`SiglipImageProcessorPil` in 5.x, the
`SiglipImageProcessor` of 4.x; tests/test_image_encoder.py checks them to 1e-5). Its torchvision
backend (5.x's default `SiglipImageProcessor` when torchvision is installed) resizes with
torch's own bicubic and differs from both by interpolation rounding.

A config this module cannot follow exactly (another processor type, centre crops, padding, a
size given as a shortest edge) is refused, naming what it says.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdxs_rt.errors import ModelFormatError, ModelNotFoundError, UsageError
from sdxs_rt.image_inputs import PathLike, eight_bit, open_image

PREPROCESSOR_CONFIG = "preprocessor_config.json"
# SiglipImageProcessor and its fast (torchvision) and PIL variants: one recipe, one set of keys.
SIGLIP_PROCESSORS = ("SiglipImageProcessor", "SiglipImageProcessorFast", "SiglipImageProcessorPil")
# Pillow's resampling filters by the numbers configs store (PILImageResampling).
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
# Keys that only describe the file, never the pixels.
DESCRIPTIVE_KEYS = frozenset(
    {"image_processor_type", "processor_class", "feature_extractor_type", "auto_map"}
)
SWITCHES = ("do_resize", "do_rescale", "do_normalize", "do_convert_rgb")
VALUE_KEYS = ("size", "resample", "rescale_factor", "image_mean", "image_std")
# Steps SigLIP's processor does not take: any of these asking for work is refused by name.
FOREIGN_STEPS = ("do_center_crop", "do_pad", "do_reduce_labels", "do_image_splitting")
WHAT = "image prompt"


@dataclass(frozen=True)
class ImagePreprocessor:
    """SiglipImageProcessor's settings; calling it turns images into float32 (B, 3, H, W)."""

    height: int
    width: int
    resample: int = 3  # bicubic
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    do_convert_rgb: bool = True  # false is accepted: images are converted anyway (see to_rgb)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of `pixel_values`."""
        return self.height, self.width

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """PIL images -> `pixel_values`, float32 (B, 3, height, width)."""
        if isinstance(images, Image.Image):
            images = [images]
        if not images:
            return np.empty((0, 3, self.height, self.width), dtype=np.float32)
        return np.stack([self.one(image) for image in images])

    def one(self, image: Image.Image) -> np.ndarray:
        """One PIL image -> float32 (3, height, width)."""
        if not isinstance(image, Image.Image):
            raise UsageError(
                f"an image prompt must be a PIL image, not {type(image).__name__}; open files "
                "with sdxs_rt.image_preprocess.load_image_prompt"
            )
        rgb = to_rgb(image)
        if self.do_resize:  # at the same size Pillow returns a copy: no filtering
            rgb = rgb.resize((self.width, self.height), resample=self.resample)
        pixels = np.asarray(rgb).transpose(2, 0, 1)  # (3, H, W) uint8
        if pixels.shape[1:] != self.size:
            raise UsageError(
                f"an image prompt of {rgb.width}x{rgb.height} px cannot be used as it is: the "
                f"preprocessor does not resize and the vision tower takes {self.width}x"
                f"{self.height}"
            )
        values = (
            (pixels.astype(np.float64) * self.rescale_factor).astype(np.float32)
            if self.do_rescale
            else pixels.astype(np.float32)
        )
        if self.do_normalize:
            mean = np.asarray(self.image_mean, dtype=np.float32)[:, None, None]
            std = np.asarray(self.image_std, dtype=np.float32)[:, None, None]
            values = (values - mean) / std
        return np.ascontiguousarray(values, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a preprocessor_config.json states them (for an export's manifest)."""
        return {
            "image_processor_type": SIGLIP_PROCESSORS[0],
            "size": {"height": self.height, "width": self.width},
            "resample": self.resample,
            "do_resize": self.do_resize,
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "do_convert_rgb": self.do_convert_rgb,
        }

    def describe(self) -> str:
        resample = RESAMPLE_NAMES[self.resample]
        steps = [f"{self.width}x{self.height} {resample}" if self.do_resize else "no resize"]
        if self.do_rescale:
            steps.append(f"x {self.rescale_factor:.6g}")
        if self.do_normalize:
            steps.append(f"mean {list(self.image_mean)} std {list(self.image_std)}")
        return ", ".join(steps)


# --- reading the config -------------------------------------------------------------------


def read_preprocessor(folder: Path) -> ImagePreprocessor:
    """The preprocessor of a text-encoder folder (its `preprocessor_config.json`)."""
    path = Path(folder) / PREPROCESSOR_CONFIG
    if not path.is_file():
        raise ModelNotFoundError(
            f"{folder} has no {PREPROCESSOR_CONFIG}, which says how to prepare images for its "
            "vision tower"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelFormatError(f"{path} is not readable JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelFormatError(f"{path} holds {type(config).__name__}, not a JSON object")
    return preprocessor_from_config(config, str(path))


def preprocessor_from_config(config: Mapping[str, Any], where: str) -> ImagePreprocessor:
    """The settings of a SiglipImageProcessor config, or ModelFormatError naming what is not
    understood. Absent values take SiglipImageProcessor's defaults, except the size, which
    must be stated (its class default, 224, is not any published tower's)."""
    kind = config.get("image_processor_type")
    if kind not in SIGLIP_PROCESSORS:
        found = "no image_processor_type" if kind is None else f"image_processor_type {kind!r}"
        raise ModelFormatError(
            f"{where} has {found}; sdxs-rt prepares images as {SIGLIP_PROCESSORS[0]} does and "
            "reads only its configs"
        )
    _refuse_foreign_steps(config, where)
    height, width = _size(config.get("size"), where)
    return ImagePreprocessor(
        height=height,
        width=width,
        resample=_resample(config.get("resample", 3), where),
        do_resize=_switch(config, "do_resize", where),
        do_rescale=_switch(config, "do_rescale", where),
        rescale_factor=_number(config.get("rescale_factor", 1 / 255), "rescale_factor", where),
        do_normalize=_switch(config, "do_normalize", where),
        image_mean=_triple(config.get("image_mean", 0.5), "image_mean", where),
        image_std=_triple(config.get("image_std", 0.5), "image_std", where, positive=True),
        do_convert_rgb=_switch(config, "do_convert_rgb", where),
    )


def _refuse_foreign_steps(config: Mapping[str, Any], where: str) -> None:
    asked = [key for key in FOREIGN_STEPS if config.get(key)]
    unknown = [
        key
        for key in config
        if key not in (*DESCRIPTIVE_KEYS, *SWITCHES, *VALUE_KEYS, *FOREIGN_STEPS)
        and key.startswith("do_")
        and config[key]
    ]
    if asked or unknown:
        raise ModelFormatError(
            f"{where} asks for {', '.join(asked + unknown)}, which SiglipImageProcessor does not "
            "do; sdxs-rt cannot prepare images for it exactly"
        )


def _size(value: Any, where: str) -> tuple[int, int]:
    if isinstance(value, Mapping) and set(value) == {"height", "width"}:
        height, width = value["height"], value["width"]
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (height, width)):
            return height, width
    raise ModelFormatError(
        f'{where} gives size {json.dumps(value)}; expected {{"height": N, "width": N}}, '
        "the fixed square SigLIP's vision tower takes"
    )


def _switch(config: Mapping[str, Any], key: str, where: str) -> bool:
    value = config.get(key, True)
    if not isinstance(value, bool):
        raise ModelFormatError(f"{where} gives {key} {json.dumps(value)}; expected true or false")
    return value


def _resample(value: Any, where: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value in RESAMPLE_NAMES:
        return value
    raise ModelFormatError(
        f"{where} gives resample {json.dumps(value)}; expected one of Pillow's filter numbers "
        f"{', '.join(f'{k} ({v})' for k, v in RESAMPLE_NAMES.items())}"
    )


def _number(value: Any, key: str, where: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise ModelFormatError(f"{where} gives {key} {json.dumps(value)}; expected a number")


def _triple(value: Any, key: str, where: str, positive: bool = False) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, (int, float)) else value
    ok = isinstance(values, list) and len(values) == 3
    numbers = [_number(v, key, where) for v in values] if ok else []
    if ok and (not positive or all(v > 0 for v in numbers)):
        return numbers[0], numbers[1], numbers[2]
    kind = "positive numbers" if positive else "numbers"
    raise ModelFormatError(
        f"{where} gives {key} {json.dumps(value)}; expected one or three {kind} (R, G, B)"
    )


# --- images -------------------------------------------------------------------------------


def load_image_prompt(path: PathLike) -> Image.Image:
    """The image at `path`, decoded, EXIF orientation applied, 16-bit greyscale as 8 bits, in
    its own mode (transparency kept, for `to_rgb`). Errors as `sdxs_rt.image_inputs.load_image`
    gives them, naming an "image prompt": a missing file is ModelNotFoundError (exit 3); a
    folder, a file Pillow cannot read, a damaged one or a floating-point image UsageError (2)."""
    return eight_bit(open_image(path, WHAT), f"{WHAT} {path}")


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparency (an alpha band, or a palette's or PNG's transparent colour) is
    composited onto white, as transformers 5's `convert_to_rgb`."""
    image = eight_bit(image, f"the {WHAT}")  # 16-bit greyscale scaled; floating point refused
    has_alpha = "A" in image.getbands() or image.info.get("transparency") is not None
    if not has_alpha:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def check_pixel_values(array: Any, size: tuple[int, int]) -> np.ndarray:
    """Already prepared `pixel_values` (B, 3, H, W) at the tower's size, as float32."""
    shape = tuple(getattr(array, "shape", ()))
    if len(shape) != 4 or shape[1] != 3 or shape[2:] != tuple(size):
        raise UsageError(
            f"prepared image prompts must have shape (B, 3, {size[0]}, {size[1]}), not {shape}"
        )
    values = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(values).all():
        raise UsageError("prepared image prompts hold NaN or infinite values")
    return values


def pixel_values(
    images: Sequence[Image.Image] | np.ndarray, preprocessor: ImagePreprocessor
) -> np.ndarray:
    """What every ImageEncoder feeds its tower: PIL images prepared by `preprocessor`, or an
    array that is already `pixel_values` (checked, not prepared again)."""
    if isinstance(images, np.ndarray):
        return check_pixel_values(images, preprocessor.size)
    return preprocessor(images)
