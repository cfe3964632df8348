"""Numpy stand-ins for the backend components: they exercise the torch-free core exactly."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import numpy as np

from sdxs_rt.array_ops import NumpyOps
from sdxs_rt.components import Components, LatentScaling

WIDTH = 8  # embedding width of the fake text encoder


class FakeTextEncoder:
    width = WIDTH

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        self.calls.append(list(prompts))
        rows = []
        for prompt in prompts:
            digest = hashlib.sha256(prompt.encode()).digest()
            rows.append(np.frombuffer(digest[:WIDTH], dtype=np.uint8) / 255.0 - 0.5)
        return np.asarray(rows, dtype=np.float32)


class FakeUNet:
    """A smooth function of (x, t, context) so that CFG and batching are observable."""

    def __init__(self, channels: int = 16) -> None:
        rng = np.random.default_rng(0)
        self.mix = rng.standard_normal((channels, WIDTH)).astype(np.float32) * 0.1
        self.batch_sizes: list[int] = []
        self.on_call = None  # optional hook, e.g. to cancel from "another thread"

    def __call__(self, sample: np.ndarray, timestep: float, context: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(sample.shape[0])
        if self.on_call is not None:
            self.on_call()
        bias = (context[:, 0, :] @ self.mix.T)[:, :, None, None]
        return (0.2 * sample + bias * np.float32(np.cos(timestep / 300.0))).astype(np.float32)


class FakeVAEDecoder:
    """Takes the first three channels and upsamples 8x: enough to compare pixels."""

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        rgb = np.tanh(latents[:, :3])
        return rgb.repeat(8, axis=2).repeat(8, axis=3)


DDPM_CONFIG = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "steps_offset": 1,
}


def fake_components(**overrides: object) -> Components:
    values: dict = {
        "text_encoder": FakeTextEncoder(),
        "unet": FakeUNet(),
        "vae_decoder": FakeVAEDecoder(),
        "ops": NumpyOps(),
        "scheduler_config": dict(DDPM_CONFIG),
        "latent_scaling": LatentScaling(scaling_factor=0.5, mean=0.1, std=1.0),
        "info": {"backend": "fake", "model": "fake"},
    }
    values.update(overrides)
    return Components(**values)


def cancel_after_calls(pipe, unet: FakeUNet, calls: int) -> None:
    """Cancel from a separate thread once the U-Net has run `calls` times."""

    def hook() -> None:
        if len(unet.batch_sizes) == calls:
            thread = threading.Thread(target=pipe.cancel)
            thread.start()
            thread.join()

    unet.on_call = hook
