"""The generation queue as the window shows it: a QObject with the entries in run order (the
running one first) and one `changed` signal; no widgets, no threads (the controller updates it).

An entry is one Generate click, known by the desktop's own id from the click on (before the
worker has loaded the model and handed it to `sdxs_rt.jobs.JobQueue`). Finished entries leave the
list: their images are in the gallery.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from PySide6.QtCore import QObject, Signal

from sdxs_rt.params import GenerationParams

SUMMARY_CHARS = 48


class EntryStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    STOPPED = "stopped"  # "Stop after this image": the images made so far are kept
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self not in (EntryStatus.PENDING, EntryStatus.RUNNING)

    @property
    def early(self) -> bool:
        """It ended before all its images were made."""
        return self in (EntryStatus.STOPPED, EntryStatus.CANCELLED)


@dataclass(frozen=True)
class QueueEntry:
    id: int
    summary: str  # a short prompt summary, with the number of images, size and seed
    total_steps: int  # over all its images
    status: EntryStatus = EntryStatus.PENDING

    @property
    def label(self) -> str:
        mark = "▶ running" if self.status is EntryStatus.RUNNING else "waiting"
        return f"{mark} — {self.summary}"


def short_prompt(prompt: str, limit: int = SUMMARY_CHARS) -> str:
    """The prompt on one line, cut at a word with "…" when longer than `limit`."""
    text = " ".join(prompt.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0] if " " in text[: limit - 1] else text[: limit - 1]
    return cut.rstrip(",;: ") + "…"


def summarize(params: GenerationParams) -> str:
    """'a red fox, in snow — 2 images, 128×128, seed 7' (size left out when it comes from the
    input image)."""
    count = params.num_images
    parts = [f"{count} image" + ("s" if count != 1 else "")]
    if params.width and params.height:
        parts.append(f"{params.width}×{params.height}")
    if params.seed is not None:
        parts.append(f"seed {params.seed}")
    return f"{short_prompt(params.prompt)} — {', '.join(parts)}"


class QueueState(QObject):
    """The entries not yet finished: the running one (if any) first, then the pending ones in
    the order they will run."""

    changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._entries: list[QueueEntry] = []

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def entries(self) -> list[QueueEntry]:
        return list(self._entries)

    def get(self, entry_id: int) -> QueueEntry | None:
        return next((entry for entry in self._entries if entry.id == entry_id), None)

    @property
    def running(self) -> QueueEntry | None:
        return next((e for e in self._entries if e.status is EntryStatus.RUNNING), None)

    def pending_ids(self) -> list[int]:
        return [entry.id for entry in self._entries if entry.status is EntryStatus.PENDING]

    def add(self, entry: QueueEntry) -> None:
        self._entries.append(entry)
        self.changed.emit()

    def set_running(self, entry_id: int) -> None:
        """The entry started: it moves to the front."""
        entry = self.get(entry_id)
        if entry is None:
            return
        self._entries.remove(entry)
        self._entries.insert(0, replace(entry, status=EntryStatus.RUNNING))
        self.changed.emit()

    def remove(self, entry_id: int) -> bool:
        entry = self.get(entry_id)
        if entry is None:
            return False
        self._entries.remove(entry)
        self.changed.emit()
        return True

    def move(self, entry_id: int, position: int) -> bool:
        """Move a pending entry to `position` among the pending ones (0: next to run; clamped).
        False when it is not pending (running or gone)."""
        pending = self.pending_ids()
        if entry_id not in pending:
            return False
        pending.remove(entry_id)
        pending.insert(max(0, min(position, len(pending))), entry_id)
        self.reorder(pending)
        return True

    def reorder(self, pending_ids: list[int]) -> None:
        """Put these pending entries first among the pending, in this order."""
        pending = {e.id: e for e in self._entries if e.status is EntryStatus.PENDING}
        chosen = [pending[i] for i in pending_ids if i in pending]
        running = [e for e in self._entries if e.status is EntryStatus.RUNNING]
        others = [e for e in pending.values() if e not in chosen]
        order = running + chosen + others
        if order != self._entries:
            self._entries = order
            self.changed.emit()
