"""Whether a text encoder can also encode image prompts, and from which files (torch-free).

Mexma-SigLIP's text projector was trained to land in SigLIP's image-embedding space (the SDXS
model card: text embeddings "synchronized" with image ones, "mixing image embeddings with
textual descriptions in queries"; 5% of the U-Net's training used image embeddings). So an
image prompt is the SigLIP vision tower's pooled output, from the same `model.safetensors` as
the text tower, prepared as its `preprocessor_config.json` says. This module decides from
headers and small files alone whether that is possible, and says why not in one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdxs_rt.errors import ModelFormatError, ModelNotFoundError
from sdxs_rt.image_preprocess import ImagePreprocessor, read_preprocessor
from sdxs_rt.safetensors_header import tensor_table
from sdxs_rt.text_encoder_files import TextEncoderFiles
from sdxs_rt.text_layout import VISION_PREFIX
from sdxs_rt.vision_layout import VisionLayout, has_vision_tower, vision_layout


@dataclass(frozen=True)
class ImageEncoderFiles:
    """The vision tower inside a text encoder's weights, and how images are prepared for it."""

    name: str  # the text encoder's name
    dir: Path
    weights: tuple[Path, ...]
    layout: VisionLayout
    preprocessor: ImagePreprocessor

    @property
    def width(self) -> int:
        return self.layout.width

    def describe(self) -> str:
        return f"{self.layout.describe()}; images: {self.preprocessor.describe()}"


def resolve_image_encoder(text: TextEncoderFiles, width: int | None) -> ImageEncoderFiles:
    """The image encoder of `text`, whose vectors must be `width` wide (the text encoder's,
    or the U-Net's cross-attention; None: not checked). ModelFormatError or
    ModelNotFoundError, one sentence, when it has none or one sdxs-rt cannot use."""
    weights = tuple(text.weights)
    absent = [str(path) for path in weights if not Path(path).is_file()]
    if not weights or absent:
        raise ModelNotFoundError(
            f"the weights of the text encoder {text.name} are not on disk "
            f"({', '.join(absent) or 'none listed'}), so its vision tower cannot be read"
        )
    tensors = tensor_table(list(weights))
    if not has_vision_tower(tensors):
        raise ModelFormatError(
            f"the text encoder {text.name} holds no vision tower (no {VISION_PREFIX}* tensors "
            "in its weights), so it cannot encode image prompts; use one that does, such as "
            "the model card's visheratin/mexma-siglip"
        )
    layout = vision_layout(tensors, text.config, str(text.dir))
    preprocessor = read_preprocessor(text.dir)
    check_sides(layout, preprocessor, text.dir)
    if width is not None and layout.width != width:
        raise ModelFormatError(
            f"the vision tower of {text.name} gives {layout.width}-wide vectors but the text "
            f"encoder's are {width} wide: image prompts would not share the text's space"
        )
    return ImageEncoderFiles(text.name, text.dir, weights, layout, preprocessor)


def image_encoder_or_reason(
    text: TextEncoderFiles, width: int | None
) -> tuple[ImageEncoderFiles | None, str | None]:
    """(files, None), or (None, the sentence a loader puts in info["image_encoder_unavailable"])."""
    try:
        return resolve_image_encoder(text, width), None
    except (ModelFormatError, ModelNotFoundError) as exc:
        return None, str(exc).rstrip(".")


def check_sides(layout: VisionLayout, preprocessor: ImagePreprocessor, folder: Path) -> None:
    """The preprocessor's size must give the tower's patch grid (a 384-px config for so400m)."""
    if not preprocessor.do_resize:
        return  # the size is then checked per image
    if not all(layout.accepts_side(side) for side in preprocessor.size):
        patch = layout.config["patch_size"]
        raise ModelFormatError(
            f"{folder}'s preprocessor_config.json resizes images to {preprocessor.width}x"
            f"{preprocessor.height} px, but its vision tower takes {layout.patch_grid} x "
            f"{layout.patch_grid} patches of {patch} px ({layout.image_size} px)"
        )
