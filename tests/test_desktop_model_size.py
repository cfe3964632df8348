"""The desktop size follows the model (pytest-qt, offscreen): the built-in demo model starts at
its own 64 px, another model brings its own size, and a size chosen for a model is kept."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from PySide6.QtCore import QSettings
from sdxs_rt_desktop.app import MainWindow, build_window
from sdxs_rt_desktop.model_size import BUILT_IN, native_size

from sdxs_rt.loading import native_image_size, resolve_model
from tests.test_desktop_widgets import FakeController


def settings_file(folder: Path) -> QSettings:
    return QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)


def open_window(qtbot: Any, folder: Path) -> MainWindow:
    window = build_window(settings_file(folder), folder / "history", FakeController)
    qtbot.addWidget(window)
    return window


def shown_size(window: MainWindow) -> tuple[int, int]:
    generation, panel = window.states.generation, window.generation_panel
    assert (panel.width_spin.value(), panel.height_spin.value()) == (
        generation.width,
        generation.height,
    )
    return generation.width, generation.height


def test_the_built_in_model_starts_at_its_own_size(qtbot: Any, tmp_path: Path) -> None:
    window = open_window(qtbot, tmp_path)
    assert shown_size(window) == native_image_size(resolve_model(None)) == (64, 64)
    assert window.states.generation.size_model == BUILT_IN
    assert window.run_buttons.generate_button.isEnabled()


def test_another_model_brings_its_own_size(
    qtbot: Any, tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("torch")  # the tiny model is written with torch
    window = open_window(qtbot, tmp_path)
    model = window.states.model
    window.model_panel.model_path.edit.setText(str(tiny_model))
    window.model_panel.model_path.edit.textEdited.emit(str(tiny_model))  # as typed or browsed
    assert model.model == str(tiny_model)
    assert shown_size(window) == native_image_size(resolve_model(str(tiny_model))) == (576, 576)

    def no_download(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a hub id must not be resolved on the GUI thread")

    monkeypatch.setattr("sdxs_rt_desktop.model_size.resolve_model", no_download)
    model.model = "AiArtLab/sdxs"  # a hub id: its size is unknown here, the size stays
    assert shown_size(window) == (576, 576)
    monkeypatch.undo()
    model.model = ""
    assert shown_size(window) == (64, 64)


def test_a_size_chosen_for_the_model_is_kept_across_restarts(qtbot: Any, tmp_path: Path) -> None:
    first = open_window(qtbot, tmp_path)
    first.states.generation.update(width=128, height=192)
    first.close()
    second = open_window(qtbot, tmp_path)
    assert shown_size(second) == (128, 192)


def test_settings_from_before_the_size_followed_the_model(qtbot: Any, tmp_path: Path) -> None:
    old = settings_file(tmp_path)
    old.setValue("generation/width", 576)  # the old fixed default, and no size_model
    old.setValue("generation/height", 576)
    old.sync()
    assert shown_size(open_window(qtbot, tmp_path)) == (64, 64)


def test_native_size_reads_local_folders_only(tmp_path: Path) -> None:
    assert native_size("") == (64, 64)
    assert native_size(str(tmp_path)) is None  # a folder, but no model
    assert native_size(str(tmp_path / "half-typed")) is None
