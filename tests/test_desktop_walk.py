"""The desktop "Latent walk" dialog (pytest-qt, offscreen): the keyframes and options it shows
are what it renders; a real walk on the built-in demo model puts every frame in the gallery and
the history folder (with the library's walk metadata) and writes the animation beside them;
refusals name the problem; Cancel now stops the walk with no animation."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")
pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image
from sdxs_rt_desktop.app import AppStates, MainWindow
from sdxs_rt_desktop.controller import Controller
from sdxs_rt_desktop.history import settings_from_png
from sdxs_rt_desktop.state import GenerationState, ModelState, RunState
from sdxs_rt_desktop.widgets.walk_dialog import WalkDialog

from sdxs_rt.walk import Keyframe

TIMEOUT_MS = 120_000
RED = "a red circle on a white background"
BLUE = "a blue circle on a white background"


@pytest.fixture
def window(qtbot, tmp_path: Path):
    generation = GenerationState()
    generation.update(prompt=RED, negative_prompt="", width=64, height=64, steps=3,
                      guidance=2.0, random_seed=False, seed=11, preview_every=0)  # fmt: skip
    states = AppStates(generation, ModelState(), RunState())
    controller = Controller(states.generation, states.model, states.run, tmp_path / "history")
    window = MainWindow(states, controller, tmp_path / "history")
    qtbot.addWidget(window)
    yield SimpleNamespace(window=window, states=states, controller=controller)
    controller.shutdown()


def test_dialog_shows_keyframes_and_options_it_renders(window):
    dialog = window.window.open_walk_dialog()
    assert isinstance(dialog, WalkDialog) and dialog.isVisible()
    assert dialog.keyframes() == [Keyframe(RED, 11), Keyframe(RED, 11)]  # prefilled
    assert not any(row.remove_button.isEnabled() for row in dialog.rows)  # at least two
    dialog.remove_keyframe(dialog.rows[0])
    assert len(dialog.rows) == 2

    dialog.rows[1].prompt_edit.setText(BLUE)
    dialog.rows[1].seed_spin.setValue(2**32 - 1)  # random seeds go past a QSpinBox
    third = dialog.add_keyframe()
    assert third.keyframe() == Keyframe(BLUE, 2**32 - 1)  # a copy of the last one
    assert all(row.remove_button.isEnabled() for row in dialog.rows)
    third.prompt_edit.setText("a green square")
    third.seed_spin.setValue(5)
    dialog.frames_spin.setValue(4)
    dialog.animation_combo.setCurrentIndex(dialog.animation_combo.findData("gif"))
    dialog.fps_spin.setValue(12.5)
    assert dialog.keyframes() == [
        Keyframe(RED, 11),
        Keyframe(BLUE, 2**32 - 1),
        Keyframe("a green square", 5),
    ]
    assert (dialog.frames_between(), dialog.animation(), dialog.fps()) == (4, "gif", 12.5)
    assert dialog.frame_count() == 11 and "11 frames" in dialog.frame_count_label.text()
    dialog.animation_combo.setCurrentIndex(dialog.animation_combo.findData(""))
    assert dialog.animation() == "" and not dialog.fps_spin.isEnabled()

    dialog.remove_keyframe(dialog.rows[0])
    assert dialog.keyframes() == [Keyframe(BLUE, 2**32 - 1), Keyframe("a green square", 5)]

    # opened again once closed: prefilled from the Generation settings as they are now
    dialog.close()
    window.states.generation.update(prompt=BLUE, seed=3)
    assert window.window.open_walk_dialog() is dialog
    assert dialog.keyframes() == [Keyframe(BLUE, 3), Keyframe(BLUE, 3)]


def test_render_refuses_an_empty_keyframe_before_anything_runs(window, tmp_path):
    dialog = window.window.open_walk_dialog()
    dialog.rows[1].prompt_edit.setText("  ")
    assert dialog.start_walk() is False
    run = window.states.run
    assert not run.running and run.error == "keyframe 2's prompt is empty"
    assert "Keyframe 2's prompt is empty." in dialog.error_label.text()
    assert dialog.render_button.isEnabled()
    assert not (tmp_path / "history").exists() or not any((tmp_path / "history").iterdir())


def test_walk_on_the_demo_model_fills_the_gallery_and_writes_the_animation(qtbot, window):
    dialog = window.window.open_walk_dialog()
    dialog.rows[1].prompt_edit.setText(BLUE)
    dialog.frames_spin.setValue(1)
    dialog.animation_combo.setCurrentIndex(dialog.animation_combo.findData("gif"))
    dialog.fps_spin.setValue(4)
    statuses: list[str] = []
    window.states.run.status_changed.connect(statuses.append)
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT_MS) as blocker:
        assert dialog.start_walk()
        assert not dialog.render_button.isEnabled() and dialog.cancel_button.isEnabled()
    assert blocker.args == [False]
    run = window.states.run
    assert run.error == "" and run.status == "Done"
    assert (run.step, run.total_steps) == (9, 9)  # 3 frames of 3 steps
    assert "Frame 2/3: step 1/3" in statuses and "Frame 3/3: step 3/3" in statuses

    gallery = window.window.gallery.items  # newest first
    assert len(gallery) == 3
    frames = list(reversed(gallery))
    history = window.controller.history_dir
    assert sorted(history.glob("*.png")) == [item.path for item in frames]
    assert [item.path.name for item in frames] == ["00000-11.png", "00001-11.png", "00002-11.png"]
    records = [settings_from_png(item.path) for item in frames]
    assert [r["prompt"] for r in records] == [RED, RED, BLUE]
    assert records[1]["walk_prompt"] == BLUE and records[1]["walk_t"] == 0.5
    assert "walk_t" not in records[0] and "walk_t" not in records[2]  # keyframes: plain

    # the frames' colours: red, then something between, then blue
    def red_minus_blue(item) -> float:
        image = Image.open(item.path).convert("RGB")
        pixels = list(image.getdata())
        return sum(r - b for r, _, b in pixels) / len(pixels)

    shades = [red_minus_blue(item) for item in frames]
    assert shades[0] > shades[1] > shades[2]

    animation = history / "00000-11-walk.gif"
    assert dialog.animation_path == animation
    assert str(animation) in dialog.status_label.text()
    assert sorted(p.name for p in history.iterdir()) == [
        "00000-11-walk.gif", "00000-11.png", "00001-11.png", "00002-11.png",
    ]  # fmt: skip
    with Image.open(animation) as gif:
        assert gif.n_frames == 3 and gif.size == (64, 64)
        assert gif.info["duration"] == 250


def test_cancel_now_stops_the_walk_without_an_animation(qtbot, window):
    window.states.generation.update(steps=20)
    dialog = window.window.open_walk_dialog()
    dialog.rows[1].prompt_edit.setText(BLUE)
    dialog.frames_spin.setValue(3)

    def on_step(step: int) -> None:
        if step == 22 and dialog.cancel_button.isEnabled():  # frame 2, step 2
            dialog.cancel_button.click()

    window.states.run.step_changed.connect(on_step)
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT_MS) as blocker:
        assert dialog.start_walk()
    assert blocker.args == [True]
    assert window.states.run.status == "Cancelled" and window.states.run.error == ""
    history = window.controller.history_dir
    assert [p.name for p in history.iterdir()] == ["00000-11.png"]  # frame 1 only
    assert len(window.window.gallery.items) == 1 and dialog.animation_path is None
    assert dialog.render_button.isEnabled() and not dialog.cancel_button.isEnabled()
