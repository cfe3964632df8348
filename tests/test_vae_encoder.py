"""The VAE encoder (img2img) of every backend: the posterior mean, unscaled, as diffusers gives it.

torch: the decoder's own AutoencoderKL against diffusers' `encode(x).latent_dist.mean`, in each
precision, tiled (low-VRAM mode) and after an out-of-memory. ONNX Runtime: the exported
vae_encoder graph against torch. TensorRT (not installed here): the wrapper over a fake engine
and the loader over the fake `tensorrt` of tests/fake_tensorrt.py. A folder or engine cache
without the encoder loads with `vae_encoder=None` and the reason in `info`.

Measured on the tiny model (random weights, latents of mean magnitude about 0.17):
torch vs diffusers 0 (the same module); ONNX fp32 vs torch max abs about 1e-6; mean abs over
the latents' magnitude: torch fp16 0.002, bf16 0.02, ONNX fp16 0.002; low-VRAM tiles vs the
whole image at 320 px, mean abs 0.03, a fifth of the difference between two images.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import AutoencoderKL  # noqa: E402

from sdxs_rt.array_ops import NumpyOps  # noqa: E402
from sdxs_rt.backends.onnx import load_components as load_onnx  # noqa: E402
from sdxs_rt.backends.tensorrt import builder as builder_module  # noqa: E402
from sdxs_rt.backends.tensorrt.wrappers import DeferredEngine, TrtVAEEncoder  # noqa: E402
from sdxs_rt.backends.torch import load_components as load_torch  # noqa: E402
from sdxs_rt.backends.torch.low_vram import LOW_VRAM_TILE_SIZE  # noqa: E402
from sdxs_rt.backends.torch.vae import TorchVAEEncoder, VAEEncodeError  # noqa: E402
from sdxs_rt.components import Components, LatentScaling  # noqa: E402
from sdxs_rt.errors import EngineError, OutOfMemoryError, UsageError  # noqa: E402
from sdxs_rt.graphs import MANIFEST_NAME  # noqa: E402
from sdxs_rt.pipeline import scale_latents, unscale_latents  # noqa: E402
from tests import test_tensorrt  # noqa: E402
from tests.fake_tensorrt import SMALL  # noqa: E402
from tests.test_tensorrt import FakeStream  # noqa: E402

LATENT_CHANNELS = 16
TORCH_VS_DIFFUSERS = 1e-6  # the same module and ops: only summation order may differ
ONNX_VS_TORCH = 1e-4  # fp32 graph vs eager; measured about 1e-6
# mean abs difference over the latents' mean magnitude, on the CPU; measured 0.003 and 0.02
HALF_VS_FLOAT = {"fp16": 0.01, "bf16": 0.06}
TILES_VS_WHOLE = 0.3  # mean abs over the difference between two images; measured 0.15


def images(batch: int = 2, height: int = 64, width: int = 96, seed: int = 0) -> torch.Tensor:
    """Smooth random images in [-1, 1] (a random-weight VAE on white noise tells little)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, height // 16, width // 16, generator=generator) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear")


def diffusers_mean(model: Path, x: torch.Tensor) -> torch.Tensor:
    """The reference: a fresh AutoencoderKL read by diffusers itself."""
    vae = AutoencoderKL.from_pretrained(model / "vae").eval()
    with torch.no_grad():
        return vae.encode(x).latent_dist.mean


@pytest.fixture(scope="module")
def torch_components(tiny_model: Path) -> Components:
    return load_torch(str(tiny_model))


def encode(components: Components, x: torch.Tensor) -> torch.Tensor:
    assert components.vae_encoder is not None
    return components.vae_encoder(x)


# --- torch ------------------------------------------------------------------------------------


def test_torch_encoder_is_the_diffusers_posterior_mean(
    tiny_model: Path, torch_components: Components
) -> None:
    x = images()
    latents = encode(torch_components, x)
    reference = diffusers_mean(tiny_model, x)
    assert latents.shape == (2, LATENT_CHANNELS, 8, 12) and latents.dtype == torch.float32
    torch.testing.assert_close(latents, reference, atol=TORCH_VS_DIFFUSERS, rtol=0)
    # the mean, not a sample: a draw from the posterior is measurably elsewhere
    vae = AutoencoderKL.from_pretrained(tiny_model / "vae").eval()
    with torch.no_grad():
        sample = vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(0))
    assert float((sample - latents).abs().mean()) > 100 * TORCH_VS_DIFFUSERS
    torch.testing.assert_close(encode(torch_components, x), latents, atol=0, rtol=0)


def test_torch_encoder_shares_the_decoders_weights(torch_components: Components) -> None:
    encoder: Any = torch_components.vae_encoder
    decoder: Any = torch_components.vae_decoder
    assert encoder.vae is decoder.vae  # one AutoencoderKL: no second copy of the weights
    assert "vae_encoder_unavailable" not in torch_components.info


def test_a_batch_encodes_as_its_images_one_by_one(torch_components: Components) -> None:
    x = images(3)
    together = encode(torch_components, x)
    apart = torch.cat([encode(torch_components, item) for item in x.split(1)])
    torch.testing.assert_close(together, apart, atol=1e-5, rtol=0)  # batched kernels


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_encodes_close_to_float32(
    tiny_model: Path, torch_components: Components, precision: str
) -> None:
    x = images()
    full = encode(torch_components, x)
    half = encode(load_torch(str(tiny_model), precision=precision), x)
    assert half.dtype == torch.float32  # the sampler's dtype, whatever the VAE runs in
    error = float((half - full).abs().mean()) / float(full.abs().mean())
    print(f"{precision} vs fp32 VAE encoder: mean abs / mean magnitude {error:.4f}")
    assert error < HALF_VS_FLOAT[precision]


def test_the_images_shape_is_checked_before_the_vae_runs(torch_components: Components) -> None:
    with pytest.raises(UsageError, match="multiples of 8 px, not 60x64"):
        encode(torch_components, torch.zeros(1, 3, 64, 60))
    with pytest.raises(UsageError, match=r"shape \(B, 3, H, W\)"):
        encode(torch_components, torch.zeros(1, 4, 64, 64))


def _nan_in_half_precision(vae: Any, always: bool = False) -> None:
    """Simulate an fp16 overflow: the encoder's output turns NaN in half precision."""

    def hook(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if always or output.dtype != torch.float32:
            return torch.full_like(output, float("nan"))
        return output

    vae.encoder.register_forward_hook(hook)


def test_nan_in_half_precision_upcasts_once_and_matches_float32(tiny_model: Path) -> None:
    components = load_torch(str(tiny_model), precision="fp16")
    encoder: Any = components.vae_encoder
    # the reference: the same fp16-rounded weights, run in float32
    reference = torch.nn.Module.to(copy.deepcopy(encoder.vae), torch.float32)
    _nan_in_half_precision(encoder.vae)
    x = images()
    latents = encoder(x)
    assert encoder.upcast and encoder.dtype == torch.float32
    assert components.vae_decoder.dtype == torch.float32  # type: ignore[attr-defined]  # shared
    with torch.no_grad():
        expected = reference.encode(x).latent_dist.mean
    torch.testing.assert_close(latents, expected, atol=1e-6, rtol=0)


def test_nan_even_in_float32_is_a_clear_error(tiny_model: Path) -> None:
    encoder: Any = load_torch(str(tiny_model)).vae_encoder
    _nan_in_half_precision(encoder.vae, always=True)
    with pytest.raises(VAEEncodeError, match="even in float32"):
        encoder(images())


# --- tiled encoding: low-VRAM mode and the out-of-memory fallback ------------------------------


def test_low_vram_encodes_in_tiles_close_to_the_whole_image(
    tiny_model: Path, torch_components: Components
) -> None:
    low_vram = load_torch(str(tiny_model), low_vram=True)
    parked: Any = low_vram.vae_encoder
    inner: TorchVAEEncoder = parked.encoder
    x, other = images(2, 320, 320), images(2, 320, 320, seed=1)  # 320 px: 2 x 2 tiles of 256
    tiled = parked(x)
    assert inner.used_tiling and inner.vae.tile_sample_min_size == LOW_VRAM_TILE_SIZE
    assert not inner.vae.use_tiling  # the switch was on for the call only
    with torch.no_grad():  # diffusers' own tiled encode at the same tile size: identical
        inner.vae.enable_tiling()
        try:
            reference = inner.vae.encode(x[1:]).latent_dist.mean
        finally:
            inner.vae.disable_tiling()
    torch.testing.assert_close(tiled[1:], reference, atol=1e-6, rtol=0)
    whole, whole_other = encode(torch_components, x), encode(torch_components, other)
    # tiles see only themselves (GroupNorm statistics, attention): an approximation at the
    # seams, and a random-weight VAE is far more sensitive to it than a trained one
    tiling_error = float((tiled - whole).abs().mean())
    scale = float((whole_other - whole).abs().mean())
    print(f"low-VRAM tiled vs whole encode: mean abs {tiling_error:.4f} (other image {scale:.4f})")
    assert 0 < tiling_error < TILES_VS_WHOLE * scale


def test_images_within_one_tile_encode_whole_in_low_vram_mode(
    tiny_model: Path, torch_components: Components
) -> None:
    x = images(1, 256, 192)
    tiled = encode(load_torch(str(tiny_model), low_vram=True), x)
    torch.testing.assert_close(tiled, encode(torch_components, x), atol=1e-6, rtol=0)


def _small_tiles(encoder: TorchVAEEncoder) -> TorchVAEEncoder:
    encoder.vae.tile_sample_min_size, encoder.vae.tile_latent_min_size = 32, 4
    return encoder


def _oom_when_untiled(vae: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """`encode` runs out of memory on whole images; the tiled path gets through."""
    real = vae.encode

    def encode(x: torch.Tensor) -> Any:
        if not vae.use_tiling:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x)

    monkeypatch.setattr(vae, "encode", encode)


def test_out_of_memory_falls_back_to_tiles(tiny_model: Path, monkeypatch: Any) -> None:
    x = images(1, 64, 96)
    vae = AutoencoderKL.from_pretrained(tiny_model / "vae").eval()
    expected = _small_tiles(TorchVAEEncoder(vae, tiled=True))(x)
    encoder = _small_tiles(TorchVAEEncoder(vae))
    _oom_when_untiled(vae, monkeypatch)
    torch.testing.assert_close(encoder(x), expected, atol=0, rtol=0)
    assert encoder.used_tiling
    encoder.tiled = False
    with pytest.raises(OutOfMemoryError, match="tiled encoding is turned off"):
        encoder(x)


@pytest.mark.gpu
@pytest.mark.parametrize("low_vram", [False, True])
def test_on_cuda_the_encoder_matches_the_cpu_and_parks_in_low_vram_mode(
    tiny_model: Path, torch_components: Components, low_vram: bool
) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    options = {"low_vram": low_vram}
    components = load_torch(str(tiny_model), device="cuda", precision="fp16", **options)
    x = images(1, 320, 320)
    latents = encode(components, x.cuda())
    assert latents.device.type == "cuda" and latents.dtype == torch.float32
    whole = encode(torch_components, x)
    error = float((latents.cpu() - whole).abs().mean()) / float(whole.abs().mean())
    print(f"CUDA fp16 (low_vram={low_vram}) vs CPU fp32 encode: mean abs / magnitude {error:.4f}")
    vae: Any = components.vae_decoder
    weights = list((vae.decoder if low_vram else vae).vae.parameters())
    assert {p.device.type for p in weights} == {"cpu" if low_vram else "cuda"}
    # whole images: within fp16 rounding; low-VRAM tiles (2 x 2 at 320 px): within tiling, which
    # on the CPU (fp32 and fp16 alike) measures 0.164 of the latents' magnitude on this image
    assert error < (0.25 if low_vram else HALF_VS_FLOAT["fp16"])


# --- ONNX Runtime -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_components(exported_tiny_fp32: Path) -> Components:
    return load_onnx(str(exported_tiny_fp32))


def test_the_exported_graph_ends_in_the_posterior_mean(exported_tiny_fp32: Path) -> None:
    manifest = json.loads((exported_tiny_fp32 / MANIFEST_NAME).read_text())
    (output,) = manifest["graphs"]["vae_encoder"]["outputs"]
    assert output["name"] == "latent_sample"
    assert output["shape"] == ["batch", LATENT_CHANNELS, "height", "width"]  # not 2x: no logvar


def test_onnx_encoder_matches_torch_and_diffusers(
    tiny_model: Path, torch_components: Components, onnx_components: Components
) -> None:
    x = images()
    latents = encode(onnx_components, x.numpy())
    assert isinstance(latents, np.ndarray) and latents.dtype == np.float32
    assert latents.shape == (2, LATENT_CHANNELS, 8, 12)
    error = float(np.abs(latents - encode(torch_components, x).numpy()).max())
    print(f"ONNX Runtime fp32 vs torch VAE encoder: max abs {error:.2e}")
    assert error < ONNX_VS_TORCH
    reference = diffusers_mean(tiny_model, x).numpy()
    assert float(np.abs(latents - reference).max()) < ONNX_VS_TORCH


def test_onnx_fp16_encoder_is_close_to_torch(
    exported_tiny_fp16: Path, torch_components: Components
) -> None:
    components = load_onnx(str(exported_tiny_fp16))
    x = images()
    latents = encode(components, x.numpy())
    full = encode(torch_components, x).numpy()
    error = float(np.abs(latents - full).mean()) / float(np.abs(full).mean())
    print(f"ONNX Runtime fp16 vs torch fp32 VAE encoder: mean abs / magnitude {error:.4f}")
    assert latents.dtype == np.float32 and error < HALF_VS_FLOAT["fp16"]  # measured 0.002


def test_onnx_encoder_refuses_sizes_the_vae_cannot_take(onnx_components: Components) -> None:
    with pytest.raises(UsageError, match="multiples of 8 px"):
        encode(onnx_components, np.zeros((1, 3, 64, 68), np.float32))


def test_round_trip_through_the_model_latent_space(
    torch_components: Components, onnx_components: Components
) -> None:
    """image -> VAE latents -> model latents (scale) -> VAE latents (unscale) -> image: the
    scaling is undone exactly, and both backends decode their encodings to the same image."""
    x = images()
    decoded = {}
    for name, components, array in (
        ("torch", torch_components, x),
        ("onnx", onnx_components, x.numpy()),
    ):
        assert components.vae_encoder is not None
        vae_latents = components.vae_encoder(array)
        model_latents = scale_latents(vae_latents, components.latent_scaling, components.ops)
        back = unscale_latents(model_latents, components.latent_scaling, components.ops)
        host = components.ops.to_host(back)
        np.testing.assert_allclose(host, components.ops.to_host(vae_latents), atol=1e-6)
        # clipped as images are (the ONNX decoder clips, the torch one leaves it to the caller)
        decoded[name] = np.clip(components.ops.to_host(components.vae_decoder(back)), -1, 1)
    assert decoded["torch"].shape == (2, 3, 64, 96) and np.isfinite(decoded["torch"]).all()
    assert float(np.abs(decoded["torch"] - decoded["onnx"]).max()) < ONNX_VS_TORCH


def test_scaling_a_known_latent_follows_the_card() -> None:
    """The encoder's output is unscaled: the pipeline's scale_latents does (z - shift) * s."""
    scaling = LatentScaling(scaling_factor=1.5, mean=0.1, std=1.0)
    z = np.full((1, LATENT_CHANNELS, 2, 2), 0.5, np.float32)
    np.testing.assert_allclose(scale_latents(z, scaling, NumpyOps()), (0.5 - 0.1) * 1.5, rtol=1e-6)


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "exported"))


def test_a_folder_without_the_encoder_graph_loads_without_an_encoder(
    exported_tiny_fp32: Path, tmp_path: Path
) -> None:
    folder = _copy(exported_tiny_fp32, tmp_path)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    del manifest["graphs"]["vae_encoder"]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    shutil.rmtree(folder / "vae_encoder")
    components = load_onnx(str(folder))
    assert components.vae_encoder is None
    reason = components.info["vae_encoder_unavailable"]
    assert "lists no vae_encoder graph" in reason and "export the model again" in reason
    assert "vae_encoder" not in components.info["providers"]
    # text-to-image is untouched: the decoder still decodes
    decoded = components.vae_decoder(np.zeros((1, LATENT_CHANNELS, 8, 8), np.float32))
    assert decoded.shape == (1, 3, 64, 64)


def test_a_listed_but_missing_encoder_graph_is_said_not_raised(
    exported_tiny_fp32: Path, tmp_path: Path
) -> None:
    folder = _copy(exported_tiny_fp32, tmp_path)
    shutil.rmtree(folder / "vae_encoder")
    components = load_onnx(str(folder))
    assert components.vae_encoder is None
    assert "vae_encoder/model.onnx is missing" in components.info["vae_encoder_unavailable"]


def test_onnx_encoder_refuses_latents_of_the_wrong_shape() -> None:
    """A foreign graph that returns mean and log-variance (32 channels) is an error."""
    from sdxs_rt.backends.onnx.components import OnnxVAEEncoder

    class Moments:
        def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            batch, _, height, width = feeds["sample"].shape
            return [np.zeros((batch, 2 * LATENT_CHANNELS, height // 8, width // 8), np.float32)]

    encoder = OnnxVAEEncoder(Moments(), {"sample": np.float32}, "fp32", (LATENT_CHANNELS, 8))
    with pytest.raises(EngineError, match=r"\(1, 32, 8, 8\), not \(1, 16, 8, 8\)"):
        encoder(np.zeros((1, 3, 64, 64), np.float32))


# --- TensorRT: cannot run here; the wrapper over a numeric stand-in, the loader over fakes ------


class PoolingEngine:
    """Stands in for an fp16 engine: latent_sample = each 8x8 block's mean, per colour channel,
    repeated over the 16 latent channels, computed in float16 as such an engine returns it."""

    def __init__(self) -> None:
        self.opened = 0  # for DeferredEngine: how often it was opened

    def open(self) -> PoolingEngine:
        self.opened += 1
        return self

    def __call__(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pooled = torch.nn.functional.avg_pool2d(feeds["sample"].half(), 8)
        return {"latent_sample": pooled.repeat(1, 6, 1, 1)[:, :LATENT_CHANNELS]}


def pooled_reference(x: torch.Tensor) -> torch.Tensor:
    blocks = x.reshape(x.shape[0], 3, x.shape[2] // 8, 8, x.shape[3] // 8, 8).mean(dim=(3, 5))
    return blocks.repeat(1, 6, 1, 1)[:, :LATENT_CHANNELS]


def test_trt_encoder_feeds_sample_and_returns_float32_latent_sample() -> None:
    encoder = TrtVAEEncoder(PoolingEngine(), "/m")  # type: ignore[arg-type]
    x = images(2, 64, 96)
    latents = encoder(x)
    assert latents.dtype == torch.float32 and latents.shape == (2, LATENT_CHANNELS, 8, 12)
    torch.testing.assert_close(latents, pooled_reference(x), atol=2e-3, rtol=0)  # fp16 rounding
    with pytest.raises(UsageError, match="multiples of 8 px"):
        encoder(torch.zeros(1, 3, 64, 66))


def test_trt_encoder_refuses_an_fp16_overflow() -> None:
    encoder = TrtVAEEncoder(PoolingEngine(), "/m")  # type: ignore[arg-type]
    too_bright = torch.full((1, 3, 64, 64), 1e5)  # beyond float16's 65504: inf
    with pytest.raises(EngineError, match="--model /m --precision fp32"):
        encoder(too_bright)


def test_the_deferred_engine_opens_on_the_first_encode_only() -> None:
    stand_in = PoolingEngine()
    encoder = TrtVAEEncoder(DeferredEngine(stand_in.open))  # type: ignore[arg-type]
    assert stand_in.opened == 0  # loading costs no engine memory
    x = images(1, 64, 64)
    first, second = encoder(x), encoder(x)
    assert stand_in.opened == 1
    torch.testing.assert_close(first, second, atol=0, rtol=0)
    torch.testing.assert_close(first, pooled_reference(x), atol=2e-3, rtol=0)


# tests/test_tensorrt.py's fixtures: a fake TensorRT (10.x and 11.x), this machine as it sees
# it, an engine cache in tmp_path and an export with stand-in graphs
fake_trt, here = test_tensorrt.fake_trt, test_tensorrt.here
engine_dir, exported = test_tensorrt.engine_dir, test_tensorrt.exported


@pytest.fixture
def trt_loader_on_cpu(
    fake_trt: Any, exported: Path, engine_dir: Path, here: Any, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """The loader over fake engines, on CPU memory with fake streams (as tests/test_tensorrt.py)."""
    from sdxs_rt.backends.tensorrt import loader, runtime

    monkeypatch.setattr(loader, "current_environment", lambda index=0: here)
    monkeypatch.setattr(loader, "cuda_device", lambda name: torch.device("cpu"))
    monkeypatch.setattr(runtime, "StreamSync", lambda device: FakeStream())
    return exported


def _load_trt(folder: Path) -> Components:
    from sdxs_rt.backends.tensorrt import load_components

    return load_components(str(folder), device="cuda", precision="fp16")


def _forget_the_encoder_engine(folder: Path) -> None:
    """What a build by an sdxs-rt before the encoder engine left: no vae_encoder engine."""
    from sdxs_rt.backends.tensorrt.cache import list_engines

    for engine in list_engines():
        if engine.graph == "vae_encoder":
            engine.engine_path.unlink()
            engine.sidecar_path.unlink()
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    del manifest["engines"]["vae_encoder"]
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_trt_without_an_encoder_engine_loads_without_one_until_a_build_makes_it(
    trt_loader_on_cpu: Path, engine_dir: Path
) -> None:
    folder = trt_loader_on_cpu
    builder_module.build_engines(folder, SMALL)
    _forget_the_encoder_engine(folder)
    components = _load_trt(folder)
    assert components.vae_encoder is None
    assert components.info["vae_encoder_unavailable"] == (
        f"there is no TensorRT vae_encoder engine for {folder} in {engine_dir}; "
        f"build it with `sdxs-rt engine build --model {folder}`"
    )
    assert "vae_encoder" not in components.info["engines"]
    events: list[Any] = []
    builder_module.build_engines(folder, SMALL, progress=events.append)  # what the reason says
    assert [(e.graph, e.kind) for e in events if e.kind in ("skip", "done")] == [
        ("text_encoder", "skip"),
        ("unet", "skip"),
        ("vae_decoder", "skip"),
        ("vae_encoder", "done"),
        ("image_encoder", "skip"),  # the export has the vision tower's graph: built before
    ]
    components = _load_trt(folder)
    assert components.vae_encoder is not None
    assert "vae_encoder_unavailable" not in components.info


def test_trt_with_an_encoder_engine_encodes_through_it(trt_loader_on_cpu: Path) -> None:
    builder_module.build_engines(trt_loader_on_cpu, SMALL)  # the encoder's engine too
    components = _load_trt(trt_loader_on_cpu)
    encoder: Any = components.vae_encoder
    assert encoder is not None and "vae_encoder_unavailable" not in components.info
    assert Path(components.info["engines"]["vae_encoder"]).is_file()
    assert encoder.engine.engine is None  # chosen at load, opened at the first encode
    latents = encoder(torch.zeros(1, 3, 64, 128))
    assert latents.dtype == torch.float32 and latents.shape == (1, LATENT_CHANNELS, 8, 16)
    assert bool((latents == 0.5).all())  # what the fake engine writes through the bound buffer
    with pytest.raises(UsageError, match="outside this engine's profile"):
        encoder(torch.zeros(1, 3, 256, 256))  # SMALL covers 64..128 px


def test_trt_with_a_manifest_without_the_encoder_graph(trt_loader_on_cpu: Path) -> None:
    """Its engine built, then the graph dropped from the manifest: the engine is not used.
    (An export without the graph from the start: tests/test_tensorrt.py.)"""
    builder_module.build_engines(trt_loader_on_cpu, SMALL)
    manifest = json.loads((trt_loader_on_cpu / MANIFEST_NAME).read_text())
    del manifest["graphs"]["vae_encoder"]
    (trt_loader_on_cpu / MANIFEST_NAME).write_text(json.dumps(manifest))
    components = _load_trt(trt_loader_on_cpu)
    assert components.vae_encoder is None
    assert "lists no vae_encoder graph" in components.info["vae_encoder_unavailable"]
