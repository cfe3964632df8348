"""The model check in the model panel: `sdxs-rt check`'s report for the chosen model.

Filled from the same report function as the CLI (configs and safetensors headers only, no
weights: milliseconds for a local folder), a moment after the model, its revision or the text
encoder changes, so typing a path does not check every keystroke. It runs on the GUI thread
on purpose: the check reads hub files from the cache only, which it arranges process-wide,
and the panel is disabled while a run loads a model.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QEvent, QTimer
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import QLabel, QPlainTextEdit, QVBoxLayout, QWidget
from sdxs_rt_desktop.state import ModelState
from sdxs_rt_desktop.widgets.text import ERROR_STYLE, as_sentence

from sdxs_rt.backend_table import find_backend
from sdxs_rt.errors import SdxsError

DELAY_MS = 400
WATCHED = ("model", "revision", "text_encoder", "backend")  # "revision" where the state has it
NOT_DIFFUSERS = (
    "The check reads diffusers-format models (the PyTorch backend's); an exported folder is "
    "described by its manifest.json."
)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    verdict: str  # the OK line or the first error sentence
    text: str  # the whole report, as `sdxs-rt check` prints it


def check_model(model: ModelState) -> CheckResult:
    """The report for what the model panel names now."""
    entry = find_backend(model.backend)
    if entry is None or entry.exported:
        return CheckResult(True, NOT_DIFFUSERS, "")
    from sdxs_rt.model_report import build_report
    from sdxs_rt.model_report_text import OK_LINE, format_report

    revision = getattr(model, "revision", "") or None
    try:
        report = build_report(model.model or None, model.text_encoder or None, None, revision)
    except SdxsError as exc:  # e.g. a revision given for a local folder
        return CheckResult(False, as_sentence(str(exc)), "")
    verdict = OK_LINE if not report.errors else as_sentence(report.errors[0].message)
    return CheckResult(not report.errors, verdict, format_report(report))


class ModelReportView(QWidget):
    """A verdict line (red on a problem) above the read-only report."""

    def __init__(self, model: ModelState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model
        self.verdict_label = QLabel()
        self.verdict_label.setWordWrap(True)
        self.report_edit = QPlainTextEdit()
        self.report_edit.setReadOnly(True)
        self.report_edit.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.report_edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.report_edit.setMinimumHeight(160)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.verdict_label)
        layout.addWidget(self.report_edit)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DELAY_MS)
        self.timer.timeout.connect(self.refresh)
        for name in WATCHED:
            if (signal := getattr(model, f"{name}_changed", None)) is not None:
                signal.connect(self.timer.start)
        self.timer.start()

    def refresh(self) -> None:
        if not self.isEnabled():  # a run is loading: check once it is over
            return
        self.show_result(check_model(self.model))

    def show_result(self, result: CheckResult) -> None:
        self.verdict_label.setText(result.verdict)
        self.verdict_label.setStyleSheet("" if result.ok else ERROR_STYLE)
        self.report_edit.setPlainText(result.text)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.EnabledChange and self.isEnabled():
            self.timer.start()  # whatever changed while disabled
        super().changeEvent(event)
