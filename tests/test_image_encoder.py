"""Image prompts, encoder side: SigLIP preprocessing and the vision tower against transformers,
the layout read from the header, ONNX Runtime against torch, TensorRT's wrapper, refusals.

The references are transformers' own: the PIL backend of SiglipImageProcessor
(`SiglipImageProcessorPil` in 5.x, `SiglipImageProcessor` in 4.x) and `SiglipVisionModel`
given the file's `vision_model.*` tensors, plus the stand-in remote code's `encode_images`.
Measured on the tiny tower (1152 wide, 4 x 4 patches, pooled vectors of norm about 20):
preprocessing 0 (the same operations), torch vs transformers 0, vs the remote code 0, ONNX
Runtime fp32 vs torch about 2e-6.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdxs_rt.components import Components, require_image_encoder
from sdxs_rt.errors import ModelFormatError, ModelNotFoundError, UsageError
from sdxs_rt.image_encoder_files import image_encoder_or_reason, resolve_image_encoder
from sdxs_rt.image_preprocess import (
    ImagePreprocessor,
    load_image_prompt,
    pixel_values,
    preprocessor_from_config,
    read_preprocessor,
    to_rgb,
)
from sdxs_rt.text_layout import TensorInfo
from sdxs_rt.vision_layout import vision_layout

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from sdxs_rt.backends.torch import load_components as load_torch  # noqa: E402
from sdxs_rt.backends.torch.image_encoder import TorchImageEncoder  # noqa: E402
from sdxs_rt.dev.tiny import vision_config  # noqa: E402
from sdxs_rt.loading import resolve_model  # noqa: E402
from sdxs_rt.text_encoder_files import TextEncoderFiles, resolve_text_encoder  # noqa: E402
from tests import test_tensorrt  # noqa: E402
from tests.published_layout import read_tensors  # noqa: E402

PARITY = 1e-5  # the acceptance bar, preprocessing and embeddings alike
ONNX_VS_TORCH = 1e-4  # fp32 graph vs eager, relative to the vectors' scale; measured ~1e-7
# google/siglip-so400m-patch14-384's preprocessor_config.json
SO400M_PREPROCESSOR = {
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "SiglipProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": 384, "width": 384},
}
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5


def pil_processor_class() -> Any:
    """transformers' PIL-backed SigLIP processor: 5.x names it ...Pil (its default class uses
    torchvision when installed); in 4.x the plain class is the PIL one."""
    return (
        getattr(transformers, "SiglipImageProcessorPil", None) or transformers.SiglipImageProcessor
    )


def reference_pixels(config: dict[str, Any], images: list[Image.Image]) -> np.ndarray:
    settings = {
        k: v for k, v in config.items() if k not in ("image_processor_type", "processor_class")
    }
    processor = pil_processor_class()(**settings)
    return processor(images=images, do_convert_rgb=True, return_tensors="np")["pixel_values"]


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour gradients plus noise: resampling filters differ on both."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 200
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def images_of_every_kind() -> list[Image.Image]:
    grey = photo(61, 47, 2).convert("L")
    return [
        photo(500, 333),  # larger, landscape
        photo(20, 90, 1),  # smaller, portrait
        photo(36, 36, 3),  # already the tiny tower's size
        grey,
        photo(80, 80, 4).convert("P"),
        photo(64, 48, 5).convert("CMYK"),
    ]


def text_files(model: Path) -> TextEncoderFiles:
    return resolve_text_encoder(None, resolve_model(str(model)))


# --- preprocessing: transformers' PIL backend, step for step ------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"size": {"height": 36, "width": 36}},
        {"resample": 2, "image_mean": [0.48, 0.46, 0.41], "image_std": [0.27, 0.26, 0.28]},
        {"resample": 1, "rescale_factor": 0.5 / 255},
        {"do_normalize": False},
        {"do_rescale": False, "size": {"height": 50, "width": 30}},
    ],
)
def test_preprocessing_matches_transformers(overrides: dict[str, Any]) -> None:
    config = {**SO400M_PREPROCESSOR, **overrides}
    images = images_of_every_kind()
    ours = preprocessor_from_config(config, "test")(images)
    reference = reference_pixels(config, images)
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    difference = float(np.abs(ours - reference).max())
    print(f"preprocessing {overrides or 'so400m'} vs transformers: max abs {difference:.3g}")
    assert difference <= PARITY


def test_transparency_is_composited_onto_white() -> None:
    """transformers 5's convert_to_rgb; 4.x dropped the alpha (and with it, the white)."""
    rgba = photo(40, 30).convert("RGBA")
    alpha = np.zeros((30, 40), np.uint8)
    alpha[:, 20:] = 255
    rgba.putalpha(Image.fromarray(alpha))
    rgb = np.asarray(to_rgb(rgba))
    assert (rgb[:, :20] == 255).all()  # transparent: white
    np.testing.assert_array_equal(rgb[:, 20:], np.asarray(rgba)[:, 20:, :3])  # opaque: kept
    palette = photo(30, 30).convert("P")
    palette.info["transparency"] = 0
    assert to_rgb(palette).mode == "RGB"
    if TRANSFORMERS_5:
        config = {**SO400M_PREPROCESSOR, "size": {"height": 36, "width": 36}}
        ours = preprocessor_from_config(config, "test")([rgba])
        assert float(np.abs(ours - reference_pixels(config, [rgba])).max()) <= PARITY


def test_sixteen_bit_greyscale_is_scaled_not_clipped() -> None:
    deep = Image.fromarray(np.full((8, 8), 65535, np.uint16))
    assert deep.mode.startswith("I")
    assert (np.asarray(to_rgb(deep)) == 255).all()


def test_prepared_pixel_values_pass_through_checked() -> None:
    preprocessor = ImagePreprocessor(36, 36)
    prepared = preprocessor([photo(50, 40)])
    np.testing.assert_array_equal(pixel_values(prepared, preprocessor), prepared)
    with pytest.raises(UsageError, match=r"shape \(B, 3, 36, 36\), not \(1, 3, 32, 32\)"):
        pixel_values(np.zeros((1, 3, 32, 32), np.float32), preprocessor)
    with pytest.raises(UsageError, match="NaN"):
        pixel_values(np.full((1, 3, 36, 36), np.nan, np.float32), preprocessor)
    with pytest.raises(UsageError, match="PIL image, not str"):
        preprocessor(["cat.png"])  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {**SO400M_PREPROCESSOR, "image_processor_type": "CLIPImageProcessor"},
            "'CLIPImageProcessor'",
        ),
        (
            {k: v for k, v in SO400M_PREPROCESSOR.items() if k != "image_processor_type"},
            "no image_processor_type",
        ),
        ({**SO400M_PREPROCESSOR, "do_center_crop": True}, "asks for do_center_crop"),
        ({**SO400M_PREPROCESSOR, "do_sharpen": True}, "asks for do_sharpen"),
        ({**SO400M_PREPROCESSOR, "size": {"shortest_edge": 384}}, 'size {"shortest_edge": 384}'),
        ({**SO400M_PREPROCESSOR, "resample": "bicubic"}, 'resample "bicubic"'),
        ({**SO400M_PREPROCESSOR, "image_std": [0.5, 0, 0.5]}, "image_std"),
        ({**SO400M_PREPROCESSOR, "do_resize": "yes"}, 'do_resize "yes"'),
    ],
)
def test_configs_it_cannot_follow_are_refused_by_name(config: dict, message: str) -> None:
    with pytest.raises(ModelFormatError, match=message) as caught:
        preprocessor_from_config(config, "x/preprocessor_config.json")
    assert "x/preprocessor_config.json" in str(caught.value) and "\n" not in str(caught.value)


def test_a_missing_or_broken_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"has no preprocessor_config\.json"):
        read_preprocessor(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="is not readable JSON"):
        read_preprocessor(tmp_path)


# --- image files: the init image's rules, naming an image prompt ---------------------------------


def test_bad_image_files_are_one_sentence_each(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    good = photo(30, 20)
    good.save(tmp_path / "good.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    Image.fromarray(np.zeros((4, 4), np.float32), "F").save(tmp_path / "float.tiff")
    cases = [
        ("missing.png", ModelNotFoundError, "does not exist"),
        (".", UsageError, "is a folder"),
        ("notes.txt", UsageError, "not an image file that Pillow can read"),
        ("cut.png", UsageError, "damaged or truncated"),
        ("float.tiff", UsageError, "floating-point pixels"),
    ]
    for name, error, message in cases:
        with pytest.raises(error, match=message) as caught:
            load_image_prompt(tmp_path / name)
        text = str(caught.value)
        assert text.startswith("image prompt ") and "\n" not in text, text
    assert load_image_prompt(tmp_path / "good.png").size == (30, 20)


# --- the vision tower's layout, from a header --------------------------------------------------


def so400m_header(layers: int = 27, head: bool = True) -> dict[str, TensorInfo]:
    """The vision tensors of google/siglip-so400m-patch14-384, as names and shapes."""
    d, ffn = 1152, 4304
    shapes: dict[str, tuple[int, ...]] = {
        "embeddings.patch_embedding.weight": (d, 3, 14, 14),
        "embeddings.patch_embedding.bias": (d,),
        "embeddings.position_embedding.weight": (729, d),
        "post_layernorm.weight": (d,),
        "post_layernorm.bias": (d,),
    }
    for i in range(layers):
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"encoder.layers.{i}.self_attn.{name}.weight"] = (d, d)
            shapes[f"encoder.layers.{i}.self_attn.{name}.bias"] = (d,)
        for name in ("layer_norm1", "layer_norm2"):
            shapes[f"encoder.layers.{i}.{name}.weight"] = shapes[
                f"encoder.layers.{i}.{name}.bias"
            ] = (d,)
        shapes[f"encoder.layers.{i}.mlp.fc1.weight"], shapes[f"encoder.layers.{i}.mlp.fc1.bias"] = (
            (ffn, d),
            (ffn,),
        )
        shapes[f"encoder.layers.{i}.mlp.fc2.weight"], shapes[f"encoder.layers.{i}.mlp.fc2.bias"] = (
            (d, ffn),
            (d,),
        )
    if head:
        shapes |= {
            "head.probe": (1, 1, d),
            "head.attention.in_proj_weight": (3 * d, d),
            "head.attention.in_proj_bias": (3 * d,),
            "head.attention.out_proj.weight": (d, d),
            "head.attention.out_proj.bias": (d,),
            "head.layernorm.weight": (d,),
            "head.layernorm.bias": (d,),
            "head.mlp.fc1.weight": (ffn, d),
            "head.mlp.fc1.bias": (ffn,),
            "head.mlp.fc2.weight": (d, ffn),
            "head.mlp.fc2.bias": (d,),
        }
    return {f"vision_model.{k}": TensorInfo("F32", v) for k, v in shapes.items()}


def test_so400m_dimensions_come_from_the_shapes() -> None:
    layout = vision_layout(so400m_header(), {"architectures": ["MexmaSigLIP"]}, "so400m")
    config = layout.config
    assert (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"]) == (
        1152,
        27,
        4304,
    )
    assert (config["num_attention_heads"], config["patch_size"], layout.patch_grid) == (16, 14, 27)
    assert layout.accepts_side(384) and layout.accepts_side(378) and not layout.accepts_side(392)
    assert layout.width == 1152 and layout.config_source == "tensor shapes"
    assert 400e6 < layout.parameters < 430e6  # so400m's vision tower: about 428M with its head
    stated = {"vision_config": {"hidden_size": 1152, "num_attention_heads": 8, "image_size": 384}}
    assert vision_layout(so400m_header(), stated, "x").config["num_attention_heads"] == 8


def test_layouts_it_does_not_know_are_refused_by_name() -> None:
    with pytest.raises(ModelFormatError, match="no attention-pooling head"):
        vision_layout(so400m_header(2, head=False), {}, "w")
    extra = so400m_header(2) | {"vision_model.head.extra": TensorInfo("F32", (1,))}
    with pytest.raises(ModelFormatError, match=r"does not know: vision_model\.head\.extra"):
        vision_layout(extra, {}, "w")
    gap = {k: v for k, v in so400m_header(3).items() if "layers.1.mlp.fc2.bias" not in k}
    with pytest.raises(
        ModelFormatError, match=r"lacks vision_model\.encoder\.layers\.1\.mlp\.fc2\.bias"
    ):
        vision_layout(gap, {}, "w")
    wrong = {"vision_config": {"hidden_size": 1024}}
    with pytest.raises(ModelFormatError, match="hidden_size 1024 \\(the tensors say 1152\\)"):
        vision_layout(so400m_header(1), wrong, "w")


# --- the torch image encoder against transformers ----------------------------------------------


def reference_tower(folder: Path) -> Any:
    """transformers' SiglipVisionModel, built from the builder's config, given the file's
    vision tensors: independent of sdxs-rt's shape reading and meta-device loading."""
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**vision_config()))
    tower = getattr(model, "vision_model", model)
    tensors = read_tensors(folder / "model.safetensors")
    state = {
        k.removeprefix("vision_model."): v
        for k, v in tensors.items()
        if k.startswith("vision_model.")
    }
    tower.load_state_dict(state, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def torch_components(tiny_model: Path) -> Components:
    return load_torch(str(tiny_model))


def test_torch_embeddings_match_transformers(
    tiny_model: Path, torch_components: Components
) -> None:
    encoder: Any = require_image_encoder(torch_components)
    assert not encoder.loaded  # text-to-image never reads the tower
    images = images_of_every_kind()
    ours = encoder(images)
    assert encoder.loaded and ours.dtype == torch.float32 and ours.shape == (len(images), 1152)
    folder = tiny_model / "text_encoder"
    config = json.loads((folder / "preprocessor_config.json").read_text())
    pixels = torch.from_numpy(reference_pixels(config, images))
    with torch.no_grad():
        reference = reference_tower(folder)(pixel_values=pixels).pooler_output
    difference = float((ours - reference).abs().max())
    print(f"torch image encoder vs transformers SiglipVisionModel: max abs {difference:.3g}")
    assert difference <= PARITY
    assert float(ours.norm(dim=-1).min()) > 1  # not normalised: the pooled output as it is


def test_torch_embeddings_match_the_remote_codes_encode_images(tiny_model_remote: Path) -> None:
    from sdxs_rt.backends.torch.remote_code import load_remote_model

    remote = load_remote_model(text_files(tiny_model_remote), torch.device("cpu"), torch.float32)
    encoder = TorchImageEncoder.load(
        resolve_image_encoder(text_files(tiny_model_remote), 1152), "cpu", torch.float32
    )
    images = images_of_every_kind()[:3]
    prepared = encoder.files.preprocessor(images)
    with torch.no_grad():
        card = remote.encode_images(torch.from_numpy(prepared))
    difference = float((encoder(images) - card).abs().max())
    print(f"torch image encoder vs the remote code's encode_images: max abs {difference:.3g}")
    assert difference <= PARITY
    torch.testing.assert_close(encoder(prepared), encoder(images), atol=0, rtol=0)


def test_a_batch_encodes_as_its_images_one_by_one(torch_components: Components) -> None:
    encoder = require_image_encoder(torch_components)
    images = images_of_every_kind()[:3]
    together = encoder(images)
    apart = torch.cat([encoder([image]) for image in images])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=0)
    assert encoder([]).shape == (0, 1152)
    assert encoder.width == torch_components.text_encoder.width == 1152
    assert encoder.size == (36, 36)


def test_bfloat16_is_close_to_float32(tiny_model: Path, torch_components: Components) -> None:
    images = images_of_every_kind()[:2]
    full = require_image_encoder(torch_components)(images)
    half = require_image_encoder(load_torch(str(tiny_model), precision="bf16"))(images)
    error = float((half - full).abs().mean() / full.abs().mean())
    print(f"bf16 vs fp32 image encoder: mean abs / mean magnitude {error:.4f}")
    assert half.dtype == torch.float32 and error < 0.05


@pytest.mark.gpu
@pytest.mark.parametrize("low_vram", [False, True])
def test_on_cuda_the_image_encoder_matches_the_cpu_and_parks_in_low_vram_mode(
    tiny_model: Path, torch_components: Components, low_vram: bool
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    components = load_torch(str(tiny_model), device="cuda", precision="fp16", low_vram=low_vram)
    encoder: Any = require_image_encoder(components)
    images = images_of_every_kind()[:2]
    vectors = encoder(images)
    assert vectors.device.type == "cuda" and vectors.dtype == torch.float32
    full = require_image_encoder(torch_components)(images)
    error = float((vectors.cpu() - full).abs().mean() / full.abs().mean())
    print(f"CUDA fp16 (low_vram={low_vram}) vs CPU fp32 image encoder: {error:.4f}")
    assert error < 0.01
    assert encoder.park == low_vram
    assert {p.device.type for p in encoder.tower().parameters()} == {"cpu" if low_vram else "cuda"}


# --- no vision tower: None and the reason -------------------------------------------------------


def _without(tiny_model: Path, tmp_path: Path, drop_vision: bool, drop_config: bool) -> Path:
    model = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    folder = model / "text_encoder"
    if drop_vision:
        from safetensors.torch import save_file

        tensors = read_tensors(folder / "model.safetensors")
        save_file(
            {k: v for k, v in tensors.items() if not k.startswith("vision_model.")},
            folder / "model.safetensors",
        )
    if drop_config:
        (folder / "preprocessor_config.json").unlink()
    return model


def test_a_text_encoder_without_a_vision_tower_gives_none_and_why(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = _without(tiny_model, tmp_path, drop_vision=True, drop_config=False)
    components = load_torch(str(model))
    assert components.image_encoder is None
    reason = components.info["image_encoder_unavailable"]
    assert "holds no vision tower" in reason and "\n" not in reason
    with pytest.raises(
        UsageError, match=r"image prompts cannot be used: the text encoder .* holds no vision tower"
    ):
        require_image_encoder(components)
    assert components.text_encoder(["a cat"]).shape == (1, 1152)  # text-to-image untouched


def test_a_vision_tower_without_its_preprocessor_config_is_unavailable(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = _without(tiny_model, tmp_path, drop_vision=False, drop_config=True)
    files, reason = image_encoder_or_reason(text_files(model), 1152)
    assert files is None and reason is not None and "has no preprocessor_config.json" in reason


def test_a_vision_tower_of_another_width_is_unavailable(tiny_model: Path) -> None:
    files, reason = image_encoder_or_reason(text_files(tiny_model), 768)
    assert files is None and "gives 1152-wide vectors but the text encoder's are 768 wide" in str(
        reason
    )


def test_a_preprocessor_size_off_the_patch_grid_is_refused(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = _without(tiny_model, tmp_path, drop_vision=False, drop_config=False)
    path = model / "text_encoder" / "preprocessor_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "size": {"height": 48, "width": 48}}))
    files, reason = image_encoder_or_reason(text_files(model), 1152)
    assert (
        files is None
        and "resizes images to 48x48 px" in str(reason)
        and "4 x 4 patches" in str(reason)
    )


# tests/test_tensorrt.py's fixtures: a fake TensorRT, this machine as it sees it, an engine cache
# in tmp_path and an export with stand-in graphs
fake_trt, here = test_tensorrt.fake_trt, test_tensorrt.here
engine_dir, exported = test_tensorrt.engine_dir, test_tensorrt.exported


# --- ONNX Runtime: the exported image_encoder graph ----------------------------------------------


@pytest.fixture(scope="module")
def onnx_components(exported_tiny_fp32: Path) -> Components:
    pytest.importorskip("onnxruntime")
    from sdxs_rt.backends.onnx import load_components as load_onnx

    return load_onnx(str(exported_tiny_fp32))


def test_the_exported_graph_and_its_manifest(exported_tiny_fp32: Path, tiny_model: Path) -> None:
    manifest = json.loads((exported_tiny_fp32 / "manifest.json").read_text())
    entry = manifest["graphs"]["image_encoder"]
    inputs = [(t["name"], t["shape"]) for t in entry["inputs"]]
    outputs = [(t["name"], t["shape"]) for t in entry["outputs"]]
    assert inputs == [("pixel_values", ["batch", 3, 36, 36])]
    assert outputs == [("image_embeds", ["batch", 1152])]
    assert entry["parity"]["rel"] <= 1e-4  # the export's own gate, as for the other graphs
    path = tiny_model / "text_encoder" / "preprocessor_config.json"
    stated = preprocessor_from_config(json.loads(path.read_text()), str(path))
    assert preprocessor_from_config(manifest["image_preprocessor"], "manifest") == stated


def test_onnx_matches_torch(torch_components: Components, onnx_components: Components) -> None:
    encoder: Any = require_image_encoder(onnx_components)
    assert not encoder.opened  # the session waits for the first image prompt
    images = images_of_every_kind()
    ours = encoder(images)
    assert encoder.opened and isinstance(ours, np.ndarray) and ours.dtype == np.float32
    reference = require_image_encoder(torch_components)(images).numpy()
    difference = float(np.abs(ours - reference).max())
    print(f"ONNX Runtime fp32 vs torch image encoder: max abs {difference:.3g}")
    assert difference <= ONNX_VS_TORCH * float(np.abs(reference).max())
    assert encoder([]).shape == (0, 1152) and encoder.size == (36, 36)


def test_onnx_fp16_is_close_to_torch(
    exported_tiny_fp16: Path, torch_components: Components
) -> None:
    from sdxs_rt.backends.onnx import load_components as load_onnx

    images = images_of_every_kind()[:2]
    half = require_image_encoder(load_onnx(str(exported_tiny_fp16)))(images)
    full = require_image_encoder(torch_components)(images).numpy()
    error = float(np.abs(half - full).mean() / np.abs(full).mean())
    print(f"ONNX Runtime fp16 vs torch fp32 image encoder: mean abs / mean magnitude {error:.4f}")
    assert half.dtype == np.float32 and error < 0.01


def test_an_older_export_without_the_graph_loads_without_image_prompts(
    exported_tiny_fp32: Path, tmp_path: Path
) -> None:
    from sdxs_rt.backends.onnx import load_components as load_onnx

    folder = Path(shutil.copytree(exported_tiny_fp32, tmp_path / "exported"))
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["graphs"]["image_encoder"], manifest["image_preprocessor"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    components = load_onnx(str(folder))
    assert components.image_encoder is None
    with pytest.raises(UsageError, match=r"lists no image_encoder graph .*export the model again"):
        require_image_encoder(components)
    shutil.rmtree(folder / "image_encoder")  # and a listed graph whose file is gone
    manifest = json.loads((exported_tiny_fp32 / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest))
    reason = load_onnx(str(folder)).info["image_encoder_unavailable"]
    assert "image_encoder/model.onnx is missing" in reason


def test_an_export_from_a_text_encoder_without_a_vision_tower_says_why(
    tiny_model: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnx")
    from sdxs_rt_export.onnx_export import export_source

    model = _without(tiny_model, tmp_path, drop_vision=True, drop_config=True)
    source, reason = export_source(resolve_model(str(model)), None, False)
    assert source.image_encoder is None and "holds no vision tower" in str(reason)


# --- TensorRT: the wrapper over a numeric stand-in (no TensorRT here), the loader's reason --------


class MeanEngine:
    """Stands in for an fp16 image_encoder engine: each image's channel means, tiled to 1152,
    computed in float16 as such an engine returns them."""

    def __init__(self) -> None:
        self.opened = 0
        self.feeds: list[dict[str, Any]] = []

    def open(self) -> MeanEngine:
        self.opened += 1
        return self

    def __call__(self, feeds: dict[str, Any]) -> dict[str, Any]:
        self.feeds.append(feeds)
        means = feeds["pixel_values"].half().mean(dim=(2, 3))
        return {"image_embeds": means.repeat(1, 384)}


def test_trt_encoder_feeds_pixel_values_and_returns_float32_image_embeds() -> None:
    from sdxs_rt.backends.tensorrt.wrappers import DeferredEngine, TrtImageEncoder

    stand_in = MeanEngine()
    preprocessor = ImagePreprocessor(36, 36)
    encoder = TrtImageEncoder(DeferredEngine(stand_in.open), preprocessor, 1152, "/m")  # type: ignore[arg-type]
    assert stand_in.opened == 0  # loading costs no engine memory
    images = images_of_every_kind()[:2]
    vectors = encoder(images)
    assert stand_in.opened == 1 and list(stand_in.feeds[0]) == ["pixel_values"]
    assert tuple(stand_in.feeds[0]["pixel_values"].shape) == (2, 3, 36, 36)
    assert vectors.dtype == torch.float32 and vectors.shape == (2, 1152)
    expected = torch.from_numpy(preprocessor(images)).mean(dim=(2, 3)).repeat(1, 384)
    torch.testing.assert_close(vectors, expected, atol=2e-3, rtol=0)  # fp16 rounding
    assert encoder([]).shape == (0, 1152) and stand_in.opened == 1


def test_trt_encoder_refuses_an_overflow_and_a_foreign_shape() -> None:
    from sdxs_rt.backends.tensorrt.wrappers import TrtImageEncoder
    from sdxs_rt.errors import EngineError

    preprocessor = ImagePreprocessor(36, 36)
    encoder = TrtImageEncoder(MeanEngine(), preprocessor, 1152, "/m")  # type: ignore[arg-type]
    with pytest.raises(EngineError, match="--model /m --precision fp32"):
        encoder(np.full((1, 3, 36, 36), 1e5, np.float32))  # beyond float16: inf
    narrow = TrtImageEncoder(MeanEngine(), preprocessor, 768)  # type: ignore[arg-type]
    with pytest.raises(EngineError, match=r"shape \(1, 1152\), not \(1, 768\)"):
        narrow(images_of_every_kind()[:1])


def test_trt_build_makes_the_image_encoder_engine_and_loads_it_lazily(
    fake_trt: Any, exported: Path, engine_dir: Path, here: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five engines from a full export; the loaded encoder's vectors are MeanEngine's (the fake
    engine computes the same channel means, at TEXT_WIDTH and in float32)."""
    from sdxs_rt.backends.tensorrt import builder, load_components
    from sdxs_rt.pipeline import Pipeline
    from tests.fake_tensorrt import IMAGE_SIZE, SMALL, TEXT_WIDTH, read_engine

    paths = builder.build_engines(exported, SMALL)
    graphs = [read_engine(path)["graph"] for path in paths]
    assert graphs == ["text_encoder", "unet", "vae_decoder", "vae_encoder", "image_encoder"]
    test_tensorrt.load_on_cpu(monkeypatch, here)
    components = load_components(str(exported), device="cuda", precision="fp16")
    encoder: Any = require_image_encoder(components)
    assert "image_encoder_unavailable" not in components.info
    assert components.info["engines"]["image_encoder"] == str(paths[4])
    assert encoder.engine.engine is None  # chosen at load, opened on the first image prompt
    assert encoder.size == IMAGE_SIZE and encoder.width == TEXT_WIDTH
    images = images_of_every_kind()[:2]
    vectors = encoder(images)
    assert encoder.engine.engine is not None
    assert vectors.dtype == torch.float32 and vectors.shape == (2, TEXT_WIDTH)
    pixels = torch.from_numpy(ImagePreprocessor(*IMAGE_SIZE)(images))
    stand_in = MeanEngine()({"pixel_values": pixels})["image_embeds"][:, :TEXT_WIDTH].float()
    torch.testing.assert_close(vectors, stand_in, atol=2e-3, rtol=0)  # MeanEngine is fp16
    assert encoder([]).shape == (0, TEXT_WIDTH)
    # the pipeline blends an image prompt through it (one image per call: batch 1)
    pipeline = Pipeline.from_pretrained(str(exported), backend="tensorrt", dtype="fp16")
    prompt_encoder: Any = pipeline.components.image_encoder
    result = pipeline("a cat", image_prompts=[(images[0], 1.0)], width=64, height=64,
                      num_inference_steps=2, seed=1)  # fmt: skip
    assert result.images[0].size == (64, 64)
    assert prompt_encoder.engine.engine.context.shapes["pixel_values"] == (1, 3, *IMAGE_SIZE)


def _spoil_image_encoder(folder: Path, how: str) -> str:
    """Take the image encoder from a stand-in export; what the build's note then says."""
    from sdxs_rt.graphs import read_manifest, write_manifest

    manifest = read_manifest(folder)
    if how == "no vision tower":  # what 'export onnx' writes then: no graph, no preprocessor
        del manifest.graphs["image_encoder"]
        manifest.image_preprocessor = {}
        shutil.rmtree(folder / "image_encoder")
        why = (
            f"{folder / 'manifest.json'} lists no image_encoder graph (an older export, or a "
            "text encoder without a vision tower)"
        )
    elif how == "file missing":
        shutil.rmtree(folder / "image_encoder")
        why = f"{folder / 'image_encoder' / 'model.onnx'} is missing"
    elif how == "no preprocessor":
        manifest.image_preprocessor = {}
        why = (
            f"{folder / 'manifest.json'} has no image_preprocessor for its image_encoder graph "
            "(the image size its engine takes)"
        )
    else:  # the graph's recorded input disagrees with the preprocessor's size
        manifest.graphs["image_encoder"].inputs = [
            {"name": "pixel_values", "dtype": "float", "shape": ["batch", 3, 48, 48]}
        ]
        why = (
            f"{folder / 'image_encoder' / 'model.onnx'} takes [48, 48] images but the "
            f"image_preprocessor of {folder / 'manifest.json'} prepares them at [36, 36]"
        )
    write_manifest(folder, manifest)
    return why


@pytest.mark.parametrize("how", ["no vision tower", "file missing", "no preprocessor", "size"])
def test_trt_without_the_graph_builds_four_engines_and_loads_none_and_why(
    fake_trt: Any,
    exported: Path,
    engine_dir: Path,
    here: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    how: str,
) -> None:
    from sdxs_rt.backends.tensorrt import builder, load_components
    from sdxs_rt.graphs import read_manifest

    why = _spoil_image_encoder(exported, how)
    four = (*builder.RUNTIME_GRAPHS, "vae_encoder")
    assert builder.engine_graphs(exported) == four
    build = test_tensorrt.engine_cli("engine", "build", "--model", str(exported),
                                     "--min-size", "64", "--max-size", "128")  # fmt: skip
    assert test_tensorrt.commands.run(build) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 4 and sorted(read_manifest(exported).engines) == sorted(four)
    [note] = [line for line in err.splitlines() if "not built" in line]  # one line, this one
    assert note == (
        f"image_encoder: not built: {why}, so image prompts will be unavailable on TensorRT; "
        "export the model again with 'sdxs-rt export onnx' (its text encoder needs a vision "
        "tower) and build again"
    )
    test_tensorrt.load_on_cpu(monkeypatch, here)
    components = load_components(str(exported), device="cuda", precision="fp16")
    assert components.image_encoder is None and components.vae_encoder is not None
    reason = components.info["image_encoder_unavailable"]
    assert "\n" not in reason and "export the model again with 'sdxs-rt export onnx'" in reason
    if how == "no vision tower":
        assert reason.startswith(
            f"{exported / 'manifest.json'} lists no image_encoder graph (an export made before "
            "it existed, or from a text encoder without a vision tower)"
        )
    else:
        assert reason.startswith(f"{why}, so 'sdxs-rt engine build' builds no image_encoder")
    assert sorted(components.info["engines"]) == sorted(four)
    with pytest.raises(UsageError, match=r"^image prompts cannot be used: /"):
        require_image_encoder(components)
