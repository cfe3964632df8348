"""Two-way bindings between a widget and one property of a state object.

State -> widget: the property's `*_changed` signal updates the widget with its own signals
blocked, so the update does not come back as an edit. Widget -> state: the widget's edit signal
sets the property, which emits only on a real change. Together: no feedback loops.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import shiboken6
from PySide6.QtCore import QObject
from PySide6.QtWidgets import (
    QAbstractButton,
    QComboBox,
    QDoubleSpinBox,
    QLineEdit,
    QPlainTextEdit,
    QSlider,
    QSpinBox,
    QWidget,
)
from sdxs_rt_desktop.state import notify_name


def _changed_signal(state: QObject, name: str) -> Any:
    return getattr(state, notify_name(name))


def _show(widget: QWidget, show_value: Callable[[Any], None]) -> Callable[[Any], None]:
    """`show_value` wrapped so that the widget's own signals stay quiet while it runs."""

    def update(value: Any) -> None:
        if not shiboken6.isValid(widget):  # the widget went before the state did
            return
        was_blocked = widget.blockSignals(True)
        try:
            show_value(value)
        finally:
            widget.blockSignals(was_blocked)

    return update


def bind(
    state: QObject,
    name: str,
    widget: QWidget,
    show_value: Callable[[Any], None],
    edited: Any,
) -> None:
    """Show `state.<name>` with `show_value`; `edited(value)` from the widget sets it."""
    update = _show(widget, show_value)
    update(getattr(state, name))
    _changed_signal(state, name).connect(update)
    edited.connect(lambda value: setattr(state, name, value))


def bind_line_edit(state: QObject, name: str, edit: QLineEdit) -> None:
    def show_text(text: str) -> None:
        if edit.text() != text:
            edit.setText(text)

    bind(state, name, edit, show_text, edit.textEdited)


def bind_plain_text(state: QObject, name: str, edit: QPlainTextEdit) -> None:
    """Multi-line text; the cursor stays put unless the text really changes."""

    def show_text(text: str) -> None:
        if edit.toPlainText() != text:
            edit.setPlainText(text)

    update = _show(edit, show_text)
    update(getattr(state, name))
    _changed_signal(state, name).connect(update)
    edit.textChanged.connect(lambda: setattr(state, name, edit.toPlainText()))


def bind_spin_box(state: QObject, name: str, spin: QSpinBox | QDoubleSpinBox) -> None:
    bind(state, name, spin, spin.setValue, spin.valueChanged)


def bind_scaled_slider(state: QObject, name: str, slider: QSlider, scale: int) -> None:
    """A float property on an int slider that holds `round(value * scale)`."""
    update = _show(slider, lambda value: slider.setValue(round(value * scale)))
    update(getattr(state, name))
    _changed_signal(state, name).connect(update)
    slider.valueChanged.connect(lambda position: setattr(state, name, position / scale))


def bind_check_box(state: QObject, name: str, button: QAbstractButton) -> None:
    bind(state, name, button, button.setChecked, button.toggled)


def fill_combo(combo: QComboBox, choices: Sequence[tuple[str, Any]]) -> None:
    """Items as (label, value); the value is the item's data."""
    for label, value in choices:
        combo.addItem(label, value)


def bind_combo_data(state: QObject, name: str, combo: QComboBox) -> None:
    """A fixed-choice combo whose item data holds the property's value.

    A value that is not among the choices (an old settings file) is added, labelled by itself,
    so that the combo always shows what the state holds.
    """

    def show_value(value: Any) -> None:
        index = combo.findData(value)
        if index < 0:
            combo.addItem(str(value), value)
            index = combo.count() - 1
        combo.setCurrentIndex(index)

    def on_activated(index: int) -> None:
        setattr(state, name, combo.itemData(index))

    update = _show(combo, show_value)
    update(getattr(state, name))
    _changed_signal(state, name).connect(update)
    combo.currentIndexChanged.connect(on_activated)


def bind_combo_text(state: QObject, name: str, combo: QComboBox) -> None:
    """An editable combo: suggestions in the list, any text accepted."""

    def show_text(text: str) -> None:
        if combo.currentText() != text:
            combo.setCurrentText(text)

    bind(state, name, combo, show_text, combo.currentTextChanged)


def follow(state: QObject, name: str, show_value: Callable[[Any], None]) -> None:
    """One-way: call `show_value` now and on every change (labels, enabled flags)."""
    show_value(getattr(state, name))
    _changed_signal(state, name).connect(show_value)


def follow_any(
    states_and_names: Sequence[tuple[QObject, str]], refresh: Callable[[], None]
) -> None:
    """One-way: call `refresh()` now and whenever any of the listed properties changes."""
    for state, name in states_and_names:
        _changed_signal(state, name).connect(lambda *_: refresh())
    refresh()
