"""Torch backend: weight loading, cross-attention folding, U-Net and VAE wrappers, TorchOps.

Small SDXS-shaped diffusers models are built here with a fixed seed and saved the diffusers way
(config.json + safetensors), so the loaders run exactly as on a real checkpoint.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdxs_rt.array_ops import NumpyOps
from sdxs_rt.latents import unscale_latents

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import AutoencoderKL, ConfigMixin, ModelMixin, UNet2DConditionModel  # noqa: E402
from diffusers.configuration_utils import register_to_config  # noqa: E402
from diffusers.models.attention import BasicTransformerBlock  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from sdxs_rt.backends.torch.ops import TorchOps, resolve_device, resolve_dtype  # noqa: E402
from sdxs_rt.backends.torch.unet import (  # noqa: E402
    DeferredLayerNorm,
    SingleTokenCrossAttnProcessor,
    TorchUNet,
    fold_cross_attention,
)
from sdxs_rt.backends.torch.vae import (  # noqa: E402
    TorchVAEDecoder,
    VAEDecodeError,
    latent_scaling_from_config,
)
from sdxs_rt.backends.torch.weights import load_diffusers_module  # noqa: E402
from sdxs_rt.errors import (  # noqa: E402
    DeviceError,
    ModelFormatError,
    ModelNotFoundError,
    OutOfMemoryError,
    UsageError,
)

CONTEXT_DIM = 1152
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
FOLD_TOLERANCE = 1e-4  # acceptance figure: max|folded - unfolded| / max|unfolded|
# Two computations with the same weights and inputs may differ in the last bits: oneDNN picks its
# kernels by memory layout and thread count (one run: 2.7237e-01 against 2.7236e-01). Measured on
# CPU between 1 and 2 threads or channels-last: 2.3e-6 on a U-Net output of scale 1.5, 1.1e-5 on
# a VAE output of scale 6.8. Relative to the output's scale, this bar leaves about 5x room.
FLOAT32_TOLERANCE = 1e-5

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 16,
    "in_channels": 16,
    "out_channels": 16,
    "down_block_types": ["CrossAttnDownBlock2D"] * 4,
    "up_block_types": ["CrossAttnUpBlock2D"] * 4,
    "block_out_channels": [16, 24, 32, 32],
    "layers_per_block": 1,
    "transformer_layers_per_block": [1, 1, 2, 1],
    "attention_head_dim": [1, 2, 2, 4],  # legacy name: the number of heads
    "cross_attention_dim": CONTEXT_DIM,
    "norm_num_groups": 8,
    "use_linear_projection": True,
}

VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 16,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [8, 8, 16, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 64,
    "scaling_factor": 1.5,
    "shift_factor": 0.1,
}


def _perturb_zero_parameters(model: torch.nn.Module) -> None:
    # Zero-initialised tensors (biases, some output layers) would hide input dependence.
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def _build_and_save(cls: Any, config: dict[str, Any], folder: Path) -> tuple[Any, Path]:
    torch.manual_seed(0)
    model = cls(**config)
    _perturb_zero_parameters(model)
    model.save_pretrained(folder, safe_serialization=True)
    return model.eval(), folder


@pytest.fixture(scope="module")
def saved_unet(tmp_path_factory: pytest.TempPathFactory) -> tuple[UNet2DConditionModel, Path]:
    return _build_and_save(UNet2DConditionModel, UNET_CONFIG, tmp_path_factory.mktemp("unet"))


@pytest.fixture(scope="module")
def saved_vae(tmp_path_factory: pytest.TempPathFactory) -> tuple[AutoencoderKL, Path]:
    return _build_and_save(AutoencoderKL, VAE_CONFIG, tmp_path_factory.mktemp("vae"))


@pytest.fixture(scope="module")
def unet_folder(saved_unet: tuple[UNet2DConditionModel, Path]) -> Path:
    return saved_unet[1]


@pytest.fixture(scope="module")
def vae_folder(saved_vae: tuple[AutoencoderKL, Path]) -> Path:
    return saved_vae[1]


def _config(folder: Path) -> dict[str, Any]:
    import json

    return json.loads((folder / "config.json").read_text())


def _load_unet(folder: Path, dtype: torch.dtype = torch.float32, fold: bool = True) -> TorchUNet:
    return TorchUNet.load(folder, folder / WEIGHTS_NAME, "cpu", dtype, fold=fold)


def _load_vae(folder: Path, dtype: torch.dtype = torch.float32, **kw: Any) -> TorchVAEDecoder:
    return TorchVAEDecoder.load(folder, folder / WEIGHTS_NAME, "cpu", dtype, **kw)


def _inputs(batch: int, height: int, width: int, tokens: int = 1, seed: int = 0) -> tuple:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 16, height, width, generator=generator)
    context = torch.randn(batch, tokens, CONTEXT_DIM, generator=generator)
    return sample, context


def _relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _assert_float32_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """The same result from a separate computation: equal up to the kernels' rounding."""
    atol = FLOAT32_TOLERANCE * max(float(expected.abs().max()), 1.0)
    torch.testing.assert_close(actual, expected, rtol=FLOAT32_TOLERANCE, atol=atol)


def _assert_same_weights(actual: torch.nn.Module, expected: torch.nn.Module) -> None:
    """Loading copies tensors, so the weights themselves must match bit for bit."""
    loaded, saved = actual.state_dict(), expected.state_dict()
    assert loaded.keys() == saved.keys()
    assert [k for k in saved if not torch.equal(loaded[k], saved[k])] == []


# --- weights.py -------------------------------------------------------------------------------


def test_loaded_unet_equals_the_saved_module(saved_unet: tuple) -> None:
    original, unet_folder = saved_unet
    loaded = load_diffusers_module(
        UNet2DConditionModel, _config(unet_folder), unet_folder / WEIGHTS_NAME, "cpu", torch.float32
    )
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    _assert_same_weights(loaded, original)
    sample, context = _inputs(2, 16, 16)
    with torch.no_grad():
        expected = original(sample, 500.0, context).sample
        actual = loaded(sample, 500.0, context).sample
    _assert_float32_close(actual, expected)


def test_loaded_vae_equals_the_saved_module(saved_vae: tuple) -> None:
    original, vae_folder = saved_vae
    loaded = load_diffusers_module(
        AutoencoderKL, _config(vae_folder), vae_folder / WEIGHTS_NAME, "cpu", torch.float32
    )
    _assert_same_weights(loaded, original)
    latents = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        _assert_float32_close(loaded.decode(latents).sample, original.decode(latents).sample)


def _damaged_copy(folder: Path, tmp_path: Path, edit: Any) -> Path:
    state = load_file(folder / WEIGHTS_NAME)
    edit(state)
    path = tmp_path / "damaged.safetensors"
    save_file(state, path)
    return path


def test_missing_and_unexpected_keys_are_named(vae_folder: Path, tmp_path: Path) -> None:
    def edit(state: dict) -> None:
        del state["decoder.conv_in.weight"], state["decoder.conv_in.bias"]
        state["decoder.extra.weight"] = torch.zeros(1)

    path = _damaged_copy(vae_folder, tmp_path, edit)
    with pytest.raises(ModelFormatError) as info:
        load_diffusers_module(AutoencoderKL, _config(vae_folder), path, "cpu", torch.float32)
    message = str(info.value)
    assert "damaged.safetensors" in message
    assert "2 keys missing" in message and "decoder.conv_in.bias" in message
    assert "1 unexpected keys" in message and "decoder.extra.weight" in message


def test_shape_mismatch_is_named(vae_folder: Path, tmp_path: Path) -> None:
    def edit(state: dict) -> None:
        state["decoder.conv_in.bias"] = torch.zeros(3)

    path = _damaged_copy(vae_folder, tmp_path, edit)
    with pytest.raises(ModelFormatError, match=r"1 tensors with the wrong shape.*conv_in\.bias"):
        load_diffusers_module(AutoencoderKL, _config(vae_folder), path, "cpu", torch.float32)


def test_wrong_class_missing_file_and_not_safetensors(vae_folder: Path, tmp_path: Path) -> None:
    weights = vae_folder / WEIGHTS_NAME
    with pytest.raises(ModelFormatError, match="describes a AutoencoderKL"):
        load_diffusers_module(
            UNet2DConditionModel, _config(vae_folder), weights, "cpu", torch.float32
        )
    with pytest.raises(ModelNotFoundError, match=r"nothing\.safetensors"):
        load_diffusers_module(
            AutoencoderKL,
            _config(vae_folder),
            tmp_path / "nothing.safetensors",
            "cpu",
            torch.float32,
        )
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelFormatError, match=r"junk\.safetensors"):
        load_diffusers_module(AutoencoderKL, _config(vae_folder), junk, "cpu", torch.float32)


class _ModelWithTable(ModelMixin, ConfigMixin):
    """A model with a non-persistent buffer: nothing in the weights file can fill it."""

    @register_to_config
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(width, width)
        self.register_buffer("table", torch.arange(float(width)), persistent=False)


def test_tensors_left_on_the_meta_device_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "table.safetensors"
    save_file(_ModelWithTable().state_dict(), path)
    config = {"_class_name": "_ModelWithTable", "width": 4}
    with pytest.raises(ModelFormatError, match=r"1 tensors .* have no values \(e\.g\. 'table'\)"):
        load_diffusers_module(_ModelWithTable, config, path, "cpu", torch.float32)


# --- unet.py: folding single-token cross-attention --------------------------------------------


def _count_cross_attention_blocks(unet: torch.nn.Module) -> int:
    return sum(isinstance(m, BasicTransformerBlock) and m.attn2 is not None for m in unet.modules())


@pytest.fixture(scope="module")
def unets(unet_folder: Path) -> tuple[TorchUNet, TorchUNet]:
    """(folded, unfolded), loaded from the same files."""
    return _load_unet(unet_folder, fold=True), _load_unet(unet_folder, fold=False)


@pytest.mark.parametrize(("height", "width"), [(16, 16), (24, 40)])
def test_folded_unet_matches_unfolded(
    unets: tuple[TorchUNet, TorchUNet], height: int, width: int
) -> None:
    folded, unfolded = unets
    # down 1+1+2+1, mid 1, up (1+2+1+1) x 2 layers: every transformer layer of this config
    assert folded.folded_blocks == _count_cross_attention_blocks(folded.unet) == 16
    assert all(
        isinstance(m.norm2, DeferredLayerNorm)
        for m in folded.unet.modules()
        if isinstance(m, BasicTransformerBlock)
    )
    sample, context = _inputs(2, height, width, seed=height)  # two different contexts
    expected = unfolded(sample, 421.0, context)
    actual = folded(sample, 421.0, context)
    difference = _relative_difference(actual, expected)
    size = f"{height}x{width}"
    print(f"folded vs unfolded U-Net at {size}, batch 2: relative difference {difference:.2e}")
    assert difference <= FOLD_TOLERANCE
    assert actual.dtype == torch.float32 and actual.shape == sample.shape


def test_state_dict_keys_survive_folding(unets: tuple[TorchUNet, TorchUNet]) -> None:
    folded, unfolded = unets
    assert folded.unet.state_dict().keys() == unfolded.unet.state_dict().keys()


@pytest.fixture
def no_folded_path(monkeypatch: Any) -> None:
    """The folded maths differs from the standard path only by rounding: make it fail loudly."""

    def refuse(*args: Any) -> None:
        raise AssertionError("the folded single-token path ran")

    monkeypatch.setattr("sdxs_rt.backends.torch.unet._value_path", refuse)


@pytest.mark.usefixtures("no_folded_path")
def test_two_token_context_takes_the_standard_path(unets: tuple[TorchUNet, TorchUNet]) -> None:
    folded, unfolded = unets
    sample, context = _inputs(2, 16, 16, tokens=2)
    hits = _total_hits(folded)
    _assert_float32_close(folded(sample, 10.0, context), unfolded(sample, 10.0, context))
    assert _total_hits(folded) == hits  # no cached context vector was served either


@pytest.mark.usefixtures("no_folded_path")
def test_attention_mask_takes_the_standard_path(unets: tuple[TorchUNet, TorchUNet]) -> None:
    folded, unfolded = unets
    sample, context = _inputs(2, 16, 16)
    mask = torch.ones(2, 1)
    hits = _total_hits(folded)
    with torch.inference_mode():
        actual = folded.unet(sample, 10.0, context, encoder_attention_mask=mask).sample
        expected = unfolded.unet(sample, 10.0, context, encoder_attention_mask=mask).sample
    _assert_float32_close(actual, expected)
    assert _total_hits(folded) == hits


def _processors(unet: TorchUNet) -> list[SingleTokenCrossAttnProcessor]:
    procs = [p for p in unet.unet.attn_processors.values()]
    return [p for p in procs if isinstance(p, SingleTokenCrossAttnProcessor)]


def _total_hits(unet: TorchUNet) -> int:
    return sum(p.cache.hits for p in _processors(unet))


def test_context_vector_is_cached_and_never_stale(unets: tuple[TorchUNet, TorchUNet]) -> None:
    folded, unfolded = unets
    sample, context = _inputs(2, 16, 16, seed=7)
    first = folded(sample, 300.0, context)
    hits = _total_hits(folded)
    _assert_float32_close(folded(sample, 300.0, context), first)
    assert _total_hits(folded) == hits + folded.folded_blocks  # every block reused its vector

    context.mul_(-0.5)  # in place: same object, new version
    hits = _total_hits(folded)
    changed = folded(sample, 300.0, context)
    assert _total_hits(folded) == hits  # recomputed, not served stale
    assert _relative_difference(changed, unfolded(sample, 300.0, context)) <= FOLD_TOLERANCE
    assert not torch.allclose(changed, first)


def test_inference_tensor_context_is_never_cached(unets: tuple[TorchUNet, TorchUNet]) -> None:
    folded, unfolded = unets
    sample, context = _inputs(1, 16, 16, seed=8)
    with torch.inference_mode():
        context = context.clone()  # inference tensors have no version counter
    hits = _total_hits(folded)
    first = folded(sample, 50.0, context)
    with torch.inference_mode():
        context.add_(1.0)
    second = folded(sample, 50.0, context)
    assert _total_hits(folded) == hits
    assert _relative_difference(second, unfolded(sample, 50.0, context)) <= FOLD_TOLERANCE
    assert not torch.allclose(first, second)


def test_nothing_is_cached_while_compiling(
    unets: tuple[TorchUNet, TorchUNet], monkeypatch: Any
) -> None:
    folded = unets[0]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    sample, context = _inputs(1, 16, 16, seed=10)
    hits = _total_hits(folded)
    folded(sample, 5.0, context)
    folded(sample, 5.0, context)
    assert _total_hits(folded) == hits


def test_changed_weights_invalidate_the_cache(unet_folder: Path) -> None:
    folded, unfolded = _load_unet(unet_folder), _load_unet(unet_folder, fold=False)
    sample, context = _inputs(1, 16, 16, seed=9)
    folded(sample, 50.0, context)
    for unet in (folded, unfolded):
        with torch.no_grad():
            for name, param in unet.unet.named_parameters():
                if "attn2.to_v" in name:
                    param.mul_(1.5)
    actual, expected = folded(sample, 50.0, context), unfolded(sample, 50.0, context)
    assert _relative_difference(actual, expected) <= FOLD_TOLERANCE


def _block(**options: Any) -> BasicTransformerBlock:
    torch.manual_seed(3)
    block = BasicTransformerBlock(dim=32, num_attention_heads=2, attention_head_dim=16, **options)
    _perturb_zero_parameters(block)
    return block.eval()


def _block_outputs(block: torch.nn.Module, context: torch.Tensor | None) -> torch.Tensor:
    hidden = torch.randn(2, 12, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return block(hidden, encoder_hidden_states=context)


def test_only_cross_attention_block_is_folded() -> None:
    block = _block(cross_attention_dim=CONTEXT_DIM, only_cross_attention=True)
    context = torch.randn(2, 1, CONTEXT_DIM)
    expected = _block_outputs(block, context)
    assert fold_cross_attention(block) == 1
    assert _relative_difference(_block_outputs(block, context), expected) <= FOLD_TOLERANCE


def test_double_self_attention_block_is_not_folded() -> None:
    block = _block(double_self_attention=True)
    assert block.attn2 is not None and not block.attn2.is_cross_attention
    assert fold_cross_attention(block) == 0
    assert type(block.norm2) is torch.nn.LayerNorm


def test_residual_connection_and_rescale_are_respected() -> None:
    block = _block(cross_attention_dim=CONTEXT_DIM)
    block.attn2.residual_connection = True
    block.attn2.rescale_output_factor = 2.0
    context = torch.randn(2, 1, CONTEXT_DIM)
    expected = _block_outputs(block, context)
    assert fold_cross_attention(block) == 1
    assert type(block.norm2) is torch.nn.LayerNorm  # the residual needs the normed query
    assert _relative_difference(_block_outputs(block, context), expected) <= FOLD_TOLERANCE


def test_folding_twice_is_harmless() -> None:
    block = _block(cross_attention_dim=CONTEXT_DIM)
    context = torch.randn(2, 3, CONTEXT_DIM)
    expected = _block_outputs(block, context)
    assert fold_cross_attention(block) == fold_cross_attention(block) == 1
    assert not isinstance(block.attn2.processor.fallback, SingleTokenCrossAttnProcessor)
    _assert_float32_close(_block_outputs(block, context), expected)


@pytest.mark.parametrize(("dtype", "tolerance"), [(torch.float16, 2e-2), (torch.bfloat16, 6e-2)])
def test_half_precision_on_cpu_is_close_to_fp32(
    unet_folder: Path, unets: tuple[TorchUNet, TorchUNet], dtype: torch.dtype, tolerance: float
) -> None:
    half = _load_unet(unet_folder, dtype)
    sample, context = _inputs(2, 16, 16, seed=5)
    actual = half(sample, 700.0, context)
    assert actual.dtype == torch.float32
    difference = _relative_difference(actual, unets[1](sample, 700.0, context))
    print(f"{dtype} U-Net vs fp32: relative difference {difference:.2e}")
    assert difference <= tolerance


# --- vae.py -----------------------------------------------------------------------------------


def _latents(batch: int = 1, height: int = 8, width: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 16, height, width, generator=torch.Generator().manual_seed(seed))


def test_scaling_and_shift_match_the_model_card(vae_folder: Path) -> None:
    config = _config(vae_folder)
    scaling = latent_scaling_from_config(config, 16)
    latents = _latents(2)
    card = latents / config["scaling_factor"] + config["shift_factor"]  # decode_latents()
    assert torch.allclose(unscale_latents(latents, scaling, TorchOps("cpu")), card, atol=1e-6)
    on_numpy = unscale_latents(latents.numpy(), scaling, NumpyOps())
    np.testing.assert_allclose(on_numpy, card.numpy(), atol=1e-6)

    decoder = _load_vae(vae_folder)
    images = decoder(unscale_latents(latents, scaling, TorchOps("cpu")))
    with torch.no_grad():
        expected = decoder.vae.decode(card).sample
    assert torch.allclose(images, expected, atol=1e-5)
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32


def test_per_channel_mean_and_std_follow_diffusers() -> None:
    mean = [0.01 * c for c in range(16)]
    std = [1.0 + 0.1 * c for c in range(16)]
    config = {"scaling_factor": 0.5, "shift_factor": None, "latents_mean": mean, "latents_std": std}
    scaling = latent_scaling_from_config(config, 16)
    latents = _latents(2)
    view = (1, 16, 1, 1)
    expected = latents * torch.tensor(std).view(view) / 0.5 + torch.tensor(mean).view(view)
    assert torch.allclose(unscale_latents(latents, scaling, TorchOps("cpu")), expected, atol=1e-6)
    on_numpy = unscale_latents(latents.numpy(), scaling, NumpyOps())
    np.testing.assert_allclose(on_numpy, expected.numpy(), atol=1e-6)


@pytest.mark.parametrize(
    "config",
    [
        {"scaling_factor": 1.0, "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4},
        {"scaling_factor": 1.0, "latents_mean": [0.0] * 16},
        {"scaling_factor": 0.0},
    ],
)
def test_unsupported_latent_scalings_are_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ModelFormatError):
        latent_scaling_from_config(config, 16)


def test_with_shift_and_mean_std_the_card_decode_wins() -> None:
    """The card decodes `z / scaling_factor + shift_factor` whatever else the config holds."""
    from sdxs_rt.components import latent_scaling_note

    config = {
        "scaling_factor": 2.0,
        "shift_factor": 0.2,
        "latents_mean": [0.5] * 16,
        "latents_std": [3.0] * 16,
    }
    scaling = latent_scaling_from_config(config, 16)
    latents = _latents()
    card = latents / 2.0 + 0.2
    assert torch.allclose(unscale_latents(latents, scaling, TorchOps("cpu")), card, atol=1e-6)
    assert "follows the model card" in (latent_scaling_note(config) or "")
    assert latent_scaling_note({**config, "latents_mean": None, "latents_std": None}) is None


def test_missing_scaling_factor_takes_the_diffusers_default() -> None:
    assert latent_scaling_from_config({}, 16).scaling_factor == pytest.approx(0.18215)


def _nan_in_half_precision(vae: AutoencoderKL, always: bool = False) -> None:
    """Simulate an fp16 overflow: the decoder's output turns NaN when it runs in half precision."""

    def hook(module: torch.nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if always or output.dtype != torch.float32:
            return torch.full_like(output, float("nan"))
        return output

    vae.decoder.register_forward_hook(hook)


def test_nan_in_fp16_upcasts_to_fp32_once(vae_folder: Path, caplog: Any) -> None:
    decoder = _load_vae(vae_folder, torch.float16)
    reference = torch.nn.Module.to(copy.deepcopy(decoder.vae), torch.float32)
    _nan_in_half_precision(decoder.vae)
    latents = _latents()
    images = decoder(latents)
    assert decoder.upcast and decoder.dtype == torch.float32
    assert "float32" in caplog.text
    with torch.no_grad():
        _assert_float32_close(images, reference.decode(latents).sample)
    caplog.clear()
    assert torch.isfinite(decoder(latents)).all() and "NaN" not in caplog.text  # upcast stays


def test_nan_even_in_fp32_is_a_clear_error(vae_folder: Path) -> None:
    decoder = _load_vae(vae_folder, torch.bfloat16)
    _nan_in_half_precision(decoder.vae, always=True)
    with pytest.raises(VAEDecodeError, match="even in float32"):
        decoder(_latents())


def _small_tiles(decoder: TorchVAEDecoder) -> TorchVAEDecoder:
    # 8x12 latents against 4x4 latent tiles: several overlapping tiles in both directions,
    # so a tiled decode cannot pass for a full one
    decoder.vae.tile_latent_min_size = 4
    decoder.vae.tile_sample_min_size = 32
    return decoder


def test_forced_tiled_decode_is_close_to_full_decode(vae_folder: Path) -> None:
    latents, other = _latents(2, 24, 20), _latents(2, 24, 20, seed=1)
    full_decoder = _load_vae(vae_folder)
    full, decoded_other = full_decoder(latents), full_decoder(other)
    tiled_decoder = _load_vae(vae_folder, tiled=True)
    tiled_decoder.vae.tile_latent_min_size = 16  # 2x2 overlapping tiles per image
    tiled_decoder.vae.tile_sample_min_size = 128
    tiled = tiled_decoder(latents)
    assert tiled_decoder.used_tiling and tiled.shape == full.shape
    # exactly diffusers' tiled decode (enable_tiling), one image at a time
    tiled_decoder.vae.enable_tiling()
    with torch.no_grad():
        _assert_float32_close(tiled[1:], tiled_decoder.vae.decode(latents[1:]).sample)
    # A random-weight VAE is far more sensitive to tiling than a trained one (GroupNorm
    # statistics and the mid-block attention see one tile), so "close" is relative here.
    tiling_error = float((tiled - full).abs().mean())
    scale = float((decoded_other - full).abs().mean())
    print(f"tiled vs full VAE decode: mean abs difference {tiling_error:.3f} (vs {scale:.3f})")
    assert tiling_error < 0.4 * scale


def _raise_oom(*args: Any, **kwargs: Any) -> None:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_out_of_memory_falls_back_to_tiles(vae_folder: Path, monkeypatch: Any) -> None:
    latents = _latents(1, 8, 12)
    expected = _small_tiles(_load_vae(vae_folder, tiled=True))(latents)
    decoder = _small_tiles(_load_vae(vae_folder))
    monkeypatch.setattr(decoder.vae, "decode", _raise_oom)
    _assert_float32_close(decoder(latents), expected)
    assert decoder.used_tiling


def test_out_of_memory_message_from_other_allocators_is_recognised(
    vae_folder: Path, monkeypatch: Any
) -> None:
    def mps_oom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("MPS backend out of memory (MPS allocated: 1.2 GB)")

    decoder = _load_vae(vae_folder)
    monkeypatch.setattr(decoder.vae, "decode", mps_oom)
    assert decoder(_latents()).shape == (1, 3, 64, 64) and decoder.used_tiling


def test_out_of_memory_everywhere_is_a_clear_error(vae_folder: Path, monkeypatch: Any) -> None:
    decoder = _load_vae(vae_folder)
    monkeypatch.setattr(decoder.vae, "decode", _raise_oom)
    monkeypatch.setattr(decoder.vae, "tiled_decode", _raise_oom)
    with pytest.raises(OutOfMemoryError, match="even tile by tile"):
        decoder(_latents())
    decoder.tiled = False
    with pytest.raises(OutOfMemoryError, match="tiled decoding is turned off"):
        decoder(_latents())


def test_other_runtime_errors_are_not_swallowed(vae_folder: Path, monkeypatch: Any) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    decoder = _load_vae(vae_folder)
    monkeypatch.setattr(decoder.vae, "decode", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        decoder(_latents())


# --- ops.py -----------------------------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_cuda_is_a_device_error(name: str) -> None:
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device(name)


def test_device_names() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device("tpu")
    if not torch.backends.mps.is_available():
        with pytest.raises(DeviceError, match="MPS"):
            resolve_device("mps")


def test_precision_names(caplog: Any) -> None:
    assert resolve_dtype("fp32") == torch.float32
    assert resolve_dtype("bf16") == torch.bfloat16
    assert resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    assert "slow" in caplog.text
    with pytest.raises(UsageError, match="fp32, fp16 or bf16"):
        resolve_dtype("int8")


def test_torch_ops_roundtrip() -> None:
    ops = TorchOps("cpu")
    host = np.arange(24, dtype=np.float64).reshape(2, 3, 2, 2)
    host.flags.writeable = False
    tensor = ops.from_host(host)
    assert tensor.dtype == torch.float32 and tensor.device.type == "cpu"
    back = ops.to_host(tensor)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, host)
    back[0] = -1  # a copy, never a view of the tensor
    assert float(tensor[0].min()) == 0.0
    np.testing.assert_array_equal(
        ops.to_host(ops.concat([tensor, tensor])), np.concatenate([host, host])
    )
    assert float(ops.clip(tensor, 1.0, 5.0).max()) == 5.0
    assert TorchOps("cpu", torch.bfloat16).from_host(host).dtype == torch.bfloat16
