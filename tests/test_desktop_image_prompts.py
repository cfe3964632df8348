"""Desktop image prompts and prompt syntax feedback (pytest-qt, offscreen): the Image prompts list
carries its images and weights into GenerationParams; the prompt boxes name a parse error and
hint at blends, schedules and stripped emphasis as the user types; the library's warnings reach
the window once per run; "Reuse all" keeps prompts as typed and says image prompts are not
restored; a run on the tiny model (which has a vision tower) records its image prompt, and the
built-in demo model (which has none) says why in the section and refuses image prompts."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PIL import Image
from PySide6.QtCore import QSettings, Qt
from sdxs_rt_desktop.app import MainWindow, build_window
from sdxs_rt_desktop.history import save_to_history, settings_from_png
from sdxs_rt_desktop.image_prompts import IMAGE_PROMPTS_NOT_RESTORED
from sdxs_rt_desktop.prompt_check import check_prompt_text
from sdxs_rt_desktop.state import GenerationState, ModelState
from sdxs_rt_desktop.widgets.text import as_sentence

from sdxs_rt.metadata import read_metadata
from tests.test_desktop_widgets import FakeController, drop_event, make_result

TIMEOUT_MS = 120_000
WAIT = 5_000  # ms: the feedback follows the typing after a pause


def ini_settings(folder: Path) -> QSettings:
    return QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)


@pytest.fixture
def window(qtbot: Any, tmp_path: Path) -> MainWindow:
    main_window = build_window(ini_settings(tmp_path), tmp_path / "history", FakeController)
    qtbot.addWidget(main_window)
    return main_window


def picture(folder: Path, name: str, colour: tuple[int, int, int]) -> Path:
    path = folder / name
    Image.new("RGB", (40, 30), colour).save(path)
    return path


@pytest.fixture
def red(tmp_path: Path) -> Path:
    return picture(tmp_path, "red.png", (200, 30, 30))


@pytest.fixture
def green(tmp_path: Path) -> Path:
    return picture(tmp_path, "green.jpg", (30, 200, 30))


# ------------------------------------------------------------------ the list


def test_two_images_and_their_weights_reach_the_params(window, qtbot, red, green):
    panel, generation = window.generation_panel.image_prompts, window.states.generation
    assert panel.add_files([red, green])
    first, second = panel.rows
    assert first.weight == 1.0 and "<image:2>" in second.name_label.text()
    assert not first.thumbnail.pixmap().isNull()
    first.weight_spin.setValue(0.5)
    second.weight_slider.setValue(-150)  # the slider holds hundredths
    assert second.weight_spin.value() == -1.5  # the two controls agree
    params = generation.to_params(seed=3)
    assert params.image_prompts == ((str(red), 0.5), (str(green), -1.5))

    qtbot.mouseClick(panel.rows[0].remove_button, Qt.MouseButton.LeftButton)
    assert generation.to_params(seed=3).image_prompts == ((str(green), -1.5),)
    [row] = panel.rows
    assert row.weight == -1.5 and row.name_label.text() == "green.jpg\n<image:1>"

    qtbot.mouseClick(panel.clear_button, Qt.MouseButton.LeftButton)
    assert generation.to_params(seed=3).image_prompts == () and panel.rows == []


def test_a_file_that_is_no_image_is_named_and_not_added(window, tmp_path, red):
    panel = window.generation_panel.image_prompts
    broken = tmp_path / "notes.png"
    broken.write_text("not a picture")
    assert not panel.add_files([broken, red])
    assert [path for path, _ in window.states.generation.image_prompts] == [str(red)]
    assert "notes.png" in panel.error_label.text() and not panel.error_label.isHidden()


def test_dropping_images_on_the_section_adds_them(window, red, green):
    panel = window.generation_panel.image_prompts
    panel.dropEvent(drop_event([red.with_suffix(".txt"), red, green]))
    assert window.states.generation.image_prompts == ((str(red), 1.0), (str(green), 1.0))
    assert window.controller.calls == []  # not a settings restore, not a run


def test_image_prompts_belong_to_the_session(qtbot, tmp_path, red):
    first = build_window(ini_settings(tmp_path), tmp_path / "history", FakeController)
    qtbot.addWidget(first)
    first.generation_panel.image_prompts.add_files([red])
    first.close()
    again = build_window(ini_settings(tmp_path), tmp_path / "history", FakeController)
    qtbot.addWidget(again)
    assert again.states.generation.image_prompts == ()


# ------------------------------------------------------------------ syntax feedback


def type_prompt(qtbot: Any, window: MainWindow, text: str) -> None:
    edit = window.generation_panel.prompt_edit
    edit.clear()
    qtbot.keyClicks(edit, text)


def test_a_syntax_error_shows_while_typing_and_goes_when_fixed(window, qtbot):
    feedback = window.generation_panel.prompt_feedback
    type_prompt(qtbot, window, "a [red")
    qtbot.waitUntil(lambda: "never closed" in feedback.error, timeout=WAIT)
    assert feedback.error.startswith("The prompt's '[' at character 3") and feedback.hint == ""
    qtbot.keyClicks(window.generation_panel.prompt_edit, "]")
    qtbot.waitUntil(lambda: feedback.error == "", timeout=WAIT)
    assert feedback.error_label.isHidden()


def test_hints_name_a_blend_a_schedule_and_stripped_emphasis(window, qtbot, red):
    feedback = window.generation_panel.prompt_feedback
    window.states.generation.steps = 40
    type_prompt(qtbot, window, "cat::2 dog::1")
    qtbot.waitUntil(lambda: feedback.hint == "blend of 2 parts", timeout=WAIT)
    type_prompt(qtbot, window, "a [red:blue:0.5] circle")
    qtbot.waitUntil(lambda: "switches after step 20 of 40" in feedback.hint, timeout=WAIT)
    window.states.generation.steps = 10  # the steps count too
    qtbot.waitUntil(lambda: "after step 5 of 10" in feedback.hint, timeout=WAIT)
    window.states.generation.update(init_image=str(red), strength=0.6)  # img2img runs 6 of them
    qtbot.waitUntil(lambda: "after step 3 of 6" in feedback.hint, timeout=WAIT)
    type_prompt(qtbot, window, "a (red:1.3) circle")
    qtbot.waitUntil(lambda: "emphasis" in feedback.hint, timeout=WAIT)
    type_prompt(qtbot, window, "a red circle")
    qtbot.waitUntil(lambda: feedback.hint == "" and feedback.error == "", timeout=WAIT)


def test_the_negative_prompt_is_checked_too(window, qtbot):
    feedback = window.generation_panel.negative_feedback
    qtbot.keyClicks(window.generation_panel.negative_edit, "blurry::0")
    qtbot.waitUntil(lambda: "weight" in feedback.error, timeout=WAIT)


def test_image_prompts_count_in_the_blend_and_in_image_names():
    entries = (("/a/cat.png", 1.0), ("/a/dog.png", 0.5))
    assert check_prompt_text("a cat", 4, entries, beside=True).hint == "blend of 3 parts"
    placed = check_prompt_text("a cat:: <image:2>::0.5", 4, entries, beside=True)
    assert placed.hint == "blend of 3 parts"  # the second is placed, not added twice
    assert check_prompt_text("a cat:: <image:dog>", 4, entries, beside=True).hint == (
        "blend of 3 parts"
    )
    missing = check_prompt_text("a cat:: <image:3>", 4, entries, beside=True)
    assert "no image prompt is called that" in missing.error and "3" in missing.error
    assert check_prompt_text("a cat", 4, entries, beside=False).hint == ""  # the negative


def test_generate_refuses_malformed_syntax_before_loading(qtbot, tmp_path):
    from sdxs_rt_desktop.controller import Controller
    from sdxs_rt_desktop.state import RunState

    generation, model, run = GenerationState(), ModelState(), RunState()
    generation.update(prompt="a [red", width=64, height=64)
    model.model = str(tmp_path / "nowhere")  # never loaded: the prompt is refused first
    controller = Controller(generation, model, run, tmp_path / "history")
    try:
        assert not controller.generate()
    finally:
        controller.shutdown()
    assert "never closed" in run.error and not run.running


# ------------------------------------------------------------------ Reuse all

TYPED = "cat::2 (dog:1.3) [red:blue:0.5]"


def image_prompt_record() -> Any:
    entry = {"sha256": "ab" * 32, "source": "file", "name": "ref.png", "weight": 0.5}
    return replace(make_result().record, prompt=TYPED, negative_prompt="[blurry|grainy]",
                   image_prompts=[entry])  # fmt: skip


def test_reuse_all_keeps_prompts_as_typed_and_says_image_prompts_are_not_restored(
    window, qtbot, red
):
    generation = window.states.generation
    window.generation_panel.image_prompts.add_files([red])
    result = make_result(seed=41)
    result.record = image_prompt_record()
    window.controller.image_ready.emit(result)
    qtbot.mouseClick(window.gallery.reuse_all_button, Qt.MouseButton.LeftButton)
    assert (generation.prompt, generation.negative_prompt) == (TYPED, "[blurry|grainy]")
    assert window.generation_panel.prompt_edit.toPlainText() == TYPED
    assert window.states.run.status.endswith(IMAGE_PROMPTS_NOT_RESTORED)
    assert generation.image_prompts == ((str(red), 1.0),)  # the session's own stay as they are


def test_a_png_with_image_prompts_restores_with_the_note(tmp_path):
    path = save_to_history(Image.new("RGB", (64, 64)), image_prompt_record(), tmp_path)
    settings = settings_from_png(path)
    assert settings["image_prompts"][0]["weight"] == 0.5
    generation = GenerationState()
    assert generation.apply_record(settings) == IMAGE_PROMPTS_NOT_RESTORED
    assert generation.prompt == TYPED


# ------------------------------------------------------------------ real runs


@pytest.fixture
def real_window(qtbot: Any, tmp_path: Path) -> MainWindow:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    main_window = build_window(ini_settings(tmp_path), tmp_path / "history")
    qtbot.addWidget(main_window)
    return main_window


def run_to_end(qtbot: Any, window: MainWindow) -> None:
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT_MS):
        window.generate()


def test_an_image_prompt_on_the_tiny_model_is_recorded_with_its_weight(
    real_window, qtbot, tiny_model, red
):
    states = real_window.states
    states.model.model = str(tiny_model)
    states.generation.update(prompt="a cat", steps=2, random_seed=False, seed=5,
                             preview_every=0, width=64, height=64)  # fmt: skip
    panel = real_window.generation_panel.image_prompts
    panel.add_files([red])
    panel.rows[0].weight_spin.setValue(0.75)
    run_to_end(qtbot, real_window)
    assert states.run.error == ""
    item = real_window.gallery.selected()
    [entry] = item.record.image_prompts
    assert (entry["name"], entry["source"], entry["weight"]) == ("red.png", "file", 0.75)
    _, chunk = read_metadata(item.path)
    assert chunk is not None and chunk["image_prompts"] == [entry]
    assert panel.reason == ""  # the tiny model's text encoder has a vision tower


def test_the_demo_model_says_it_has_no_vision_tower_and_refuses_image_prompts(
    real_window, qtbot, red
):
    states = real_window.states
    states.generation.update(prompt="a (red:1.3) circle", steps=2, random_seed=False,
                             seed=1, preview_every=0)  # fmt: skip
    panel = real_window.generation_panel.image_prompts
    assert panel.reason == ""  # not known before the model is loaded
    run_to_end(qtbot, real_window)
    assert states.run.error == ""
    assert panel.reason.startswith("Image prompts cannot be used: ")
    assert "vision tower" in panel.reason
    # The library's warning reached the window, once, for this run.
    warning = real_window.progress_panel.warning_label.text()
    assert warning.lower().count("emphasis") == 1 and "one pooled vector" in warning
    assert not real_window.progress_panel.warning_label.isHidden()

    panel.add_files([red])
    assert not real_window.controller.generate()  # refused before anything runs
    assert as_sentence(states.run.error) == panel.reason
    assert not states.run.running

    states.model.text_encoder = "some/other-encoder"  # another model: not known any more
    assert panel.reason == ""


def test_a_run_without_emphasis_has_no_warning(real_window, qtbot):
    states = real_window.states
    states.run.warning = "left over"
    states.generation.update(prompt="a red circle", steps=1, preview_every=0)
    run_to_end(qtbot, real_window)
    assert states.run.error == "" and states.run.warning == ""
    assert real_window.progress_panel.warning_label.isHidden()
