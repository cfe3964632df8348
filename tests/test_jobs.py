"""The job queue (sdxs_rt.jobs): order, bounds, cancel, races, expiry and close, on the numpy
fakes. A gated U-Net (each call waits for a permit) makes every interleaving deterministic;
every wait has a timeout so a bug fails a test instead of hanging it."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import pytest

from sdxs_rt.errors import SdxsError, UsageError
from sdxs_rt.jobs import (
    ImageReady,
    JobQueue,
    JobStatus,
    ProgressEvent,
    QueueClosed,
    QueueFull,
    StatusEvent,
    UnknownJob,
)
from sdxs_rt.params import GenerationParams
from sdxs_rt.pipeline import Pipeline
from tests.fakes import fake_components
from tests.gate import Gate

WAIT = 10.0  # seconds: only reached when something is broken
STEPS = 3


def params(prompt: str = "a cat", steps: int = STEPS, **kwargs: object) -> GenerationParams:
    values: dict = {"width": 64, "height": 64, "num_inference_steps": steps, "seed": 1}
    values["guidance_scale"] = 1.0  # one U-Net call per step
    values.update(kwargs)
    return GenerationParams(prompt=prompt, **values)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def gate() -> Gate:
    return Gate(WAIT)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(gate: Gate, clock: Clock) -> Iterator[JobQueue]:
    components = fake_components()
    components.unet.on_call = gate.hook
    jobs = JobQueue(Pipeline(components), max_pending=4, keep_results_seconds=60, clock=clock)
    jobs.start()
    yield jobs
    gate.open()
    assert jobs.close(drain=False, timeout=WAIT)


def started_order(events: list[StatusEvent]) -> list[str]:
    return [e.job_id for e in events if e.status is JobStatus.RUNNING]


def test_fifo_within_a_priority_and_higher_priority_first(queue: JobQueue, gate: Gate) -> None:
    seen: list = []
    blocker = queue.submit(params("blocker"), on_event=seen.append)
    gate.wait_entered()  # the blocker runs; the rest wait
    a = queue.submit(params("a"), on_event=seen.append)
    b = queue.submit(params("b"), on_event=seen.append)
    urgent = queue.submit(params("urgent"), priority=5, on_event=seen.append)
    c = queue.submit(params("c"), on_event=seen.append)
    assert [job.id for job in queue.pending()] == [urgent.id, a.id, b.id, c.id]
    assert queue.status(a.id) is JobStatus.PENDING and blocker.status is JobStatus.RUNNING
    gate.open()
    assert queue.wait_idle(WAIT)
    statuses = [e for e in seen if isinstance(e, StatusEvent)]
    assert started_order(statuses) == [blocker.id, urgent.id, a.id, b.id, c.id]
    for job in (blocker, a, b, urgent, c):
        result = queue.result(job.id)
        assert job.status is JobStatus.DONE
        assert len(result.images) == 1 and result.seeds == [1] and result.error is None
        assert result.plan is job.plan


def test_move_and_reorder_pending_jobs(queue: JobQueue, gate: Gate) -> None:
    queue.submit(params("blocker"))
    gate.wait_entered()
    a, b, c = (queue.submit(params(name)) for name in "abc")
    queue.move(c.id, 0)
    assert [j.id for j in queue.pending()] == [c.id, a.id, b.id]
    queue.move(c.id, 99)  # clamped to the end
    assert [j.id for j in queue.pending()] == [a.id, b.id, c.id]
    queue.reorder([b.id, c.id])
    assert [j.id for j in queue.pending()] == [b.id, c.id, a.id]
    with pytest.raises(UsageError):
        queue.reorder([a.id, a.id])
    with pytest.raises(UnknownJob):
        queue.move("nope", 0)


def test_a_full_queue_refuses_and_bad_input_fails_at_submit(queue: JobQueue, gate: Gate) -> None:
    queue.submit(params("running"))
    gate.wait_entered()  # the running job does not count against max_pending
    for index in range(3):
        queue.submit(params(f"p{index}"))
    with pytest.raises(UsageError, match="64"):
        queue.submit(params(width=65))
    assert len(queue.pending()) == 3  # nothing queued for the bad request
    queue.submit(params("p3"))
    with pytest.raises(QueueFull) as caught:
        queue.submit(params("one too many"))
    assert isinstance(caught.value, SdxsError) and caught.value.exit_code != 0
    assert len(queue.pending()) == 4


def test_cancel_a_pending_job(queue: JobQueue, gate: Gate) -> None:
    first = queue.submit(params("first"))
    gate.wait_entered()
    doomed = queue.submit(params("doomed"))
    kept = queue.submit(params("kept"))
    assert queue.cancel(doomed.id)
    assert doomed.status is JobStatus.CANCELLED
    assert [j.id for j in queue.pending()] == [kept.id]
    gate.open()
    assert queue.wait_idle(WAIT)
    assert first.status is JobStatus.DONE and kept.status is JobStatus.DONE
    assert queue.result(doomed.id).images == []
    assert not queue.cancel(doomed.id)  # already final: nothing changes


def test_cancel_the_running_job_mid_steps_then_the_next_runs(queue: JobQueue, gate: Gate) -> None:
    running = queue.submit(params("running", steps=5))
    following = queue.submit(params("following"))
    gate.wait_entered()
    gate.allow()  # step 0 completes
    gate.wait_entered()  # step 1 is in flight
    assert queue.cancel(running.id)
    gate.allow()  # let step 1 finish: no step 2 may start for this job
    assert running.wait(WAIT)
    assert running.status is JobStatus.CANCELLED
    gate.wait_entered()  # the next U-Net call is the following job's first step
    assert following.status is JobStatus.RUNNING
    assert len(queue.pipe.components.unet.batch_sizes) == 3  # 2 for the cancelled job
    steps = [e.step for e in running.events(WAIT) if isinstance(e, ProgressEvent)]
    assert steps == [0]  # the pipeline drops the cancelled in-flight step's event
    assert queue.result(running.id).images == []
    gate.open()
    assert following.wait(WAIT)
    assert following.status is JobStatus.DONE  # only the cancelled job was affected
    assert len(queue.result(following.id).images) == 1


@pytest.mark.parametrize("cancel_at", ["last_step", "after_finish"])
def test_cancel_racing_completion_is_consistent(
    queue: JobQueue, gate: Gate, cancel_at: str
) -> None:
    job = queue.submit(params("race", steps=2))
    gate.wait_entered()
    gate.allow()
    gate.wait_entered()  # the last step is in flight
    if cancel_at == "after_finish":
        gate.allow()
        assert job.wait(WAIT)
    outcome = queue.cancel(job.id)
    gate.open()
    assert job.wait(WAIT)
    images = queue.result(job.id).images
    if job.status is JobStatus.DONE:
        assert len(images) == 1
    else:
        assert job.status is JobStatus.CANCELLED and images == [] and outcome
    if cancel_at == "after_finish":
        assert not outcome and job.status is JobStatus.DONE


def test_events_iterator_with_previews_and_a_bounded_buffer(clock: Clock) -> None:
    pipe = Pipeline(fake_components())
    with JobQueue(pipe, clock=clock, event_buffer=3) as jobs:
        job = jobs.submit(params(steps=4), preview_every=2)
        assert job.wait(WAIT)
        # running, 4 steps, image, done = 7 events: only the last 3 are kept
        events = list(job.events(WAIT))
        assert job.dropped_events == 4
        assert [type(e) for e in events] == [ProgressEvent, ImageReady, StatusEvent]
        last_step = events[0]
        assert isinstance(last_step, ProgressEvent) and (last_step.step, last_step.total_steps) == (
            3,
            4,
        )
        assert last_step.preview is not None and last_step.preview[0].size == (64, 64)

        seen: list = []
        finished = threading.Event()

        def listen(event: object) -> None:
            seen.append(event)
            if isinstance(event, StatusEvent) and event.status.final:
                finished.set()

        job = jobs.submit(params(steps=4), preview_every=2, on_event=listen)
        assert finished.wait(WAIT)  # the callback of a final status runs just after it is set
        progress = [e for e in seen if isinstance(e, ProgressEvent)]
        assert [e.preview is not None for e in progress] == [False, True, False, True]
        assert [e.status for e in seen if isinstance(e, StatusEvent)] == [
            JobStatus.RUNNING,
            JobStatus.DONE,
        ]


def test_a_failing_job_reports_a_sentence_and_the_next_one_runs(clock: Clock) -> None:
    components = fake_components()
    calls = []

    def fail_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the fake U-Net broke")

    components.unet.on_call = fail_once
    with JobQueue(Pipeline(components), clock=clock) as jobs:
        broken = jobs.submit(params("broken"))
        fine = jobs.submit(params("fine"))
        assert fine.wait(WAIT) and broken.wait(WAIT)
        assert broken.status is JobStatus.FAILED
        assert jobs.result(broken.id).error == "RuntimeError: the fake U-Net broke"
        assert jobs.result(broken.id).exit_code == 1  # not an SdxsError: unexpected
        assert jobs.result(broken.id).error_class is RuntimeError
        assert fine.status is JobStatus.DONE


def test_an_image_sink_that_fails_fails_the_job_with_its_exit_code(clock: Clock) -> None:
    class DiskFull(SdxsError):
        exit_code = 4

    kept: list[int] = []

    def sink(job: object, ready: ImageReady) -> None:
        if ready.seed == 2:
            raise DiskFull("the output folder is full")
        kept.append(ready.seed)

    with JobQueue(Pipeline(fake_components()), clock=clock, image_sink=sink) as jobs:
        fine = jobs.submit(params(seed=1))
        full = jobs.submit(params(seed=2))
        after = jobs.submit(params(seed=3))
        assert after.wait(WAIT) and full.wait(WAIT) and fine.wait(WAIT)
        assert fine.status is JobStatus.DONE and after.status is JobStatus.DONE
        assert full.status is JobStatus.FAILED
        assert jobs.result(full.id).error == "the output folder is full"
        assert jobs.result(full.id).exit_code == 4
        assert jobs.result(full.id).error_class is DiskFull
        assert jobs.result(full.id).images == []  # the unsaved image is not handed out
    assert kept == [1, 3]


def test_results_expire_by_the_injected_clock(queue: JobQueue, gate: Gate, clock: Clock) -> None:
    gate.open()
    job = queue.submit(params())
    assert job.wait(WAIT)
    clock.now += 59.0
    assert len(queue.result(job.id).images) == 1
    clock.now += 1.0
    with pytest.raises(UnknownJob):
        queue.status(job.id)
    assert job.result is None and job.expired
    assert job.status is JobStatus.DONE  # the handle still says how it ended
    assert queue.jobs() == []


def test_close_with_drain_finishes_pending_jobs(gate: Gate, clock: Clock) -> None:
    components = fake_components()
    components.unet.on_call = gate.hook
    jobs = JobQueue(Pipeline(components), clock=clock)
    jobs.start()
    submitted = [jobs.submit(params(f"j{i}")) for i in range(3)]
    gate.wait_entered()
    assert not jobs.close(drain=True, timeout=0)  # the worker is held at the gate
    with pytest.raises(QueueClosed):  # closing refuses new work at once...
        jobs.submit(params("late"))
    assert [job.status for job in submitted[1:]] == [JobStatus.PENDING] * 2
    gate.open()  # ...but the queued work finishes
    assert jobs.close(drain=True, timeout=WAIT)
    assert [job.status for job in submitted] == [JobStatus.DONE] * 3


def test_close_without_drain_cancels_pending_and_running(gate: Gate, clock: Clock) -> None:
    components = fake_components()
    components.unet.on_call = gate.hook
    jobs = JobQueue(Pipeline(components), clock=clock)
    jobs.start()
    running = jobs.submit(params("running", steps=5))
    waiting = [jobs.submit(params(f"w{i}")) for i in range(3)]
    gate.wait_entered()  # step 0 of the running job is in flight
    assert not jobs.close(drain=False, timeout=0)
    assert [job.status for job in waiting] == [JobStatus.CANCELLED] * 3  # at once
    gate.open()  # the in-flight step finishes; no other starts
    assert jobs.close(drain=False, timeout=WAIT)
    assert len(components.unet.batch_sizes) == 1
    assert running.status is JobStatus.CANCELLED
    assert [job.status for job in waiting] == [JobStatus.CANCELLED] * 3
    assert all(jobs.result(job.id).images == [] for job in [running, *waiting])
    with pytest.raises(QueueClosed):
        jobs.submit(params())


def test_concurrent_submit_and_cancel_from_eight_threads(clock: Clock) -> None:
    pipe = Pipeline(fake_components())
    jobs = JobQueue(pipe, max_pending=6, clock=clock)
    jobs.start()
    accepted: list[str] = []
    refused = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(6):
                try:
                    job = jobs.submit(params(f"t{seed}", steps=2), priority=rng.randint(0, 2))
                except QueueFull:
                    with lock:
                        refused.append(seed)
                    continue
                with lock:
                    accepted.append(job.id)
                    victim = rng.choice(accepted)
                if rng.random() < 0.5:
                    jobs.cancel(victim)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert jobs.wait_idle(WAIT)
    assert len(accepted) + len(refused) == 48
    assert jobs.pending() == [] and jobs.running is None
    for job_id in accepted:
        job = jobs.get(job_id)
        assert job.status.final
        images = jobs.result(job_id).images
        assert (job.status is JobStatus.DONE) == (len(images) == 1)
        assert job.status is not JobStatus.FAILED
    assert jobs.close(drain=True, timeout=WAIT)


def test_a_failing_callback_does_not_fail_the_job(clock: Clock) -> None:
    def broken_listener(event: object) -> None:
        raise RuntimeError("listener bug")

    with JobQueue(Pipeline(fake_components()), clock=clock) as jobs:
        job = jobs.submit(params(), on_event=broken_listener)
        assert job.wait(WAIT)
        assert job.status is JobStatus.DONE and len(jobs.result(job.id).images) == 1


def test_progress_events_carry_the_x0_latents_for_a_listener_only(clock: Clock) -> None:
    seen: list = []
    with JobQueue(Pipeline(fake_components()), clock=clock) as jobs:
        listened = jobs.submit(params(steps=2), on_event=seen.append)
        buffered = jobs.submit(params(steps=2))
        assert listened.wait(WAIT) and buffered.wait(WAIT)
        progress = [e for e in seen if isinstance(e, ProgressEvent)]
        assert len(progress) == 2 and all(e.preview is None for e in progress)
        assert all(tuple(e.denoised.shape) == (1, 16, 8, 8) for e in progress)  # 64 px / 8
        for job in (listened, buffered):  # the buffer never keeps latents, even with a listener
            kept = [e for e in job.events(WAIT) if isinstance(e, ProgressEvent)]
            assert len(kept) == 2 and all(e.denoised is None for e in kept)
