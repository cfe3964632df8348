"""A job queue in front of one loaded Pipeline: shared by the server and the desktop app.

`JobQueue.submit()` resolves a request into a plan in the caller's thread (bad input fails
there, with the library's UsageError) and queues it; one worker thread runs the jobs one at a
time, highest priority first and FIFO within a priority. Each job has a status, progress
events (a callback, or an iterator over a bounded buffer) with optional previews, and a result
kept for `keep_results_seconds` after it finishes, then dropped (checked lazily against the
injected clock). `cancel(job_id)` removes a pending job, or stops the running one before its
next step. One lock and one condition variable guard all state; callbacks, planning and
generation run outside the lock.

Rules worth knowing:
- A running job whose images were all made is `done` even if a cancel arrived at the end; a
  `cancelled` job keeps the images it finished before the cancel (none for one-batch jobs).
- New submissions go after the last pending job of the same or a higher priority, so a
  manual `move`/`reorder` is kept among equal priorities.
- `close(drain=True)` runs every pending job, then stops the worker; `close(drain=False)`
  cancels the pending jobs and the running one. Either way, later submissions are refused.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from sdxs_rt.errors import EXIT_OUT_OF_MEMORY, EXIT_UNEXPECTED, SdxsError, UsageError
from sdxs_rt.job_types import (
    EventCallback,
    ImageReady,
    ImageSink,
    Job,
    JobEvent,
    JobResult,
    JobStatus,
    ProgressEvent,
    QueueClosed,
    QueueFull,
    StatusEvent,
    UnknownJob,
    without_latents,
)
from sdxs_rt.params import GenerationParams
from sdxs_rt.pipeline import ImageEvent, Pipeline, StepEvent

__all__ = [
    "EventCallback",
    "ImageReady",
    "ImageSink",
    "Job",
    "JobEvent",
    "JobQueue",
    "JobResult",
    "JobStatus",
    "ProgressEvent",
    "QueueClosed",
    "QueueFull",
    "StatusEvent",
    "UnknownJob",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_PENDING = 64
DEFAULT_KEEP_RESULTS_SECONDS = 600.0
DEFAULT_EVENT_BUFFER = 64


class JobQueue:
    """Bounded priority queue of generation jobs executed one at a time by one worker."""

    def __init__(
        self,
        pipe: Pipeline,
        *,
        max_pending: int = DEFAULT_MAX_PENDING,
        keep_results_seconds: float = DEFAULT_KEEP_RESULTS_SECONDS,
        event_buffer: int = DEFAULT_EVENT_BUFFER,
        clock: Callable[[], float] = time.monotonic,
        image_sink: ImageSink | None = None,
    ) -> None:
        if max_pending < 1:
            raise UsageError(f"max_pending must be at least 1, got {max_pending}")
        if keep_results_seconds < 0:
            raise UsageError(f"keep_results_seconds must be >= 0, got {keep_results_seconds}")
        if event_buffer < 1:
            raise UsageError(f"event_buffer must be at least 1, got {event_buffer}")
        self.pipe = pipe
        self.max_pending = max_pending
        self.keep_results_seconds = keep_results_seconds
        self.event_buffer = event_buffer
        self._clock = clock
        self._image_sink = image_sink
        self._cond = threading.Condition(threading.Lock())
        self._pending: list[Job] = []  # in run order
        self._jobs: dict[str, Job] = {}  # every job whose result is still kept
        self._running: Job | None = None
        self._closing = False
        self._drain = True
        self._worker: threading.Thread | None = None
        self._ids = itertools.count(1)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._closing:
                raise QueueClosed("the job queue is closed")
            self._start_locked()

    def _start_locked(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, name="sdxs-rt-jobs", daemon=True)
            self._worker.start()

    def close(self, drain: bool = True, timeout: float | None = None) -> bool:
        """Refuse new jobs; drain=True runs the pending ones first, drain=False cancels them
        and the running job. True when the worker stopped within `timeout` seconds."""
        cancelled: list[Job] = []
        with self._cond:
            self._closing = True
            self._drain = self._drain and drain
            if not drain:
                cancelled = list(self._pending)
                self._pending.clear()
                for job in cancelled:
                    self._finish_locked(job, JobStatus.CANCELLED)
                if self._running is not None:
                    self._request_cancel_locked(self._running)
            elif self._pending:
                self._start_locked()  # drain a queue that was never started
            worker = self._worker
            self._cond.notify_all()
        for job in cancelled:
            self._call_back(job, StatusEvent(job.id, JobStatus.CANCELLED))
        if worker is None:
            return True
        worker.join(timeout)
        return not worker.is_alive()

    def __enter__(self) -> JobQueue:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(drain=False, timeout=30.0)

    # -- submitting and managing jobs -----------------------------------------------------

    def submit(
        self,
        params: GenerationParams,
        priority: int = 0,
        *,
        preview_every: int | None = None,
        on_event: EventCallback | None = None,
    ) -> Job:
        """Plan `params` now (a UsageError for bad input) and queue the job. `on_event` is
        called from the worker thread; `preview_every` N decodes the x0 estimate every N
        steps into the progress events. QueueFull when `max_pending` jobs wait already."""
        if preview_every is not None and preview_every < 1:
            raise UsageError(f"preview_every must be at least 1, got {preview_every}")
        with self._cond:  # fail fast, before planning
            self._check_accepting_locked()
        plan = self.pipe.plan(params)
        self._expire()
        with self._cond:
            self._check_accepting_locked()
            job_id = f"{next(self._ids)}-{uuid.uuid4().hex[:12]}"
            job = Job(self, job_id, plan, priority, preview_every, on_event, self.event_buffer)
            self._jobs[job_id] = job
            self._pending.insert(self._insert_index_locked(priority), job)
            self._cond.notify_all()
        return job

    def _check_accepting_locked(self) -> None:
        if self._closing:
            raise QueueClosed("the job queue is closed and accepts no new jobs")
        if len(self._pending) >= self.max_pending:
            raise QueueFull(
                f"the job queue is full ({self.max_pending} jobs waiting); try again later"
            )

    def _insert_index_locked(self, priority: int) -> int:
        for index in range(len(self._pending) - 1, -1, -1):
            if self._pending[index].priority >= priority:
                return index + 1
        return 0

    def cancel(self, job_id: str) -> bool:
        """Remove a pending job, or stop the running one before its next step. False when the
        job had already finished (its status then stands)."""
        self._expire()
        with self._cond:
            job = self._get_locked(job_id)
            if job._status is JobStatus.PENDING:
                self._pending.remove(job)
                self._finish_locked(job, JobStatus.CANCELLED)
                self._cond.notify_all()
            elif job._status is JobStatus.RUNNING:
                self._request_cancel_locked(job)
                return True
            else:
                return False
        self._call_back(job, StatusEvent(job.id, JobStatus.CANCELLED))
        return True

    def _request_cancel_locked(self, job: Job) -> None:
        job._cancel_requested = True
        # Under the lock the job is still the running one, so this cannot reach another job:
        # the pipeline also clears its flag when the next generation starts.
        self.pipe.cancel()

    def move(self, job_id: str, position: int) -> None:
        """Move a pending job to `position` (0: next to run; clamped) among the pending."""
        with self._cond:
            job = self._get_locked(job_id)
            if job._status is not JobStatus.PENDING:
                raise UsageError(f"job {job_id} is {job._status.value}; only pending jobs move")
            self._pending.remove(job)
            position = max(0, min(position, len(self._pending)))
            self._pending.insert(position, job)

    def reorder(self, job_ids: Iterable[str]) -> None:
        """Put these pending jobs first, in this order; the others follow in their order."""
        with self._cond:
            ids = list(job_ids)
            if len(set(ids)) != len(ids):
                raise UsageError("reorder was given the same job twice")
            chosen = []
            for job_id in ids:
                job = self._get_locked(job_id)
                if job._status is not JobStatus.PENDING:
                    raise UsageError(
                        f"job {job_id} is {job._status.value}; only pending jobs are reordered"
                    )
                chosen.append(job)
            rest = [job for job in self._pending if job not in chosen]
            self._pending[:] = chosen + rest

    # -- reading state --------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        self._expire()
        with self._cond:
            return self._get_locked(job_id)

    def status(self, job_id: str) -> JobStatus:
        return self.get(job_id).status

    def result(self, job_id: str) -> JobResult:
        job = self.get(job_id)
        result = job.result
        if result is None:  # expired between the two calls
            raise UnknownJob(f"job {job_id}'s result was dropped")
        return result

    def pending(self) -> list[Job]:
        """The pending jobs, in the order they will run."""
        with self._cond:
            return list(self._pending)

    @property
    def running(self) -> Job | None:
        with self._cond:
            return self._running

    def jobs(self) -> list[Job]:
        """Every job whose result is still kept (pending and running included)."""
        self._expire()
        with self._cond:
            return list(self._jobs.values())

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is pending or running; False when `timeout` passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and self._running is None, timeout)

    def _get_locked(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJob(f"no job {job_id!r} (unknown, or its result expired)")
        return job

    def _expire(self) -> None:
        with self._cond:
            now = self._clock()
            for job_id, job in list(self._jobs.items()):
                finished = job._finished_at
                if finished is not None and now - finished >= self.keep_results_seconds:
                    del self._jobs[job_id]
                    job._result = None
                    job._events.clear()

    # -- the worker -----------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closing)
                if not self._pending or (self._closing and not self._drain):
                    return
                job = self._pending.pop(0)
                job._status = JobStatus.RUNNING
                self._running = job
                self._push_locked(job, StatusEvent(job.id, JobStatus.RUNNING))
            self._call_back(job, StatusEvent(job.id, JobStatus.RUNNING))
            status, failure, seconds = self._run(job)
            with self._cond:
                assert job._result is not None  # a job's result expires only once it is final
                if failure is not None:
                    result = job._result
                    result.error, result.exit_code, result.error_class = failure
                job._result.seconds = seconds
                self._running = None
                self._finish_locked(job, status)
            self._call_back(job, StatusEvent(job.id, status))

    def _run(
        self, job: Job
    ) -> tuple[JobStatus, tuple[str, int, type[BaseException]] | None, float]:
        started = time.perf_counter()
        made = 0
        try:
            if not self._cancel_requested(job):
                events = self.pipe.generate(plan=job.plan)
                try:
                    for event in events:
                        if isinstance(event, StepEvent):
                            self._emit(job, self._progress(job, event))
                        elif isinstance(event, ImageEvent):
                            ready = ImageReady(job.id, event.index, event.seed, event.image)
                            if self._image_sink is not None:
                                self._image_sink(job, ready)
                            with self._cond:
                                assert job._result is not None
                                job._result.images.append(event.image)
                                job._result.seeds.append(event.seed)
                            made += 1
                            self._emit(job, ready)
                        if self._cancel_requested(job):
                            break
                finally:
                    events.close()  # type: ignore[attr-defined]
        except Exception as exc:  # a failed job must not stop the worker
            if not isinstance(exc, SdxsError):
                log.exception("job %s failed", job.id)
            # The sentence, exit code and class only: the exception would keep the frames alive.
            failure = (_sentence(exc), _exit_code(exc), type(exc))
            return JobStatus.FAILED, failure, time.perf_counter() - started
        seconds = time.perf_counter() - started
        if made >= job.plan.params.num_images:
            return JobStatus.DONE, None, seconds
        return JobStatus.CANCELLED, None, seconds  # asked to, or the pipeline was cancelled

    def _cancel_requested(self, job: Job) -> bool:
        with self._cond:
            return job._cancel_requested

    def _progress(self, job: Job, event: StepEvent) -> ProgressEvent:
        preview = None
        every = job.preview_every
        if every is not None and ((event.step + 1) % every == 0):
            preview = self.pipe.decode(event.denoised)
        return ProgressEvent(
            job.id, event.step, event.total_steps, event.image_index, preview, event.denoised
        )

    def _finish_locked(self, job: Job, status: JobStatus) -> None:
        """The final status and its event, together: an events() reader sees the event."""
        job._status = status
        job._finished_at = self._clock()
        self._push_locked(job, StatusEvent(job.id, status))

    def _push_locked(self, job: Job, event: JobEvent) -> None:
        if len(job._events) == job._events.maxlen:
            job.dropped_events += 1
        job._events.append(event)
        self._cond.notify_all()

    def _emit(self, job: Job, event: JobEvent) -> None:
        with self._cond:
            self._push_locked(job, without_latents(event))
        self._call_back(job, event)

    @staticmethod
    def _call_back(job: Job, event: JobEvent) -> None:
        """The job's callback, outside the lock (for a final status: just after it is set)."""
        if job._on_event is not None:
            try:
                job._on_event(event)
            except Exception:  # a listener's bug must not fail the job
                log.exception("the event callback of job %s failed", job.id)


def _exit_code(exc: BaseException) -> int:
    if isinstance(exc, SdxsError):
        return exc.exit_code
    if isinstance(exc, MemoryError):
        return EXIT_OUT_OF_MEMORY
    return EXIT_UNEXPECTED


def _sentence(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, SdxsError):
        return text
    return f"{type(exc).__name__}: {text}"
