"""The main window and the `sdxs-rt-desktop` entry point."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from PySide6.QtCore import QMimeData, QSettings, Qt
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QMainWindow,
    QMenu,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)
from sdxs_rt_desktop.model_size import keep_size_with_model
from sdxs_rt_desktop.state import (
    GenerationState,
    ModelState,
    RunState,
    StateObject,
    load_settings,
    save_settings,
)
from sdxs_rt_desktop.widgets import (
    EngineBuildDialog,
    Gallery,
    GenerationPanel,
    ModelPanel,
    PreviewView,
    ProgressPanel,
    QueuePanel,
    RunButtons,
    WalkDialog,
)
from sdxs_rt_desktop.widgets.text import as_sentence

SETTINGS_ORGANIZATION = "sdxs-rt"
SETTINGS_APPLICATION = "desktop"
HISTORY_ENV = "SDXS_RT_HISTORY"
GEOMETRY_KEY = "window/geometry"
PNG_FILTER = "PNG images (*.png)"

ControllerFactory = Callable[[GenerationState, ModelState, RunState, Path], Any]


@dataclass
class AppStates:
    generation: GenerationState = field(default_factory=GenerationState)
    model: ModelState = field(default_factory=ModelState)
    run: RunState = field(default_factory=RunState)

    def by_group(self) -> dict[str, StateObject]:
        return {"generation": self.generation, "model": self.model, "run": self.run}


def default_history_dir() -> Path:
    """Where finished images go: `$SDXS_RT_HISTORY`, else ~/Pictures/sdxs-rt."""
    override = os.environ.get(HISTORY_ENV)
    return Path(override).expanduser() if override else Path.home() / "Pictures" / "sdxs-rt"


def png_paths(mime: QMimeData) -> list[Path]:
    """The local .png files among dragged URLs."""
    paths = [Path(url.toLocalFile()) for url in mime.urls() if url.isLocalFile()]
    return [path for path in paths if path.suffix.lower() == ".png"]


class MainWindow(QMainWindow):
    """The panels bound to the states; actions routed to the controller."""

    def __init__(
        self,
        states: AppStates,
        controller: Any,
        history_dir: Path,
        settings: QSettings | None = None,
    ) -> None:
        super().__init__()
        self.states = states
        self.controller = controller
        self.history_dir = history_dir
        self.settings = settings
        self.engine_dialog: EngineBuildDialog | None = None
        self.walk_dialog: WalkDialog | None = None
        self.closed = False
        self.setWindowTitle("sdxs-rt")
        self.setAcceptDrops(True)
        self._make_panels()
        self.setCentralWidget(self._lay_out())
        self._make_menu()
        self._connect_controller()
        self._restore_geometry()

    def _make_panels(self) -> None:
        generation, run = self.states.generation, self.states.run
        self.generation_panel = GenerationPanel(generation, self.states.model)
        self.model_panel = ModelPanel(self.states.model)
        self.run_buttons = RunButtons(generation, run)
        self.preview = PreviewView()
        self.progress_panel = ProgressPanel(run)
        jobs = getattr(self.controller, "jobs", None)  # a stand-in controller may have no queue
        self.queue_panel = QueuePanel(jobs.state, jobs) if jobs is not None else None
        self.gallery = Gallery(generation, self.history_dir)
        self.gallery.status_message.connect(lambda text: setattr(run, "status", text))
        run.running_changed.connect(lambda running: self.model_panel.setEnabled(not running))

    def _lay_out(self) -> QSplitter:
        settings_column = QWidget()
        column = QVBoxLayout(settings_column)
        column.addWidget(self.generation_panel)
        column.addWidget(self.model_panel)
        column.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(settings_column)
        scroll.setWidgetResizable(True)
        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.addWidget(scroll, 1)
        left_layout.addWidget(self.run_buttons)
        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.addWidget(self.preview, 3)
        right_layout.addWidget(self.progress_panel)
        if self.queue_panel is not None:
            right_layout.addWidget(self.queue_panel)
        right_layout.addWidget(self.gallery, 2)
        splitter = QSplitter(Qt.Orientation.Horizontal)
        splitter.addWidget(left)
        splitter.addWidget(right)
        splitter.setSizes([500, 900])
        return splitter

    def _make_menu(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        self._add_action(file_menu, "&Open PNG...", self.open_png_dialog, QKeySequence.Open)
        self._add_action(file_menu, "Open &history folder", self.gallery.open_history_folder)
        file_menu.addSeparator()
        self._add_action(file_menu, "&Quit", self.close, QKeySequence.Quit)
        tools_menu = self.menuBar().addMenu("&Tools")
        self._add_action(tools_menu, "Latent &walk...", self.open_walk_dialog)
        self._add_action(tools_menu, "&Build TensorRT engines...", self.open_engine_dialog)

    def _add_action(
        self, menu: QMenu, text: str, slot: Callable[[], Any], shortcut: Any = None
    ) -> None:
        action = QAction(text, self)
        if shortcut is not None:
            action.setShortcut(shortcut)
        action.triggered.connect(lambda: slot())
        menu.addAction(action)

    def _connect_controller(self) -> None:
        controller = self.controller
        self.run_buttons.generate_button.clicked.connect(self.generate)
        self.run_buttons.queue_button.clicked.connect(self.generate)
        self.run_buttons.cancel_button.clicked.connect(lambda: controller.cancel_now())
        self.run_buttons.stop_after_button.clicked.connect(lambda: controller.stop_after_image())
        self.generation_panel.reuse_last_seed_requested.connect(controller.reuse_last_seed)
        self.model_panel.build_engines_requested.connect(self.open_engine_dialog)
        controller.preview_ready.connect(self.preview.show_image)
        controller.image_ready.connect(self.show_result)
        controller.failed.connect(self.show_error)

    def generate(self) -> None:
        """Generate now, or (while a run is in progress) add the request to the queue."""
        if self.states.generation.size_error():
            return  # the buttons are disabled then; the shortcut must not get round it
        self.controller.generate()

    def show_result(self, item: Any) -> None:
        self.preview.show_image(item.qimage)
        self.gallery.add_result(item)

    def show_error(self, message: str) -> None:
        """`failed` also carries refusals that leave the run's own state alone ("busy")."""
        self.states.run.error = message

    def open_engine_dialog(self) -> None:
        if self.engine_dialog is None:
            self.engine_dialog = EngineBuildDialog(self.controller, self)
        self.engine_dialog.show()
        self.engine_dialog.raise_()

    def open_walk_dialog(self) -> WalkDialog:
        """Keyframes prefilled from the Generation prompt and seed each time it opens anew."""
        if self.walk_dialog is None:
            self.walk_dialog = WalkDialog(
                self.controller, self.states.generation, self.states.run, self
            )
        elif not self.walk_dialog.isVisible() and not self.states.run.running:
            self.walk_dialog.prefill()
        self.walk_dialog.show()
        self.walk_dialog.raise_()
        return self.walk_dialog

    def open_png_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a PNG to restore its settings", str(self.history_dir), PNG_FILTER
        )
        if path:
            self.restore_png(Path(path))

    def restore_png(self, path: Path) -> bool:
        """Take the settings a PNG carries (ours or A1111's); say so in one sentence if none."""
        run = self.states.run
        restored = bool(self.controller.restore_from_png(path))
        said = f"Settings restored from {path.name}"
        if restored and not run.status.startswith(said):  # keep the controller's note, if any
            run.status = said
        elif not run.error:
            run.error = f"No generation settings that sdxs-rt can read in {path.name}."
        return restored

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if png_paths(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = png_paths(event.mimeData())
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.restore_png(paths[0])

    def _restore_geometry(self) -> None:
        geometry = self.settings.value(GEOMETRY_KEY) if self.settings is not None else None
        if geometry is None or not self.restoreGeometry(geometry):
            self.resize(1400, 900)

    def save_settings(self) -> None:
        if self.settings is None:
            return
        self.settings.setValue(GEOMETRY_KEY, self.saveGeometry())
        save_settings(self.states.by_group(), self.settings)

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self.closed:
            self.closed = True
            self.save_settings()
            self.controller.shutdown()
        super().closeEvent(event)


def build_window(
    settings: QSettings,
    history_dir: Path,
    controller_factory: ControllerFactory | None = None,
) -> MainWindow:
    """States restored from `settings` (the size set to the model's own unless chosen for it), a
    controller over them, and the window bound to both."""
    states = AppStates()
    load_settings(states.by_group(), settings)
    keep_size_with_model(states.generation, states.model)
    if controller_factory is None:
        from sdxs_rt_desktop.controller import Controller

        controller_factory = Controller
    controller = controller_factory(states.generation, states.model, states.run, history_dir)
    return MainWindow(states, controller, history_dir, settings)


def install_error_hook(run: RunState) -> None:
    """An exception that escapes a slot shows in the window as one sentence; no crash."""

    def hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
        traceback.print_exception(kind, error, tb)
        run.error = as_sentence(f"unexpected error: {error}" if str(error) else kind.__name__)

    sys.excepthook = hook


def application(argv: Sequence[str] | None) -> QApplication:
    existing = QApplication.instance()
    if isinstance(existing, QApplication):
        return existing
    app = QApplication(list(argv) if argv is not None else sys.argv)
    app.setOrganizationName(SETTINGS_ORGANIZATION)
    app.setApplicationName(SETTINGS_APPLICATION)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    app = application(argv)
    settings = QSettings(SETTINGS_ORGANIZATION, SETTINGS_APPLICATION)
    window = build_window(settings, default_history_dir())
    install_error_hook(window.states.run)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
