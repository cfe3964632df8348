"""Desktop image inputs (pytest-qt, offscreen): the mask editor paints, erases, inverts and clears
at the init image's pixel size; GenerationState carries the inputs into GenerationParams; the
gallery's "Use as input" and "Vary this image"; "Reuse all" of an img2img image; and a run on
the built-in model that starts from an image."""

from __future__ import annotations

import os
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PIL import Image
from PySide6.QtCore import QPointF, QSettings, Qt
from sdxs_rt_desktop.app import MainWindow, build_window
from sdxs_rt_desktop.history import save_to_history, settings_from_png
from sdxs_rt_desktop.state import (
    DEFAULT_VARIATION_STRENGTH,
    INPUT_NOT_RESTORED,
    INPUTS_NOT_RESTORED,
    GenerationState,
)
from sdxs_rt_desktop.widgets.mask_editor import MaskEditor

from tests.test_desktop_widgets import FakeController, make_result

TIMEOUT_MS = 120_000
IMAGE_SIZE = (96, 64)  # width, height


def ini_settings(folder: Path) -> QSettings:
    return QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot: Any, tmp_path: Path) -> MainWindow:
    main_window = build_window(ini_settings(tmp_path), tmp_path / "history", FakeController)
    qtbot.addWidget(main_window)
    return main_window


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A 96 x 64 picture: red left half, green right half."""
    pixels = np.zeros((IMAGE_SIZE[1], IMAGE_SIZE[0], 3), np.uint8)
    pixels[:, : IMAGE_SIZE[0] // 2] = (200, 30, 30)
    pixels[:, IMAGE_SIZE[0] // 2 :] = (30, 200, 30)
    path = tmp_path / "photo.png"
    Image.fromarray(pixels).save(path)
    return path


def mask_array(generation: GenerationState) -> np.ndarray:
    assert generation.mask is not None
    assert generation.mask.mode == "L" and generation.mask.size == IMAGE_SIZE
    return np.asarray(generation.mask)


def drag(qtbot: Any, editor: MaskEditor, points: list[tuple[float, float]]) -> None:
    """A left-button stroke through image pixel coordinates, as the user's mouse makes it."""
    where = [editor.to_widget(QPointF(x, y)).toPoint() for x, y in points]
    qtbot.mousePress(editor, Qt.MouseButton.LeftButton, pos=where[0])
    for point in where[1:]:
        qtbot.mouseMove(editor, point)
    qtbot.mouseRelease(editor, Qt.MouseButton.LeftButton, pos=where[-1])


Point = tuple[float, float]


def distance_to_segment(shape: tuple[int, int], start: Point, end: Point) -> np.ndarray:
    """Each pixel centre's distance to the segment start-end (image coordinates)."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / (dx * dx + dy * dy), 0, 1)
    return np.hypot(xs - (x0 + t * dx), ys - (y0 + t * dy))


@pytest.fixture
def editor_window(window: MainWindow, qtbot: Any, photo: Path) -> MainWindow:
    window.states.generation.init_image = str(photo)
    window.show()
    qtbot.waitExposed(window)
    editor = window.generation_panel.image_input.mask_editor
    editor.resize(300, 200)  # 96 x 64 shown at 3x, so a screen pixel is a third of an image one
    return window


# ------------------------------------------------------------------ the mask editor


def test_a_stroke_paints_255_under_the_brush_and_nothing_elsewhere(editor_window, qtbot):
    generation = editor_window.states.generation
    panel = editor_window.generation_panel.image_input
    editor = panel.mask_editor
    assert generation.mask is None  # nothing painted: plain img2img
    panel.brush_spin.setValue(10)
    drag(qtbot, editor, [(20, 30), (40, 30), (60, 30)])
    mask = mask_array(generation)
    assert set(np.unique(mask)) == {0, 255}  # no antialiasing: painted or not
    distance = distance_to_segment(mask.shape, (20, 30), (60, 30))
    assert (mask[distance <= 3.5] == 255).all()  # well inside the 10-px brush
    assert (mask[distance >= 6.5] == 0).all()  # well outside it
    assert mask[30, 40] == 255 and mask[5, 5] == 0 and mask[30, 90] == 0


def test_the_eraser_clears_invert_flips_and_clear_empties(editor_window, qtbot):
    generation = editor_window.states.generation
    panel = editor_window.generation_panel.image_input
    panel.brush_spin.setValue(20)
    drag(qtbot, panel.mask_editor, [(20, 32), (70, 32)])
    painted = mask_array(generation).copy()
    assert painted[32, 45] == 255

    panel.brush_spin.setValue(6)
    qtbot.mouseClick(panel.eraser_button, Qt.MouseButton.LeftButton)
    assert panel.eraser_button.isChecked() and panel.mask_editor.eraser
    drag(qtbot, panel.mask_editor, [(45, 20), (45, 44)])
    erased = mask_array(generation)
    assert erased[32, 45] == 0 and erased[32, 25] == 255 and erased[32, 65] == 255
    assert (erased <= painted).all()  # the eraser only takes away

    qtbot.mouseClick(panel.invert_button, Qt.MouseButton.LeftButton)
    assert (mask_array(generation) == 255 - erased).all()

    qtbot.mouseClick(panel.clear_mask_button, Qt.MouseButton.LeftButton)
    assert generation.mask is None
    assert not np.asarray(panel.mask_editor.mask_pil() or Image.new("L", IMAGE_SIZE)).any()


def test_a_mask_file_loads_at_the_image_size_only(editor_window, tmp_path):
    generation = editor_window.states.generation
    panel = editor_window.generation_panel.image_input
    wrong = tmp_path / "small.png"
    Image.new("L", (32, 32), 255).save(wrong)
    assert panel.load_mask(str(wrong)) is False
    assert "32x32" in panel.error_label.text() and generation.mask is None
    right = tmp_path / "mask.png"
    pixels = np.zeros((IMAGE_SIZE[1], IMAGE_SIZE[0]), np.uint8)
    pixels[10:20, 30:50] = 255
    Image.fromarray(pixels).save(right)
    assert panel.load_mask(str(right)) and panel.error_label.text() == ""
    assert (mask_array(generation) == pixels).all()


def test_a_new_input_image_drops_the_mask(editor_window, qtbot, tmp_path):
    generation = editor_window.states.generation
    drag(qtbot, editor_window.generation_panel.image_input.mask_editor, [(30, 30), (40, 30)])
    assert generation.mask is not None
    other = tmp_path / "other.png"
    Image.new("RGB", (128, 128), "blue").save(other)
    generation.init_image = str(other)
    assert generation.mask is None
    editor = editor_window.generation_panel.image_input.mask_editor
    assert (editor.mask.width(), editor.mask.height()) == (128, 128)


# ------------------------------------------------------------------ state -> params


def test_to_params_carries_the_image_inputs(editor_window, qtbot, photo):
    generation = editor_window.states.generation
    panel = editor_window.generation_panel.image_input
    generation.update(prompt="a fox", batch_count=2)
    panel.strength_spin.setValue(0.6)
    assert panel.strength_slider.value() == 60
    panel.resize_combo.setCurrentIndex(panel.resize_combo.findData("stretch"))
    panel.mask_blur_spin.setValue(9)
    panel.paste_back_check.setChecked(False)
    panel.outpaint_spins["left"].setValue(64)
    panel.outpaint_spins["bottom"].setValue(128)
    drag(qtbot, panel.mask_editor, [(10, 10), (30, 10)])
    panel_ = editor_window.generation_panel
    panel_.variation_seed_edit.setText("")
    qtbot.keyClicks(panel_.variation_seed_edit, "987")
    panel_.variation_strength_spin.setValue(0.25)

    params = generation.to_params(seed=11)
    assert params.init_image == str(photo)
    assert (params.strength, params.resize_mode, params.mask_blur) == (0.6, "stretch", 9)
    assert params.paste_back is False and params.outpaint == (64, 0, 0, 128)
    assert params.mask is generation.mask and np.asarray(params.mask)[10, 20] == 255
    assert (params.variation_seed, params.variation_strength) == (987, 0.25)
    assert (params.width, params.height) == (None, None)  # the input's size (library rule)
    assert panel.output_size_label.text() == "Output 128 × 192 px"  # 96 -> 64, + 64; 64 + 128

    generation.size_from_input = False
    assert (generation.to_params(seed=11).width, generation.to_params(seed=11).height) == (
        generation.width,
        generation.height,
    )
    assert panel_.width_spin.isEnabled()


def test_auto_strength_and_no_input_image(window):
    generation = window.states.generation
    generation.update(prompt="a fox", outpaint_left=64, mask_blur=2)
    params = generation.to_params(seed=1)  # no init image: text to image, inputs ignored
    assert params.init_image is None and params.outpaint is None and params.mask is None
    assert (params.width, params.height) == (generation.width, generation.height)
    assert params.variation_seed is None  # variation strength 0: off
    generation.init_image = "/somewhere/photo.png"
    assert generation.to_params(seed=1).strength is None  # "Auto": 0.75, 1.0 when outpainting
    panel = window.generation_panel.image_input
    assert panel.error_label.text() == "Init image /somewhere/photo.png does not exist."
    assert not panel.controls.isEnabled()  # nothing to paint on


def test_outpaint_amounts_that_are_no_multiple_of_64_are_named(editor_window):
    generation = editor_window.states.generation
    panel = editor_window.generation_panel.image_input
    panel.outpaint_spins["right"].setValue(100)
    assert generation.outpaint_right == 100
    assert "Outpaint right 100 is not a multiple of 64" in panel.output_size_label.text()


def test_image_inputs_of_a_session_are_not_saved(qtbot, tmp_path, photo):
    first = build_window(ini_settings(tmp_path), tmp_path, FakeController)
    qtbot.addWidget(first)
    first.states.generation.update(init_image=str(photo), strength=0.4, outpaint_top=64,
                                   variation_strength=0.5, mask_blur=7)  # fmt: skip
    first.states.generation.mask = Image.new("L", IMAGE_SIZE, 255)
    first.close()
    second = build_window(ini_settings(tmp_path), tmp_path, FakeController)
    qtbot.addWidget(second)
    generation = second.states.generation
    assert (generation.init_image, generation.mask, generation.outpaint_top) == ("", None, 0)
    assert generation.variation_strength == 0.0
    assert (generation.strength, generation.mask_blur) == (0.4, 7)  # preferences persist


# ------------------------------------------------------------------ gallery and Reuse all


def test_use_as_input_sets_the_init_image(window, qtbot, tmp_path):
    gallery, generation = window.gallery, window.states.generation
    result = make_result(seed=5)
    result.path = tmp_path / "00001-5.png"
    result.qimage.save(str(result.path))
    window.controller.image_ready.emit(result)
    qtbot.mouseClick(gallery.use_as_input_button, Qt.MouseButton.LeftButton)
    assert generation.init_image == str(result.path)
    panel = window.generation_panel.image_input
    assert panel.input_size == (448, 576) and panel.controls.isEnabled()
    assert not panel.thumbnail.pixmap().isNull()
    assert window.states.run.status == "00001-5.png is the input image"
    qtbot.mouseClick(panel.clear_button, Qt.MouseButton.LeftButton)
    assert generation.init_image == "" and not panel.controls.isEnabled()


def test_vary_this_image_sets_the_variation_fields(window, qtbot):
    gallery, generation = window.gallery, window.states.generation
    generation.update(random_seed=True, prompt="something else")
    window.controller.image_ready.emit(make_result(seed=2**40, prompt="a red fox"))
    qtbot.mouseClick(gallery.vary_button, Qt.MouseButton.LeftButton)
    assert (generation.seed, generation.random_seed) == (2**40, False)
    assert generation.prompt == "a red fox" and (generation.width, generation.height) == (448, 576)
    assert generation.variation_strength == DEFAULT_VARIATION_STRENGTH
    first_variation = generation.variation_seed
    params = generation.to_params(seed=generation.seed)
    assert (params.variation_seed, params.variation_strength) == (first_variation, 0.3)
    assert str(first_variation) in window.states.run.status
    panel = window.generation_panel
    assert panel.variation_seed_edit.text() == str(first_variation)
    qtbot.mouseClick(gallery.vary_button, Qt.MouseButton.LeftButton)
    assert generation.variation_seed != first_variation  # a new random one each time (2**-32)


def img2img_record(**changes: Any):
    record = make_result(seed=77).record
    values = dict(strength=0.45, resize_mode="stretch", mask_blur=6, paste_back=False,
                  outpaint=[0, 64, 0, 0], init_image={"sha256": "ab" * 32, "source": "file",
                  "name": "cat.png"}, variation_seed=31, variation_strength=0.2)  # fmt: skip
    values.update(changes)
    return replace(record, **values)


def test_reuse_all_restores_image_settings_and_says_the_input_is_not(window, qtbot):
    gallery, generation = window.gallery, window.states.generation
    result = make_result(seed=77)
    result.record = img2img_record()
    window.controller.image_ready.emit(result)
    qtbot.mouseClick(gallery.reuse_all_button, Qt.MouseButton.LeftButton)
    got = (generation.strength, generation.resize_mode, generation.mask_blur,
           generation.paste_back, generation.outpaint(), generation.variation_seed,
           generation.variation_strength, generation.init_image)  # fmt: skip
    assert got == (0.45, "stretch", 6, False, (0, 64, 0, 0), 31, 0.2, "")
    assert window.states.run.status.endswith(INPUT_NOT_RESTORED)

    result.record = img2img_record(mask={"sha256": "cd" * 32, "source": "pixels", "name": None})
    qtbot.mouseClick(gallery.reuse_all_button, Qt.MouseButton.LeftButton)
    assert window.states.run.status.endswith(INPUTS_NOT_RESTORED)

    window.controller.image_ready.emit(make_result(seed=78))  # from noise, no variation
    qtbot.mouseClick(gallery.reuse_all_button, Qt.MouseButton.LeftButton)
    assert generation.variation_strength == 0.0 and generation.strength == 0.45
    assert window.states.run.status == "Settings of 00001-78.png reused"


def test_a_png_of_an_img2img_run_restores_through_its_chunk(tmp_path):
    record = img2img_record()
    path = save_to_history(Image.new("RGB", (64, 64)), record, tmp_path)
    settings = settings_from_png(path)
    assert settings["paste_back"] is False and settings["outpaint"] == [0, 64, 0, 0]
    generation = GenerationState()
    assert generation.apply_record(settings) == INPUT_NOT_RESTORED
    assert (generation.strength, generation.mask_blur, generation.variation_seed) == (0.45, 6, 31)
    assert asdict(record)["init_image"]["name"] == "cat.png"


def test_dropping_an_image_on_the_thumbnail_sets_the_input(window, photo):
    from tests.test_desktop_widgets import drop_event

    panel = window.generation_panel.image_input
    panel.thumbnail.dropEvent(drop_event([photo.with_suffix(".txt"), photo]))
    assert window.states.generation.init_image == str(photo)
    assert window.controller.calls == []  # not a settings restore


# ------------------------------------------------------------------ a real run


@pytest.fixture
def real_window(qtbot: Any, tmp_path: Path) -> MainWindow:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    main_window = build_window(ini_settings(tmp_path), tmp_path / "history")
    qtbot.addWidget(main_window)
    return main_window


def test_generate_from_an_init_image_with_a_mask_records_its_strength(real_window, qtbot, photo):
    generation = real_window.states.generation
    generation.update(prompt="a red circle", steps=4, random_seed=False, seed=3,
                      preview_every=0, init_image=str(photo), strength=0.5,
                      mask_blur=0)  # fmt: skip
    real_window.show()
    qtbot.waitExposed(real_window)
    editor = real_window.generation_panel.image_input.mask_editor
    editor.resize(300, 200)
    editor.brush_size = 24
    drag(qtbot, editor, [(48, 32)])  # a dot in the middle; the edges are kept
    with qtbot.waitSignal(real_window.controller.finished, timeout=TIMEOUT_MS):
        real_window.generate()
    assert real_window.states.run.error == ""
    item = real_window.gallery.selected()
    record = item.record
    assert record.strength == 0.5 and record.steps == 4
    assert (record.width, record.height) == (64, 64)  # 96 x 64 rounded down to 64
    assert record.init_image["name"] == "photo.png" and record.mask["source"] == "pixels"
    assert settings_from_png(item.path)["strength"] == 0.5
    saved = np.asarray(Image.open(item.path).convert("RGB"))
    original = np.asarray(Image.open(photo).convert("RGB").crop((16, 0, 80, 64)))  # centre crop
    assert (saved[:4, :4] == original[:4, :4]).all()  # pasted back outside the mask


def test_restoring_an_img2img_png_says_the_input_is_not_restored(qtbot, tmp_path):
    from sdxs_rt_desktop.controller import Controller
    from sdxs_rt_desktop.state import ModelState, RunState

    generation, run = GenerationState(), RunState()
    controller = Controller(generation, ModelState(), run, tmp_path / "history")
    try:
        path = save_to_history(Image.new("RGB", (64, 64)), img2img_record(), tmp_path)
        assert controller.restore_from_png(path)
    finally:
        controller.shutdown()
    assert run.status == f"Settings restored from {path.name}; {INPUT_NOT_RESTORED}"
    assert (generation.strength, generation.variation_seed, generation.init_image) == (0.45, 31, "")
