"""Images in and out of JSON: base64 (with or without a data: URL prefix) <-> PIL, checked.

A request's image is only ever bytes in the body: no string from a request is opened as a path.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings

from PIL import Image

from sdxs_rt.errors import UsageError
from sdxs_rt.metadata import ImageRecord, png_info

ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "WEBP"})


def decode_image(text: str, field: str, max_pixels: int) -> Image.Image:
    """A base64 PNG, JPEG or WebP as an RGB or L image; a UsageError naming `field` otherwise."""
    if not isinstance(text, str) or not text:
        raise UsageError(f"{field} must be a base64-encoded PNG, JPEG or WebP image")
    if text.startswith("data:"):
        header, comma, payload = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise UsageError(
                f"{field} is a data: URL without base64 data; send data:image/png;base64,..."
            )
    else:
        payload = text
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(
            f"{field} is not valid base64 (send the image file's bytes, base64-encoded)"
        ) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise UsageError(f"{field} is a {image.format} image; send PNG, JPEG or WebP")
            if image.width * image.height > max_pixels:
                raise UsageError(
                    f"{field} is {image.width}x{image.height}, more than this server's limit of "
                    f"{max_pixels} pixels"
                )
            image.load()
    except UsageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UsageError(
            f"{field} is larger than this server's limit of {max_pixels} pixels"
        ) from None
    except (OSError, SyntaxError, ValueError):
        raise UsageError(f"{field} is not a readable PNG, JPEG or WebP image") from None
    return image


def png_bytes(image: Image.Image, record: ImageRecord | None = None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=png_info(record) if record is not None else None)
    return buffer.getvalue()


def png_base64(image: Image.Image, record: ImageRecord | None = None) -> str:
    return base64.b64encode(png_bytes(image, record)).decode("ascii")
