"""The generation queue: the running entry and the waiting ones, in run order, with Move up,
Move down, Cancel (the selected entry) and Cancel all. Follows `QueueState`; the actions go to
the controller's `jobs` (`queue_control.QueueControl`)."""

from __future__ import annotations

from typing import Protocol

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)
from sdxs_rt_desktop.queue_state import QueueState

EMPTY_TEXT = "Nothing queued: Generate while an image is being made adds it here."


class QueueActions(Protocol):
    def cancel(self, entry_id: int) -> None: ...
    def cancel_all(self) -> None: ...
    def move(self, entry_id: int, position: int) -> bool: ...


class QueuePanel(QGroupBox):
    """See the module docstring. Each list item holds its entry's id (UserRole)."""

    def __init__(
        self, state: QueueState, actions: QueueActions, parent: QWidget | None = None
    ) -> None:
        super().__init__("Queue", parent)
        self.state = state
        self.actions = actions
        self.list_widget = QListWidget()
        self.list_widget.setMaximumHeight(120)
        self.list_widget.setToolTip(EMPTY_TEXT)
        self.up_button = QPushButton("Move up")
        self.down_button = QPushButton("Move down")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Remove a waiting entry, or stop the running one")
        self.cancel_all_button = QPushButton("Cancel all")
        buttons = QHBoxLayout()
        for button in (self.up_button, self.down_button, self.cancel_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        buttons.addWidget(self.cancel_all_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.list_widget)
        layout.addLayout(buttons)
        self.up_button.clicked.connect(lambda: self._move_selected(-1))
        self.down_button.clicked.connect(lambda: self._move_selected(+1))
        self.cancel_button.clicked.connect(self._cancel_selected)
        self.cancel_all_button.clicked.connect(lambda: self.actions.cancel_all())
        self.list_widget.currentRowChanged.connect(lambda _: self._refresh_buttons())
        state.changed.connect(self.refresh)
        self.refresh()

    def labels(self) -> list[str]:
        return [self.list_widget.item(row).text() for row in range(self.list_widget.count())]

    def selected_id(self) -> int | None:
        item = self.list_widget.currentItem()
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def select(self, entry_id: int) -> None:
        for row in range(self.list_widget.count()):
            if self.list_widget.item(row).data(Qt.ItemDataRole.UserRole) == entry_id:
                self.list_widget.setCurrentRow(row)

    def refresh(self) -> None:
        """The list anew from the state, the selection kept on the same entry."""
        selected = self.selected_id()
        was_blocked = self.list_widget.blockSignals(True)
        try:
            self.list_widget.clear()
            for number, entry in enumerate(self.state.entries, 1):
                item = QListWidgetItem(f"{number}. {entry.label}")
                item.setData(Qt.ItemDataRole.UserRole, entry.id)
                self.list_widget.addItem(item)
            if selected is not None:
                self.select(selected)
        finally:
            self.list_widget.blockSignals(was_blocked)
        self.setTitle(f"Queue ({len(self.state)})" if len(self.state) else "Queue")
        self._refresh_buttons()

    def _refresh_buttons(self) -> None:
        selected = self.selected_id()
        pending = self.state.pending_ids()
        where = pending.index(selected) if selected in pending else -1
        self.up_button.setEnabled(where > 0)
        self.down_button.setEnabled(0 <= where < len(pending) - 1)
        self.cancel_button.setEnabled(selected is not None)
        self.cancel_all_button.setEnabled(bool(len(self.state)))

    def _move_selected(self, offset: int) -> None:
        selected = self.selected_id()
        pending = self.state.pending_ids()
        if selected is not None and selected in pending:
            self.actions.move(selected, pending.index(selected) + offset)

    def _cancel_selected(self) -> None:
        selected = self.selected_id()
        if selected is not None:
            self.actions.cancel(selected)
