"""The "Build engines" dialog: the sizes to cover, a progress bar and the builder's log."""

from __future__ import annotations

import re
from typing import Any

from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from sdxs_rt_desktop.widgets.text import ERROR_STYLE, as_sentence

from sdxs_rt.graphs import SizeProfile
from sdxs_rt.params import MAX_SIDE, SIZE_STEP

PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")


def percent_in(message: str) -> int | None:
    """A progress percentage in a log line ('unet 40%'), if it carries one."""
    match = PERCENT.search(message)
    return min(100, round(float(match.group(1)))) if match else None


def size_spin(value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(SIZE_STEP, MAX_SIDE)
    spin.setSingleStep(SIZE_STEP)
    spin.setValue(value)
    return spin


def batch_spin(value: int) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(1, 64)
    spin.setValue(value)
    return spin


class EngineBuildDialog(QDialog):
    """Builds TensorRT engines through `builder.build_engines(profile)`.

    `builder` is the controller: it runs the build off the GUI thread and reports with
    `build_progress(str)` and `build_finished(bool, str)`.
    """

    def __init__(self, builder: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Build TensorRT engines")
        self.builder = builder
        self.building = False
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel("Sizes and batch the engines must cover (built on this GPU):"))
        layout.addLayout(self._make_profile_form(SizeProfile()))
        layout.addWidget(self._make_progress())
        layout.addWidget(self._make_log(), 1)
        layout.addWidget(self.result_label)
        layout.addWidget(self._make_buttons())
        builder.build_progress.connect(self.on_progress)
        builder.build_finished.connect(self.on_finished)
        self.resize(560, 420)

    def _make_profile_form(self, defaults: SizeProfile) -> QFormLayout:
        self.min_size_spin = size_spin(defaults.min_size)
        self.opt_size_spin = size_spin(defaults.opt_size)
        self.max_size_spin = size_spin(defaults.max_size)
        self.max_batch_spin = batch_spin(defaults.max_batch)
        form = QFormLayout()
        form.addRow("Smallest side", self.min_size_spin)
        form.addRow("Fastest at", self.opt_size_spin)
        form.addRow("Largest side", self.max_size_spin)
        form.addRow("Largest batch", self.max_batch_spin)
        return form

    def _make_progress(self) -> QProgressBar:
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(0)
        return self.progress_bar

    def _make_log(self) -> QPlainTextEdit:
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setPlaceholderText("The builder's log appears here.")
        self.result_label = QLabel()
        self.result_label.setWordWrap(True)
        return self.log_view

    def _make_buttons(self) -> QDialogButtonBox:
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.build_button = QPushButton("Build")
        self.build_button.setDefault(True)
        buttons.addButton(self.build_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.build_button.clicked.connect(self.start_build)
        self.cancel_build_button = QPushButton("Cancel build")
        self.cancel_build_button.setEnabled(False)
        buttons.addButton(self.cancel_build_button, QDialogButtonBox.ButtonRole.ActionRole)
        self.cancel_build_button.clicked.connect(self.cancel_build)
        buttons.rejected.connect(self.reject)
        return buttons

    def profile(self) -> SizeProfile:
        min_size, opt_size, max_size = sorted(
            spin.value() for spin in (self.min_size_spin, self.opt_size_spin, self.max_size_spin)
        )
        max_batch = self.max_batch_spin.value()
        return SizeProfile(min_size=min_size, opt_size=opt_size, max_size=max_size,
                           max_batch=max_batch, opt_batch=1)  # fmt: skip

    def start_build(self) -> None:
        profile = self.profile()
        self._set_building(True)
        self.progress_bar.setRange(0, 0)  # busy until the builder reports a percentage
        self.log_view.appendPlainText(f"Building engines for {profile.describe()}...")
        self.builder.build_engines(profile)

    def _set_building(self, building: bool) -> None:
        self.building = building
        self.build_button.setEnabled(not building)
        self.cancel_build_button.setEnabled(building)

    def cancel_build(self) -> None:
        self.log_view.appendPlainText("Cancelling...")
        self.builder.cancel_build()

    def on_progress(self, message: str) -> None:
        self.log_view.appendPlainText(message)
        percent = percent_in(message)
        if percent is not None:
            self.progress_bar.setRange(0, 100)
            self.progress_bar.setValue(percent)

    def on_finished(self, ok: bool, message: str) -> None:
        self._set_building(False)
        self.progress_bar.setRange(0, 100)
        self.progress_bar.setValue(100 if ok else 0)
        text = as_sentence(message) or ("Engines built." if ok else "The build failed.")
        self.log_view.appendPlainText(text)
        self.result_label.setText(text)
        self.result_label.setStyleSheet("" if ok else ERROR_STYLE)
