"""Live previews from latents: a 16->3 linear map (plus bias), never a VAE decode.

The map comes, first found first, from:
1. `preview_maps/<model>-<hash>.json` shipped with the app: fitted offline on the model's own
   generated images (`fit_preview.py`; the built-in demo model has one). Keyed by the U-Net's
   hash, so every backend of that model uses it and retrained weights never get a stale map.
2. the user's cache (`$SDXS_RT_CACHE/previews/`, else `~/.cache/sdxs-rt/previews/`);
3. a fit made now, then cached: a few seeded random latents are decoded with the pipeline, the
   images average-pooled to latent resolution, and `numpy.linalg.lstsq` finds the weights that
   best predict each pooled RGB pixel from the latent channels under it. Generic and cheap, but
   random latents are not what a trained U-Net makes, so such a map gets colours only roughly.
Projecting is a (h*w, 16) x (16, 3) product: well under a millisecond at 576 px, then an 8x
upscale.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage

from sdxs_rt.loading import user_cache_dir

FIT_SEED = 0
FIT_LATENTS = 3  # decodes for the fit: 3 x 16 x 16 latents give 768 samples for 17 unknowns
FIT_SIDE = 16
CACHE_FORMAT = 1


@dataclass(frozen=True)
class LatentProjection:
    """RGB in [0, 1] = latents (h, w, C) @ weights (C, 3) + bias (3,)."""

    weights: np.ndarray
    bias: np.ndarray
    fit_r2: float = float("nan")  # how well the map reproduced the pooled decodes it was fitted on

    def apply(self, latents: np.ndarray) -> np.ndarray:
        """(C, h, w) latents -> (h, w, 3) float32 RGB, clipped to [0, 1]."""
        channels_last = np.moveaxis(np.asarray(latents, dtype=np.float32), 0, -1)
        return np.clip(channels_last @ self.weights + self.bias, 0.0, 1.0)

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(
            {
                "format": CACHE_FORMAT,
                "weights": self.weights.tolist(),
                "bias": self.bias.tolist(),
                "fit_r2": self.fit_r2,
            },
            indent=indent,
        )

    @classmethod
    def from_json(cls, text: str) -> LatentProjection:
        data = json.loads(text)
        if data.get("format") != CACHE_FORMAT:
            raise ValueError("unknown preview cache format")
        weights = np.asarray(data["weights"], dtype=np.float32)
        bias = np.asarray(data["bias"], dtype=np.float32)
        if weights.ndim != 2 or weights.shape[1] != 3 or bias.shape != (3,):
            raise ValueError("malformed preview projection")
        return cls(weights, bias, float(data.get("fit_r2", "nan")))


def preview_cache_dir() -> Path:
    return user_cache_dir() / "previews"


def shipped_dir() -> Path:
    """Maps fitted offline on models' own images (see fit_preview.py), shipped with the app."""
    return Path(__file__).resolve().parent / "preview_maps"


def cache_name(info: dict[str, Any]) -> str:
    """A file name per VAE: the model hash (or name) of the loaded pipeline."""
    key = "-".join(str(info.get(k) or "") for k in ("model", "model_hash")).strip("-")
    return re.sub(r"[^A-Za-z0-9._-]+", "_", key or "default") + ".json"


def pooled_pixels(images: list[Image.Image], scale: int) -> np.ndarray:
    """Decoded images -> (N, h, w, 3) floats in [0, 1], averaged over `scale` x `scale` cells."""
    pixels = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255 for im in images])
    n, height, width, _ = pixels.shape
    cells = pixels.reshape(n, height // scale, scale, width // scale, scale, 3)
    return cells.mean(axis=(2, 4))


def random_latents(count: int, channels: int, height: int, width: int, seed: int) -> np.ndarray:
    generator = np.random.Generator(np.random.PCG64(seed))
    return generator.standard_normal((count, channels, height, width), dtype=np.float32)


def solve_projection(latents: np.ndarray, pooled: np.ndarray) -> LatentProjection:
    """Least squares over every latent pixel: [z, 1] @ [W; b] ~ rgb."""
    samples = np.moveaxis(latents, 1, -1).reshape(-1, latents.shape[1]).astype(np.float64)
    targets = pooled.reshape(-1, 3).astype(np.float64)
    design = np.hstack([samples, np.ones((len(samples), 1))])
    solution, *_ = np.linalg.lstsq(design, targets, rcond=None)
    r2 = r_squared(targets, design @ solution)
    return LatentProjection(solution[:-1].astype(np.float32), solution[-1].astype(np.float32), r2)


def r_squared(targets: np.ndarray, predictions: np.ndarray) -> float:
    """1 - SSE / SST over all three channels (0: no better than each channel's mean colour)."""
    total = float(((targets - targets.mean(axis=0)) ** 2).sum())
    residual = float(((targets - predictions) ** 2).sum())
    return 1.0 - residual / total if total > 0 else 0.0


def fit_side(pipe: Any) -> int:
    """Latent side for the fit decodes: 16, or the smallest a TensorRT engine accepts."""
    scale = pipe.components.vae_scale_factor
    profile = pipe.info.get("engine_profile") or {}
    min_size = int(profile.get("min_size", 0))
    return max(FIT_SIDE, math.ceil(min_size / scale))


def fit_projection(pipe: Any, count: int = FIT_LATENTS, seed: int = FIT_SEED) -> LatentProjection:
    """Decode `count` seeded random latents (one at a time) and fit the map to the results."""
    components = pipe.components
    side = fit_side(pipe)
    latents = random_latents(count, components.latent_channels, side, side, seed)
    images = [pipe.decode(components.ops.from_host(latent[None]))[0] for latent in latents]
    return solve_projection(latents, pooled_pixels(images, components.vae_scale_factor))


class LatentPreviewer:
    """Latents of a running generation -> a preview image, through the cached linear map."""

    def __init__(self, pipe: Any, cache_dir: str | os.PathLike[str] | None = None) -> None:
        self.pipe = pipe
        self.scale = int(pipe.components.vae_scale_factor)
        folder = Path(cache_dir) if cache_dir is not None else preview_cache_dir()
        self.cache_path = folder / cache_name(pipe.info)
        self.shipped_path = shipped_dir() / cache_name(pipe.info)
        self._projection: LatentProjection | None = None

    @property
    def ready(self) -> bool:
        """Whether the map is in memory (else the next preview loads or fits it first)."""
        return self._projection is not None

    @property
    def projection(self) -> LatentProjection:
        """The map: the shipped one, else the cached one, else fitted now (a few decodes)."""
        if self._projection is None:
            shipped_or_cached = self._read(self.shipped_path) or self._read(self.cache_path)
            self._projection = shipped_or_cached or self._fit_and_cache()
        return self._projection

    def _read(self, path: Path) -> LatentProjection | None:
        try:
            projection = LatentProjection.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # missing or damaged: try the next source
        expected = int(self.pipe.components.latent_channels)
        return projection if projection.weights.shape[0] == expected else None

    def _fit_and_cache(self) -> LatentProjection:
        projection = fit_projection(self.pipe)
        try:
            self.cache_path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.cache_path.with_name(f".{self.cache_path.name}.{os.getpid()}.tmp")
            temp.write_text(projection.to_json(), encoding="utf-8")
            os.replace(temp, self.cache_path)
        except OSError:
            pass  # an unwritable cache only costs a refit next session
        return projection

    def host_latents(self, latents: Any) -> np.ndarray:
        """A backend array or numpy, (C, h, w) or (1, C, h, w) -> (C, h, w) float32 numpy."""
        if not isinstance(latents, np.ndarray):
            latents = self.pipe.components.ops.to_host(latents)
        latents = np.asarray(latents, dtype=np.float32)
        return latents[0] if latents.ndim == 4 else latents

    def small_rgb(self, latents: Any) -> np.ndarray:
        """(h, w, 3) uint8 at latent resolution."""
        rgb = self.projection.apply(self.host_latents(latents))
        return (rgb * 255 + 0.5).astype(np.uint8)

    def to_rgb(self, latents: Any) -> np.ndarray:
        """(h*8, w*8, 3) uint8: the projection upscaled with nearest-neighbour cells."""
        small = self.small_rgb(latents)
        height, width, _ = small.shape
        s = self.scale
        cells = np.broadcast_to(small[:, None, :, None, :], (height, s, width, s, 3))
        return cells.reshape(height * s, width * s, 3)

    def to_qimage(self, latents: Any) -> QImage:
        """The preview at image resolution, smoothly upscaled by Qt (owns its pixels)."""
        small = np.ascontiguousarray(self.small_rgb(latents))
        height, width, _ = small.shape
        image = QImage(small.data, width, height, 3 * width, QImage.Format.Format_RGB888)
        if self.scale == 1:
            return image.copy()  # `scaled` to the same size would share numpy's buffer
        return image.scaled(
            width * self.scale,
            height * self.scale,
            Qt.AspectRatioMode.IgnoreAspectRatio,
            Qt.TransformationMode.SmoothTransformation,
        )
