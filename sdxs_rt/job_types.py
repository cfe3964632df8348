"""The job queue's vocabulary: statuses, events, results, errors and the `Job` handle
(`sdxs_rt.jobs.JobQueue` runs them, and re-exports all of it).
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sdxs_rt.errors import EXIT_DEVICE, SdxsError, UsageError
from sdxs_rt.plan import GenerationPlan

if TYPE_CHECKING:
    from PIL import Image

    from sdxs_rt.jobs import JobQueue


class QueueFull(SdxsError):
    """The queue holds `max_pending` jobs already: try again later (HTTP 429)."""

    exit_code = EXIT_DEVICE  # the runtime is busy: a resource is unavailable, not bad input


class QueueClosed(SdxsError):
    """The queue was closed: it accepts no new jobs."""

    exit_code = EXIT_DEVICE


class UnknownJob(UsageError, LookupError):
    """No job has this id, or its result was already dropped."""


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in _FINAL


_FINAL = frozenset({JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED})


@dataclass(frozen=True)
class StatusEvent:
    job_id: str
    status: JobStatus


@dataclass(frozen=True)
class ProgressEvent:
    job_id: str
    step: int  # 0-based, over all passes (hires included)
    total_steps: int
    image_index: int  # first image of the batch being sampled
    preview: list[Image.Image] | None = None  # decoded x0 estimates, every `preview_every` steps
    # The step's x0 estimate as latents (StepEvent.denoised), for a callback's own cheap previews;
    # only the `on_event` callback sees it: the buffered copy drops it (latents are large).
    denoised: Any = None


@dataclass(frozen=True)
class ImageReady:
    job_id: str
    index: int
    seed: int
    image: Image.Image


JobEvent = StatusEvent | ProgressEvent | ImageReady
EventCallback = Callable[[JobEvent], None]
# Called in the worker thread with each finished image before its event; an exception fails the
# job with that error (the server saves images here: a full disk fails the job, not the server).
ImageSink = Callable[["Job", ImageReady], None]


@dataclass
class JobResult:
    plan: GenerationPlan
    images: list[Image.Image] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    error: str | None = None  # one sentence, for failed jobs
    exit_code: int | None = None  # the error's exit code (sdxs_rt.errors), for failed jobs
    error_class: type[BaseException] | None = None  # what was raised, for failed jobs
    seconds: float = 0.0  # wall time of the run (time.perf_counter, not the injected clock)


class Job:
    """A queued request. Its fields change under the queue's lock: read them through the
    properties (or `JobQueue.status`/`result`), which take it."""

    def __init__(
        self,
        queue: JobQueue,
        job_id: str,
        plan: GenerationPlan,
        priority: int,
        preview_every: int | None,
        on_event: EventCallback | None,
        buffer: int,
    ) -> None:
        self.id = job_id
        self.plan = plan
        self.priority = priority
        self.preview_every = preview_every
        self._queue = queue
        self._on_event = on_event
        self._status = JobStatus.PENDING
        self._result: JobResult | None = JobResult(plan)
        self._cancel_requested = False
        self._finished_at: float | None = None  # the injected clock's time
        self._events: collections.deque[JobEvent] = collections.deque(maxlen=buffer)
        self.dropped_events = 0  # events pushed out of a full buffer

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.status.value}, priority={self.priority})"

    @property
    def status(self) -> JobStatus:
        with self._queue._cond:
            return self._status

    @property
    def result(self) -> JobResult | None:
        """The result so far (images appear as they finish); None once it expired."""
        self._queue._expire()
        with self._queue._cond:
            return self._result

    @property
    def expired(self) -> bool:
        return self.result is None

    def wait(self, timeout: float) -> bool:
        """Block until the job is final; False when `timeout` seconds passed first."""
        with self._queue._cond:
            return self._queue._cond.wait_for(lambda: self._status.final, timeout)

    def events(self, timeout: float) -> Iterator[JobEvent]:
        """The job's events, from the bounded buffer (oldest dropped when it is full), until
        the job is final and the buffer drained. TimeoutError when none comes for `timeout`
        seconds. Meant for one consumer per job."""
        cond = self._queue._cond
        while True:
            with cond:
                if not cond.wait_for(lambda: self._events or self._status.final, timeout):
                    raise TimeoutError(f"no event from job {self.id} in {timeout} s")
                if not self._events:
                    return
                event = self._events.popleft()
            yield event


def without_latents(event: JobEvent) -> JobEvent:
    """The event as the per-job buffer keeps it: no latents (they would pile up there)."""
    if isinstance(event, ProgressEvent) and event.denoised is not None:
        return replace(event, denoised=None)
    return event
