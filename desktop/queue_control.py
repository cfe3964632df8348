"""The queue's GUI-thread half: the window's actions on queue entries (cancel one, cancel all,
move) applied to `QueueState` at once and passed to the `QueueRunner`, and the runner's reports
(an entry started, an entry ended) turned into the state and two signals for the controller."""

from __future__ import annotations

from PySide6.QtCore import QObject, Qt, Signal, Slot
from sdxs_rt_desktop.queue_runner import QueueRunner
from sdxs_rt_desktop.queue_state import EntryStatus, QueueEntry, QueueState, summarize
from sdxs_rt_desktop.worker import GenerationJob


class QueueControl(QObject):
    """See the module docstring; `state` is what the queue panel shows."""

    entry_started = Signal(int)  # the total steps of the entry that started
    emptied = Signal(str)  # the last entry ended with this EntryStatus: nothing runs now

    def __init__(self, runner: QueueRunner, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.state = QueueState(self)
        self._runner = runner
        runner.entry_status.connect(self._on_entry_status, Qt.ConnectionType.QueuedConnection)

    def add(self, job: GenerationJob) -> None:
        """A new entry, last in the queue (the caller then sends the job to the runner)."""
        total_steps = job.params.num_inference_steps * job.params.num_images
        self.state.add(QueueEntry(job.entry, summarize(job.params), total_steps))
        self._runner.set_order(self.state.pending_ids())

    def current(self) -> QueueEntry | None:
        """The running entry, else the one to run next (its model may be loading)."""
        entries = self.state.entries
        return entries[0] if entries else None

    def cancel(self, entry_id: int) -> None:
        """A pending entry leaves the queue now and never runs; the running one stops before its
        next step (it leaves the queue once stopped). The other entries are unaffected."""
        entry = self.state.get(entry_id)
        if entry is None:
            return
        self._runner.cancel(entry_id)
        if entry.status is EntryStatus.PENDING:
            self._ended(entry_id, EntryStatus.CANCELLED)

    def cancel_all(self) -> None:
        """The pending entries, then the running one."""
        for entry in reversed(self.state.entries):
            self.cancel(entry.id)

    def stop_after_image(self) -> None:
        """The running entry stops once the image in progress is saved."""
        if (entry := self.current()) is not None:
            self._runner.stop_after_image(entry.id)

    def move(self, entry_id: int, position: int) -> bool:
        """A pending entry to `position` among the pending (0: next); False when not pending."""
        if not self.state.move(entry_id, position):
            return False
        self._runner.set_order(self.state.pending_ids())
        return True

    @Slot(int, str)
    def _on_entry_status(self, entry_id: int, value: str) -> None:
        status = EntryStatus(value)
        entry = self.state.get(entry_id)
        if entry is None:
            return  # cancelled while pending: it left the queue then
        if status is EntryStatus.RUNNING:
            self.state.set_running(entry_id)
            self.entry_started.emit(entry.total_steps)
        elif status.final:
            self._ended(entry_id, status)

    def _ended(self, entry_id: int, status: EntryStatus) -> None:
        self.state.remove(entry_id)
        if not len(self.state):
            self.emptied.emit(status.value)
