"""The three components over ONNX Runtime graphs: numpy float32 arrays in and out.

Each casts its inputs to the dtypes the graph declares (float16 graphs take float16) and
returns float32, so the sampling core always works on float32 latents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sdxs_rt.backends.onnx.sessions import GraphRunner
from sdxs_rt.errors import EngineError
from sdxs_rt.prompt_tokenizer import PromptTokenizer

TEXT_ENCODER_INPUTS = ("input_ids", "attention_mask")
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states")
VAE_DECODER_INPUTS = ("latent_sample",)


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
