"""Desktop widgets (pytest-qt, offscreen): state and widgets stay in sync both ways; the window
routes its actions to the controller (a fake of the Controller's contract here)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QMimeData, QObject, QPointF, QSettings, Qt, QUrl, Signal
from PySide6.QtGui import QColor, QDropEvent, QGuiApplication, QImage
from sdxs_rt_desktop.app import (
    MainWindow,
    build_window,
    default_history_dir,
    install_error_hook,
)
from sdxs_rt_desktop.state import ASPECT_BUCKETS
from sdxs_rt_desktop.widgets.progress_panel import format_eta
from sdxs_rt_desktop.widgets.text import as_sentence

from sdxs_rt.graphs import SizeProfile
from sdxs_rt.metadata import ImageRecord
from sdxs_rt.rng import MAX_SEED


class FakeController(QObject):
    """The Controller's contract: same constructor, methods and signals; records the calls."""

    image_ready = Signal(object)
    preview_ready = Signal(QImage)
    failed = Signal(str)
    finished = Signal(bool)
    build_progress = Signal(str)
    build_finished = Signal(bool, str)

    def __init__(self, generation: Any, model: Any, run: Any, history_dir: Path, parent=None):
        super().__init__(parent)
        self.generation, self.model, self.run = generation, model, run
        self.history_dir = history_dir
        self.results: list[Any] = []
        self.calls: list[Any] = []
        self.restores = True

    def generate(self) -> None:
        self.calls.append("generate")

    def cancel_now(self) -> None:
        self.calls.append("cancel_now")

    def stop_after_image(self) -> None:
        self.calls.append("stop_after_image")

    def reuse_last_seed(self) -> None:
        self.calls.append("reuse_last_seed")

    def restore_from_png(self, path: Any) -> bool:
        self.calls.append(("restore_from_png", Path(path)))
        return self.restores

    def build_engines(self, profile: SizeProfile) -> None:
        self.calls.append(("build_engines", profile))

    def cancel_build(self) -> None:
        self.calls.append("cancel_build")

    def shutdown(self) -> None:
        self.calls.append("shutdown")


@dataclass
class FakeResult:
    path: Path
    seed: int
    record: ImageRecord
    qimage: QImage


def make_result(seed: int = 1234, prompt: str = "a red fox") -> FakeResult:
    record = ImageRecord(
        prompt=prompt, negative_prompt="blurry", steps=12, guidance_scale=3.0, seed=seed,
        width=448, height=576, scheduler="euler_a", scheduler_label="Euler a", model="tiny-sdxs",
        model_hash="abc", backend="torch", precision="fp32", device="cpu", rng="numpy-pcg64",
        version="0.1.0", text_encoder="",
    )  # fmt: skip
    image = QImage(448, 576, QImage.Format.Format_RGB888)
    image.fill(QColor("orange"))
    return FakeResult(Path(f"/history/00001-{seed}.png"), seed, record, image)


def ini_settings(folder: Path) -> QSettings:
    return QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot: Any, tmp_path: Path) -> MainWindow:
    main_window = build_window(ini_settings(tmp_path), tmp_path / "history", FakeController)
    qtbot.addWidget(main_window)
    return main_window


# ------------------------------------------------------------------ generation panel


def test_prompts_sync_both_ways(window: MainWindow) -> None:
    panel, generation = window.generation_panel, window.states.generation
    generation.prompt = "a cat\non a mat"
    assert panel.prompt_edit.toPlainText() == "a cat\non a mat"
    panel.negative_edit.setPlainText("blurry")
    assert generation.negative_prompt == "blurry"
    panel.prompt_edit.setPlainText("a dog")
    assert generation.prompt == "a dog"


def test_widget_edit_emits_once_and_does_not_loop(window: MainWindow) -> None:
    generation, seen = window.states.generation, []
    generation.steps_changed.connect(seen.append)
    window.generation_panel.steps_spin.setValue(17)
    generation.steps = 17
    assert seen == [17]


def test_seed_and_random_toggle(window: MainWindow, qtbot: Any) -> None:
    panel, generation = window.generation_panel, window.states.generation
    generation.update(seed=MAX_SEED, random_seed=False)
    assert panel.seed_edit.text() == str(MAX_SEED)
    assert panel.seed_edit.isEnabled() and not panel.random_seed_check.isChecked()
    panel.seed_edit.clear()
    qtbot.keyClicks(panel.seed_edit, "4242")
    assert generation.seed == 4242
    panel.random_seed_check.setChecked(True)
    assert generation.random_seed and not panel.seed_edit.isEnabled()


def test_reuse_last_seed_button(window: MainWindow, qtbot: Any) -> None:
    button, generation = window.generation_panel.reuse_last_seed_button, window.states.generation
    assert not button.isEnabled()  # nothing generated yet
    generation.last_seed = 99
    assert button.isEnabled()
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
    assert window.controller.calls == ["reuse_last_seed"]


@pytest.mark.parametrize(
    ("name", "widget", "state_value", "widget_value"),
    [
        ("steps", "steps_spin", 25, 8),
        ("guidance", "guidance_spin", 7.5, 1.0),
        ("batch_count", "batch_count_spin", 4, 2),
        ("preview_every", "preview_every_spin", 3, 0),
    ],
)
def test_spin_boxes_sync_both_ways(
    window: MainWindow, name: str, widget: str, state_value: float, widget_value: float
) -> None:
    spin, generation = getattr(window.generation_panel, widget), window.states.generation
    setattr(generation, name, state_value)
    assert spin.value() == state_value
    spin.setValue(widget_value)
    assert getattr(generation, name) == widget_value


def test_scheduler_combo(window: MainWindow) -> None:
    combo, generation = window.generation_panel.scheduler_combo, window.states.generation
    assert combo.currentText() == "Model default" and generation.scheduler == ""
    generation.scheduler = "dpmpp_2m"
    assert combo.currentText() == "DPM++ 2M"
    combo.setCurrentIndex(combo.findData("euler_a"))
    assert generation.scheduler == "euler_a"


def test_strip_metadata_check(window: MainWindow) -> None:
    check, generation = window.generation_panel.strip_metadata_check, window.states.generation
    generation.strip_metadata = True
    assert check.isChecked()
    check.setChecked(False)
    assert generation.strip_metadata is False


def test_size_presets_and_custom_size(window: MainWindow) -> None:
    panel, generation = window.generation_panel, window.states.generation
    panel.size_combo.setCurrentIndex(ASPECT_BUCKETS.index((448, 576)))
    assert (generation.width, generation.height) == (448, 576)
    assert (panel.width_spin.value(), panel.height_spin.value()) == (448, 576)
    generation.update(width=576, height=320)
    assert panel.size_combo.currentText() == "576 × 320"
    panel.width_spin.setValue(768)
    assert generation.width == 768 and panel.size_combo.currentText() == "Custom"
    assert window.run_buttons.generate_button.isEnabled()


def test_invalid_size_disables_generate_and_says_why(window: MainWindow) -> None:
    panel, generate = window.generation_panel, window.run_buttons.generate_button
    panel.width_spin.setValue(500)
    reason = panel.size_error_label.text()
    assert "multiple of 64" in reason and "448 or 512" in reason and reason.endswith(".")
    assert not panel.size_error_label.isHidden()
    assert not generate.isEnabled() and generate.toolTip() == reason
    window.generate()  # the shortcut path is refused too
    assert "generate" not in window.controller.calls
    panel.width_spin.setValue(512)
    assert generate.isEnabled() and panel.size_error_label.isHidden()


# ------------------------------------------------------------------ model panel


def test_model_fields_sync_both_ways(window: MainWindow, qtbot: Any) -> None:
    panel, model = window.model_panel, window.states.model
    model.model = "/models/sdxs"
    assert panel.model_path.edit.text() == "/models/sdxs"
    panel.text_encoder_path.edit.clear()
    qtbot.keyClicks(panel.text_encoder_path.edit, "org/encoder")
    assert model.text_encoder == "org/encoder"
    panel.model_path.edit.clear()
    qtbot.keyClicks(panel.model_path.edit, "AiArtLab/sdxs")
    assert model.model == "AiArtLab/sdxs"


def test_revision_field_syncs_both_ways(window: MainWindow, qtbot: Any) -> None:
    panel, model = window.model_panel, window.states.model
    model.revision = "v1.0"
    assert panel.revision_edit.text() == "v1.0"
    panel.revision_edit.clear()
    qtbot.keyClicks(panel.revision_edit, "0123abcd")
    assert model.revision == "0123abcd"
    assert model.key()[-1] == "0123abcd"  # a new revision means loading again


def test_backend_precision_device_sync_both_ways(window: MainWindow) -> None:
    panel, model = window.model_panel, window.states.model
    model.update(backend="onnx", precision="fp16", device="dml")
    assert panel.backend_combo.currentText() == "ONNX Runtime"
    assert panel.precision_combo.currentText() == "fp16"
    assert panel.device_combo.currentText() == "dml"
    panel.backend_combo.setCurrentIndex(panel.backend_combo.findData("torch"))
    panel.precision_combo.setCurrentIndex(panel.precision_combo.findData("bf16"))
    panel.device_combo.setCurrentText("cuda:1")
    assert (model.backend, model.precision, model.device) == ("torch", "bf16", "cuda:1")


def test_low_vram_box_is_a_pytorch_option_that_reaches_the_load_request(
    window: MainWindow,
) -> None:
    from sdxs_rt_desktop.controller import load_request

    panel, model = window.model_panel, window.states.model
    model.backend = "torch"
    assert not panel.low_vram_box.isHidden() and not panel.low_vram_box.isChecked()
    assert load_request(model).backend_options() == {}
    panel.low_vram_box.setChecked(True)
    assert model.low_vram and load_request(model).low_vram  # a change means loading again
    assert load_request(model).backend_options() == {"low_vram": True}
    model.backend = "onnx"
    assert panel.low_vram_box.isHidden() and load_request(model).backend_options() == {}


def test_tensorrt_engine_sizes_shown(window: MainWindow) -> None:
    panel, model = window.model_panel, window.states.model
    assert panel.engine_row.isHidden()  # torch: no engines to speak of
    model.backend = "tensorrt"
    assert not panel.engine_row.isHidden()
    assert panel.engine_sizes_label.text().startswith("No engines built yet")
    model.engine_sizes = "no engines built yet"  # the controller's word for an empty folder
    assert panel.engine_sizes_label.text().startswith("No engines built yet")
    model.engine_sizes = "320..1024 px per side, batch 1..4"
    assert panel.engine_sizes_label.text() == "Engines cover: 320..1024 px per side, batch 1..4"


def test_build_engines_dialog(window: MainWindow, qtbot: Any) -> None:
    window.states.model.backend = "tensorrt"
    qtbot.mouseClick(window.model_panel.build_engines_button, Qt.MouseButton.LeftButton)
    dialog = window.engine_dialog
    assert dialog is not None and dialog.isVisible()
    dialog.max_batch_spin.setValue(2)
    qtbot.mouseClick(dialog.build_button, Qt.MouseButton.LeftButton)
    assert window.controller.calls == [("build_engines", SizeProfile(max_batch=2))]
    assert not dialog.build_button.isEnabled() and dialog.cancel_build_button.isEnabled()
    qtbot.mouseClick(dialog.cancel_build_button, Qt.MouseButton.LeftButton)
    assert window.controller.calls[-1] == "cancel_build"
    window.controller.build_progress.emit("unet: 40%")
    assert dialog.progress_bar.value() == 40 and "unet: 40%" in dialog.log_view.toPlainText()
    window.controller.build_finished.emit(True, "engines built for 320..1024 px")
    assert dialog.progress_bar.value() == 100 and dialog.build_button.isEnabled()
    assert dialog.log_view.toPlainText().endswith("Engines built for 320..1024 px.")


# ------------------------------------------------------------------ run buttons and feedback


def test_buttons_follow_running(window: MainWindow, qtbot: Any) -> None:
    buttons, run = window.run_buttons, window.states.run
    assert buttons.generate_button.isEnabled()
    assert not buttons.cancel_button.isEnabled() and not buttons.stop_after_button.isEnabled()
    qtbot.mouseClick(buttons.generate_button, Qt.MouseButton.LeftButton)
    run.running = True
    assert not buttons.generate_button.isEnabled() and not window.model_panel.isEnabled()
    qtbot.mouseClick(buttons.stop_after_button, Qt.MouseButton.LeftButton)
    qtbot.mouseClick(buttons.cancel_button, Qt.MouseButton.LeftButton)
    assert window.controller.calls == ["generate", "stop_after_image", "cancel_now"]
    run.running = False
    assert buttons.generate_button.isEnabled() and not buttons.cancel_button.isEnabled()


def test_progress_status_error_and_gpu(window: MainWindow) -> None:
    panel, run = window.progress_panel, window.states.run
    run.update(running=True, step=12, total_steps=40, eta_seconds=8.2, status="Sampling")
    assert panel.progress_bar.format() == "step 12/40 — ETA 0:08"
    assert panel.progress_bar.value() == 12 and panel.progress_bar.maximum() == 40
    assert panel.status_label.text() == "Sampling"
    run.update(running=False, step=40)
    assert panel.progress_bar.format() == "step 40/40"
    assert panel.error_label.isHidden() and panel.gpu_label.isHidden()
    window.controller.failed.emit("out of memory; try a smaller size")
    assert panel.error_label.text() == "Out of memory; try a smaller size."
    run.gpu_info = "NVIDIA H200 — 3.1 / 139.8 GiB"
    assert not panel.gpu_label.isHidden() and panel.gpu_label.text().startswith("NVIDIA")
    assert format_eta(3725) == "1:02:05"


def test_preview_shows_previews_and_results(window: MainWindow) -> None:
    preview = QImage(72, 56, QImage.Format.Format_RGB888)
    preview.fill(QColor("teal"))
    window.controller.preview_ready.emit(preview)
    assert window.preview.image.size() == preview.size()
    window.controller.image_ready.emit(make_result())
    assert window.preview.image.width() == 448


# ------------------------------------------------------------------ gallery


def test_gallery_shows_parameters_and_copies_prompt(window: MainWindow, qtbot: Any) -> None:
    gallery = window.gallery
    assert not gallery.reuse_all_button.isEnabled()
    window.controller.image_ready.emit(make_result(seed=7, prompt="first"))
    window.controller.image_ready.emit(make_result(seed=8, prompt="a red fox"))
    assert gallery.list_widget.count() == 2 and gallery.selected().seed == 8
    details = gallery.details_view.toPlainText()
    assert "Prompt: a red fox" in details and "Seed: 8" in details and "Sampler: Euler a" in details
    qtbot.mouseClick(gallery.copy_prompt_button, Qt.MouseButton.LeftButton)
    assert QGuiApplication.clipboard().text() == "a red fox"
    gallery.list_widget.setCurrentRow(1)
    assert "Prompt: first" in gallery.details_view.toPlainText()


def test_gallery_reuse_seed_and_reuse_all(window: MainWindow, qtbot: Any) -> None:
    gallery, generation = window.gallery, window.states.generation
    window.controller.image_ready.emit(make_result(seed=2**40))
    qtbot.mouseClick(gallery.reuse_seed_button, Qt.MouseButton.LeftButton)
    assert generation.seed == 2**40 and not generation.random_seed
    assert generation.prompt == ""  # reuse seed takes the seed alone
    qtbot.mouseClick(gallery.reuse_all_button, Qt.MouseButton.LeftButton)
    expected = ("a red fox", "blurry", 12, 3.0, "euler_a", 448, 576)
    got = (generation.prompt, generation.negative_prompt, generation.steps, generation.guidance,
           generation.scheduler, generation.width, generation.height)  # fmt: skip
    assert got == expected
    panel = window.generation_panel
    assert panel.prompt_edit.toPlainText() == "a red fox"
    assert panel.size_combo.currentText() == "448 × 576"


# ------------------------------------------------------------------ PNGs, settings, lifecycle


def drop_event(paths: list[Path]) -> QDropEvent:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path)) for path in paths])
    event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime,
                       Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)  # fmt: skip
    event._mime = mime  # keep the data alive as long as the event
    return event


def test_dropping_a_png_restores_its_settings(window: MainWindow, tmp_path: Path) -> None:
    window.dropEvent(drop_event([tmp_path / "notes.txt", tmp_path / "cat.PNG"]))
    assert window.controller.calls == [("restore_from_png", tmp_path / "cat.PNG")]
    assert window.states.run.status == "Settings restored from cat.PNG"
    window.dropEvent(drop_event([tmp_path / "notes.txt"]))
    assert len(window.controller.calls) == 1  # not a PNG: ignored


def test_a_png_without_settings_says_so(window: MainWindow, tmp_path: Path) -> None:
    window.controller.restores = False
    assert window.restore_png(tmp_path / "photo.png") is False
    assert window.progress_panel.error_label.text() == (
        "No generation settings that sdxs-rt can read in photo.png."
    )


def test_settings_persist_across_windows(qtbot: Any, tmp_path: Path) -> None:
    first = build_window(ini_settings(tmp_path), tmp_path, FakeController)
    qtbot.addWidget(first)
    first.generation_panel.prompt_edit.setPlainText("a lighthouse")
    first.generation_panel.size_combo.setCurrentIndex(ASPECT_BUCKETS.index((576, 384)))
    first.states.generation.update(seed=MAX_SEED, random_seed=False, guidance=2.5)
    first.states.model.update(backend="onnx", precision="fp16", model="/m", device="cuda")
    first.states.run.error = "not saved"
    first.close()
    second = build_window(ini_settings(tmp_path), tmp_path, FakeController)
    qtbot.addWidget(second)
    generation, model = second.states.generation, second.states.model
    assert (generation.prompt, generation.width, generation.height) == ("a lighthouse", 576, 384)
    assert (generation.seed, generation.random_seed, generation.guidance) == (MAX_SEED, False, 2.5)
    expected_model = ("onnx", "fp16", "/m", "cuda")
    assert (model.backend, model.precision, model.model, model.device) == expected_model
    assert second.states.run.error == ""
    assert second.generation_panel.prompt_edit.toPlainText() == "a lighthouse"
    assert second.model_panel.backend_combo.currentText() == "ONNX Runtime"


def test_window_builds_and_closes_cleanly(window: MainWindow, qtbot: Any) -> None:
    window.show()
    qtbot.waitExposed(window)
    assert window.close()
    window.close()
    assert window.controller.calls == ["shutdown"]


def test_history_folder_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDXS_RT_HISTORY", raising=False)
    assert default_history_dir() == Path.home() / "Pictures" / "sdxs-rt"
    monkeypatch.setenv("SDXS_RT_HISTORY", "/tmp/elsewhere")
    assert default_history_dir() == Path("/tmp/elsewhere")


def test_unexpected_errors_show_in_the_window(
    window: MainWindow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    install_error_hook(window.states.run)
    sys.excepthook(RuntimeError, RuntimeError("disk full"), None)
    assert window.progress_panel.error_label.text() == "Unexpected error: disk full."


# ------------------------------------------------------------------ with the real controller


@pytest.fixture
def real_window(qtbot: Any, tmp_path: Path) -> MainWindow:
    pytest.importorskip("sdxs_rt_desktop.controller")
    main_window = build_window(ini_settings(tmp_path), tmp_path / "history")
    qtbot.addWidget(main_window)
    return main_window


def test_window_with_the_real_controller_refuses_in_one_sentence(real_window: MainWindow) -> None:
    real_window.states.generation.prompt = "   "
    real_window.generate()
    assert not real_window.states.run.running
    assert real_window.progress_panel.error_label.text().startswith("The prompt is empty")
    assert real_window.close()


@pytest.mark.slow
def test_generate_with_the_built_in_model_fills_preview_and_gallery(
    real_window: MainWindow, qtbot: Any
) -> None:
    generation = real_window.states.generation
    generation.update(prompt="a cat", steps=2, width=128, height=128, preview_every=1,
                      random_seed=False, seed=3)  # fmt: skip
    with qtbot.waitSignal(real_window.controller.finished, timeout=120_000):
        real_window.generate()
    assert real_window.states.run.error == ""
    assert real_window.gallery.list_widget.count() == 1
    assert real_window.gallery.selected().seed == 3 and not real_window.preview.image.isNull()
    assert (
        generation.last_seed == 3
        and real_window.generation_panel.reuse_last_seed_button.isEnabled()
    )


def test_messages_read_as_one_sentence() -> None:
    assert as_sentence("width 500 is not a multiple of 64") == "Width 500 is not a multiple of 64."
    assert as_sentence("cat.png has no settings.") == "cat.png has no settings."
    assert as_sentence("org/model: not found") == "org/model: not found."
    assert as_sentence("  ") == ""
