"""The component protocols (TextEncoder, UNet, VAEDecoder, VAEEncoder, ImageEncoder) over
TensorRT engines.

Arrays are float32 torch CUDA tensors, as with the torch backend on CUDA; each engine takes
and returns the dtypes its graph was exported with, and `TrtEngine` casts at the boundary.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from sdxs_rt.backends.tensorrt.runtime import TrtEngine
from sdxs_rt.components import check_encoder_images
from sdxs_rt.errors import EngineError
from sdxs_rt.image_preprocess import ImagePreprocessor, pixel_values
from sdxs_rt.prompt_tokenizer import PromptTokenizer


class TrtTextEncoder:
    """Prompts -> (B, D) pooled embeddings, float32 on the GPU."""

    def __init__(self, tokenizer: PromptTokenizer, engine: TrtEngine, width: int) -> None:
        self.tokenizer = tokenizer
        self.engine = engine
        self.width = width

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        input_ids, attention_mask = self.tokenizer(prompts)
        feeds = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention_mask),
        }
        return self.engine(feeds)["text_embeds"].float()


class TrtUNet:
    """(sample, timestep, encoder_hidden_states) -> model output, float32."""

    def __init__(self, engine: TrtEngine) -> None:
        self.engine = engine
        self.scalar_timestep = engine.input_rank("timestep") == 0

    def __call__(
        self, sample: torch.Tensor, timestep: float, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        shape = () if self.scalar_timestep else (sample.shape[0],)
        feeds = {
            "sample": sample,
            "timestep": torch.full(shape, float(timestep), device=sample.device),
            "encoder_hidden_states": encoder_hidden_states,
        }
        return self.engine(feeds)["out_sample"].float()


class TrtVAEDecoder:
    """Unscaled latents -> images in [-1, 1], float32; NaN (fp16 overflow) is an error."""

    def __init__(self, engine: TrtEngine, model_dir: str = "DIR") -> None:
        self.engine = engine
        self.model_dir = model_dir

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.engine({"latent_sample": latents})["sample"].float()
        if bool(torch.isnan(images).any()):
            raise EngineError(
                "the VAE decoder engine produced NaN (an fp16 overflow); build the engines "
                f"in fp32: `sdxs-rt engine build --model {self.model_dir} --precision fp32`"
            )
        return images


Feeds = Mapping[str, torch.Tensor]


class DeferredEngine:
    """An engine opened (deserialised, its execution context created) on its first call.

    For the VAE encoder, which only img2img runs: an execution context holds activation memory
    for its profile's largest shape from creation on (TensorRT's default static allocation), and
    text-to-image on a small card should not pay for it.
    """

    def __init__(self, open_engine: Callable[[], TrtEngine]) -> None:
        self.open_engine = open_engine
        self.engine: TrtEngine | None = None

    def __call__(self, feeds: Feeds) -> dict[str, torch.Tensor]:
        if self.engine is None:
            self.engine = self.open_engine()
        return self.engine(feeds)


class TrtVAEEncoder:
    """Images in [-1, 1] -> unscaled latents, float32: the posterior mean, since the engine is
    built from the exported vae_encoder graph, which ends in it. NaN/inf is an error."""

    def __init__(
        self,
        engine: TrtEngine | DeferredEngine,
        model_dir: str = "DIR",
        vae_scale_factor: int = 8,
    ) -> None:
        self.engine = engine
        self.model_dir = model_dir
        self.vae_scale_factor = vae_scale_factor

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        check_encoder_images(tuple(images.shape), self.vae_scale_factor)
        latents = self.engine({"sample": images})["latent_sample"].float()
        if not bool(torch.isfinite(latents).all()):
            raise EngineError(
                "the VAE encoder engine produced NaN or infinite latents (an fp16 overflow); "
                f"build the engines in fp32: `sdxs-rt engine build --model {self.model_dir} "
                "--precision fp32`"
            )
        return latents


class TrtImageEncoder:
    """Image prompts -> (B, width) float32 vectors on the GPU: images prepared on the host as the
    export's manifest says (`image_preprocessor`), then the image_encoder engine, built from the
    exported graph that ends in SigLIP's pooled output. Open it through a `DeferredEngine`, as the
    VAE encoder: text-to-image should not hold the vision tower's context. NaN/inf is an error."""

    def __init__(
        self,
        engine: TrtEngine | DeferredEngine,
        preprocessor: ImagePreprocessor,
        width: int,
        model_dir: str = "DIR",
    ) -> None:
        self.engine = engine
        self.preprocessor = preprocessor
        self.width = width
        self.size = preprocessor.size
        self.model_dir = model_dir

    def __call__(self, images: Any) -> torch.Tensor:
        pixels = torch.from_numpy(pixel_values(images, self.preprocessor))
        if not len(pixels):
            return torch.empty(0, self.width, dtype=torch.float32)
        vectors = self.engine({"pixel_values": pixels})["image_embeds"].float()
        if tuple(vectors.shape) != (len(pixels), self.width):
            raise EngineError(
                f"the image encoder engine gave vectors of shape {tuple(vectors.shape)}, not "
                f"{(len(pixels), self.width)}; export the model again and rebuild the engines"
            )
        if not bool(torch.isfinite(vectors).all()):
            raise EngineError(
                "the image encoder engine produced NaN or infinite values (an fp16 overflow); "
                f"build the engines in fp32: `sdxs-rt engine build --model {self.model_dir} "
                "--precision fp32`"
            )
        return vectors
