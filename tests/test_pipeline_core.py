"""The torch-free core: noise contract, CFG, caching, cancel, validation (numpy components)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from sdxs_rt.errors import UsageError
from sdxs_rt.pipeline import ImageEvent, Pipeline, StepEvent
from sdxs_rt.rng import BatchNoise, ImageNoise
from tests.fakes import cancel_after_calls, fake_components

SMALL = {"width": 64, "height": 64, "num_inference_steps": 5}


def pixels(result) -> list[np.ndarray]:
    return [np.asarray(image, dtype=np.int16) for image in result.images]


def test_noise_contract_draw_order_and_dtype() -> None:
    stream = ImageNoise(7, (16, 2, 3))
    first, second = stream.draw(), stream.draw()
    generator = np.random.Generator(np.random.PCG64(7))
    assert first.dtype == np.float32 and first.shape == (16, 2, 3)
    np.testing.assert_array_equal(first, generator.standard_normal((16, 2, 3), dtype=np.float32))
    np.testing.assert_array_equal(second, generator.standard_normal((16, 2, 3), dtype=np.float32))


def test_batch_noise_is_the_stack_of_single_streams() -> None:
    batch = BatchNoise([3, 4], (16, 2, 2))
    singles = [ImageNoise(3, (16, 2, 2)), ImageNoise(4, (16, 2, 2))]
    for _ in range(3):
        np.testing.assert_array_equal(batch.draw(), np.stack([s.draw() for s in singles]))


@pytest.mark.parametrize("scheduler", ["ddpm", "euler_a", "dpmpp_2m"])
def test_image_is_the_same_alone_or_in_a_batch(scheduler: str) -> None:
    pipe = Pipeline(fake_components())
    batched = pipe("a cat", seed=10, num_images=3, batch_size=3, scheduler=scheduler, **SMALL)
    assert batched.seeds == [10, 11, 12]
    for offset, image in enumerate(pixels(batched)):
        alone = pipe("a cat", seed=10 + offset, scheduler=scheduler, **SMALL)
        # another batch size may take another BLAS kernel: one level at a rounding boundary
        assert np.abs(pixels(alone)[0] - image).max() <= 1


def test_same_seed_same_image_and_different_seed_differs() -> None:
    pipe = Pipeline(fake_components())
    a, b, c = (pipe("a cat", seed=s, **SMALL) for s in (1, 1, 2))
    np.testing.assert_array_equal(pixels(a)[0], pixels(b)[0])
    assert np.abs(pixels(a)[0] - pixels(c)[0]).max() > 0


def test_guidance_at_most_one_runs_the_conditional_branch_alone() -> None:
    components = fake_components()
    pipe = Pipeline(components)
    pipe("a cat", seed=1, guidance_scale=1.0, **SMALL)
    assert components.unet.batch_sizes == [1] * 5
    assert components.text_encoder.calls == [["a cat"]]  # no negative prompt encoded
    components.unet.batch_sizes.clear()
    pipe("a cat", seed=1, guidance_scale=5.5, **SMALL)
    assert components.unet.batch_sizes == [2] * 5


def test_guidance_formula_matches_manual_cfg() -> None:
    components = fake_components()
    cond = components.text_encoder(["p"])[:, None]
    uncond = components.text_encoder(["n"])[:, None]
    x = np.ones((1, 16, 2, 2), np.float32)
    from sdxs_rt.guidance import guided_model

    model = guided_model(components.unet, cond, uncond, 3.0, components.ops)
    u, c = components.unet(x, 500.0, uncond), components.unet(x, 500.0, cond)
    np.testing.assert_allclose(model(x, 500.0), u + 3.0 * (c - u), rtol=1e-6)


def test_negative_prompt_embedding_is_cached() -> None:
    components = fake_components()
    pipe = Pipeline(components)
    pipe("one", negative_prompt="blurry", seed=1, **SMALL)
    pipe("two", negative_prompt="blurry", seed=1, **SMALL)
    assert components.text_encoder.calls == [["one"], ["blurry"], ["two"]]


def test_iterator_form_yields_every_step_then_the_image() -> None:
    pipe = Pipeline(fake_components())
    events = list(pipe.generate("a cat", seed=5, num_images=2, batch_size=1, **SMALL))
    kinds = [type(e).__name__ for e in events]
    assert kinds == (["StepEvent"] * 5 + ["ImageEvent"]) * 2
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.step for e in steps[:5]] == [0, 1, 2, 3, 4]
    assert steps[0].timestep > steps[-1].timestep
    images = [e for e in events if isinstance(e, ImageEvent)]
    assert [(e.index, e.seed) for e in images] == [(0, 5), (1, 6)]
    assert images[0].image.size == (64, 64)


def test_cancel_from_another_thread_stops_at_the_next_step() -> None:
    components = fake_components()
    pipe = Pipeline(components)
    cancel_after_calls(pipe, components.unet, calls=2)
    events = list(pipe.generate("a cat", seed=1, num_images=3, **SMALL))
    assert len(components.unet.batch_sizes) == 2  # the step in flight finishes, no more run
    assert not any(isinstance(e, ImageEvent) for e in events)  # nothing decoded
    # The pipeline is usable again after a cancel.
    components.unet.on_call = None
    assert len(pipe("a cat", seed=1, **SMALL).images) == 1


def test_call_reports_a_cancelled_run_also_when_given_params() -> None:
    from sdxs_rt.params import GenerationParams

    components = fake_components()
    pipe = Pipeline(components)
    cancel_after_calls(pipe, components.unet, calls=1)
    params = GenerationParams(prompt="a cat", seed=1, num_images=2, **SMALL)
    result = pipe(params=params)
    assert result.cancelled and result.images == []


def test_call_reports_timings_and_seeds() -> None:
    result = Pipeline(fake_components())("a cat", seed=3, num_images=2, batch_size=2, **SMALL)
    assert result.seeds == [3, 4] and not result.cancelled
    assert set(result.timings) >= {"text_encode", "sampling", "decode", "total"}


def test_random_seed_is_recorded() -> None:
    pipe = Pipeline(fake_components())
    result = pipe("a cat", **SMALL)
    again = pipe("a cat", seed=result.seeds[0], **SMALL)
    np.testing.assert_array_equal(pixels(result)[0], pixels(again)[0])


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"width": 500}, "nearest valid: 448 or 512"),
        ({"height": 0}, "must be positive"),
        ({"width": 65536}, "too large"),
        ({"num_inference_steps": 0}, "steps must be a positive"),
        ({"guidance_scale": float("nan")}, "guidance scale"),
        ({"guidance_scale": -1.0}, "guidance scale"),
        ({"scheduler": "plms"}, "unknown scheduler 'plms'"),
        ({"seed": -5}, "seed must be"),
        ({"num_images": 0}, "number of images"),
    ],
)
def test_bad_parameters_are_refused_before_any_work(kwargs: dict, fragment: str) -> None:
    components = fake_components()
    pipe = Pipeline(components)
    with pytest.raises(UsageError, match=fragment):
        list(pipe.generate("a cat", **{**SMALL, **kwargs}))
    assert components.text_encoder.calls == []


def test_latent_scaling_is_applied_before_decoding() -> None:
    components = fake_components()
    pipe = Pipeline(components)
    latents = np.full((1, 16, 1, 1), 0.2, np.float32)
    image = np.asarray(pipe.decode(latents)[0], dtype=np.float64)
    expected = (np.tanh(0.2 / 0.5 + 0.1) / 2 + 0.5) * 255  # z / scaling + shift, card's way
    assert image[0, 0, 0] == round(expected)


def test_the_core_generates_without_torch_installed() -> None:
    code = textwrap.dedent(
        """
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"torch", "diffusers", "transformers"}:
                    raise ImportError("blocked " + name)
        sys.meta_path.insert(0, Block())
        from sdxs_rt.pipeline import Pipeline
        from tests.fakes import fake_components
        result = Pipeline(fake_components())("a cat", seed=1, width=64, height=64,
                                             num_inference_steps=3)
        assert len(result.images) == 1
        assert not any(m.split(".")[0] == "torch" for m in sys.modules)
        print("ok")
        """
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=root
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_backend_that_is_not_there_is_a_clear_device_error(monkeypatch) -> None:
    from dataclasses import replace

    from sdxs_rt import backend_table
    from sdxs_rt.errors import DeviceError

    gone = tuple(
        replace(b, module="sdxs_rt.backends.not_there") if b.name == "torch" else b
        for b in backend_table.BACKENDS
    )
    monkeypatch.setattr(backend_table, "BACKENDS", gone)
    with pytest.raises(DeviceError, match="not part of this sdxs-rt version"):
        Pipeline.from_pretrained(backend="torch")
    with pytest.raises(UsageError, match="unknown backend"):
        Pipeline.from_pretrained(backend="jax")


def test_a_missing_backend_dependency_names_the_extra(monkeypatch) -> None:
    import importlib

    from sdxs_rt import pipeline
    from sdxs_rt.errors import DeviceError

    def missing(name: str):
        raise ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime")

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(DeviceError, match=r"pip install 'sdxs-rt\[onnx\]'"):
        pipeline.import_backend("onnx")


def test_manifest_is_written_atomically_with_the_umask(tmp_path) -> None:
    import os
    import stat

    from sdxs_rt.graphs import Manifest, read_manifest, write_manifest

    manifest = Manifest(
        model={"name": "m", "hash": "h"}, precision="fp32", opset=17, latent_channels=16,
        vae_scale_factor=8, text_width=1152, latent_scaling={"scaling_factor": 1.0},
        scheduler_config={}, tokenizer="tokenizer/tokenizer.json",
    )  # fmt: skip
    old = os.umask(0o022)
    try:
        path = write_manifest(tmp_path, manifest)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert read_manifest(tmp_path).model == {"name": "m", "hash": "h"}
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
