"""The "Image prompts" section: images blended with the prompt through the vision tower.

A list bound to `GenerationState.image_prompts`: each row a thumbnail, the file's name with the
`<image:N>` that places it in the prompt, a weight (slider and box, -2..2; negative subtracts)
and "Remove". Images come from "Add..." or a drop on the section; each is loaded here as the
library loads it, so a file that cannot be read is named at once and not added. When the loaded
model has no vision tower (`ModelState.image_encoder_unavailable`, from its pipeline info), the
section says why, and Generate refuses with the same sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QVBoxLayout,
    QWidget,
)
from sdxs_rt_desktop.history import pil_to_qimage
from sdxs_rt_desktop.image_prompts import (
    MAX_WEIGHT,
    MIN_WEIGHT,
    ImagePromptEntry,
    added,
    placeholder,
    with_weight,
    without,
)
from sdxs_rt_desktop.state import GenerationState, ModelState
from sdxs_rt_desktop.widgets.binding import follow
from sdxs_rt_desktop.widgets.image_input import IMAGE_FILTER, ImageDropTarget
from sdxs_rt_desktop.widgets.text import ERROR_STYLE, HINT_STYLE, as_sentence

from sdxs_rt.errors import SdxsError
from sdxs_rt.image_preprocess import load_image_prompt

THUMBNAIL = QSize(48, 48)
SLIDER_SCALE = 100  # weight 0.01 per slider position
EMPTY_TEXT = (
    "Drop images here or Add...: each joins the prompt's blend at its weight "
    "(or write <image:N> in the prompt to place the N-th)"
)
WEIGHT_TIP = "How much of the image goes into the condition; a negative weight subtracts it"


def thumbnail_of(path: str) -> QImage:
    """The image as the library reads it, scaled down; raises SdxsError (one sentence)."""
    image = pil_to_qimage(load_image_prompt(path))
    keep_aspect = Qt.AspectRatioMode.KeepAspectRatio
    return image.scaled(THUMBNAIL, keep_aspect, Qt.TransformationMode.SmoothTransformation)


class ImagePromptRow(QWidget):
    """One image prompt; its edits are requests the panel turns into state."""

    weight_edited = Signal(float)
    remove_requested = Signal()

    def __init__(self, index: int, path: str, thumbnail: QImage | None) -> None:
        super().__init__()
        self.thumbnail = QLabel("?")
        self.thumbnail.setFixedSize(THUMBNAIL)
        self.thumbnail.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.thumbnail.setFrameShape(QLabel.Shape.StyledPanel)
        if thumbnail is not None:
            self.thumbnail.setPixmap(QPixmap.fromImage(thumbnail))
        self.name_label = QLabel(f"{Path(path).name}\n{placeholder(index)}")
        self.name_label.setToolTip(
            f"{path}\nWrite {placeholder(index)} in the prompt to place it in a blend yourself, "
            f"e.g. 'a cat:: {placeholder(index)}::0.5'; otherwise it joins at this weight"
        )
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_requested)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.thumbnail)
        row.addWidget(self.name_label, 1)
        row.addLayout(self._make_weight())
        row.addWidget(self.remove_button)

    def _make_weight(self) -> QHBoxLayout:
        self.weight_slider = QSlider(Qt.Orientation.Horizontal)
        low, high = (round(weight * SLIDER_SCALE) for weight in (MIN_WEIGHT, MAX_WEIGHT))
        self.weight_slider.setRange(low, high)
        self.weight_spin = QDoubleSpinBox()
        self.weight_spin.setRange(MIN_WEIGHT, MAX_WEIGHT)
        self.weight_spin.setSingleStep(0.1)
        self.weight_spin.setDecimals(2)
        for widget in (self.weight_slider, self.weight_spin):
            widget.setToolTip(WEIGHT_TIP)
        self.weight_slider.valueChanged.connect(
            lambda position: self.weight_edited.emit(position / SLIDER_SCALE)
        )
        self.weight_spin.valueChanged.connect(self.weight_edited)
        row = QHBoxLayout()
        row.addWidget(self.weight_slider, 1)
        row.addWidget(self.weight_spin)
        return row

    def show_weight(self, weight: float) -> None:
        """Show `weight` in both controls without sending it back as an edit."""
        for widget, value in ((self.weight_slider, round(weight * SLIDER_SCALE)),
                              (self.weight_spin, weight)):  # fmt: skip
            was_blocked = widget.blockSignals(True)
            widget.setValue(value)
            widget.blockSignals(was_blocked)

    @property
    def weight(self) -> float:
        return self.weight_spin.value()


class ImagePromptsPanel(ImageDropTarget, QGroupBox):
    """See the module docstring; `model` (optional) says whether the loaded model takes them."""

    def __init__(
        self,
        generation: GenerationState,
        model: ModelState | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__("Image prompts", parent)
        self.generation = generation
        self.model = model
        self.rows: list[ImagePromptRow] = []
        self._paths: list[str] = []
        self._thumbnails: dict[str, QImage | None] = {}
        self.setAcceptDrops(True)
        self.setToolTip("Drop image files here to add them as image prompts")
        self.reason_label = message_label(ERROR_STYLE)
        self.error_label = message_label(ERROR_STYLE)
        self.empty_label = message_label(HINT_STYLE)
        self.empty_label.setText(EMPTY_TEXT)
        self.rows_layout = QVBoxLayout()
        layout = QVBoxLayout(self)
        for widget in (self.reason_label, self.error_label, self.empty_label):
            layout.addWidget(widget)
        layout.addLayout(self.rows_layout)
        layout.addLayout(self._make_buttons())
        follow(generation, "image_prompts", self._show_entries)
        if model is not None:
            follow(model, "image_encoder_unavailable", lambda _: self._show_reason())

    def _make_buttons(self) -> QHBoxLayout:
        self.add_button = QPushButton("Add...")
        self.add_button.setToolTip("Images whose look joins the prompt (the vision tower)")
        self.add_button.clicked.connect(self.open_dialog)
        self.clear_button = QPushButton("Remove all")
        self.clear_button.clicked.connect(lambda: setattr(self.generation, "image_prompts", ()))
        row = QHBoxLayout()
        row.addWidget(self.add_button)
        row.addWidget(self.clear_button)
        row.addStretch(1)
        return row

    # ---------------------------------------------------------------- adding and removing

    def open_dialog(self) -> None:
        entries = self.generation.image_prompts
        start = str(Path(entries[-1][0]).parent) if entries else ""
        paths, _ = QFileDialog.getOpenFileNames(self, "Add image prompts", start, IMAGE_FILTER)
        if paths:
            self.add_files(paths)

    def add_files(self, paths: Sequence[str | Path]) -> bool:
        """Add the files that load (at weight 1); the first that does not is named. True when
        all were added."""
        good, error = [], ""
        for path in map(str, paths):
            try:
                self._thumbnails[path] = thumbnail_of(path)
            except SdxsError as exc:
                error = error or as_sentence(str(exc))
                continue
            good.append(path)
        self._show_error(error)
        if good:
            self.generation.image_prompts = added(self.generation.image_prompts, good)
        return not error

    def remove(self, index: int) -> None:
        self.generation.image_prompts = without(self.generation.image_prompts, index)

    def set_weight(self, index: int, weight: float) -> None:
        self.generation.image_prompts = with_weight(self.generation.image_prompts, index, weight)

    def take_dropped(self, paths: list[Path]) -> None:
        self.add_files(paths)

    # ---------------------------------------------------------------- showing the state

    def _show_entries(self, entries: tuple[ImagePromptEntry, ...]) -> None:
        """Weights only change: shown in place (a slider being dragged keeps its grip); else
        the rows are made again."""
        paths = [path for path, _ in entries]
        if paths != self._paths:
            self._make_rows(paths)
        for row, (_, weight) in zip(self.rows, entries, strict=True):
            row.show_weight(weight)
        self.empty_label.setVisible(not entries)
        self.clear_button.setEnabled(bool(entries))
        if not entries:
            self._show_error("")

    def _make_rows(self, paths: list[str]) -> None:
        for row in self.rows:
            self.rows_layout.removeWidget(row)
            row.deleteLater()
        self.rows = [self._make_row(index, path) for index, path in enumerate(paths)]
        for row in self.rows:
            self.rows_layout.addWidget(row)
        self._paths = paths
        self._thumbnails = {path: self._thumbnails.get(path) for path in paths}

    def _make_row(self, index: int, path: str) -> ImagePromptRow:
        if path not in self._thumbnails:  # set from elsewhere than add_files
            try:
                self._thumbnails[path] = thumbnail_of(path)
            except SdxsError:
                self._thumbnails[path] = None  # the run will name the problem
        row = ImagePromptRow(index, path, self._thumbnails[path])
        row.weight_edited.connect(lambda weight: self.set_weight(index, weight))
        row.remove_requested.connect(lambda: self.remove(index))
        return row

    def _show_reason(self) -> None:
        error = as_sentence(self.model.image_prompt_error()) if self.model is not None else ""
        self.reason_label.setText(error)
        self.reason_label.setVisible(bool(error))

    @property
    def reason(self) -> str:
        """Why the loaded model takes no image prompts, as shown ("" when it does or is not
        loaded yet)."""
        return self.reason_label.text() if not self.reason_label.isHidden() else ""

    def _show_error(self, error: str) -> None:
        self.error_label.setText(error)
        self.error_label.setVisible(bool(error))


def message_label(style: str) -> QLabel:
    label = QLabel()
    label.setStyleSheet(style)
    label.setWordWrap(True)
    label.hide()
    return label
