"""The model panel shows `sdxs-rt check`'s report for the chosen model (pytest-qt, offscreen)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")

from sdxs_rt_desktop.state import ModelState
from sdxs_rt_desktop.widgets.model_panel import ModelPanel
from sdxs_rt_desktop.widgets.model_report_view import NOT_DIFFUSERS
from sdxs_rt_desktop.widgets.text import ERROR_STYLE

from sdxs_rt.model_report_text import OK_LINE


@pytest.fixture
def panel(qtbot: Any) -> ModelPanel:
    widget = ModelPanel(ModelState())
    qtbot.addWidget(widget)
    return widget


def choose_model(panel: ModelPanel, folder: str) -> None:
    """As the Browse... dialog does: set the text and report it as an edit."""
    panel.model_path.edit.setText(folder)
    panel.model_path.edit.textEdited.emit(folder)


def test_choosing_a_model_shows_its_report(panel: ModelPanel, tiny_model: Path, qtbot: Any) -> None:
    view = panel.report_view
    choose_model(panel, str(tiny_model))
    qtbot.waitUntil(lambda: str(tiny_model) in view.report_edit.toPlainText(), timeout=5000)
    text = view.report_edit.toPlainText()
    assert "U-Net: unet/ (named by model_index.json)" in text
    assert "XLM-R 128 wide, 2 layers, 2 heads" in text
    assert view.report_edit.isReadOnly() and view.verdict_label.text() == OK_LINE


def test_a_broken_model_shows_the_error_sentence(
    panel: ModelPanel, tmp_path: Path, qtbot: Any
) -> None:
    view = panel.report_view
    choose_model(panel, str(tmp_path / "missing"))
    qtbot.waitUntil(lambda: "does not exist" in view.verdict_label.text(), timeout=5000)
    assert view.verdict_label.styleSheet() == ERROR_STYLE
    assert view.verdict_label.text().endswith(".")


def test_an_exported_model_is_not_checked(panel: ModelPanel, qtbot: Any) -> None:
    view = panel.report_view
    panel.model.backend = "onnx"
    qtbot.waitUntil(lambda: view.verdict_label.text() == NOT_DIFFUSERS, timeout=5000)
    assert view.report_edit.toPlainText() == ""
