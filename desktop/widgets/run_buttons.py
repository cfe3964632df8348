"""Generate, Add to queue, Cancel now, Stop after this image: enabled by RunState.running and
the size. Generate starts a run; while one runs, Add to queue (same shortcut) queues another."""

from __future__ import annotations

from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import QHBoxLayout, QPushButton, QWidget
from sdxs_rt_desktop.state import GenerationState, RunState
from sdxs_rt_desktop.widgets.binding import follow_any
from sdxs_rt_desktop.widgets.text import as_sentence

GENERATE_KEY = "Ctrl+Return"
GENERATE_TIP = "Generate (Ctrl+Return)"
QUEUE_TIP = "Generate when the jobs before it are done; it waits in the Queue (Ctrl+Return)"
CANCEL_TIP = "Stop at the next step; nothing is decoded or saved (Esc)"
STOP_AFTER_TIP = "Finish the image in progress, then stop"


class RunButtons(QWidget):
    def __init__(
        self, generation: GenerationState, run: RunState, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.generation = generation
        self.run = run
        self.generate_button = QPushButton("Generate")
        self.generate_button.setDefault(True)
        self.queue_button = QPushButton("Add to queue")
        self.cancel_button = QPushButton("Cancel now")
        self.cancel_button.setShortcut("Esc")
        self.cancel_button.setToolTip(CANCEL_TIP)
        self.stop_after_button = QPushButton("Stop after this image")
        self.stop_after_button.setToolTip(STOP_AFTER_TIP)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.generate_button, 2)
        row.addWidget(self.queue_button, 1)
        row.addWidget(self.cancel_button, 1)
        row.addWidget(self.stop_after_button, 1)
        sizes = ("width", "height", "init_image", "size_from_input")  # see size_error
        follow_any([(run, "running"), *((generation, name) for name in sizes)], self.refresh)

    def refresh(self) -> None:
        running = self.run.running
        size_error = as_sentence(self.generation.size_error())
        self.generate_button.setEnabled(not running and not size_error)
        self.generate_button.setToolTip(size_error or GENERATE_TIP)
        self.queue_button.setEnabled(running and not size_error)
        self.queue_button.setToolTip(size_error or QUEUE_TIP)
        # Ctrl+Return: Generate when idle, Add to queue while running (never both: ambiguous)
        with_key, without = (self.queue_button, self.generate_button) if running else (
            self.generate_button, self.queue_button)  # fmt: skip
        with_key.setShortcut(QKeySequence(GENERATE_KEY))
        without.setShortcut(QKeySequence())
        self.cancel_button.setEnabled(running)
        self.stop_after_button.setEnabled(running)
