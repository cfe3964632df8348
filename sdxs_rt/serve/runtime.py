"""The serving state behind every router: one pipeline, one job queue, saving, live progress.

The queue's worker thread reports through `_on_event`; asyncio listeners (SSE streams, requests
waiting for their images) get each event through their loop's `call_soon_threadsafe`, so no
request holds a thread while it waits.

Rules (README, "Serving"):
- A client that disconnects from a request that waits for its images (A1111, OpenAI) cancels
  its job. Jobs submitted through /v1/jobs run whether or not anyone listens.
- Shutdown (SIGTERM, Ctrl-C): new requests get 503, pending jobs are cancelled, the running job
  stops before its next step. Images are saved by rename, so no partial file is ever left.
- With an output folder, each image is saved before it is handed out; a failed save (disk full)
  fails its job with 507 and the server goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from PIL import Image
from starlette.requests import Request

from sdxs_rt.errors import EXIT_UNEXPECTED
from sdxs_rt.images import save_png
from sdxs_rt.jobs import (
    ImageReady,
    Job,
    JobEvent,
    JobQueue,
    JobResult,
    JobStatus,
    ProgressEvent,
    QueueClosed,
    StatusEvent,
)
from sdxs_rt.metadata import ImageRecord, make_record, png_info
from sdxs_rt.params import GenerationParams
from sdxs_rt.pipeline import Pipeline
from sdxs_rt.serve.config import ServerConfig
from sdxs_rt.serve.http_errors import JobFailed, StorageFull, kind_of_class
from sdxs_rt.serve.metrics import ServerMetrics

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
DISCONNECT_POLL_SECONDS = 0.25
SHUTDOWN_SECONDS = 30.0


@dataclass
class LiveJob:
    """What polling clients see of the running job."""

    started: float  # time.monotonic()
    step: int = 0  # steps done
    total_steps: int = 0
    preview: Image.Image | None = None  # the newest decoded preview (first image of the batch)


@dataclass
class Finished:
    """A waited-for job that did not fail: its result and each image's metadata record."""

    job: Job
    result: JobResult
    records: list[ImageRecord]


@dataclass
class Listener:
    """An asyncio consumer of one job's events."""

    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[JobEvent]
    job_id: str


class ServerRuntime:
    def __init__(self, pipe: Pipeline, config: ServerConfig, model_title: str) -> None:
        self.pipe = pipe
        self.config = config
        self.model_title = model_title
        self.metrics = ServerMetrics()
        self.queue = JobQueue(
            pipe,
            max_pending=config.limits.max_pending,
            keep_results_seconds=config.keep_results_seconds,
            # Listeners get events through `_on_event`; the per-job buffer would only keep
            # previews alive until the result expires.
            event_buffer=1,
            image_sink=self._save if config.output_dir is not None else None,
        )
        self.metrics.track_queue(lambda: len(self.queue.pending()))
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._live: dict[str, LiveJob] = {}  # running jobs (one, with one worker)
        self.shutting_down = False

    def start(self) -> None:
        self.queue.start()

    def begin_shutdown(self) -> None:
        """The shutdown rule, without waiting: refuse new jobs, cancel the pending ones, stop
        the running one at its next step. Safe from a signal handler: a Python handler runs in
        the main thread between two bytecodes, perhaps while that thread holds the queue's
        (non-reentrant) lock, so the queue is closed from a thread of its own."""
        self.shutting_down = True  # a plain store: submit() refuses from now on
        threading.Thread(
            target=self.queue.close,
            kwargs={"drain": False, "timeout": 0},
            name="sdxs-rt-shutdown",
            daemon=True,
        ).start()

    def close(self, timeout: float = SHUTDOWN_SECONDS) -> bool:
        """The shutdown rule: cancel the pending jobs, stop the running one at its next step."""
        self.shutting_down = True
        return self.queue.close(drain=False, timeout=timeout)

    # -- jobs -----------------------------------------------------------------------------

    def submit(self, params: GenerationParams, *, priority: int = 0, previews: bool) -> Job:
        if self.shutting_down:
            raise QueueClosed("the server is shutting down and accepts no new jobs")
        every = self.config.preview_every if previews and self.config.preview_every else None
        job = self.queue.submit(params, priority, preview_every=every, on_event=self._on_event)
        self.metrics.submitted()
        return job

    def check_failed(self, job: Job) -> None:
        """Raise the error of a failed job, as the HTTP answer's error; a job that the shutdown
        cancelled answers 503 (shutting_down), as a request that comes after it would."""
        if job.status is JobStatus.CANCELLED and self.shutting_down:
            raise QueueClosed("the server shut down before this job finished; send it again")
        if job.status is not JobStatus.FAILED:
            return
        result = self.queue.result(job.id)
        code = result.exit_code or EXIT_UNEXPECTED
        kind = kind_of_class(result.error_class or Exception, code)
        raise JobFailed(result.error or "the job failed", code, kind)

    def live(self, job_id: str) -> LiveJob | None:
        with self._lock:
            live = self._live.get(job_id)
            return None if live is None else replace(live)

    def retry_after_seconds(self) -> int:
        """A guess for 429 answers: the waiting jobs times the mean job time (at least 1 s)."""
        return max(1, round(len(self.queue.pending()) * self.metrics.mean_job_seconds()))

    async def generate(
        self, params: GenerationParams, request: Request, *, previews: bool
    ) -> Finished:
        """Queue `params`, wait for the job (cancelled if the client leaves), raise its error
        if it failed: what the endpoints that answer with images share."""
        job = self.submit(params, previews=previews)
        await self.wait(job, request.is_disconnected)
        self.check_failed(job)
        result = self.queue.result(job.id)
        records = [make_record(self.pipe, job.plan, index) for index in range(len(result.images))]
        return Finished(job, result, records)

    async def wait(self, job: Job, is_disconnected: Callable[[], object]) -> None:
        """Until `job` is final; cancels it when the client goes away first. The client is
        checked every DISCONNECT_POLL_SECONDS whether or not events come (a job's steps may
        come faster than that for its whole run)."""
        listener = self.listen(job.id)
        loop = asyncio.get_running_loop()
        next_check = loop.time() + DISCONNECT_POLL_SECONDS
        try:
            while not job.status.final:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(listener.queue.get(), DISCONNECT_POLL_SECONDS)
                if job.status.final or loop.time() < next_check:
                    continue
                next_check = loop.time() + DISCONNECT_POLL_SECONDS
                if await is_disconnected():  # type: ignore[misc]
                    self.queue.cancel(job.id)
                    self.metrics.disconnected()
                    return
        finally:
            self.unlisten(listener)

    # -- listeners ------------------------------------------------------------------------

    def listen(self, job_id: str) -> Listener:
        listener = Listener(asyncio.get_running_loop(), asyncio.Queue(), job_id)
        with self._lock:
            self._listeners.append(listener)
        return listener

    def unlisten(self, listener: Listener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _on_event(self, event: JobEvent) -> None:
        """In the queue's worker thread."""
        self.metrics.observe(event, self.queue)
        with self._lock:
            self._track(event)
            listeners = [x for x in self._listeners if x.job_id == event.job_id]
        for listener in listeners:
            try:
                listener.loop.call_soon_threadsafe(listener.queue.put_nowait, event)
            except RuntimeError:  # its loop closed: the request is gone
                self.unlisten(listener)

    def _track(self, event: JobEvent) -> None:
        if isinstance(event, StatusEvent):
            if event.status is JobStatus.RUNNING:
                self._live[event.job_id] = LiveJob(time.monotonic())
            elif event.status.final:
                self._live.pop(event.job_id, None)
        elif isinstance(event, ProgressEvent) and event.job_id in self._live:
            live = self._live[event.job_id]
            live.step, live.total_steps = event.step + 1, event.total_steps
            if event.preview:
                live.preview = event.preview[0]

    # -- saving ---------------------------------------------------------------------------

    def _save(self, job: Job, ready: ImageReady) -> None:
        assert self.config.output_dir is not None
        path = self.config.output_dir / f"{job.id}-{ready.index}-{ready.seed}.png"
        record = make_record(self.pipe, job.plan, ready.index)
        try:
            save_png(ready.image, path, pnginfo=png_info(record))
        except OSError as exc:
            if exc.errno in FULL_ERRNOS:
                raise StorageFull(
                    f"the output folder {self.config.output_dir} is full ({exc.strerror}); "
                    "the image was not saved"
                ) from None
            raise


def runtime_of(request: Request) -> ServerRuntime:
    """The runtime of the app that `request` reached (every router's way to it)."""
    runtime: ServerRuntime = request.app.state.runtime
    return runtime
