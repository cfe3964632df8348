"""Prometheus metrics of one server: queue depth, job seconds, steps per second, errors by kind.

Each server has its own registry (several apps in one process, as in tests, do not collide).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from sdxs_rt.errors import EXIT_UNEXPECTED
from sdxs_rt.jobs import JobEvent, JobQueue, JobStatus, ProgressEvent, StatusEvent
from sdxs_rt.serve.http_errors import kind_of_class

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.queue_depth = Gauge("sdxs_queue_depth", "Jobs waiting to run", registry=self.registry)
        self.running = Gauge("sdxs_jobs_running", "Jobs running (0 or 1)", registry=self.registry)
        self.jobs = Counter("sdxs_jobs", "Jobs by final status", ["status"], registry=self.registry)
        self.job_seconds = Histogram(
            "sdxs_job_seconds",
            "Wall time of finished jobs",
            buckets=JOB_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.steps = Counter("sdxs_steps", "Sampling steps run", registry=self.registry)
        self.steps_per_second = Gauge(
            "sdxs_steps_per_second",
            "Steps per second of the last finished job",
            registry=self.registry,
        )
        self.errors = Counter(
            "sdxs_errors",
            "Errors by kind (HTTP answers and failed jobs)",
            ["kind"],
            registry=self.registry,
        )
        self.disconnects = Counter(
            "sdxs_client_disconnects",
            "Jobs cancelled because their client left",
            registry=self.registry,
        )
        self._lock = threading.Lock()
        self._job_steps: dict[str, int] = {}
        self._seconds_total = 0.0
        self._jobs_finished = 0
        self._started: dict[str, float] = {}

    def track_queue(self, depth: Callable[[], int]) -> None:
        self.queue_depth.set_function(depth)

    def submitted(self) -> None:
        self.jobs.labels(status="submitted").inc()

    def count_error_kind(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def disconnected(self) -> None:
        self.disconnects.inc()

    def mean_job_seconds(self) -> float:
        with self._lock:
            return self._seconds_total / self._jobs_finished if self._jobs_finished else 1.0

    def observe(self, event: JobEvent, queue: JobQueue) -> None:
        """Called for every job event, in the queue's worker thread."""
        if isinstance(event, ProgressEvent):
            self.steps.inc()
            with self._lock:
                self._job_steps[event.job_id] = self._job_steps.get(event.job_id, 0) + 1
        elif isinstance(event, StatusEvent):
            self._status(event, queue)

    def _status(self, event: StatusEvent, queue: JobQueue) -> None:
        if event.status is JobStatus.RUNNING:
            self.running.set(1)
            with self._lock:
                self._started[event.job_id] = time.perf_counter()
            return
        if not event.status.final:
            return
        self.jobs.labels(status=event.status.value).inc()
        with self._lock:
            started = self._started.pop(event.job_id, None)
            steps = self._job_steps.pop(event.job_id, 0)
        if started is None:  # cancelled while pending
            return
        self.running.set(0)
        seconds = time.perf_counter() - started
        self.job_seconds.observe(seconds)
        if steps and seconds > 0:
            self.steps_per_second.set(steps / seconds)
        with self._lock:
            self._seconds_total += seconds
            self._jobs_finished += 1
        if event.status is JobStatus.FAILED:
            self._count_failure(event.job_id, queue)

    def _count_failure(self, job_id: str, queue: JobQueue) -> None:
        try:
            result = queue.result(job_id)
        except LookupError:
            return
        kind = kind_of_class(result.error_class or Exception, result.exit_code or EXIT_UNEXPECTED)
        self.errors.labels(kind=kind.kind).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
