"""Under a prompt box: its parse error in red, or a grey hint on what the syntax will do.

Checked a moment after the typing stops (and when the steps, the strength or the image prompts
change), with `sdxs_rt_desktop.prompt_check`: no model is needed, nothing runs. A schedule's
steps are those the first pass runs: all of them from noise, the last int(steps x strength)
from an init image, as the library counts them.
"""

from __future__ import annotations

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget
from sdxs_rt_desktop.prompt_check import check_prompt_text
from sdxs_rt_desktop.state import AUTO_STRENGTH, OUTPAINT_FIELDS, GenerationState
from sdxs_rt_desktop.widgets.binding import follow_any
from sdxs_rt_desktop.widgets.text import ERROR_STYLE, HINT_STYLE, as_sentence

from sdxs_rt.params import GenerationParams
from sdxs_rt.plan import strength_for

DEBOUNCE_MS = 300


class PromptFeedback(QWidget):
    """Follows `generation.<name>` ("prompt" or "negative_prompt")."""

    def __init__(
        self, generation: GenerationState, name: str, parent: QWidget | None = None
    ) -> None:
        super().__init__(parent)
        self.generation = generation
        self.name = name
        self.error_label = label(ERROR_STYLE)
        self.hint_label = label(HINT_STYLE)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.error_label)
        layout.addWidget(self.hint_label)
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self.timer.timeout.connect(self.refresh)
        self.refresh()
        watched = (name, "steps", "image_prompts", "init_image", "strength", *OUTPAINT_FIELDS)
        follow_any([(generation, field) for field in watched], self.timer.start)

    def refresh(self) -> None:
        """Check the text now (the timer calls this once the typing pauses)."""
        self.timer.stop()
        generation = self.generation
        check = check_prompt_text(
            getattr(generation, self.name),
            steps_run(generation),
            generation.image_prompts,
            beside=self.name == "prompt",
        )
        show(self.error_label, as_sentence(check.error))
        show(self.hint_label, check.hint)

    @property
    def error(self) -> str:
        """The error shown ("" when none): what a test or the window can ask."""
        return self.error_label.text() if not self.error_label.isHidden() else ""

    @property
    def hint(self) -> str:
        return self.hint_label.text() if not self.hint_label.isHidden() else ""


def steps_run(generation: GenerationState) -> int:
    """The steps of the first pass: img2img runs the last int(steps x strength) of them."""
    if not generation.init_image:
        return generation.steps
    auto = generation.strength <= AUTO_STRENGTH
    request = GenerationParams(prompt="", init_image=generation.init_image,
                               strength=None if auto else generation.strength,
                               outpaint=generation.outpaint())  # fmt: skip
    strength = strength_for(request) or 1.0
    return min(int(generation.steps * strength), generation.steps)


def label(style: str) -> QLabel:
    widget = QLabel()
    widget.setStyleSheet(style)
    widget.setWordWrap(True)
    widget.hide()
    return widget


def show(widget: QLabel, text: str) -> None:
    widget.setText(text)
    widget.setVisible(bool(text))
