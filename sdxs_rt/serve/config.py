"""The server's settings: plain data, decided once from the command line (or by an embedder)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxs_rt.errors import UsageError
from sdxs_rt.params import GenerationParams

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860  # A1111's: its clients default to it
API_KEY_VARIABLE = "SDXS_RT_API_KEY"
# The serve command's flag (and the Ray app's option) -> the Limits field it sets.
LIMIT_FLAGS = {
    "max_size": "max_side",
    "max_steps": "max_steps",
    "max_images": "max_images",
    "max_body_bytes": "max_body_bytes",
    "max_queue": "max_pending",
}
# Larger guidance scales only overflow (a cfg_scale of 1e308 draws NaN pixels): a 400, not a
# failed job. A1111's own slider stops at 30.
MAX_GUIDANCE = 100.0


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; larger asks get a 4xx before anything is queued."""

    max_side: int = 2048  # px, width and height (before the hires fix's scale)
    max_steps: int = 150
    max_images: int = 8  # per request (A1111: batch_size x n_iter; OpenAI: n)
    max_body_bytes: int = 32 * 1024 * 1024  # base64 images make bodies large
    max_pending: int = 16  # jobs waiting; one more answers 429 with Retry-After

    def __post_init__(self) -> None:
        for name in ("max_side", "max_steps", "max_images", "max_body_bytes", "max_pending"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")

    @property
    def max_input_pixels(self) -> int:
        """Input images may be larger than outputs (they are resized), but not without bound."""
        return 4 * self.max_side * self.max_side

    def check(self, params: GenerationParams) -> None:
        """A UsageError when `params` asks for more than this server allows."""
        scale = params.hires_scale or 1.0
        for name, value in (("width", params.width), ("height", params.height)):
            if value is not None and value * scale > self.max_side:
                raise UsageError(
                    f"{name} {value}{f' x hires {scale}' if scale != 1 else ''} is over this "
                    f"server's limit of {self.max_side} px"
                )
        for name, steps in (
            ("steps", params.num_inference_steps),
            ("hires steps", params.hires_steps),
        ):
            if steps is not None and steps > self.max_steps:
                raise UsageError(f"{name} {steps} is over this server's limit of {self.max_steps}")
        if params.num_images > self.max_images or params.batch_size > self.max_images:
            count = max(params.num_images, params.batch_size)
            raise UsageError(
                f"{count} images in one request is over this server's limit of {self.max_images}"
            )
        if params.guidance_scale > MAX_GUIDANCE:
            raise UsageError(
                f"guidance scale {params.guidance_scale:g} is over this server's limit of "
                f"{MAX_GUIDANCE:g}"
            )


@dataclass(frozen=True)
class Auth:
    """Bearer keys (--api-key) and A1111's user:pass pairs (--api-auth); none: open."""

    api_keys: tuple[str, ...] = ()
    basic: tuple[tuple[str, str], ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.api_keys or self.basic)

    @classmethod
    def parse(cls, api_keys: list[str], api_auth: str | None) -> Auth:
        """`api_auth` as A1111 takes it: "user:pass" pairs separated by commas."""
        pairs = []
        for item in (api_auth or "").split(","):
            if not item.strip():
                continue
            user, sep, password = item.strip().partition(":")
            if not sep or not user or not password:
                raise UsageError(
                    f"--api-auth takes user:pass pairs separated by commas, got {item!r}"
                )
            pairs.append((user, password))
        keys = tuple(key for key in api_keys if key)
        if len(keys) != len(api_keys):
            raise UsageError("--api-key must not be empty")
        return cls(api_keys=keys, basic=tuple(pairs))


@dataclass(frozen=True)
class ServerConfig:
    limits: Limits = field(default_factory=Limits)
    auth: Auth = field(default_factory=Auth)
    output_dir: Path | None = None  # every finished image is saved here; None: memory only
    models_dir: Path | None = None  # the allow-list of model folders requests may name
    preview_every: int = 5  # steps between the previews of /sdapi/v1/progress (0: none)
    keep_results_seconds: float = 600.0  # finished jobs (and their image URLs) live this long

    @classmethod
    def from_flags(cls, flags: Mapping[str, Any]) -> ServerConfig:
        """The settings from `sdxs-rt serve`'s flags by their names (`api_key` a list or one
        key, plus $SDXS_RT_API_KEY); the Ray app passes its options of the same names."""
        for name in ("preview_every", "keep_results"):
            if flags[name] < 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0, got {flags[name]}")
        given = flags.get("api_key") or []
        keys = [given] if isinstance(given, str) else list(given)
        if os.environ.get(API_KEY_VARIABLE):
            keys.append(os.environ[API_KEY_VARIABLE])
        return cls(
            limits=Limits(**{field: flags[flag] for flag, field in LIMIT_FLAGS.items()}),
            auth=Auth.parse(keys, flags.get("api_auth")),
            output_dir=_folder(flags.get("output_dir")),
            models_dir=_folder(flags.get("models_dir")),
            preview_every=flags["preview_every"],
            keep_results_seconds=flags["keep_results"],
        )


def _folder(value: str | os.PathLike[str] | None) -> Path | None:
    return Path(value).resolve() if value else None
