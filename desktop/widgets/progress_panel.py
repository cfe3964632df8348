"""Feedback: the progress bar with step count and ETA, status line (and the library's warning
about the run under it), error line, GPU line."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel, QProgressBar, QVBoxLayout, QWidget
from sdxs_rt_desktop.state import RunState
from sdxs_rt_desktop.widgets.binding import follow, follow_any
from sdxs_rt_desktop.widgets.text import ERROR_STYLE, WARNING_STYLE, as_sentence

PROGRESS_FIELDS = ("running", "step", "total_steps", "eta_seconds")


def format_eta(seconds: float) -> str:
    """0:08, 1:05:00."""
    whole = max(0, round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_text(run: RunState) -> str:
    """'step 12/40 — ETA 0:08' while running; '' before the first step is known."""
    if run.total_steps <= 0:
        return ""
    text = f"step {run.step}/{run.total_steps}"
    if run.running and run.step < run.total_steps and run.eta_seconds > 0:
        text += f" — ETA {format_eta(run.eta_seconds)}"
    return text


class ProgressPanel(QWidget):
    """Widgets following a RunState (one-way: the run is not edited by hand)."""

    def __init__(self, run: RunState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.run = run
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.status_label = QLabel()
        self.warning_label = QLabel()
        self.warning_label.setStyleSheet(WARNING_STYLE)
        self.warning_label.setWordWrap(True)
        self.error_label = QLabel()
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setWordWrap(True)
        self.gpu_label = QLabel()
        self.gpu_label.setStyleSheet("color: palette(mid);")
        self._lay_out()
        follow_any([(run, name) for name in PROGRESS_FIELDS], self._show_progress)
        follow(run, "status", self.status_label.setText)
        follow(run, "warning", self._show_warning)
        follow(run, "error", self._show_error)
        follow(run, "gpu_info", self._show_gpu)

    def _lay_out(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        labels = (self.status_label, self.warning_label, self.error_label, self.gpu_label)
        for widget in (self.progress_bar, *labels):
            layout.addWidget(widget)

    def _show_progress(self) -> None:
        total = max(self.run.total_steps, 1)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(min(self.run.step, total))
        text = progress_text(self.run)
        self.progress_bar.setFormat(text or ("" if self.run.running else "idle"))

    def _show_warning(self, warning: str) -> None:
        self.warning_label.setText(as_sentence(warning))
        self.warning_label.setVisible(bool(warning))

    def _show_error(self, error: str) -> None:
        self.error_label.setText(as_sentence(error))
        self.error_label.setVisible(bool(error))

    def _show_gpu(self, gpu_info: str) -> None:
        self.gpu_label.setText(gpu_info)
        self.gpu_label.setVisible(bool(gpu_info))
