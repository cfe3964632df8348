"""The desktop worker and controller (pytest-qt, offscreen): generation through the worker thread
on the built-in model, cancelling, stopping, errors, previews, history and metadata round trips."""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")
pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image, PngImagePlugin
from PySide6.QtCore import Qt, QThread
from PySide6.QtGui import QImage
from sdxs_rt_desktop.controller import Controller, ResultItem
from sdxs_rt_desktop.history import save_to_history, settings_from_png
from sdxs_rt_desktop.preview import LatentPreviewer, r_squared, random_latents
from sdxs_rt_desktop.state import GenerationState, ModelState, RunState
from sdxs_rt_desktop.worker import BuildLog, error_message, gpu_summary

from sdxs_rt.errors import DeviceError, UsageError
from sdxs_rt.graphs import Manifest, SizeProfile, write_manifest
from sdxs_rt.metadata import ImageRecord, read_png_text
from sdxs_rt.pipeline import Pipeline
from tests.fakes import fake_components

TIMEOUT_MS = 60_000


@pytest.fixture
def states() -> SimpleNamespace:
    generation = GenerationState()
    generation.update(prompt="a red fox, in snow", negative_prompt="blurry", width=128,
                      height=128, steps=4, guidance=2.0, random_seed=False, seed=7,
                      preview_every=2, batch_count=1)  # fmt: skip
    return SimpleNamespace(generation=generation, model=ModelState(), run=RunState())


@pytest.fixture
def controller(qtbot, states: SimpleNamespace, tmp_path: Path):
    controller = Controller(states.generation, states.model, states.run, tmp_path / "history")
    yield controller
    controller.shutdown()


def record_signals(controller: Controller, run: RunState) -> list[tuple[str, object]]:
    """Every signal the window would see, in arrival order."""
    seen: list[tuple[str, object]] = []
    run.running_changed.connect(lambda v: seen.append(("running", v)))
    run.step_changed.connect(lambda v: seen.append(("step", v)))
    controller.preview_ready.connect(lambda image: seen.append(("preview", image)))
    controller.image_ready.connect(lambda item: seen.append(("image", item)))
    controller.failed.connect(lambda message: seen.append(("failed", message)))
    controller.finished.connect(lambda stopped: seen.append(("finished", stopped)))
    return seen


def run_to_end(qtbot, controller: Controller) -> bool:
    with qtbot.waitSignal(controller.finished, timeout=TIMEOUT_MS) as blocker:
        assert controller.generate()
    return blocker.args[0]


def history_files(controller: Controller) -> list[Path]:
    folder = controller.history_dir
    return sorted(folder.glob("*.png")) if folder.exists() else []


# ---------------------------------------------------------------- generation


def test_generation_emits_steps_previews_image_and_finished_in_order(qtbot, controller, states):
    seen = record_signals(controller, states.run)
    worker_threads: list[QThread] = []
    controller._worker.progress.connect(
        lambda _: worker_threads.append(QThread.currentThread()), Qt.ConnectionType.DirectConnection
    )
    assert run_to_end(qtbot, controller) is False

    assert worker_threads and QThread.currentThread() not in worker_threads  # off the GUI
    kinds = [kind for kind, _ in seen if kind != "step"]
    assert kinds == ["running", "preview", "preview", "image", "running", "finished"]
    assert [v for k, v in seen if k == "running"] == [True, False]
    assert [v for k, v in seen if k == "step"] == [1, 2, 3, 4]
    assert seen.index(("step", 2)) < kinds.index("preview") + 2  # the preview follows step 2
    item = next(v for k, v in seen if k == "image")
    assert isinstance(item, ResultItem) and item.seed == 7
    assert history_files(controller) == [item.path] and item.path.name == "00000-7.png"
    assert (item.qimage.width(), item.qimage.height()) == (128, 128)
    for preview in (v for k, v in seen if k == "preview"):
        assert (preview.width(), preview.height()) == (16 * 8, 16 * 8)  # latent size x8
    assert controller.results == [item]
    run = states.run
    assert (run.running, run.step, run.total_steps, run.error) == (False, 4, 4, "")
    assert run.status == "Done" and run.gpu_info == ""  # CPU: no GPU line
    assert states.generation.last_seed == 7
    assert states.model.engine_sizes == ""  # torch backend: nothing to show
    assert settings_from_png(item.path)["prompt"] == "a red fox, in snow"


def test_random_seed_run_uses_consecutive_seeds_and_reuse_last_seed(qtbot, controller, states):
    states.generation.update(random_seed=True, batch_count=2, steps=2, width=64, height=64)
    run_to_end(qtbot, controller)
    first = states.generation.last_seed
    assert [item.seed for item in controller.results] == [first, first + 1]
    assert [p.name for p in history_files(controller)] == [f"00000-{first}.png",
                                                           f"00001-{first + 1}.png"]  # fmt: skip
    assert controller.reuse_last_seed()
    assert (states.generation.seed, states.generation.random_seed) == (first, False)


def test_cancel_now_takes_effect_within_one_step(qtbot, controller, states):
    states.generation.update(steps=40, preview_every=0)
    steps_after_cancel: list[int] = []
    cancelled_at: list[float] = []

    def on_step(step: int) -> None:
        if cancelled_at:
            steps_after_cancel.append(step)
        elif step == 2:
            cancelled_at.append(time.perf_counter())
            controller.cancel_now()

    states.run.step_changed.connect(on_step)
    images: list[ResultItem] = []
    controller.image_ready.connect(images.append)
    assert run_to_end(qtbot, controller) is True
    latency_ms = (time.perf_counter() - cancelled_at[0]) * 1000
    print(f"cancel: {len(steps_after_cancel)} steps after cancel_now, {latency_ms:.0f} ms")
    assert len(steps_after_cancel) <= 1
    assert images == [] and history_files(controller) == []
    assert states.run.status == "Cancelled" and not states.run.running


def test_stop_after_this_image_keeps_exactly_one_of_three(qtbot, controller, states):
    states.generation.update(batch_count=3, steps=3, preview_every=0)
    states.run.step_changed.connect(lambda step: step == 1 and controller.stop_after_image())
    assert run_to_end(qtbot, controller) is True
    assert [item.seed for item in controller.results] == [7]
    assert len(history_files(controller)) == 1
    assert states.run.status == "Stopped after this image"


def test_cancel_before_the_first_step_runs_nothing(qtbot, controller, states):
    steps: list[int] = []
    states.run.step_changed.connect(steps.append)
    with qtbot.waitSignal(controller.finished, timeout=TIMEOUT_MS) as blocker:
        assert controller.generate()
        controller.cancel_now()  # while the job is queued or the model loads
    assert blocker.args == [True] and [s for s in steps if s > 0] == []
    assert history_files(controller) == [] and states.run.status == "Cancelled"


def test_a_failed_preview_fit_only_turns_previews_off(qtbot, controller, states, monkeypatch):
    def broken_fit(pipe):
        raise RuntimeError("decode failed")

    monkeypatch.setattr("sdxs_rt_desktop.preview.fit_projection", broken_fit)
    monkeypatch.setattr("sdxs_rt_desktop.preview.shipped_dir", lambda: Path("/nonexistent"))
    monkeypatch.setenv("SDXS_RT_CACHE", str(controller.history_dir.parent / "empty-cache"))
    seen = record_signals(controller, states.run)
    assert run_to_end(qtbot, controller) is False
    assert [k for k, _ in seen if k in ("preview", "image", "failed")] == ["image"]


# ---------------------------------------------------------------- errors


def test_bad_size_is_one_sentence_and_the_controller_stays_usable(qtbot, controller, states):
    messages: list[str] = []
    controller.failed.connect(messages.append)
    states.generation.width = 100
    assert controller.generate() is False
    assert messages == [states.run.error] and "multiple of 64" in messages[0]
    assert "\n" not in messages[0] and not states.run.running
    states.generation.update(width=64, height=64, steps=1)
    run_to_end(qtbot, controller)
    assert states.run.error == "" and len(controller.results) == 1


def test_empty_prompt_is_refused(controller, states):
    states.generation.prompt = "   "
    assert controller.generate() is False
    assert "prompt is empty" in states.run.error


def test_missing_model_folder_fails_in_the_worker_then_recovers(
    qtbot, controller, states, tmp_path
):
    states.model.model = str(tmp_path / "no-such-model")
    seen = record_signals(controller, states.run)
    assert run_to_end(qtbot, controller) is False
    failures = [v for k, v in seen if k == "failed"]
    assert len(failures) == 1 and "does not exist" in str(failures[0])
    assert "\n" not in states.run.error and states.run.error == failures[0]
    assert not states.run.running and states.run.status == "Error"
    states.model.model = ""
    states.generation.update(width=64, height=64, steps=1, preview_every=0)
    run_to_end(qtbot, controller)
    assert states.run.error == "" and len(history_files(controller)) == 1


def test_error_messages_are_one_sentence():
    assert error_message(DeviceError("no GPU here")) == "no GPU here"
    assert error_message(RuntimeError("boom\n  at line 3")) == "unexpected error: boom"
    assert error_message(KeyError()) == "unexpected error: KeyError"


def test_gpu_summary_names_the_gpu_and_memory_in_use():
    gib = 1024**3
    fake_cuda = SimpleNamespace(
        current_device=lambda: 0,
        mem_get_info=lambda index: (5 * gib, 8 * gib),
        get_device_name=lambda index: "NVIDIA Fake 8G",
    )
    fake_torch = SimpleNamespace(device=lambda name: SimpleNamespace(index=None), cuda=fake_cuda)
    assert gpu_summary({"device": "cuda"}, fake_torch) == "NVIDIA Fake 8G — 3.0 / 8.0 GB"
    assert gpu_summary({"device": "cpu"}, fake_torch) == ""


# ---------------------------------------------------------------- TensorRT engines


def test_engine_build_failure_is_reported_without_tensorrt(qtbot, controller, states, tmp_path):
    pytest.importorskip("sdxs_rt.backends.tensorrt")
    with qtbot.waitSignal(controller.build_finished, timeout=TIMEOUT_MS) as blocker:
        controller.build_engines(SizeProfile())  # no model folder chosen
    assert blocker.args[0] is False and "export onnx" in blocker.args[1]
    states.model.update(backend="tensorrt", model=str(tmp_path))
    assert states.model.engine_sizes == ""  # no manifest: nothing to show
    with qtbot.waitSignal(controller.build_finished, timeout=TIMEOUT_MS) as blocker:
        assert controller.build_engines(SizeProfile())
    ok, message = blocker.args
    assert ok is False and message and "\n" not in message
    assert not controller.building


def test_tensorrt_sizes_show_before_generate_and_refuse_outside(controller, states, tmp_path):
    pytest.importorskip("sdxs_rt.backends.tensorrt")
    profile = asdict(SizeProfile(min_size=384, opt_size=576, max_size=768, max_batch=2))
    manifest = Manifest(model={"name": "m"}, precision="fp16", opset=17, latent_channels=16,
                        vae_scale_factor=8, text_width=1152, latent_scaling={},
                        scheduler_config={}, tokenizer="tokenizer.json",
                        engines={"unet": {"profile": profile}})  # fmt: skip
    write_manifest(tmp_path, manifest)
    states.model.update(backend="tensorrt", model=str(tmp_path))
    assert states.model.engine_sizes == "384..768 px per side, batch 1..2"
    assert controller.generate() is False  # 128x128: refused before anything loads
    assert "outside this engine's profile" in states.run.error and not states.run.running
    states.model.backend = "torch"
    assert states.model.engine_sizes == ""


def test_build_log_lines_carry_overall_percentages():
    lines: list[str] = []
    log = BuildLog(lines.append, ("text_encoder", "unet", "vae_decoder"))
    event = SimpleNamespace
    log(event(graph="text_encoder", kind="skip", path=Path("te.engine")))
    log(event(graph="unet", kind="start"))
    log(event(graph="unet", kind="phase_start", phase="Building", parent=None, total=2))
    log(event(graph="unet", kind="step", phase="Building", step=0))
    log(event(graph="unet", kind="step", phase="Building", step=1))
    log(event(graph="unet", kind="done", path=Path("unet.engine")))
    assert lines[0].endswith("33%") and "building" in lines[1]
    assert [line[-3:] for line in lines[3:]] == ["50%", "66%", "66%"]


# ---------------------------------------------------------------- history and metadata


def sample_record(**changes: object) -> ImageRecord:
    values: dict = dict(
        prompt="a lighthouse, at dusk: 35mm\nsecond line", negative_prompt="fog, people",
        steps=13, guidance_scale=6.5, seed=2**40 + 3, width=320, height=576, scheduler="euler_a",
        scheduler_label="Euler a", model="tiny-sdxs", model_hash="74050ae777", backend="torch",
        precision="fp32", device="cpu", rng="numpy-pcg64", version="0.1.0",
        text_encoder="tiny-sdxs/text_encoder",
    )  # fmt: skip
    values.update(changes)
    return ImageRecord(**values)


RESTORED = ("prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler", "width",
            "height")  # fmt: skip


def restored_values(generation: GenerationState) -> dict:
    return {name: getattr(generation, name) for name in RESTORED}


def test_metadata_round_trips_through_save_and_restore(controller, states, tmp_path):
    record = sample_record()
    image = QImage(64, 64, QImage.Format.Format_RGB32)
    image.fill(0x336699)
    path = save_to_history(image, record, tmp_path)
    assert path.name == f"00000-{record.seed}.png"
    assert Image.open(path).getpixel((5, 5)) == (0x33, 0x66, 0x99)
    generation = GenerationState()
    generation.apply_record(settings_from_png(path))
    expected = {"prompt": record.prompt, "negative_prompt": record.negative_prompt,
                "seed": record.seed, "steps": 13, "guidance": 6.5, "scheduler": "euler_a",
                "width": 320, "height": 576}  # fmt: skip
    assert restored_values(generation) == expected
    assert generation.random_seed is False
    assert controller.restore_from_png(path)
    assert restored_values(states.generation) == expected
    assert "restored" in states.run.status


def test_strip_metadata_writes_no_text_chunks(controller, states, tmp_path):
    path = save_to_history(Image.new("RGB", (64, 64)), sample_record(), tmp_path, True)
    assert read_png_text(path)[1] == {}
    with pytest.raises(UsageError, match="no generation settings"):
        settings_from_png(path)
    assert controller.restore_from_png(path) is False
    assert "no generation settings" in states.run.error


def test_a1111_only_png_restores(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a castle, misty\nNegative prompt: lowres\nSteps: 20, Sampler: "
                  "DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234, Size: 512x768, "
                  "Model hash: abc123, Model: sd15, Version: v1.10.1")  # fmt: skip
    path = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    generation = GenerationState()
    generation.apply_record(settings_from_png(path))
    assert restored_values(generation) == {
        "prompt": "a castle, misty", "negative_prompt": "lowres", "seed": 1234, "steps": 20,
        "guidance": 7.0, "scheduler": "dpmpp_2m_karras", "width": 512, "height": 768,
    }  # fmt: skip


def test_damaged_chunk_values_are_dropped_not_raised(tmp_path):
    info = PngImagePlugin.PngInfo()
    info.add_text("sdxs_rt", '{"prompt": "ok", "steps": "many", "seed": 5, "width": true}')
    path = tmp_path / "odd.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    assert settings_from_png(path) == {"prompt": "ok", "seed": 5}


SHA = "0123456789abcdef0123456789abcdef01234567"


def test_revision_reaches_the_load_request_and_from_pretrained(controller, states, monkeypatch):
    states.model.update(model="org/tiny-sdxs", revision=SHA)
    request = controller._plan_job().load
    assert (request.model, request.revision) == ("org/tiny-sdxs", SHA)
    seen: dict = {}
    monkeypatch.setattr(Pipeline, "from_pretrained", lambda model, **kw: seen.update(kw))
    request.load()
    assert seen["revision"] == SHA
    states.model.revision = ""
    controller._plan_job().load.load()
    assert seen["revision"] is None  # "": the hub's default branch


def test_restore_takes_the_revision_only_for_the_same_model(controller, states, tmp_path):
    path = save_to_history(Image.new("RGB", (8, 8)), sample_record(revision=SHA), tmp_path)
    states.model.model = "another/model"
    assert controller.restore_from_png(path)
    assert states.model.revision == ""  # a revision belongs to its own repo
    states.model.model = "tiny-sdxs"  # the record's model
    assert controller.restore_from_png(path)
    assert states.model.revision == SHA


# ---------------------------------------------------------------- previews


class MixingDecoder:
    """A VAE stand-in whose pooled colours are nearly linear in the latents, plus fine texture."""

    def __init__(self) -> None:
        self.mix = np.random.default_rng(1).standard_normal((3, 16)).astype(np.float32) * 0.15
        self.calls = 0

    def __call__(self, latents: np.ndarray) -> np.ndarray:
        self.calls += 1
        rgb = np.tanh(np.einsum("ck,bkhw->bchw", self.mix, latents))
        image = rgb.repeat(8, axis=2).repeat(8, axis=3)
        texture = 0.05 * np.sin(np.arange(image.shape[-1], dtype=np.float32))
        return np.clip(image + texture, -1, 1)


def test_previewer_fit_beats_the_mean_colour_and_is_cached(tmp_path):
    decoder = MixingDecoder()
    pipe = Pipeline(fake_components(vae_decoder=decoder, info={"model": "mix", "model_hash": "h"}))
    previewer = LatentPreviewer(pipe, cache_dir=tmp_path)
    projection = previewer.projection
    assert decoder.calls == 3 and previewer.cache_path.is_file()

    held_out = random_latents(2, 16, 16, 16, seed=99)
    decoded = np.stack([np.asarray(im, np.float32) / 255 for im in pipe.decode(held_out)])
    pooled = decoded.reshape(2, 16, 8, 16, 8, 3).mean(axis=(2, 4)).reshape(-1, 3)
    predicted = np.stack([projection.apply(z) for z in held_out]).reshape(-1, 3)
    assert r_squared(pooled, predicted) > 0.5  # the baseline (mean colour) scores 0

    calls = decoder.calls
    again = LatentPreviewer(pipe, cache_dir=tmp_path)
    np.testing.assert_allclose(again.projection.weights, projection.weights)
    assert decoder.calls == calls  # read from the cache: no decode
    rgb = again.to_rgb(held_out[0])
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    assert again.to_qimage(held_out[:1]).size().toTuple() == (128, 128)


def test_previewer_without_a_shipped_map_fits_once_per_vae(tmp_path, monkeypatch):
    monkeypatch.setattr("sdxs_rt_desktop.preview.shipped_dir", lambda: tmp_path / "shipped")
    pipe = Pipeline.from_pretrained(None)  # the built-in model, as if it shipped no map
    previewer = LatentPreviewer(pipe, cache_dir=tmp_path)
    latents = pipe.components.ops.from_host(random_latents(1, 16, 9, 12, seed=5))
    image = previewer.to_qimage(latents)  # a torch tensor, batch of one
    assert (image.width(), image.height()) == (96, 72)
    assert [p.name for p in tmp_path.iterdir()] == [previewer.cache_path.name]
    assert "demo-shapes" in previewer.cache_path.name
