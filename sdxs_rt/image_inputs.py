"""The image inputs of img2img, inpainting and outpainting, prepared on the host (PIL + numpy).

An init image is loaded as RGB, fitted to the request's size and turned into a (1, 3, H, W)
array in [-1, 1] for the VAE encoder. A mask (mode "L": white 255 = repaint, black 0 = keep) is
feathered, averaged down to the latent grid for blended denoising, and used at the end to paste
the original pixels back outside it. Outpainting grows the canvas and masks the new area.

Resize rule (`fit_to_size`, the `resize_mode` of a request), Lanczos for images:
  "crop"     scale, keeping the aspect ratio, until the image covers the target, then cut the
             centre out (A1111's "Crop and resize"); nothing is distorted, the overhang is lost.
  "stretch"  resize straight to the target, ignoring the aspect ratio (A1111's "Just resize").
A mask goes through the same geometry with bilinear filtering (no ringing around its edges).

Files: a missing file is ModelNotFoundError (exit 3, as for a missing image in `sdxs-rt info`);
a folder, a file Pillow cannot decode, a damaged one or a floating-point image is UsageError
(exit 2). 16-bit greyscale is scaled to 8 bits (65535 -> 255), not clipped as Pillow's own
conversion does; EXIF orientation is applied.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import re
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from sdxs_rt.errors import ModelNotFoundError, UsageError

PathLike = str | os.PathLike[str]
ResizeMode = Literal["crop", "stretch"]
FillMode = Literal["edge", "mean"]

RESIZE_MODES: tuple[ResizeMode, ...] = ("crop", "stretch")
FILL_MODES: tuple[FillMode, ...] = ("edge", "mean")
DEFAULT_MASK_BLUR = 4  # pixels, A1111's "Mask blur" default
OUTPAINT_MULTIPLE = 64  # keeps the grown canvas a valid generation size
OUTPAINT_SIDES = ("left", "right", "top", "bottom")
OUTPAINT_NUMBER = re.compile(r"-?[0-9]+")  # a minus sign parses, to be refused by name
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")
# Strong enough that repeated border pixels read as colour, not as streaks, to the U-Net.
EDGE_FILL_BLUR = 32
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MAX_HASHED_FILES = 10_000  # find_by_hash gives up rather than read a whole photo library
MAX_SUGGESTED_STEPS = 1000  # no schedule has more timesteps than its 1000 training ones
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})  # "I": older 16-bit PNGs


# ---------------------------------------------------------------- loading


def open_image(path: PathLike, what: str) -> Image.Image:
    """The decoded image at `path`, EXIF orientation applied, in the file's own mode."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(f"{what} {path} does not exist")
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not an image file")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here and the file can close
            # Phones store rotated JPEGs plus an orientation tag; show what the user sees.
            return ImageOps.exif_transpose(image)
    except UnidentifiedImageError:
        raise UsageError(f"{what} {path} is not an image file that Pillow can read") from None
    except Image.DecompressionBombError:
        raise UsageError(f"{what} {path} has too many pixels to open safely") from None
    except PermissionError as exc:
        raise UsageError(f"cannot read {what} {path}: {exc.strerror}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UsageError(f"{what} {path} is damaged or truncated ({exc})") from None


def load_image(path: PathLike, what: str = "init image") -> Image.Image:
    """The image at `path` as RGB; `what` ("init image", "mask") names it in errors.

    Alpha is dropped and the colour kept, not composited onto a background: the mask, not the
    alpha, says what to repaint, and a made-up background colour would become image content.
    """
    return as_rgb(open_image(path, what), f"{what} {path}")


def as_rgb(image: Image.Image, name: str = "the init image") -> Image.Image:
    """`load_image`'s rule for an image already open (a file's or one handed over in memory)."""
    image = eight_bit(image, name)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # Pillow's own route for palette transparency
    return image.convert("RGB")


def load_mask(path: PathLike) -> Image.Image:
    """The mask at `path` as mode "L": white (255) = repaint, black (0) = keep, grey = partly.

    Rule: an image with alpha whose colour is the same in every pixel but whose alpha varies is
    a brush painted on transparency (as other tools export masks), so its alpha is the mask
    (opaque = repaint). Any other image is converted to greyscale, ignoring alpha.
    """
    return as_mask(open_image(path, "mask"), f"mask {path}")


def as_mask(image: Image.Image, name: str = "the mask") -> Image.Image:
    """`load_mask`'s rule for an image already open (a file's or one handed over in memory)."""
    image = eight_bit(image, name)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    alpha = painted_alpha(image)
    return alpha if alpha is not None else image.convert("L")


def eight_bit(image: Image.Image, name: str) -> Image.Image:
    """16-bit greyscale as "L" (value / 257, so 65535 -> 255); other modes unchanged.

    Pillow's own "I;16" -> "L"/"RGB" conversion clips at 255, which would turn a 16-bit photo
    white. Floating-point images have no agreed range, so they are refused.
    """
    if image.mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image).astype(np.float64) / 257.0
        return Image.fromarray(np.rint(pixels).clip(0, 255).astype(np.uint8), "L")
    if image.mode == "F":
        raise UsageError(f"{name} has floating-point pixels; save it as an 8- or 16-bit image")
    return image


def painted_alpha(image: Image.Image) -> Image.Image | None:
    """The alpha band when the colour is uniform and only the alpha carries the drawing."""
    if image.mode not in ("RGBA", "LA"):
        return None
    *colour, alpha = image.split()
    uniform_colour = all(low == high for low, high in (band.getextrema() for band in colour))
    low, high = alpha.getextrema()
    return alpha if uniform_colour and low != high else None


def check_mask_size(mask: Image.Image, image_size: tuple[int, int]) -> None:
    if mask.size != tuple(image_size):
        raise UsageError(
            f"the mask is {size_text(mask.size)} but the init image is {size_text(image_size)}; "
            "they must be the same size"
        )


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


# ---------------------------------------------------------------- geometry


def fit_to_size(image: Image.Image, width: int, height: int, mode: str = "crop") -> Image.Image:
    """`image` at exactly width x height.

    "crop" (default): scale to cover the target keeping the aspect ratio, then cut the centre.
    "stretch": resize to the target, ignoring the aspect ratio. An image already at the size
    comes back with the same pixels. RGB images use Lanczos; "L" masks use bilinear, which never
    rings, so black stays 0, white stays 255 and only the edge gets grey.
    """
    if mode not in RESIZE_MODES:
        raise UsageError(f"unknown resize mode {mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    if width < 1 or height < 1:
        raise UsageError(f"cannot fit an image to {width}x{height}; both sides must be positive")
    if image.size == (width, height):
        return image.copy()
    resample = Image.Resampling.BILINEAR if image.mode == "L" else Image.Resampling.LANCZOS
    if mode == "stretch":
        return image.resize((width, height), resample)
    # ImageOps.fit resamples the centred crop box straight to the target: one resampling pass.
    return ImageOps.fit(image, (width, height), resample)


# ---------------------------------------------------------------- arrays


def image_to_array(image: Image.Image) -> np.ndarray:
    """RGB image -> (1, 3, H, W) float32 in [-1, 1]; `images.to_pil_images` maps it back exactly."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}")
    pixels = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)[None]
    return np.ascontiguousarray(pixels / np.float32(127.5) - np.float32(1.0))


def mask_weights(mask: Image.Image) -> np.ndarray:
    """(H, W) float32 repaint weights in [0, 1] from an "L" mask."""
    if mask.mode != "L":
        raise ValueError(f"expected an 'L' mask, got mode {mask.mode}")
    return np.asarray(mask, dtype=np.float32) / np.float32(255.0)


def blur_mask(mask: Image.Image, radius: float = DEFAULT_MASK_BLUR) -> Image.Image:
    """Gaussian feather of `radius` pixels (A1111's "Mask blur"); 0 keeps the hard edge."""
    if not math.isfinite(radius) or radius < 0:
        raise UsageError(f"mask blur must be 0 or more pixels, got {radius:g}")
    if radius == 0:
        return mask.copy()
    return mask.filter(ImageFilter.GaussianBlur(radius))


def latent_mask(mask: Image.Image, scale_factor: int = 8) -> np.ndarray:
    """(1, 1, H/f, W/f) float32 in [0, 1]: the mean repaint weight of each latent cell's pixels."""
    width, height = mask.size
    if width % scale_factor or height % scale_factor:
        raise UsageError(
            f"the mask is {width}x{height}, which the latent grid cannot divide; "
            f"both sides must be multiples of {scale_factor}"
        )
    weights = mask_weights(mask)
    rows, cols = height // scale_factor, width // scale_factor
    cells = weights.reshape(rows, scale_factor, cols, scale_factor).mean(axis=(1, 3))
    return cells.astype(np.float32)[None, None]


def paste_back(generated: Image.Image, original: Image.Image, mask: Image.Image) -> Image.Image:
    """`generated * m + original * (1 - m)`, m = mask / 255: untouched pixels stay identical."""
    if not generated.size == original.size == mask.size:
        raise ValueError(
            f"cannot paste back: sizes differ (generated {size_text(generated.size)}, "
            f"original {size_text(original.size)}, mask {size_text(mask.size)})"
        )
    weight = mask_weights(mask)[..., None]
    new = np.asarray(generated.convert("RGB"), dtype=np.float32)
    old = np.asarray(original.convert("RGB"), dtype=np.float32)
    blended = new * weight + old * (np.float32(1.0) - weight)  # exact where weight is 0 or 1
    return Image.fromarray(np.rint(blended).clip(0, 255).astype(np.uint8), "RGB")


# ---------------------------------------------------------------- outpainting


def parse_outpaint(text: str) -> tuple[int, int, int, int]:
    """ "LEFT,RIGHT,TOP,BOTTOM" in pixels (e.g. "64,64,0,0"), checked as `outpaint` checks it."""
    parts = [part.strip() for part in text.split(",")]
    # ASCII digits only: int() would also take "6_4", "+64" or other scripts' digits.
    if len(parts) != len(OUTPAINT_SIDES) or not all(OUTPAINT_NUMBER.fullmatch(p) for p in parts):
        raise UsageError(
            f"outpaint takes four whole numbers of pixels LEFT,RIGHT,TOP,BOTTOM "
            f"such as 64,64,0,0, got {text!r}"
        )
    left, right, top, bottom = (int(part) for part in parts)
    check_outpaint_amounts(left, right, top, bottom)
    return left, right, top, bottom


def check_outpaint_amounts(left: int, right: int, top: int, bottom: int) -> None:
    for side, amount in zip(OUTPAINT_SIDES, (left, right, top, bottom), strict=True):
        check_outpaint_amount(side, amount)
    if not any((left, right, top, bottom)):
        raise UsageError("outpaint needs at least one side above 0 pixels")


def check_outpaint_amount(side: str, amount: object) -> None:
    if isinstance(amount, bool) or not isinstance(amount, numbers.Integral):
        raise UsageError(f"outpaint {side} must be a whole number of pixels, got {amount!r}")
    amount = int(amount)
    if amount < 0:
        raise UsageError(f"outpaint {side} must be 0 or more pixels, got {amount}")
    if amount % OUTPAINT_MULTIPLE:
        lower = amount // OUTPAINT_MULTIPLE * OUTPAINT_MULTIPLE
        raise UsageError(
            f"outpaint {side} {amount} is not a multiple of {OUTPAINT_MULTIPLE}; "
            f"use {lower} or {lower + OUTPAINT_MULTIPLE}"
        )


def outpaint(
    image: Image.Image, left: int, right: int, top: int, bottom: int, fill: str = "edge"
) -> tuple[Image.Image, Image.Image]:
    """The grown RGB canvas and its "L" mask (255 on the new area, 0 on the original).

    Fill of the new area: "edge" repeats the border pixels outward (numpy's pad mode "edge"),
    then blurs the new area with a Gaussian of EDGE_FILL_BLUR pixels so the U-Net starts from
    colour, not streaks; "mean" paints it the image's mean colour. The original pixels are kept
    exactly, and the mask is hard: feather it with `blur_mask` to blend the seam.
    """
    if fill not in FILL_MODES:
        raise UsageError(f"unknown outpaint fill {fill!r}; choose one of {', '.join(FILL_MODES)}")
    check_outpaint_amounts(left, right, top, bottom)
    image = image.convert("RGB")
    width, height = image.size
    size = (width + left + right, height + top + bottom)
    canvas = (
        edge_fill(image, left, right, top, bottom) if fill == "edge" else mean_fill(image, size)
    )
    canvas.paste(image, (left, top))
    mask = Image.new("L", size, 255)
    mask.paste(0, (left, top, left + width, top + height))
    return canvas, mask


def edge_fill(image: Image.Image, left: int, right: int, top: int, bottom: int) -> Image.Image:
    pixels = np.pad(np.asarray(image), ((top, bottom), (left, right), (0, 0)), mode="edge")
    return Image.fromarray(pixels, "RGB").filter(ImageFilter.GaussianBlur(EDGE_FILL_BLUR))


def mean_fill(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    mean = np.asarray(image, dtype=np.float64).mean(axis=(0, 1))
    r, g, b = (round(float(channel)) for channel in mean)
    return Image.new("RGB", size, (r, g, b))


# ---------------------------------------------------------------- hashes


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of the file's bytes, as image metadata records an input."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def find_by_hash(folder: PathLike, sha256: str, max_files: int = MAX_HASHED_FILES) -> Path | None:
    """The image file directly in `folder` whose SHA-256 is `sha256`, or None.

    Not recursive; only image suffixes; files are tried in name order and the search stops after
    `max_files` of them, so a huge folder costs a bounded time.
    """
    if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
        raise UsageError(f"{sha256!r} is not a SHA-256 hash (64 hexadecimal digits)")
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"folder {folder} does not exist")
    wanted = sha256.lower()
    for path in sorted(image_files(folder))[:max_files]:
        try:
            if file_sha256(path) == wanted:
                return path
        except OSError:
            continue  # unreadable or vanished meanwhile: not the one we are looking for
    return None


def image_files(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:
        return [
            Path(entry.path)
            for entry in entries
            if Path(entry.name).suffix.lower() in IMAGE_SUFFIXES and entry.is_file()
        ]


# ---------------------------------------------------------------- strength


def check_strength(strength: float) -> None:
    """img2img strength: how much of the schedule reruns, in (0, 1]."""
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real):
        raise UsageError(f"strength must be a number in (0, 1], got {strength!r}")
    if not (math.isfinite(strength) and 0 < strength <= 1):
        raise UsageError(f"strength must be in (0, 1], got {strength:g}")


def steps_kept(steps: int, strength: float) -> int:
    """How many of `steps` timesteps img2img runs (the last ones), as diffusers counts them."""
    check_strength(strength)
    check_step_count(steps)
    kept = min(int(steps * strength), steps)
    if kept == 0:
        more_steps = ""
        if strength * MAX_SUGGESTED_STEPS >= 1:
            more_steps = f" or the steps to at least {least_steps(strength)}"
        raise UsageError(
            f"strength {strength:g} with {steps} steps leaves no step to run; raise the strength "
            f"to at least {least_strength(steps):g}{more_steps}"
        )
    return kept


def check_step_count(steps: int) -> None:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise UsageError(f"steps must be a whole number of at least 1, got {steps!r}")


def least_strength(steps: int) -> float:
    """The least strength with three decimals for which `steps` steps keep at least one."""
    check_step_count(steps)
    # Rounded up to thousandths; the loop guards against t/1000 being inexact in binary, so
    # that the float product steps * strength really reaches one step (diffusers' int()).
    thousandths = math.ceil(1000 / steps)
    while int(steps * (thousandths / 1000)) < 1:
        thousandths += 1
    return thousandths / 1000


def least_steps(strength: float) -> int:
    """The fewest steps for which `strength` keeps at least one."""
    check_strength(strength)
    inverse = 1 / strength
    if not math.isfinite(inverse):
        raise UsageError(f"strength {strength:g} is too small to leave a step at any step count")
    # floor, not ceil: 1 / strength may round up past the whole number that already works.
    steps = max(1, math.floor(inverse))
    while int(steps * strength) < 1:
        steps += 1
    return steps
