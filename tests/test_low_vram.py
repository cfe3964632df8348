"""The torch backend's low-VRAM mode (`sdxs_rt/backends/torch/low_vram.py`).

On the CPU the tests check what the mode does there and how it is wired: the text encoder's and
the VAE's weights are on the CPU after a generate, the decode goes tile by tile at the mode's
tile size and stays close to a whole-image decode, and `--low-vram` / `low_vram=True` reach the
backend. Parking only happens on CUDA, so the `gpu` tests are the real check of it; the `gpu`
and `slow` one measures the peak on the card's full-size layout (random weights, 576x576, fp16):
`pytest -m "gpu and slow" tests/test_low_vram.py -s`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdxs_rt.backends.torch.low_vram import LOW_VRAM_TILE_SIZE  # noqa: E402
from sdxs_rt.backends.torch.vae import TorchVAEDecoder  # noqa: E402
from sdxs_rt.commands.cli import build_parser, main  # noqa: E402
from sdxs_rt.commands.generate_run import backend_options  # noqa: E402
from sdxs_rt.errors import UsageError  # noqa: E402
from sdxs_rt.pipeline import Pipeline  # noqa: E402

LOW_VRAM = {"low_vram": True}
RUN = {"prompt": "a red circle", "num_inference_steps": 2, "width": 320, "height": 320}


@pytest.fixture(scope="module")
def low_vram_pipe(tiny_model: Path) -> Pipeline:
    return Pipeline.from_pretrained(str(tiny_model), backend_options=LOW_VRAM)


def text_encoder_weights(pipe: Pipeline) -> list[Any]:
    offloaded = pipe.components.text_encoder.encoder  # type: ignore[attr-defined]
    return [p for module in offloaded.modules for p in module.parameters()]


def vae_weights(pipe: Pipeline) -> list[Any]:
    return list(pipe.components.vae_decoder.decoder.vae.parameters())  # type: ignore[attr-defined]


def unet_weights(pipe: Pipeline) -> list[Any]:
    return list(pipe.components.unet.unet.parameters())  # type: ignore[attr-defined]


def test_low_vram_is_a_backend_option_that_says_what_it_does(low_vram_pipe: Pipeline) -> None:
    assert low_vram_pipe.info["low_vram"] == {
        "text_encoder_parked_on_cpu": False,  # on the CPU there is nowhere to park to
        "vae_parked_on_cpu": False,
        "vae_tile_size": LOW_VRAM_TILE_SIZE,
    }


def test_after_a_generate_the_text_encoder_and_vae_weights_are_on_the_cpu(
    low_vram_pipe: Pipeline,
) -> None:
    low_vram_pipe(**RUN, seed=1)
    weights = text_encoder_weights(low_vram_pipe) + vae_weights(low_vram_pipe)
    assert weights and {p.device.type for p in weights} == {"cpu"}


def test_the_decode_goes_through_low_vram_tiles_close_to_a_whole_decode(
    low_vram_pipe: Pipeline,
) -> None:
    decoder = low_vram_pipe.components.vae_decoder
    inner: TorchVAEDecoder = decoder.decoder  # type: ignore[attr-defined]
    generator = torch.Generator().manual_seed(0)
    latents, other = torch.randn(2, 1, 16, 40, 40, generator=generator)  # 320 px: 2 x 2 tiles
    tiled = decoder(latents)
    assert inner.used_tiling and inner.tile_size == LOW_VRAM_TILE_SIZE == 256
    with torch.inference_mode():
        inner.vae.enable_tiling()  # diffusers' own tiled decode at the same tile size: identical
        try:
            torch.testing.assert_close(tiled, inner.vae.decode(latents).sample.float())
        finally:
            inner.vae.disable_tiling()
    whole = TorchVAEDecoder(inner.vae, tiled=False)
    full, full_other = whole(latents), whole(other)
    # a random-weight VAE is far more sensitive to tiling than a trained one (its GroupNorm
    # statistics and attention see one tile), so "close" is relative to another image
    tiling_error = float((tiled - full).abs().mean())
    scale = float((full_other - full).abs().mean())
    print(f"low-VRAM tiles vs whole decode: mean abs {tiling_error:.3f} (other image {scale:.3f})")
    assert 0 < tiling_error < 0.4 * scale


def test_low_vram_images_match_the_normal_mode_within_tiling(
    tiny_model: Path, low_vram_pipe: Pipeline
) -> None:
    normal = Pipeline.from_pretrained(str(tiny_model))
    images = {
        name: [np.asarray(pipe(**RUN, seed=seed).images[0], dtype=np.float64) for seed in (7, 8)]
        for name, pipe in (("low", low_vram_pipe), ("normal", normal))
    }
    tiling = float(np.abs(images["low"][0] - images["normal"][0]).mean())
    between_seeds = float(np.abs(images["normal"][1] - images["normal"][0]).mean())
    print(f"low-VRAM vs normal image: mean abs {tiling:.2f} / 255 (other seed {between_seeds:.2f})")
    assert tiling < 0.4 * between_seeds


def test_the_low_vram_flag_parses_and_reaches_the_torch_backend() -> None:
    parser = build_parser()
    assert backend_options(parser.parse_args(["generate", "x", "--low-vram"])) == LOW_VRAM
    assert backend_options(parser.parse_args(["generate", "x"])) == {}
    onnx = parser.parse_args(["generate", "x", "--low-vram", "--backend", "onnx"])
    with pytest.raises(UsageError, match="--low-vram applies to --backend torch only"):
        backend_options(onnx)


def test_generate_with_low_vram_end_to_end(capsys, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    argv = ["generate", "x", "--low-vram", "--steps", "2", "-o", str(path), "--json"]
    assert main(argv) == 0 and path.is_file()
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert row["backend"] == "torch" and row["path"] == str(path)


# --- on a GPU ---------------------------------------------------------------------------------


def _needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.mark.gpu
def test_on_cuda_only_the_unet_stays_on_the_gpu_between_uses(tiny_model: Path) -> None:
    _needs_cuda()
    pipe = Pipeline.from_pretrained(
        str(tiny_model), device="cuda", dtype="fp16", backend_options=LOW_VRAM
    )
    assert pipe.info["low_vram"]["text_encoder_parked_on_cpu"]
    assert pipe.info["low_vram"]["vae_parked_on_cpu"]
    assert pipe(**RUN, seed=1).images[0].size == (320, 320)
    assert {p.device.type for p in text_encoder_weights(pipe) + vae_weights(pipe)} == {"cpu"}
    assert {p.device.type for p in unet_weights(pipe)} == {"cuda"}
    assert pipe.components.vae_decoder.decoder.used_tiling  # type: ignore[attr-defined]


@pytest.mark.gpu
@pytest.mark.slow
def test_peak_memory_of_the_card_layout_at_576(tmp_path: Path) -> None:
    """The card's 2.26B U-Net with an XLM-R-large text tower (bench preset `full`, random
    weights), 576x576, batch 1, guidance 5.5, fp16: low-VRAM within 6 GB; normal mode printed."""
    _needs_cuda()
    from sdxs_rt.dev.bench.presets import build_preset_model, get_preset

    model = str(build_preset_model(get_preset("full"), tmp_path / "full"))
    peaks = {
        name: _peak_bytes(model, options) for name, options in (("low", LOW_VRAM), ("normal", {}))
    }
    gpu = torch.cuda.get_device_name()
    for name, (allocated, reserved) in peaks.items():
        print(f"\n{gpu}: {name} mode peak {allocated / 1e9:.2f} GB allocated, ", end="")
        print(f"{reserved / 1e9:.2f} GB reserved")
    assert peaks["low"][0] <= 6e9
    assert peaks["low"][0] < peaks["normal"][0]


def _peak_bytes(model: str, options: dict[str, Any]) -> tuple[int, int]:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    pipe = Pipeline.from_pretrained(
        model, device="cuda", dtype="fp16", variant="fp16", backend_options=options
    )
    pipe("a lighthouse at dawn", num_inference_steps=2, width=576, height=576, seed=0)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
    del pipe
    torch.cuda.empty_cache()
    return peak
