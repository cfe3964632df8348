"""The session gallery: thumbnails; the selected image's parameters with copy/reuse actions,
"Use as input" (img2img from it) and "Vary this image" (its settings plus a variation seed)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, QUrl, Signal
from PySide6.QtGui import QDesktopServices, QGuiApplication, QIcon, QImage, QPixmap
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from sdxs_rt_desktop.state import DEFAULT_VARIATION_STRENGTH, GenerationState, with_note

from sdxs_rt.infotext import parameter_items
from sdxs_rt.metadata import ImageRecord

THUMBNAIL = QSize(96, 96)
NOTHING_SELECTED = "Generated images appear above; select one to see its parameters."


def describe_record(record: ImageRecord, path: Path | None = None) -> str:
    """The parameters one per line, prompts first (readable, and each line copyable)."""
    lines = [f"Prompt: {record.prompt}"]
    if record.negative_prompt:
        lines.append(f"Negative prompt: {record.negative_prompt}")
    lines += [f"{key}: {value}" for key, value in parameter_items(record)]
    if path is not None:
        lines.append(f"File: {path}")
    return "\n".join(lines)


def thumbnail(image: QImage) -> QIcon:
    scaled = image.scaled(
        THUMBNAIL, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )
    return QIcon(QPixmap.fromImage(scaled))


class Gallery(QGroupBox):
    """This session's images (`ResultItem`s: path, seed, record, qimage), newest first."""

    status_message = Signal(str)  # what an action did, for the status line

    def __init__(
        self, generation: GenerationState, history_dir: Path, parent: QWidget | None = None
    ) -> None:
        super().__init__("This session", parent)
        self.generation = generation
        self.history_dir = history_dir
        self.items: list[Any] = []
        images_and_details = QHBoxLayout()
        images_and_details.addWidget(self._make_list(), 3)
        images_and_details.addWidget(self._make_details(), 2)
        layout = QVBoxLayout(self)
        layout.addLayout(images_and_details, 1)
        layout.addLayout(self._make_buttons())
        self._show_selected()

    def _make_list(self) -> QListWidget:
        self.list_widget = QListWidget()
        self.list_widget.setViewMode(QListWidget.ViewMode.IconMode)
        self.list_widget.setIconSize(THUMBNAIL)
        self.list_widget.setResizeMode(QListWidget.ResizeMode.Adjust)
        self.list_widget.setMovement(QListWidget.Movement.Static)
        self.list_widget.setMinimumHeight(THUMBNAIL.height() + 24)
        self.list_widget.currentRowChanged.connect(self._show_selected)
        return self.list_widget

    def _make_details(self) -> QPlainTextEdit:
        self.details_view = QPlainTextEdit()
        self.details_view.setReadOnly(True)
        self.details_view.setPlaceholderText(NOTHING_SELECTED)
        return self.details_view

    def _make_buttons(self) -> QHBoxLayout:
        self.copy_prompt_button = QPushButton("Copy prompt")
        self.reuse_seed_button = QPushButton("Reuse seed")
        self.reuse_all_button = QPushButton("Reuse all")
        self.use_as_input_button = QPushButton("Use as input")
        self.use_as_input_button.setToolTip("Start from this image (Image input)")
        self.vary_button = QPushButton("Vary this image")
        self.vary_button.setToolTip(
            f"Its settings and seed, with a new variation seed at {DEFAULT_VARIATION_STRENGTH}"
        )
        self.open_history_button = QPushButton("Open history folder")
        self.copy_prompt_button.clicked.connect(self.copy_prompt)
        self.reuse_seed_button.clicked.connect(self.reuse_seed)
        self.reuse_all_button.clicked.connect(self.reuse_all)
        self.use_as_input_button.clicked.connect(self.use_as_input)
        self.vary_button.clicked.connect(self.vary)
        self.open_history_button.clicked.connect(self.open_history_folder)
        self.open_history_button.setToolTip(str(self.history_dir))
        row = QHBoxLayout()
        for button in self.item_buttons():
            row.addWidget(button)
        row.addStretch(1)
        row.addWidget(self.open_history_button)
        return row

    def item_buttons(self) -> tuple[QPushButton, ...]:
        return (
            self.copy_prompt_button,
            self.reuse_seed_button,
            self.reuse_all_button,
            self.use_as_input_button,
            self.vary_button,
        )

    def add_result(self, item: Any) -> None:
        """A finished image: newest at the front, and selected."""
        self.items.insert(0, item)
        entry = QListWidgetItem(thumbnail(item.qimage), str(item.seed))
        entry.setToolTip(item.record.prompt)
        self.list_widget.insertItem(0, entry)
        self.list_widget.setCurrentRow(0)

    def selected(self) -> Any | None:
        row = self.list_widget.currentRow()
        return self.items[row] if 0 <= row < len(self.items) else None

    def _show_selected(self) -> None:
        item = self.selected()
        for button in self.item_buttons():
            button.setEnabled(item is not None)
        text = describe_record(item.record, Path(item.path)) if item is not None else ""
        self.details_view.setPlainText(text)

    def copy_prompt(self) -> None:
        item = self.selected()
        if item is not None:
            QGuiApplication.clipboard().setText(item.record.prompt)

    def reuse_seed(self) -> None:
        item = self.selected()
        if item is not None:
            self.generation.reuse_seed(int(item.seed))

    def reuse_all(self) -> None:
        item = self.selected()
        if item is not None:
            note = self.generation.apply_record(asdict(item.record))
            self.status_message.emit(with_note(f"Settings of {Path(item.path).name} reused", note))

    def use_as_input(self) -> None:
        """The image file becomes the init image (its settings stay as they are)."""
        item = self.selected()
        if item is not None:
            self.generation.init_image = str(item.path)
            self.status_message.emit(f"{Path(item.path).name} is the input image")

    def vary(self) -> None:
        """Its settings, its seed, and a new random variation seed at the default strength."""
        item = self.selected()
        if item is None:
            return
        note = self.generation.apply_record(asdict(item.record))
        self.generation.vary(int(item.seed))
        status = f"Variations of {Path(item.path).name}: variation seed "
        status += f"{self.generation.variation_seed}"
        self.status_message.emit(with_note(status, note))

    def open_history_folder(self) -> None:
        self.history_dir.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.history_dir)))
