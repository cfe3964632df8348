"""The model panel: model folder or hub id, its hub revision, text encoder, backend, precision,
device, the low-VRAM mode (PyTorch), engines (TensorRT)."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QWidget,
)
from sdxs_rt_desktop.state import ModelState
from sdxs_rt_desktop.widgets.binding import (
    bind_check_box,
    bind_combo_data,
    bind_combo_text,
    bind_line_edit,
    fill_combo,
    follow,
)
from sdxs_rt_desktop.widgets.model_report_view import ModelReportView

from sdxs_rt.backend_table import ALL_PRECISIONS, BACKENDS, find_backend

BACKEND_CHOICES = tuple((entry.label, entry.name) for entry in BACKENDS)
PRECISIONS = tuple((precision, precision) for precision in ALL_PRECISIONS)
DEVICE_SUGGESTIONS = ("cpu", "cuda", "cuda:1", "mps", "auto", "dml")
NO_ENGINES = "No engines built yet: build them before generating."


def engine_sizes_text(engine_sizes: str) -> str:
    """'Engines cover: 320..1024 px per side, batch 1..4', or that there are none yet."""
    if not engine_sizes or engine_sizes.startswith("no engines"):
        return NO_ENGINES
    return f"Engines cover: {engine_sizes}"


def model_tooltip() -> str:
    """'A diffusers-format folder or hub id for PyTorch; a folder written by 'sdxs-rt export
    onnx' for ONNX Runtime and TensorRT', from the backend table."""
    hub = " and ".join(entry.label for entry in BACKENDS if not entry.exported)
    exported = " and ".join(entry.label for entry in BACKENDS if entry.exported)
    return (
        f"A diffusers-format folder or hub id for {hub}; "
        f"a folder written by 'sdxs-rt export onnx' for {exported}"
    )


class PathEdit(QWidget):
    """A line edit (folder or hub id) with a Browse... button for a folder."""

    def __init__(self, placeholder: str, dialog_title: str) -> None:
        super().__init__()
        self.dialog_title = dialog_title
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        self.browse_button = QPushButton("Browse...")
        self.browse_button.clicked.connect(self.browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit, 1)
        row.addWidget(self.browse_button)

    def browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.dialog_title, self.edit.text())
        if folder:
            self.edit.setText(folder)
            self.edit.textEdited.emit(folder)  # a choice in the dialog is an edit


class ModelPanel(QGroupBox):
    """Widgets bound to a ModelState; "Build engines..." is a request the window routes."""

    build_engines_requested = Signal()

    def __init__(self, model: ModelState, parent: QWidget | None = None) -> None:
        super().__init__("Model and backend", parent)
        self.model = model
        form = QFormLayout(self)
        form.addRow("Model", self._make_model())
        form.addRow("Revision", self._make_revision())
        form.addRow("Text encoder", self._make_text_encoder())
        form.addRow("Backend", self._make_backend())
        form.addRow("Precision", self._make_precision())
        form.addRow("Device", self._make_device())
        form.addRow(self._make_low_vram())
        form.addRow(self._make_engine_row())
        self.report_view = ModelReportView(model)  # `sdxs-rt check` for the chosen model
        form.addRow("Check", self.report_view)
        follow(model, "backend", self._show_backend)

    def _make_model(self) -> PathEdit:
        self.model_path = PathEdit(
            "Built-in tiny model (offline), or a folder or hub id", "Choose a model folder"
        )
        self.model_path.edit.setToolTip(model_tooltip())
        bind_line_edit(self.model, "model", self.model_path.edit)
        return self.model_path

    def _make_revision(self) -> QLineEdit:
        self.revision_edit = QLineEdit()
        self.revision_edit.setPlaceholderText("Hub default branch, or a branch, tag or commit")
        self.revision_edit.setToolTip(
            "Hub revision of the model (hub ids only); pin a commit for reproducible images"
        )
        bind_line_edit(self.model, "revision", self.revision_edit)
        return self.revision_edit

    def _make_text_encoder(self) -> PathEdit:
        self.text_encoder_path = PathEdit(
            "The model's own, or a folder or hub id", "Choose a text encoder folder"
        )
        bind_line_edit(self.model, "text_encoder", self.text_encoder_path.edit)
        return self.text_encoder_path

    def _make_backend(self) -> QComboBox:
        self.backend_combo = QComboBox()
        fill_combo(self.backend_combo, BACKEND_CHOICES)
        bind_combo_data(self.model, "backend", self.backend_combo)
        self.backend_combo.activated.connect(self._suggest_device)
        return self.backend_combo

    def _suggest_device(self) -> None:
        """TensorRT runs on CUDA only: picking it moves the device off the CPU."""
        entry = find_backend(self.model.backend)
        if entry is not None and entry.needs_cuda and self.model.device == "cpu":
            self.model.device = entry.default_device

    def _make_precision(self) -> QComboBox:
        self.precision_combo = QComboBox()
        fill_combo(self.precision_combo, PRECISIONS)
        bind_combo_data(self.model, "precision", self.precision_combo)
        return self.precision_combo

    def _make_device(self) -> QComboBox:
        self.device_combo = QComboBox()
        self.device_combo.setEditable(True)
        self.device_combo.addItems(DEVICE_SUGGESTIONS)
        bind_combo_text(self.model, "device", self.device_combo)
        return self.device_combo

    def _make_low_vram(self) -> QCheckBox:
        self.low_vram_box = QCheckBox("Low VRAM (small cards)")
        self.low_vram_box.setToolTip(
            "About 6 GB at 576 x 576 in fp16 (an estimate): the U-Net stays on the GPU, the "
            "text encoder and the VAE wait on the CPU between uses, the VAE decodes in tiles"
        )
        bind_check_box(self.model, "low_vram", self.low_vram_box)
        return self.low_vram_box

    def _make_engine_row(self) -> QWidget:
        self.engine_row = QWidget()
        self.engine_sizes_label = QLabel()
        self.engine_sizes_label.setWordWrap(True)
        follow(self.model, "engine_sizes", self._show_engine_sizes)
        self.build_engines_button = QPushButton("Build engines...")
        self.build_engines_button.clicked.connect(self.build_engines_requested)
        row = QHBoxLayout(self.engine_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.engine_sizes_label, 1)
        row.addWidget(self.build_engines_button)
        return self.engine_row

    def _show_engine_sizes(self, engine_sizes: str) -> None:
        self.engine_sizes_label.setText(engine_sizes_text(engine_sizes))

    def _show_backend(self, backend: str) -> None:
        entry = find_backend(backend)  # None: an unknown name from an old settings file
        self.engine_row.setVisible(entry is not None and entry.fixed_sizes)
        self.low_vram_box.setVisible(entry is not None and entry.low_vram)
