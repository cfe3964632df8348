"""The components over ONNX Runtime graphs: numpy float32 arrays in and out.

Each casts its inputs to the dtypes the graph declares (float16 graphs take float16) and
returns float32, so the sampling core always works on float32 latents.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sdxs_rt.backends.onnx.sessions import GraphRunner
from sdxs_rt.components import check_encoder_images
from sdxs_rt.errors import EngineError
from sdxs_rt.image_preprocess import ImagePreprocessor, pixel_values
from sdxs_rt.prompt_tokenizer import PromptTokenizer

TEXT_ENCODER_INPUTS = ("input_ids", "attention_mask")
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
VAE_DECODER_INPUTS = ("latent_sample",)
VAE_ENCODER_INPUTS = ("sample",)
IMAGE_ENCODER_INPUTS = ("pixel_values",)


def _cast(array: Any, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=dtype)


def _float32(array: np.ndarray) -> np.ndarray:
    return np.asarray(array, dtype=np.float32)


class OnnxTextEncoder:
    """`TextEncoder`: prompts -> pooled (B, width) float32 embeddings."""

    def __init__(
        self, tokenizer: PromptTokenizer, runner: GraphRunner, dtypes: dict[str, Any], width: int
    ) -> None:
        self.tokenizer = tokenizer
        self.runner = runner
        self.dtypes = dtypes
        self.width = width

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        if isinstance(prompts, str):  # a lone string is a Sequence[str] of characters
            prompts = [prompts]
        if not prompts:
            return np.empty((0, self.width), dtype=np.float32)
        input_ids, attention_mask = self.tokenizer(prompts)
        feeds = {
            "input_ids": _cast(input_ids, self.dtypes["input_ids"]),
            "attention_mask": _cast(attention_mask, self.dtypes["attention_mask"]),
        }
        return _float32(self.runner.run(feeds)[0])


class OnnxUNet:
    """`UNet`: (sample, timestep, encoder_hidden_states) -> float32 model output.

    The timestep goes in as an array of shape [batch] (or a scalar, if the graph says so).
    """

    def __init__(self, runner: GraphRunner, dtypes: dict[str, Any], scalar_timestep: bool = False):
        self.runner = runner
        self.dtypes = dtypes
        self.scalar_timestep = scalar_timestep

    def __call__(self, sample: Any, timestep: float, encoder_hidden_states: Any) -> np.ndarray:
        batch = int(sample.shape[0])
        steps = np.full((batch,), float(timestep), dtype=np.float32)
        feeds = {
            "sample": _cast(sample, self.dtypes["sample"]),
            "timestep": _cast(steps[0] if self.scalar_timestep else steps, self.dtypes["timestep"]),
            "encoder_hidden_states": _cast(
                encoder_hidden_states, self.dtypes["encoder_hidden_states"]
            ),
        }
        return _float32(self.runner.run(feeds)[0])


class OnnxVAEDecoder:
    """`VAEDecoder`: unscaled latents -> float32 images in [-1, 1]."""

    def __init__(self, runner: GraphRunner, dtypes: dict[str, Any], precision: str) -> None:
        self.runner = runner
        self.dtypes = dtypes
        self.precision = precision

    def __call__(self, latents: Any) -> np.ndarray:
        feeds = {"latent_sample": _cast(latents, self.dtypes["latent_sample"])}
        images = _float32(self.runner.run(feeds)[0])
        if not np.isfinite(images).all():
            hint = "; export with --precision fp32" if self.precision != "fp32" else ""
            raise EngineError(
                f"the {self.precision} VAE decoder produced NaN or infinite pixels{hint}"
            )
        return np.clip(images, -1.0, 1.0)


class OnnxVAEEncoder:
    """`VAEEncoder`: images in [-1, 1] -> float32 unscaled latents, the posterior mean.

    The exported graph already ends in the mean (export/wrappers.py `VAEEncoderGraph` returns
    `encode(sample).latent_dist.mean`; its output `latent_sample` has the latent channels, not
    the 2x of mean and log-variance), so nothing is sliced here; the shape is checked, so that
    a foreign graph giving both halves is an error, not latents with twice the channels.
    """

    def __init__(
        self, runner: GraphRunner, dtypes: dict[str, Any], precision: str, latent: tuple[int, int]
    ) -> None:
        self.runner = runner
        self.dtypes = dtypes
        self.precision = precision  # the graph's own (an fp16 export may keep the VAE fp32)
        self.latent_channels, self.scale_factor = latent

    def __call__(self, images: Any) -> np.ndarray:
        check_encoder_images(tuple(images.shape), self.scale_factor)
        latents = _float32(self.runner.run({"sample": _cast(images, self.dtypes["sample"])})[0])
        self._check(latents, tuple(images.shape))
        return latents

    def _check(self, latents: np.ndarray, image_shape: tuple[int, ...]) -> None:
        batch, _, height, width = image_shape
        f = self.scale_factor
        expected = (batch, self.latent_channels, height // f, width // f)
        if latents.shape != expected:
            raise EngineError(
                f"the VAE encoder graph gave latents of shape {latents.shape}, not {expected}; "
                "export the model again with this sdxs-rt version"
            )
        if not np.isfinite(latents).all():
            hint = "; export with --precision fp32" if self.precision != "fp32" else ""
            raise EngineError(
                f"the {self.precision} VAE encoder produced NaN or infinite latents{hint}"
            )


OpenedGraph = tuple[GraphRunner, dict[str, Any]]  # (runner, input dtypes)


class OnnxImageEncoder:
    """`ImageEncoder`: PIL images or `pixel_values` -> float32 (B, width) image prompt vectors.

    Images are prepared on the host as the export's manifest says (`image_preprocessor`, the
    text encoder's preprocessor_config.json). The graph's session is opened on the first image
    prompt (`open_graph`), so text-to-image never holds the vision tower in memory.
    """

    def __init__(
        self,
        open_graph: Callable[[], OpenedGraph],
        preprocessor: ImagePreprocessor,
        width: int,
        precision: str,
    ) -> None:
        self.open_graph = open_graph
        self.preprocessor = preprocessor
        self.width = width
        self.size = preprocessor.size
        self.precision = precision  # the graph's own
        self._graph: OpenedGraph | None = None
        self._lock = threading.Lock()

    @property
    def opened(self) -> bool:
        return self._graph is not None

    def graph(self) -> OpenedGraph:
        with self._lock:
            if self._graph is None:
                self._graph = self.open_graph()
            return self._graph

    def __call__(self, images: Any) -> np.ndarray:
        pixels = pixel_values(images, self.preprocessor)
        if not len(pixels):
            return np.empty((0, self.width), dtype=np.float32)
        runner, dtypes = self.graph()
        feeds = {"pixel_values": _cast(pixels, dtypes["pixel_values"])}
        vectors = _float32(runner.run(feeds)[0])
        if vectors.shape != (len(pixels), self.width):
            raise EngineError(
                f"the image encoder graph gave vectors of shape {vectors.shape}, not "
                f"{(len(pixels), self.width)}; export the model again with this sdxs-rt version"
            )
        if not np.isfinite(vectors).all():
            hint = "; export with --precision fp32" if self.precision != "fp32" else ""
            raise EngineError(
                f"the {self.precision} image encoder produced NaN or infinite values{hint}"
            )
        return vectors
