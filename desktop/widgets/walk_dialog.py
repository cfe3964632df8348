"""The "Latent walk" dialog: keyframes (a prompt and a seed each), frames between, the animation.

Render asks the controller (`controller.walk(keyframes, frames_between, animation, fps)`) to
draw the walk in the generation worker with the Generation settings' negative prompt, steps,
guidance, sampler and size; the frames join the gallery and the history folder like generated
images and the animation is written beside them. The dialog follows `RunState` for its progress
("Frame 2/9: step 3/4") and its buttons; "Cancel now" stops the walk as it stops a generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)
from sdxs_rt_desktop.state import GenerationState, RunState
from sdxs_rt_desktop.widgets.binding import fill_combo, follow, follow_any
from sdxs_rt_desktop.widgets.text import ERROR_STYLE, HINT_STYLE, as_sentence

from sdxs_rt.rng import random_seed
from sdxs_rt.walk import MAX_FPS, Keyframe

MIN_KEYFRAMES = 2
MAX_FRAMES_BETWEEN = 240
SEED_LIMIT = 2**53  # a QDoubleSpinBox holds whole numbers exactly up to here (random: < 2**32)
ANIMATIONS = (("Animated WebP", "webp"), ("GIF", "gif"), ("None (frames only)", ""))
DEFAULT_FPS = 8.0


def seed_spin(seed: int) -> QDoubleSpinBox:
    """A seed box: whole numbers beyond a QSpinBox's 2**31 (random seeds reach 2**32)."""
    spin = QDoubleSpinBox()
    spin.setDecimals(0)
    spin.setRange(0, SEED_LIMIT)
    spin.setValue(min(seed, SEED_LIMIT))
    return spin


class KeyframeRow(QWidget):
    """One keyframe: its prompt and seed, and "Remove"."""

    def __init__(self, prompt: str, seed: int) -> None:
        super().__init__()
        self.prompt_edit = QLineEdit(prompt)
        self.prompt_edit.setPlaceholderText("what this keyframe shows")
        self.seed_spin = seed_spin(seed)
        self.seed_spin.setToolTip("The keyframe's seed: different seeds also move the noise")
        self.remove_button = QPushButton("Remove")
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.prompt_edit, 1)
        row.addWidget(QLabel("Seed"))
        row.addWidget(self.seed_spin)
        row.addWidget(self.remove_button)

    def keyframe(self) -> Keyframe:
        return Keyframe(self.prompt_edit.text(), int(self.seed_spin.value()))


class WalkDialog(QDialog):
    """See the module docstring; `controller` is the window's controller."""

    def __init__(
        self,
        controller: Any,
        generation: GenerationState,
        run: RunState,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setWindowTitle("Latent walk")
        self.controller = controller
        self.generation = generation
        self.run = run
        self.rows: list[KeyframeRow] = []
        self.rendering = False  # this dialog started the run in progress
        self.animation_path: Path | None = None
        layout = QVBoxLayout(self)
        layout.addWidget(self._make_keyframes(), 1)
        layout.addLayout(self._make_options())
        layout.addWidget(self._make_progress())
        layout.addLayout(self._make_buttons())
        controller.animation_ready.connect(self.on_animation)
        controller.finished.connect(self.on_finished)
        follow_any([(run, "running")], self.refresh)
        self.prefill()
        self.resize(640, 420)

    # ---------------------------------------------------------------- layout

    def _make_keyframes(self) -> QGroupBox:
        box = QGroupBox("Keyframes (the walk passes through each, in order)")
        outer = QVBoxLayout(box)
        self.rows_layout = QVBoxLayout()
        outer.addLayout(self.rows_layout)
        self.add_button = QPushButton("Add keyframe")
        self.add_button.clicked.connect(lambda: self.add_keyframe())
        outer.addWidget(self.add_button)
        outer.addStretch(1)
        return box

    def _make_options(self) -> QFormLayout:
        self.frames_spin = QSpinBox()
        self.frames_spin.setRange(1, MAX_FRAMES_BETWEEN)
        self.frames_spin.setValue(8)
        self.frames_spin.setToolTip("Frames drawn between each pair of keyframes")
        self.animation_combo = QComboBox()
        fill_combo(self.animation_combo, ANIMATIONS)
        self.fps_spin = QDoubleSpinBox()
        self.fps_spin.setRange(0.5, MAX_FPS)
        self.fps_spin.setDecimals(1)
        self.fps_spin.setValue(DEFAULT_FPS)
        self.animation_combo.currentIndexChanged.connect(
            lambda _: self.fps_spin.setEnabled(bool(self.animation()))
        )
        self.frame_count_label = QLabel()
        self.frame_count_label.setStyleSheet(HINT_STYLE)
        self.frames_spin.valueChanged.connect(lambda _: self.show_frame_count())
        form = QFormLayout()
        form.addRow("Frames between", self.frames_spin)
        form.addRow("Animation", self.animation_combo)
        form.addRow("Frames per second", self.fps_spin)
        form.addRow("", self.frame_count_label)
        return form

    def _make_progress(self) -> QWidget:
        box = QWidget()
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 0)
        self.progress_bar = QProgressBar()
        self.status_label = QLabel()
        self.error_label = QLabel()
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setWordWrap(True)
        for widget in (self.progress_bar, self.status_label, self.error_label):
            column.addWidget(widget)
        follow_any([(self.run, n) for n in ("step", "total_steps")], self._show_progress)
        follow(self.run, "status", self._show_status)
        follow(self.run, "error", lambda e: self.error_label.setText(as_sentence(e)))
        return box

    def _make_buttons(self) -> QHBoxLayout:
        self.render_button = QPushButton("Render")
        self.render_button.setDefault(True)
        self.render_button.clicked.connect(lambda: self.start_walk())
        self.cancel_button = QPushButton("Cancel now")
        self.cancel_button.clicked.connect(lambda: self.controller.cancel_now())
        self.close_button = QPushButton("Close")
        self.close_button.clicked.connect(self.close)
        row = QHBoxLayout()
        row.addWidget(self.render_button, 2)
        row.addWidget(self.cancel_button, 1)
        row.addWidget(self.close_button, 1)
        return row

    # ---------------------------------------------------------------- keyframes

    def prefill(self) -> None:
        """Two keyframes from the Generation prompt and seed (a fresh seed when it is random);
        edit the second (or add more) to say where the walk goes."""
        generation = self.generation
        seed = random_seed() if generation.random_seed else generation.seed
        for row in list(self.rows):
            self.remove_keyframe(row, force=True)
        for _ in range(MIN_KEYFRAMES):
            self.add_keyframe(generation.prompt, seed)

    def add_keyframe(self, prompt: str | None = None, seed: int | None = None) -> KeyframeRow:
        """A new last keyframe; by default a copy of the last one."""
        last = self.rows[-1].keyframe() if self.rows else None
        prompt = prompt if prompt is not None else (last.prompt if last else "")
        seed = seed if seed is not None else ((last.seed or 0) if last else 0)
        row = KeyframeRow(prompt, seed)
        row.remove_button.clicked.connect(lambda: self.remove_keyframe(row))
        self.rows.append(row)
        self.rows_layout.addWidget(row)
        self._after_rows_changed()
        return row

    def remove_keyframe(self, row: KeyframeRow, force: bool = False) -> None:
        if row not in self.rows or (len(self.rows) <= MIN_KEYFRAMES and not force):
            return
        self.rows.remove(row)
        self.rows_layout.removeWidget(row)
        row.deleteLater()
        self._after_rows_changed()

    def _after_rows_changed(self) -> None:
        for row in self.rows:
            row.remove_button.setEnabled(len(self.rows) > MIN_KEYFRAMES)
        self.show_frame_count()

    def keyframes(self) -> list[Keyframe]:
        return [row.keyframe() for row in self.rows]

    # ---------------------------------------------------------------- options

    def frames_between(self) -> int:
        return self.frames_spin.value()

    def animation(self) -> str:
        return str(self.animation_combo.currentData())

    def fps(self) -> float:
        return float(self.fps_spin.value())

    def frame_count(self) -> int:
        return (len(self.rows) - 1) * (self.frames_between() + 1) + 1

    def show_frame_count(self) -> None:
        self.frame_count_label.setText(f"{self.frame_count()} frames in all, keyframes included")

    # ---------------------------------------------------------------- running

    def start_walk(self) -> bool:
        """Start the walk; False (the reason in the error line) when it cannot start."""
        self.animation_path = None
        self.rendering = True  # before the run starts: its first status lines are ours
        self.rendering = bool(
            self.controller.walk(
                self.keyframes(), self.frames_between(), self.animation(), self.fps()
            )
        )
        self.refresh()
        return self.rendering

    def refresh(self) -> None:
        running = self.run.running
        self.render_button.setEnabled(not running)
        self.cancel_button.setEnabled(running and self.rendering)
        self.add_button.setEnabled(not running)

    def _show_progress(self) -> None:
        total = max(self.run.total_steps, 1)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(min(self.run.step, total))

    def _show_status(self, status: str) -> None:
        if self.rendering or not self.run.running:
            self.status_label.setText(status)

    def on_animation(self, path: Path) -> None:
        self.animation_path = Path(path)

    def on_finished(self, _stopped_early: bool) -> None:
        if not self.rendering:
            return
        self.rendering = False
        self.refresh()
        if self.animation_path is not None and not self.run.error:
            self.status_label.setText(f"{self.run.status}: animation {self.animation_path}")
