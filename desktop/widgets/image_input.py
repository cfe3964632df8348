"""The "Image input" section: an init image (img2img), a painted mask (inpainting), outpainting.

Every control is bound to GenerationState. The init image is a file: dropped on the thumbnail,
chosen with "Open...", or sent from the gallery ("Use as input"). It is loaded here only to show
it (as the library loads it: EXIF orientation applied), so a file that cannot be read says so
at once. The mask is painted in a `MaskEditor` at the image's own pixel size.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QImage, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from sdxs_rt_desktop.history import pil_to_qimage
from sdxs_rt_desktop.state import AUTO_STRENGTH, OUTPAINT_FIELDS, GenerationState
from sdxs_rt_desktop.widgets.binding import (
    bind,
    bind_check_box,
    bind_combo_data,
    bind_scaled_slider,
    bind_spin_box,
    fill_combo,
    follow,
    follow_any,
)
from sdxs_rt_desktop.widgets.mask_editor import MaskEditor
from sdxs_rt_desktop.widgets.text import ERROR_STYLE, as_sentence

from sdxs_rt.errors import SdxsError
from sdxs_rt.image_inputs import (
    IMAGE_SUFFIXES,
    OUTPAINT_MULTIPLE,
    OUTPAINT_SIDES,
    check_outpaint_amounts,
    load_image,
)
from sdxs_rt.params import MAX_SIDE, GenerationParams
from sdxs_rt.plan import output_size

THUMBNAIL = QSize(96, 96)
NO_INPUT = "Drop an image here"
IMAGE_FILTER = "Images (" + " ".join(f"*{suffix}" for suffix in sorted(IMAGE_SUFFIXES)) + ")"
RESIZE_CHOICES = (("Crop and resize", "crop"), ("Stretch", "stretch"))
STRENGTH_TIP = (
    "How much of the input is redrawn: 0.3 keeps its layout, 1.0 keeps only its colours. "
    "Auto: 0.75, or 1.0 when outpainting"
)
SLIDER_SCALE = 100  # strength 0.01 per slider position


def image_paths(paths: list[Path]) -> list[Path]:
    return [path for path in paths if path.suffix.lower() in IMAGE_SUFFIXES]


def dropped_image_paths(event: QDragEnterEvent | QDropEvent) -> list[Path]:
    """The image files among a drag's local URLs (what the drop zones accept)."""
    urls = event.mimeData().urls()
    return image_paths([Path(url.toLocalFile()) for url in urls if url.isLocalFile()])


def describe_output(generation: GenerationState, input_size: tuple[int, int] | None) -> str:
    """'Output 640 × 448 px' for the current input and settings (raises UsageError)."""
    outpaint = generation.outpaint()
    if outpaint is not None:
        check_outpaint_amounts(*outpaint)
    from_input = generation.uses_input_size()
    params = GenerationParams(
        prompt="",
        width=None if from_input else generation.width,
        height=None if from_input else generation.height,
        outpaint=outpaint,
    )
    native = (generation.width, generation.height)
    width, height = output_size(params, native, input_size)
    return f"Output {width} × {height} px"


class ImageDropTarget:
    """A widget mixin (list it before the Qt class): accepts drags that carry image files and
    hands their paths to `take_dropped`."""

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if dropped_image_paths(event):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = dropped_image_paths(event)
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.take_dropped(paths)

    def take_dropped(self, paths: list[Path]) -> None:
        raise NotImplementedError


class InputThumbnail(ImageDropTarget, QLabel):
    """The init image's thumbnail; a drop zone for image files."""

    image_dropped = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(NO_INPUT, parent)
        self.setFixedSize(THUMBNAIL)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setWordWrap(True)
        self.setFrameShape(QLabel.Shape.StyledPanel)
        self.setAcceptDrops(True)
        self.setToolTip("Drop an image file here to use it as the input")

    def show_image(self, image: QImage | None) -> None:
        if image is None or image.isNull():
            self.setPixmap(QPixmap())
            self.setText(NO_INPUT)
            return
        keep_aspect = Qt.AspectRatioMode.KeepAspectRatio
        scaled = image.scaled(THUMBNAIL, keep_aspect, Qt.TransformationMode.SmoothTransformation)
        self.setPixmap(QPixmap.fromImage(scaled))

    def take_dropped(self, paths: list[Path]) -> None:
        self.image_dropped.emit(str(paths[0]))


class ImageInputPanel(QGroupBox):
    """See the module docstring; the controls below the file row work once an image is set."""

    def __init__(self, generation: GenerationState, parent: QWidget | None = None) -> None:
        super().__init__("Image input", parent)
        self.generation = generation
        self.input_size: tuple[int, int] | None = None
        self.mask_editor = MaskEditor()
        self.error_label = QLabel()
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        self.controls = QWidget()
        form = QFormLayout(self.controls)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Strength", self._make_strength())
        form.addRow("Resize", self._make_resize_mode())
        form.addRow("Size", self._make_size_from_input())
        form.addRow("Mask", self.mask_editor)
        form.addRow("Brush", self._make_brush_tools())
        form.addRow("", self._make_mask_tools())
        form.addRow("Mask blur", self._make_mask_blur())
        form.addRow("", self.paste_back_check)
        form.addRow("Outpaint", self._make_outpaint())
        layout = QVBoxLayout(self)
        layout.addLayout(self._make_file_row())
        layout.addWidget(self.error_label)
        layout.addWidget(self.controls)
        bind(generation, "mask", self.mask_editor, self.mask_editor.show_mask,
             self.mask_editor.mask_edited)  # fmt: skip
        follow(generation, "init_image", self._show_input)
        watched = ["init_image", "size_from_input", "width", "height", *OUTPAINT_FIELDS]
        follow_any([(generation, name) for name in watched], self._show_output_size)

    # ---------------------------------------------------------------- the file

    def _make_file_row(self) -> QHBoxLayout:
        self.thumbnail = InputThumbnail()
        self.thumbnail.image_dropped.connect(self.use_file)
        self.file_label = QLabel("None: the image is drawn from noise")
        self.file_label.setWordWrap(True)
        self.open_button = QPushButton("Open...")
        self.open_button.clicked.connect(self.open_dialog)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("No input image: draw from noise")
        self.clear_button.clicked.connect(lambda: setattr(self.generation, "init_image", ""))
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_button)
        buttons.addWidget(self.clear_button)
        buttons.addStretch(1)
        column = QVBoxLayout()
        column.addWidget(self.file_label)
        column.addLayout(buttons)
        column.addStretch(1)
        row = QHBoxLayout()
        row.addWidget(self.thumbnail)
        row.addLayout(column, 1)
        return row

    def use_file(self, path: str) -> None:
        self.generation.init_image = path

    def open_dialog(self) -> None:
        start = str(Path(self.generation.init_image).parent) if self.generation.init_image else ""
        path, _ = QFileDialog.getOpenFileName(self, "Open an input image", start, IMAGE_FILTER)
        if path:
            self.use_file(path)

    def _show_input(self, path: str) -> None:
        """Load the image to show it; a file that cannot be read is named in one sentence."""
        image, error = None, ""
        if path:
            try:
                image = pil_to_qimage(load_image(path))
            except SdxsError as exc:
                error = as_sentence(str(exc))
        self.input_size = None if image is None else (image.width(), image.height())
        self.thumbnail.show_image(image)
        self.mask_editor.set_image(image)
        self.controls.setEnabled(image is not None)
        self.clear_button.setEnabled(bool(path))
        self._show_error(error)
        self.file_label.setText(self._file_text(path))
        self.file_label.setToolTip(path)

    def _file_text(self, path: str) -> str:
        if not path:
            return "None: the image is drawn from noise"
        if self.input_size is None:
            return Path(path).name
        return f"{Path(path).name}\n{self.input_size[0]} × {self.input_size[1]} px"

    def _show_error(self, error: str) -> None:
        self.error_label.setText(error)
        self.error_label.setVisible(bool(error))

    # ---------------------------------------------------------------- img2img

    def _make_strength(self) -> QHBoxLayout:
        self.strength_slider = QSlider(Qt.Orientation.Horizontal)
        self.strength_slider.setRange(0, SLIDER_SCALE)
        self.strength_spin = QDoubleSpinBox()
        self.strength_spin.setRange(AUTO_STRENGTH, 1.0)
        self.strength_spin.setSingleStep(0.05)
        self.strength_spin.setDecimals(2)
        self.strength_spin.setSpecialValueText("Auto")  # 0: the library's default
        for widget in (self.strength_slider, self.strength_spin):
            widget.setToolTip(STRENGTH_TIP)
        bind_scaled_slider(self.generation, "strength", self.strength_slider, SLIDER_SCALE)
        bind_spin_box(self.generation, "strength", self.strength_spin)
        row = QHBoxLayout()
        row.addWidget(self.strength_slider, 1)
        row.addWidget(self.strength_spin)
        return row

    def _make_resize_mode(self) -> QComboBox:
        self.resize_combo = QComboBox()
        fill_combo(self.resize_combo, RESIZE_CHOICES)
        self.resize_combo.setToolTip(
            "How the input meets the output size: crop keeps its shape, stretch keeps all of it"
        )
        bind_combo_data(self.generation, "resize_mode", self.resize_combo)
        return self.resize_combo

    def _make_size_from_input(self) -> QVBoxLayout:
        self.size_from_input_check = QCheckBox("From the input image")
        self.size_from_input_check.setToolTip(
            "The input's size rounded down to a multiple of 64, plus outpainting; "
            "off: the size chosen above"
        )
        bind_check_box(self.generation, "size_from_input", self.size_from_input_check)
        self.output_size_label = QLabel()
        column = QVBoxLayout()
        column.addWidget(self.size_from_input_check)
        column.addWidget(self.output_size_label)
        return column

    def _show_output_size(self) -> None:
        if self.input_size is None:
            self.output_size_label.setText("")
            return
        try:
            text, style = describe_output(self.generation, self.input_size), ""
        except SdxsError as exc:
            text, style = as_sentence(str(exc)), ERROR_STYLE
        self.output_size_label.setText(text)
        self.output_size_label.setStyleSheet(style)

    # ---------------------------------------------------------------- inpainting

    def _make_brush_tools(self) -> QHBoxLayout:
        self.brush_spin = step_spin(1, 1024, 4)
        self.brush_spin.setValue(self.mask_editor.brush_size)
        self.brush_spin.setSuffix(" px")
        self.brush_spin.setToolTip("Brush width in pixels of the input image")
        editor = self.mask_editor
        self.brush_spin.valueChanged.connect(lambda size: setattr(editor, "brush_size", size))
        self.eraser_button = QPushButton("Eraser")
        self.eraser_button.setCheckable(True)
        self.eraser_button.toggled.connect(lambda on: setattr(editor, "eraser", on))
        row = QHBoxLayout()
        row.addWidget(self.brush_spin)
        row.addWidget(self.eraser_button)
        row.addStretch(1)
        return row

    def _make_mask_tools(self) -> QHBoxLayout:
        self.clear_mask_button = QPushButton("Clear mask")
        self.clear_mask_button.clicked.connect(self.mask_editor.clear)
        self.invert_button = QPushButton("Invert")
        self.invert_button.clicked.connect(self.mask_editor.invert)
        self.load_mask_button = QPushButton("Load...")
        self.load_mask_button.setToolTip("A mask file of the input's size: white = repaint")
        self.load_mask_button.clicked.connect(self.load_mask_dialog)
        row = QHBoxLayout()
        for widget in (self.clear_mask_button, self.invert_button, self.load_mask_button):
            row.addWidget(widget)
        row.addStretch(1)
        return row

    def load_mask_dialog(self) -> None:
        start = str(Path(self.generation.init_image).parent)
        path, _ = QFileDialog.getOpenFileName(self, "Load a mask", start, IMAGE_FILTER)
        if path:
            self.load_mask(path)

    def load_mask(self, path: str) -> bool:
        try:
            self.mask_editor.load_mask(path)
        except SdxsError as exc:
            self._show_error(as_sentence(str(exc)))
            return False
        self._show_error("")
        return True

    def _make_mask_blur(self) -> QSpinBox:
        self.mask_blur_spin = step_spin(0, 256)
        self.mask_blur_spin.setSuffix(" px")
        self.mask_blur_spin.setToolTip("Feathers the mask's edge so the repainted part blends in")
        bind_spin_box(self.generation, "mask_blur", self.mask_blur_spin)
        self.paste_back_check = QCheckBox("Paste the original back outside the mask")
        bind_check_box(self.generation, "paste_back", self.paste_back_check)
        return self.mask_blur_spin

    # ---------------------------------------------------------------- outpainting

    def _make_outpaint(self) -> QGridLayout:
        """Left and right, top and bottom: pixels added, in steps of 64."""
        grid = QGridLayout()
        self.outpaint_spins: dict[str, QSpinBox] = {}
        for index, (side, name) in enumerate(zip(OUTPAINT_SIDES, OUTPAINT_FIELDS, strict=True)):
            spin = step_spin(0, MAX_SIDE, OUTPAINT_MULTIPLE)
            spin.setSuffix(" px")
            spin.setToolTip(f"Pixels added on the {side} (a multiple of {OUTPAINT_MULTIPLE})")
            bind_spin_box(self.generation, name, spin)
            self.outpaint_spins[side] = spin
            row, column = divmod(index, 2)
            grid.addWidget(QLabel(side.capitalize()), row, 2 * column)
            grid.addWidget(spin, row, 2 * column + 1)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        return grid


def step_spin(minimum: int, maximum: int, step: int = 1) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(minimum, maximum)
    spin.setSingleStep(step)
    return spin
