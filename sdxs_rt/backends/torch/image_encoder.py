"""Image prompts on the torch backend: the SigLIP vision tower of the text encoder's file.

transformers' `SiglipVisionModel`, built from the dimensions `sdxs_rt.vision_layout` reads off
the tensor shapes (the published config has none), on the meta device (no random init of the
400M-parameter tower), then given the `vision_model.*` tensors of the text encoder's
`model.safetensors`. Its pooled output (the attention-pooling head) is the condition vector;
see `sdxs_rt.components.ImageEncoder` for why it is not normalised.

The tower is read on the first image prompt, not at load: text-to-image never pays its
memory (1.6 GB in float32 for so400m) or its read time. Parked (the low-VRAM mode), it then
waits on the CPU and visits the GPU only to encode.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sdxs_rt.backends.torch.vae import release_cached_memory
from sdxs_rt.errors import ModelFormatError
from sdxs_rt.image_encoder_files import ImageEncoderFiles, image_encoder_or_reason
from sdxs_rt.image_preprocess import pixel_values
from sdxs_rt.text_encoder_files import TextEncoderFiles

POSITION_IDS = "position_ids"  # SigLIP's one non-persistent buffer: rebuilt, not read


class TorchImageEncoder:
    """`ImageEncoder`: PIL images or `pixel_values` -> (B, width) float32 on `device`."""

    def __init__(
        self,
        files: ImageEncoderFiles,
        device: str | torch.device,
        dtype: torch.dtype,
        park: bool = False,
    ) -> None:
        self.files = files
        self.device = torch.device(device)
        self.dtype = dtype
        self.park = park and self.device.type == "cuda"  # elsewhere there is nowhere to park
        self.width = files.width
        self.size = files.preprocessor.size
        self._tower: nn.Module | None = None
        self._lock = threading.Lock()  # the desktop may encode from a worker thread

    @classmethod
    def load(
        cls, files: ImageEncoderFiles, device: str | torch.device, dtype: torch.dtype
    ) -> TorchImageEncoder:
        """As the constructor, with the tower read now (export, tests)."""
        encoder = cls(files, device, dtype)
        encoder.tower()
        return encoder

    @property
    def loaded(self) -> bool:
        return self._tower is not None

    def tower(self) -> nn.Module:
        """The SiglipVisionModel in `dtype`, read from disk on the first call; on the device,
        or on the CPU when parked."""
        with self._lock:
            if self._tower is None:
                home = torch.device("cpu") if self.park else self.device
                self._tower = load_vision_tower(self.files).to(home, self.dtype)
            return self._tower

    def __call__(self, images: Sequence[Any] | np.ndarray) -> torch.Tensor:
        pixels = pixel_values(images, self.files.preprocessor)
        if not len(pixels):
            return torch.empty(0, self.width, device=self.device, dtype=torch.float32)
        tower = self.tower()
        with self._lock, torch.inference_mode():
            if self.park:
                release_cached_memory(self.device)
                tower.to(self.device)
            try:
                batch = torch.from_numpy(pixels).to(self.device, self.dtype)
                pooled = tower(pixel_values=batch).pooler_output.to(torch.float32)
            finally:
                if self.park:
                    tower.to("cpu")
                    release_cached_memory(self.device)
        return pooled


def load_image_encoder(
    text: TextEncoderFiles,
    width: int | None,
    device: str | torch.device,
    dtype: torch.dtype,
    park: bool = False,
) -> tuple[TorchImageEncoder | None, str | None]:
    """(encoder, None), or (None, why image prompts are unavailable). Headers and the
    preprocessor config are checked now; the tower itself is read on the first image prompt."""
    files, reason = image_encoder_or_reason(text, width)
    if files is None:
        return None, reason
    return TorchImageEncoder(files, device, dtype, park), None


def load_vision_tower(files: ImageEncoderFiles) -> nn.Module:
    """transformers' SiglipVisionModel with the file's vision tensors, float32 on the CPU, in
    eval mode with gradients off."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    config = {k: v for k, v in files.layout.config.items() if k != "model_type"}
    with torch.device("meta"):
        model = SiglipVisionModel(SiglipVisionConfig(**config))
    # transformers 4 wraps the tower as `.vision_model`; 5 flattened it (same tensor names)
    tower = getattr(model, "vision_model", model)
    state = _read_vision_tensors(files)
    where = f"The vision tower in {files.dir}"
    try:
        result = tower.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as exc:  # shape mismatches, one a line in torch's message
        details = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise ModelFormatError(f"{where} does not match its shapes: {details}") from None
    missing = [k for k in result.missing_keys if not k.endswith(POSITION_IDS)]
    if missing or result.unexpected_keys:
        raise ModelFormatError(
            f"{where} is incomplete: missing {missing[:4] or 'none'}, unexpected "
            f"{result.unexpected_keys[:4] or 'none'}."
        )
    _rebuild_position_ids(tower)
    model = model.float().eval()
    model.requires_grad_(False)
    return model


def _read_vision_tensors(files: ImageEncoderFiles) -> dict[str, torch.Tensor]:
    """The `vision_model.*` tensors (prefix stripped), float32; nothing else is read."""
    from safetensors import safe_open

    prefix = files.layout.prefix
    tensors: dict[str, torch.Tensor] = {}
    for path in files.weights:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in list(handle.keys()):  # safe_open handles are not iterable
                name = key[len(prefix) :]
                if key.startswith(prefix) and not name.endswith(POSITION_IDS):
                    tensors[name] = handle.get_tensor(key).float()
    return tensors


def _rebuild_position_ids(tower: nn.Module) -> None:
    """The meta device left SigLIP's `position_ids` buffer empty: 0..N-1, as its init makes."""
    embeddings: Any = tower.embeddings  # type: ignore[union-attr]
    count = embeddings.position_embedding.weight.shape[0]
    embeddings.position_ids = torch.arange(count).expand((1, -1))
    for name, buffer in tower.named_buffers():
        if buffer.is_meta:
            raise ModelFormatError(f"the vision tower has a buffer {name} sdxs-rt cannot rebuild")
