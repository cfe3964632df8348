"""The desktop's side of `sdxs_rt.jobs.JobQueue`: one queue over the worker's loaded pipeline,
the window's queue entries mapped to its jobs, and its events turned into the worker's signals.

`QueueRunner` lives in the generation worker's QThread. `queue_job` (a slot, in that thread)
loads the model when needed, checks the request as a run always did (warnings, TensorRT sizes,
the preview map) and submits it; the JobQueue's own thread then runs the jobs one at a time. Its
callbacks and image sink (in that thread, or in the GUI thread for a pending job's cancel) save
each image to the history folder and emit `GenerationWorker.progress`, `.preview`, `.image`,
`.failed` and this object's `entry_status`: receivers in the GUI thread get them queued, in order.

`cancel`, `stop_after_image`, `set_order` and `close` are called from the GUI thread; an entry
may not have reached the JobQueue yet (the model is loading): it is then cancelled, stopped or
placed when it does. One lock guards the mappings; the JobQueue is never called under it except
to submit (the queue calls back outside its own lock, so the order of locks is always ours, then
the queue's).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal, Slot
from sdxs_rt_desktop.preview import LatentPreviewer
from sdxs_rt_desktop.queue_state import EntryStatus
from sdxs_rt_desktop.worker import (
    GenerationJob,
    GenerationWorker,
    RunCounter,
    check_engine_covers,
    error_message,
)

from sdxs_rt.errors import EXIT_UNEXPECTED, SdxsError, UsageError
from sdxs_rt.jobs import (
    ImageReady,
    Job,
    JobEvent,
    JobQueue,
    JobStatus,
    ProgressEvent,
    StatusEvent,
    UnknownJob,
)
from sdxs_rt.pipeline import ImageEvent, Pipeline
from sdxs_rt.plan import GenerationPlan

logger = logging.getLogger(__name__)

KEEP_RESULTS_SECONDS = 30.0  # the desktop reads a job's result only as it ends (its error)
CLOSE_SECONDS = 30.0
REORDER_TRIES = 3
IDLE_POLL_SECONDS = 1.0


@dataclass
class QueuedRun:
    """One entry that reached the JobQueue. The flags are set from the GUI thread and read in
    the queue's thread (single assignments of booleans)."""

    entry: int
    job: GenerationJob
    pipe: Pipeline
    previewer: LatentPreviewer
    preview_every: int
    plan: GenerationPlan | None = None
    job_id: str = ""
    counter: RunCounter | None = None
    last_step: float = 0.0
    cancel_now: bool = False  # nothing more is shown or saved
    stop_after: bool = False  # stop once the image in progress is saved
    dropped: bool = False  # an image made after Cancel now was not saved


class QueueRunner(QObject):
    """See the module docstring."""

    entry_status = Signal(int, str)  # entry id, EntryStatus value (running and the final ones)

    def __init__(self, worker: GenerationWorker, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._worker = worker
        self._lock = threading.Lock()
        self._queue: JobQueue | None = None
        self._runs: dict[str, QueuedRun] = {}  # job id -> run, until it ends
        self._entries: dict[int, QueuedRun] = {}  # entry -> run, until it ends
        self._cancelled: set[int] = set()  # entries cancelled before they reached the queue
        self._stop_after: set[int] = set()  # ... or told to stop after their first image
        self._order: list[int] = []  # the window's order of the pending entries
        self._closed = False
        worker.before_load = self._retire_queue

    # ---------------------------------------------------------------- GUI thread

    def cancel(self, entry: int) -> None:
        """Pending: removed; running: stopped before its next step, nothing more saved."""
        with self._lock:
            run = self._entries.get(entry)
            if run is None:
                self._cancelled.add(entry)
                return
            run.cancel_now = True
            job_id = run.job_id
        self._cancel_job(job_id)

    def stop_after_image(self, entry: int) -> None:
        with self._lock:
            run = self._entries.get(entry)
            if run is None:
                self._stop_after.add(entry)
            else:
                run.stop_after = True

    def set_order(self, pending: list[int]) -> None:
        """The run order of the pending entries, as the window shows it."""
        with self._lock:
            self._order = list(pending)
        self._apply_order()

    def close(self) -> None:
        """Cancel everything (the app is closing) and stop the queue's thread."""
        with self._lock:
            self._closed = True
            for run in self._entries.values():
                run.cancel_now = True
        self.close_queue()

    def close_queue(self) -> None:
        """Stop the queue, cancelling what it still holds."""
        with self._lock:
            queue, self._queue = self._queue, None
        if queue is not None and not queue.close(drain=False, timeout=CLOSE_SECONDS):
            logger.warning("the job queue did not stop within %s s", CLOSE_SECONDS)

    # ---------------------------------------------------------------- worker thread

    def _retire_queue(self) -> None:
        """Before another pipeline loads (a job for another model, a walk, new engines): the
        jobs queued on the old one finish first, then its queue stops and lets it go."""
        with self._lock:
            queue = self._queue
        while queue is not None and not self._closed and not queue.wait_idle(IDLE_POLL_SECONDS):
            continue  # close() cancels them: the loop ends then
        self.close_queue()

    @Slot(object)
    def queue_job(self, job: GenerationJob) -> None:
        """Load, check and submit one Generate click; never raises (the window shows why)."""
        with self._lock:
            cancelled = take(self._cancelled, job.entry)
        if cancelled:
            self.entry_status.emit(job.entry, EntryStatus.CANCELLED.value)
            return
        worker = self._worker
        try:
            pipe, previewer = worker.pipeline_for(job.load)
            plan = worker.plan(pipe, job.params)  # warnings for the window, once
            check_engine_covers(pipe, plan.params)
            every = worker.prepare_previews(previewer, job.preview_every)
            submitted = self._submit(QueuedRun(job.entry, job, pipe, previewer, every))
        except Exception as exc:  # never out of the thread: the window shows one sentence
            if not isinstance(exc, SdxsError):
                logger.exception("queueing the generation failed")
            worker.failed.emit(error_message(exc))
            self.entry_status.emit(job.entry, EntryStatus.FAILED.value)
            return
        if submitted:
            self._apply_order()
        else:
            self.entry_status.emit(job.entry, EntryStatus.CANCELLED.value)

    def _submit(self, run: QueuedRun) -> bool:
        queue = self._queue_for(run.pipe)
        with self._lock:  # callbacks wait here until the run is known by its job id
            if take(self._cancelled, run.entry):
                return False
            with warnings.catch_warnings():  # already shown once, by worker.plan
                warnings.simplefilter("ignore")
                queued = queue.submit(run.job.params, on_event=self._on_event)
            run.job_id, run.plan = queued.id, queued.plan
            run.stop_after = take(self._stop_after, run.entry)
            self._runs[queued.id] = run
            self._entries[run.entry] = run
        return True

    def _queue_for(self, pipe: Pipeline) -> JobQueue:
        with self._lock:
            if self._queue is not None and self._queue.pipe is pipe:
                return self._queue
        self.close_queue()
        queue = JobQueue(
            pipe,
            event_buffer=1,  # events reach the window through callbacks; keep no latents
            keep_results_seconds=KEEP_RESULTS_SECONDS,
            image_sink=self._save_image,
        )
        queue.start()
        with self._lock:
            self._queue = queue
        return queue

    # ---------------------------------------------------------------- the queue's thread

    def _on_event(self, event: JobEvent) -> None:
        with self._lock:
            run = self._runs.get(event.job_id)
        if run is None:
            return
        if isinstance(event, ProgressEvent):
            self._on_progress(run, event)
        elif isinstance(event, StatusEvent):
            if event.status is JobStatus.RUNNING:
                assert run.plan is not None
                run.counter = RunCounter(run.plan)
                run.last_step = time.perf_counter()
                self.entry_status.emit(run.entry, EntryStatus.RUNNING.value)
            elif event.status.final:
                self._on_final(run, event.status)
        elif isinstance(event, ImageReady):
            pass  # saved and shown by the image sink, before this event

    def _on_progress(self, run: QueuedRun, event: ProgressEvent) -> None:
        if run.cancel_now or run.counter is None:
            return
        now = time.perf_counter()
        seconds, run.last_step = now - run.last_step, now
        worker = self._worker
        worker.progress.emit(run.counter.add_step(event.image_index, event.step, seconds))
        every = run.preview_every
        if every > 0 and (event.step + 1) % every == 0 and event.denoised is not None:
            worker.preview.emit(run.previewer.to_qimage(event.denoised))

    def _save_image(self, job: Job, ready: ImageReady) -> None:
        """The JobQueue's image sink: a failure to save fails the job with that error."""
        with self._lock:
            run = self._runs.get(job.id)
        if run is None or run.counter is None or run.cancel_now:
            if run is not None:
                run.dropped = True
            return
        image = ImageEvent(job.plan, ready.index, ready.seed, ready.image, {})
        self._worker.save_image(image, run.pipe, run.job, run.counter)
        if run.stop_after:
            self._cancel_job(job.id)  # the queue stops after this image's event

    def _on_final(self, run: QueuedRun, status: JobStatus) -> None:
        with self._lock:
            self._runs.pop(run.job_id, None)
            self._entries.pop(run.entry, None)
            queue = self._queue
        if status is JobStatus.FAILED:
            self._worker.failed.emit(self._failure(queue, run.job_id))
            final = EntryStatus.FAILED
        elif status is JobStatus.CANCELLED or run.dropped:
            images = run.counter.images_done if run.counter is not None else 0
            stopped = run.stop_after and not run.cancel_now and images > 0
            final = EntryStatus.STOPPED if stopped else EntryStatus.CANCELLED
        else:
            final = EntryStatus.DONE
        self.entry_status.emit(run.entry, final.value)

    @staticmethod
    def _failure(queue: JobQueue | None, job_id: str) -> str:
        try:
            result = queue.result(job_id) if queue is not None else None
        except UnknownJob:
            result = None
        if result is None or not result.error:
            return "unexpected error: the generation failed"
        if result.exit_code == EXIT_UNEXPECTED:
            return f"unexpected error: {result.error}"
        return result.error

    # ---------------------------------------------------------------- helpers

    def _cancel_job(self, job_id: str) -> None:
        with self._lock:
            queue = self._queue
        if queue is None:
            return
        with contextlib.suppress(UnknownJob):  # it ended and its result was dropped
            queue.cancel(job_id)

    def _apply_order(self) -> None:
        """Reorder the JobQueue's pending jobs as the window shows them (jobs that started in
        the meantime are left out)."""
        with self._lock:
            queue = self._queue
            ids = [self._entries[e].job_id for e in self._order if e in self._entries]
        if queue is None:
            return
        for _ in range(REORDER_TRIES):
            pending = {job.id for job in queue.pending()}
            try:
                queue.reorder([job_id for job_id in ids if job_id in pending])
                return
            except UsageError:  # one of them started or ended between the two calls
                continue


def take(entries: set[int], entry: int) -> bool:
    """Remove `entry` from `entries`; True when it was there (call under the runner's lock)."""
    if entry in entries:
        entries.discard(entry)
        return True
    return False
