"""Decoded arrays -> PIL images, atomic PNG saving, and `-o/--output` naming.

A run that fails leaves no partial file: images are written to a temporary file in the target
folder, synced, then moved into place in one step, and an existing file is never replaced unless
the caller asks for it.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import secrets
import string
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from sdxs_rt.errors import OutputExistsError, UsageError

DEFAULT_OUTPUT_FOLDER = "outputs"
PLACEHOLDERS = ("seed", "index", "date")
FOLDER_NUMBER = re.compile(r"^(\d{5,})(?=[-._]|$)")  # A1111's running 00001-... prefix
TEMP_SUFFIX = ".tmp"
# Errors that mean "this folder cannot be written" rather than "something broke".
UNWRITABLE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS}


# ---------------------------------------------------------------- arrays -> images


def to_pil_images(decoded: np.ndarray) -> list[Image.Image]:
    """(B, 3, H, W) floats in [-1, 1] -> RGB images, exactly as the model card converts them."""
    if decoded.ndim != 4 or decoded.shape[1] != 3:
        raise ValueError(f"expected decoded images shaped (B, 3, H, W), got {decoded.shape}")
    pixels = (decoded / 2 + 0.5).clip(0, 1)
    pixels = np.nan_to_num(pixels, nan=0.0)  # casting NaN to uint8 is undefined: make it black
    pixels = (pixels * 255).round().astype(np.uint8)
    return [Image.fromarray(np.ascontiguousarray(p.transpose(1, 2, 0)), "RGB") for p in pixels]


# ---------------------------------------------------------------- atomic saving


def exists_message(path: Path) -> str:
    return f"{path} exists; pass --overwrite to replace it"


def unwritable(path: Path, exc: OSError | None = None) -> UsageError:
    reason = f": {exc.strerror}" if exc is not None and exc.strerror else ""
    return UsageError(f"cannot write to {path}{reason}; choose another --output")


def make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"cannot create folder {path.parent}: a file has that name") from None
    except OSError as exc:
        raise unwritable(path.parent, exc) from None


def open_temp(path: Path) -> tuple[int, Path]:
    """A new hidden file beside `path` (same folder, so the final move is one rename)."""
    for _ in range(16):
        temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            # 0o666 lets the umask decide the final mode, like an ordinary save would.
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp
        except FileExistsError:
            continue
        except OSError as exc:
            if exc.errno in UNWRITABLE_ERRNOS:
                raise unwritable(path.parent, exc) from None
            raise
    raise UsageError(f"cannot create a temporary file in {path.parent}")


def write_png(fd: int, image: Image.Image, pnginfo: PngImagePlugin.PngInfo | None) -> None:
    with os.fdopen(fd, "wb") as handle:
        image.save(handle, format="PNG", pnginfo=pnginfo)
        handle.flush()
        os.fsync(handle.fileno())  # the bytes are on disk before the name points at them


def publish_exclusive(temp: Path, path: Path) -> None:
    """Move `temp` to `path` only if `path` does not exist, even against a concurrent writer."""
    try:
        os.link(temp, path)  # atomic and fails when `path` exists
        return
    except FileExistsError:
        raise OutputExistsError(exists_message(path)) from None
    except OSError as exc:
        if exc.errno in UNWRITABLE_ERRNOS - {errno.EPERM}:
            raise unwritable(path.parent, exc) from None
        # No hard links here (FAT, some network shares; Linux reports EPERM): fall through.
    if os.name == "nt":
        os.rename(temp, path)  # Windows rename refuses to replace: atomic and exclusive
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # claim the name
    except FileExistsError:
        raise OutputExistsError(exists_message(path)) from None
    try:
        os.replace(temp, path)  # over our own empty claim only
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def sync_folder(folder: Path) -> None:
    # Makes the new name itself durable; not possible (nor needed) on Windows.
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_png(
    image: Image.Image,
    path: str | os.PathLike[str],
    pnginfo: PngImagePlugin.PngInfo | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `image` as a PNG at `path` atomically; never clobber unless `overwrite`."""
    path = Path(path)
    if not overwrite and os.path.lexists(path):
        raise OutputExistsError(exists_message(path))  # fail before any work
    make_parent(path)
    fd, temp = open_temp(path)
    try:
        write_png(fd, image, pnginfo)
        if overwrite:
            os.replace(temp, path)
        else:
            publish_exclusive(temp, path)
    finally:
        temp.unlink(missing_ok=True)  # after a link, or after any failure
    sync_folder(path.parent)
    return path


# ---------------------------------------------------------------- -o/--output naming


def is_folder_value(value: str) -> bool:
    separators = tuple(s for s in (os.sep, os.altsep) if s)
    return value.endswith(separators) or Path(value).is_dir()


def next_folder_number(folder: Path) -> int:
    """One past the highest `NNNNN-` prefix in `folder` (A1111 style, so runs never collide)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return 0  # missing (created on save) or unreadable (check_outputs reports it)
    numbers = [int(m.group(1)) for m in map(FOLDER_NUMBER.match, names) if m]
    return max(numbers, default=-1) + 1


def folder_paths(value: str, seeds: Sequence[int], today: dt.date) -> list[Path]:
    if pattern_fields(value) - {"date"}:
        raise UsageError(f"output folder {value!r} can use only {{date}}; name files instead")
    folder = Path(value.format(date=today.isoformat()))
    start = next_folder_number(folder)
    return [folder / f"{start + i:05d}-{seed}.png" for i, seed in enumerate(seeds)]


def pattern_fields(pattern: str) -> set[str]:
    """The placeholder names in `pattern`; unknown or malformed ones are usage errors."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(pattern) if name is not None}
    except ValueError as exc:
        raise UsageError(f"output pattern {pattern!r} is malformed: {exc}") from None
    unknown = sorted(names - set(PLACEHOLDERS))
    if unknown:
        known = ", ".join(f"{{{p}}}" for p in PLACEHOLDERS)
        raise UsageError(f"unknown placeholder {{{unknown[0]}}} in {pattern!r}; use {known}")
    return names


def with_png_extension(pattern: str) -> str:
    """Add `.png` when there is no extension; refuse any other (metadata lives in PNG chunks)."""
    suffix = Path(pattern).suffix
    if not suffix or "{" in suffix or "}" in suffix:  # "img.{seed}" has no real extension
        return pattern + ".png"
    if suffix.lower() == ".png":
        return pattern
    raise UsageError(
        f"output {pattern!r} ends in {suffix}; sdxs-rt writes only PNG (the generation metadata "
        "lives in PNG text chunks), so use a .png name"
    )


def pattern_paths(pattern: str, seeds: Sequence[int], today: dt.date) -> list[Path]:
    names = pattern_fields(pattern)
    pattern = with_png_extension(pattern)
    if len(seeds) > 1 and not names & {"seed", "index"}:
        pattern = f"{pattern[: -len('.png')]}-{{index}}{pattern[-len('.png') :]}"
    try:
        return [
            Path(pattern.format(seed=seed, index=i, date=today.isoformat()))
            for i, seed in enumerate(seeds)
        ]
    except (ValueError, TypeError) as exc:  # a bad format spec such as {seed:q}
        raise UsageError(f"output pattern {pattern!r} cannot be filled in: {exc}") from None


def output_paths(
    value: str | os.PathLike[str] | None,
    seeds: Sequence[int],
    today: dt.date | None = None,
) -> list[Path]:
    """One path per image (in run order) for `-o/--output` VALUE.

    No value: folder `outputs/`. An existing folder, or a value ending in a separator: folder
    mode, `NNNNN-SEED.png` numbered after the folder's highest number. Anything else is a file
    name or a pattern with {seed}, {index} (0-based over the run) and {date} (YYYY-MM-DD).
    """
    today = today or dt.date.today()  # one date for the whole run, even across midnight
    text = os.path.expanduser(os.fspath(value)) if value else DEFAULT_OUTPUT_FOLDER + os.sep
    if is_folder_value(text):
        paths = folder_paths(text, seeds, today)
    else:
        paths = pattern_paths(text, seeds, today)
    if len(set(paths)) != len(paths):
        raise UsageError(f"output {text!r} gives several images the same name; add {{index}}")
    return paths


class OutputNamer:
    """`output_paths` for callers that name images one run at a time (the desktop app)."""

    def __init__(self, value: str | os.PathLike[str] | None, today: dt.date | None = None):
        self.value = value
        self.today = today

    def paths(self, seeds: Sequence[int]) -> list[Path]:
        return output_paths(self.value, seeds, self.today)


# ---------------------------------------------------------------- checks before generating


def nearest_existing(path: Path) -> Path:
    current = path.absolute()
    while not current.exists() and current != current.parent:
        current = current.parent
    return current


def check_folder_writable(folder: Path) -> None:
    """The folder (or, when it will be created, its nearest existing ancestor) must be writable."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise UsageError(f"cannot write to {folder}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {folder}: {existing} is not writable")


def check_outputs(paths: Sequence[Path], overwrite: bool = False) -> None:
    """Fail before generating anything when an output cannot (or must not) be written."""
    for path in paths:
        if path.is_dir():
            raise UsageError(f"{path} is a folder; give a file name or end the folder with '/'")
        if not overwrite and os.path.lexists(path):
            raise OutputExistsError(exists_message(path))
    for folder in dict.fromkeys(Path(p).parent for p in paths):  # each folder once, in order
        check_folder_writable(folder)
