"""The generation panel: prompts (with their syntax feedback, `prompt_feedback.py`), image prompts
(`image_prompts.py`), seed and variation, steps, guidance, scheduler, size, batch count, and the
image input section (`image_input.py`)."""

from __future__ import annotations

from PySide6.QtCore import QRegularExpression, Signal
from PySide6.QtGui import QRegularExpressionValidator
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QWidget,
)
from sdxs_rt_desktop.state import ASPECT_BUCKETS, GenerationState, ModelState
from sdxs_rt_desktop.widgets.binding import (
    bind_check_box,
    bind_combo_data,
    bind_plain_text,
    bind_spin_box,
    fill_combo,
    follow,
    follow_any,
)
from sdxs_rt_desktop.widgets.image_input import ImageInputPanel
from sdxs_rt_desktop.widgets.image_prompts import ImagePromptsPanel
from sdxs_rt_desktop.widgets.prompt_feedback import PromptFeedback
from sdxs_rt_desktop.widgets.text import ERROR_STYLE, as_sentence

from sdxs_rt.params import MAX_SIDE, SIZE_STEP
from sdxs_rt.rng import MAX_SEED, random_seed
from sdxs_rt.scheduler_table import SCHEDULER_LABELS

MODEL_DEFAULT_SCHEDULER = "Model default"
CUSTOM_SIZE = "Custom"


def size_label(width: int, height: int) -> str:
    return f"{width} × {height}"


def scheduler_choices() -> list[tuple[str, str]]:
    return [(MODEL_DEFAULT_SCHEDULER, ""), *((label, n) for n, label in SCHEDULER_LABELS.items())]


def spin_box(minimum: int, maximum: int, step: int = 1) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(minimum, maximum)
    spin.setSingleStep(step)
    return spin


class SeedEdit(QLineEdit):
    """Digits only, up to MAX_SEED (2**63 - 1: more than a QSpinBox holds); bound to the seed
    property `name` ("seed" or "variation_seed")."""

    def __init__(self, generation: GenerationState, name: str = "seed") -> None:
        super().__init__()
        self.generation = generation
        self.name = name
        pattern = QRegularExpression(r"\d{1,19}")
        self.setValidator(QRegularExpressionValidator(pattern, self))
        self.setText(str(getattr(generation, name)))
        getattr(generation, f"{name}_changed").connect(self.show_seed)
        self.textEdited.connect(self.on_edited)

    def show_seed(self, seed: int) -> None:
        if self.text() != str(seed):
            self.setText(str(seed))

    def on_edited(self, text: str) -> None:
        if text and int(text) <= MAX_SEED:
            setattr(self.generation, self.name, int(text))


class GenerationPanel(QGroupBox):
    """Widgets bound to a GenerationState; "Reuse last seed" is a request the window routes."""

    reuse_last_seed_requested = Signal()

    def __init__(
        self,
        generation: GenerationState,
        model: ModelState | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__("Generation", parent)
        self.generation = generation
        form = QFormLayout(self)
        form.addRow("Prompt", self._make_prompts())
        self.prompt_feedback = PromptFeedback(generation, "prompt")
        form.addRow("", self.prompt_feedback)
        form.addRow("Negative", self.negative_edit)
        self.negative_feedback = PromptFeedback(generation, "negative_prompt")
        form.addRow("", self.negative_feedback)
        self.image_prompts = ImagePromptsPanel(generation, model)
        form.addRow(self.image_prompts)
        form.addRow("Seed", self._make_seed_row())
        form.addRow("Variation", self._make_variation_row())
        form.addRow("Steps", self._make_steps())
        form.addRow("Guidance", self._make_guidance())
        form.addRow("Scheduler", self._make_scheduler())
        form.addRow("Size", self._make_size_row())
        form.addRow("", self.size_error_label)
        form.addRow("Batch count", self._make_batch_count())
        form.addRow("Preview every", self._make_preview_every())
        form.addRow("", self._make_strip_metadata())
        self.image_input = ImageInputPanel(generation)
        form.addRow(self.image_input)

    def _make_prompts(self) -> QPlainTextEdit:
        self.prompt_edit = QPlainTextEdit()
        self.prompt_edit.setPlaceholderText(
            "What to draw; blends 'cat::2 dog::1', schedules '[red:blue:0.5]', '[a|b]'"
        )
        self.prompt_edit.setFixedHeight(84)
        bind_plain_text(self.generation, "prompt", self.prompt_edit)
        self.negative_edit = QPlainTextEdit()
        self.negative_edit.setPlaceholderText("What to avoid (optional)")
        self.negative_edit.setFixedHeight(52)
        bind_plain_text(self.generation, "negative_prompt", self.negative_edit)
        return self.prompt_edit

    def _make_seed_row(self) -> QHBoxLayout:
        self.seed_edit = SeedEdit(self.generation)
        self.random_seed_check = QCheckBox("Random")
        bind_check_box(self.generation, "random_seed", self.random_seed_check)
        follow(self.generation, "random_seed", lambda on: self.seed_edit.setEnabled(not on))
        self.reuse_last_seed_button = QPushButton("Reuse last seed")
        self.reuse_last_seed_button.clicked.connect(self.reuse_last_seed_requested)
        follow(self.generation, "last_seed", self._show_last_seed)
        row = QHBoxLayout()
        for widget in (self.seed_edit, self.random_seed_check, self.reuse_last_seed_button):
            row.addWidget(widget)
        return row

    def _show_last_seed(self, last_seed: int) -> None:
        self.reuse_last_seed_button.setEnabled(last_seed >= 0)
        tip = f"Last seed: {last_seed}" if last_seed >= 0 else "No image generated yet"
        self.reuse_last_seed_button.setToolTip(tip)

    def _make_variation_row(self) -> QHBoxLayout:
        """A1111's variation seed: the noise moves towards another seed's by the strength."""
        self.variation_seed_edit = SeedEdit(self.generation, "variation_seed")
        self.variation_seed_edit.setToolTip("The seed whose noise the image moves towards")
        self.new_variation_button = QPushButton("New")
        self.new_variation_button.setToolTip("A new random variation seed")
        self.new_variation_button.clicked.connect(
            lambda: setattr(self.generation, "variation_seed", random_seed())
        )
        self.variation_strength_spin = QDoubleSpinBox()
        self.variation_strength_spin.setRange(0.0, 1.0)
        self.variation_strength_spin.setSingleStep(0.05)
        self.variation_strength_spin.setDecimals(2)
        self.variation_strength_spin.setSpecialValueText("off")  # 0: no variation
        self.variation_strength_spin.setPrefix("strength ")
        self.variation_strength_spin.setToolTip(
            "How far the noise moves towards the variation seed's: 0 off, 0.1-0.3 near copies"
        )
        bind_spin_box(self.generation, "variation_strength", self.variation_strength_spin)
        row = QHBoxLayout()
        row.addWidget(self.variation_seed_edit, 1)
        row.addWidget(self.new_variation_button)
        row.addWidget(self.variation_strength_spin)
        return row

    def _make_steps(self) -> QSpinBox:
        self.steps_spin = spin_box(1, 1000)
        bind_spin_box(self.generation, "steps", self.steps_spin)
        return self.steps_spin

    def _make_guidance(self) -> QDoubleSpinBox:
        self.guidance_spin = QDoubleSpinBox()
        self.guidance_spin.setRange(0.0, 30.0)
        self.guidance_spin.setSingleStep(0.5)
        self.guidance_spin.setDecimals(2)
        self.guidance_spin.setToolTip("Classifier-free guidance; 1 or less runs one branch")
        bind_spin_box(self.generation, "guidance", self.guidance_spin)
        return self.guidance_spin

    def _make_scheduler(self) -> QComboBox:
        self.scheduler_combo = QComboBox()
        fill_combo(self.scheduler_combo, scheduler_choices())
        bind_combo_data(self.generation, "scheduler", self.scheduler_combo)
        return self.scheduler_combo

    def _make_size_row(self) -> QHBoxLayout:
        self.size_combo = QComboBox()
        for width, height in ASPECT_BUCKETS:  # item i is bucket i; "Custom" comes last
            self.size_combo.addItem(size_label(width, height))
        self.size_combo.addItem(CUSTOM_SIZE)
        self.size_combo.currentIndexChanged.connect(self._on_size_chosen)
        # Any whole number can be typed (and is refused with a reason); arrows step by 64.
        self.width_spin = spin_box(1, MAX_SIDE, SIZE_STEP)
        self.height_spin = spin_box(1, MAX_SIDE, SIZE_STEP)
        bind_spin_box(self.generation, "width", self.width_spin)
        bind_spin_box(self.generation, "height", self.height_spin)
        self.size_error_label = QLabel()
        self.size_error_label.setStyleSheet(ERROR_STYLE)
        self.size_error_label.setWordWrap(True)
        sizes = ["width", "height", "init_image", "size_from_input"]
        follow_any([(self.generation, name) for name in sizes], self._show_size)
        return self._size_row()

    def _size_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        row.addWidget(self.size_combo, 1)
        row.addWidget(self.width_spin)
        row.addWidget(QLabel("×"))
        row.addWidget(self.height_spin)
        return row

    def _on_size_chosen(self, index: int) -> None:
        if index >= len(ASPECT_BUCKETS):  # "Custom": keep the size, edit it in the boxes
            self.width_spin.setFocus()
            return
        width, height = ASPECT_BUCKETS[index]
        self.generation.update(width=width, height=height)

    def _show_size(self) -> None:
        """The preset matching the size (else "Custom"), and why an invalid size is refused;
        disabled while the size comes from the input image."""
        from_input = self.generation.uses_input_size()
        for widget in (self.size_combo, self.width_spin, self.height_spin):
            widget.setEnabled(not from_input)
            widget.setToolTip("The input image's size (see Image input)" if from_input else "")
        size = (self.generation.width, self.generation.height)
        index = ASPECT_BUCKETS.index(size) if size in ASPECT_BUCKETS else len(ASPECT_BUCKETS)
        was_blocked = self.size_combo.blockSignals(True)
        self.size_combo.setCurrentIndex(index)
        self.size_combo.blockSignals(was_blocked)
        error = as_sentence(self.generation.size_error())
        self.size_error_label.setText(error)
        self.size_error_label.setVisible(bool(error))

    def _make_batch_count(self) -> QSpinBox:
        self.batch_count_spin = spin_box(1, 100)
        self.batch_count_spin.setToolTip("How many images, one after another")
        bind_spin_box(self.generation, "batch_count", self.batch_count_spin)
        return self.batch_count_spin

    def _make_preview_every(self) -> QSpinBox:
        self.preview_every_spin = spin_box(0, 1000)
        self.preview_every_spin.setSuffix(" steps")
        self.preview_every_spin.setSpecialValueText("off")  # 0: no live preview
        bind_spin_box(self.generation, "preview_every", self.preview_every_spin)
        return self.preview_every_spin

    def _make_strip_metadata(self) -> QCheckBox:
        self.strip_metadata_check = QCheckBox("Strip metadata from saved images")
        bind_check_box(self.generation, "strip_metadata", self.strip_metadata_check)
        return self.strip_metadata_check
