"""The controller: the one object the window talks to, living in the GUI thread.

It validates before anything runs, hands jobs to the workers' threads, and turns their signals
into state (`RunState`, `QueueState`, `ModelState.engine_sizes` and `.image_encoder_unavailable`,
`GenerationState.last_seed`) and into its own signals. None of its methods raises: a problem
becomes `run.error` (one sentence) and `failed`.

Generate while a generation runs adds the request to the queue (`queue`, shown by the window);
the jobs run one after another on `sdxs_rt.jobs.JobQueue` (`queue_runner`). `run.running` stays
True until the queue is empty; `finished` then says whether the last job ended early. Pending
entries can be moved or cancelled; Cancel now and Stop after this image act on the running one.
A latent walk runs alone (not queued): it starts only when nothing runs, and Generate waits for
it to end.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal, Slot
from PySide6.QtGui import QImage
from sdxs_rt_desktop.history import settings_from_png
from sdxs_rt_desktop.queue_control import QueueControl
from sdxs_rt_desktop.queue_runner import QueueRunner
from sdxs_rt_desktop.queue_state import EntryStatus
from sdxs_rt_desktop.run_checks import (
    check_engine_sizes,
    check_prompts,
    engine_sizes,
    has_fixed_sizes,
    load_request,
    walk_job,
)
from sdxs_rt_desktop.state import GenerationState, ModelState, RunState, with_note
from sdxs_rt_desktop.worker import (
    BuildRequest,
    EngineBuildWorker,
    GenerationJob,
    GenerationWorker,
    Progress,
    ResultItem,
    WalkJob,
    error_message,
)

from sdxs_rt.errors import UsageError
from sdxs_rt.graphs import SizeProfile
from sdxs_rt.images import check_folder_writable
from sdxs_rt.rng import random_seed
from sdxs_rt.walk import Keyframe

__all__ = ["Controller", "ResultItem", "load_request"]

FINAL_STATUS = {
    EntryStatus.DONE: "Done",
    EntryStatus.STOPPED: "Stopped after this image",
    EntryStatus.CANCELLED: "Cancelled",
    EntryStatus.FAILED: "Error",
}

ENGINE_PRECISIONS = ("fp16", "fp32")


def start_worker_thread(worker: QObject, name: str, parent: QObject) -> QThread:
    thread = QThread(parent)
    thread.setObjectName(name)
    worker.moveToThread(thread)
    thread.start()
    return thread


class Controller(QObject):
    """See the module docstring; `results` is this session's gallery, oldest first."""

    image_ready = Signal(object)  # ResultItem
    animation_ready = Signal(object)  # Path of a latent walk's animation
    preview_ready = Signal(QImage)
    failed = Signal(str)
    finished = Signal(bool)  # True: the run (the queue's last job) ended early
    build_progress = Signal(str)
    build_finished = Signal(bool, str)
    _start_generation = Signal(object)  # a WalkJob, to the worker
    _queue_generation = Signal(object)  # a GenerationJob, to the queue runner
    _start_build = Signal(object)

    def __init__(
        self,
        generation: GenerationState,
        model: ModelState,
        run: RunState,
        history_dir: str | os.PathLike[str],
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.generation, self.model, self.run = generation, model, run
        self.history_dir = Path(history_dir)
        self.results: list[ResultItem] = []
        self.building = False
        self._cancel_requested = False
        self._closed = False
        self.walking = False  # the run in progress is a latent walk (progress counts frames)
        self._entry_ids = 0
        self._worker = GenerationWorker()
        self._runner = QueueRunner(self._worker, self._worker)  # a child: moves to its thread
        self.jobs = QueueControl(self._runner, self)
        self.queue = self.jobs.state  # what the queue panel shows
        self._builder = EngineBuildWorker()
        self._connect_worker()
        self._connect_builder()
        self._threads = [
            start_worker_thread(self._worker, "sdxs-generation", self),
            start_worker_thread(self._builder, "sdxs-engine-build", self),
        ]
        model.backend_changed.connect(self.refresh_engine_sizes)
        model.model_changed.connect(self.refresh_engine_sizes)
        self.refresh_engine_sizes()
        if (app := QCoreApplication.instance()) is not None:
            app.aboutToQuit.connect(self.shutdown)

    def _connect_worker(self) -> None:
        worker = self._worker
        self._start_generation.connect(worker.run)
        worker.status.connect(self._on_status)
        worker.warning.connect(self._on_warning)
        worker.loaded.connect(self._on_loaded)
        worker.progress.connect(self._on_progress)
        worker.preview.connect(self.preview_ready)
        worker.image.connect(self._on_image)
        worker.animation.connect(self._on_animation)
        worker.gpu_info.connect(self._on_gpu_info)
        worker.failed.connect(self._report)
        worker.finished.connect(self._on_finished)
        self._queue_generation.connect(self._runner.queue_job)
        self.jobs.entry_started.connect(self._on_entry_started)
        self.jobs.emptied.connect(self._on_queue_emptied)

    def _connect_builder(self) -> None:
        self._start_build.connect(self._builder.run)
        self._builder.progress.connect(self.build_progress)
        self._builder.finished.connect(self._on_build_finished)

    # ---------------------------------------------------------------- generation

    def generate(self) -> bool:
        """Queue a generation from GenerationState (it starts at once when nothing runs); False
        (and `run.error`) when it cannot be queued."""
        if self.walking or self.building or self._closed:
            self.failed.emit(self._busy_message())  # the run in progress keeps its state
            return False
        try:
            job = self._plan_job()
        except Exception as exc:
            if self.run.running:  # the running job keeps its status line
                self.run.error = error_message(exc)
                self.failed.emit(self.run.error)
            else:
                self._report(error_message(exc))
            return False
        self.generation.last_seed = job.params.seed
        if not self.run.running:
            self._begin(job.params.num_inference_steps * job.params.num_images)
        self.jobs.add(job)
        self._queue_generation.emit(job)
        return True

    def _begin(self, total_steps: int) -> None:
        self._cancel_requested = False
        self.run.update(running=True, error="", warning="", step=0, total_steps=total_steps,
                        eta_seconds=0.0, status="Starting...")  # fmt: skip

    def _start(self, job: WalkJob, total_steps: int) -> None:
        self.walking = True
        self._begin(total_steps)
        self._worker.prepare_run()
        self._start_generation.emit(job)

    def walk(
        self,
        keyframes: Sequence[Keyframe],
        frames_between: int,
        animation: str = "webp",
        fps: float = 8.0,
    ) -> bool:
        """Start a latent walk through `keyframes` (each with its prompt and seed) with the
        Generation settings' negative prompt, steps, guidance, sampler and size; `animation` ""
        writes none. False (and `run.error`) when it cannot start."""
        if self.run.running or self.building or self._closed:
            self.failed.emit(self._busy_message())
            return False
        try:
            job = walk_job(self.generation, self.model, self.history_dir, tuple(keyframes),
                           frames_between, animation, fps)  # fmt: skip
        except Exception as exc:
            self._report(error_message(exc))
            return False
        frames = (len(keyframes) - 1) * (frames_between + 1) + 1
        self._start(job, job.params.num_inference_steps * frames)
        return True

    def _busy_message(self) -> str:
        if self._closed:
            return "the app is closing"
        if self.building:
            return "engines are being built; generate when the build has finished"
        if self.walking:
            return "a latent walk is running; cancel it or wait for it to finish"
        return "a generation is already running; cancel it or wait for it to finish"

    def _plan_job(self) -> GenerationJob:
        """Everything checked that can be checked before loading: size, prompt, folder, engines."""
        generation = self.generation
        if error := generation.size_error():
            raise UsageError(error)
        check_prompts(generation, self.model)
        seed = random_seed() if generation.random_seed else generation.seed
        params = generation.to_params(seed)
        check_folder_writable(self.history_dir)
        check_engine_sizes(self.model, params)
        self._entry_ids += 1
        return GenerationJob(
            params=params,
            load=load_request(self.model),
            history_dir=self.history_dir,
            strip_metadata=generation.strip_metadata,
            preview_every=max(0, generation.preview_every),
            entry=self._entry_ids,
        )

    def cancel_now(self) -> None:
        """Stop the running job (or walk) before the next step; the image in progress is neither
        decoded nor saved. The queued jobs still run."""
        if not self.run.running:
            return
        self._cancel_requested = True
        self.run.status = "Cancelling..."  # before: a pending entry's cancel can end the run
        if self.walking:
            self._worker.cancel_now()
        elif (entry := self.jobs.current()) is not None:
            self.jobs.cancel(entry.id)

    def stop_after_image(self) -> None:
        """Finish the image in progress, save it, then stop the running job (or walk)."""
        if not self.run.running:
            return
        if self.walking:
            self._worker.stop_after_image()
        else:
            self.jobs.stop_after_image()
        self.run.status = "Stopping after this image..."

    # ---------------------------------------------------------------- the queue

    def cancel_job(self, entry_id: int) -> None:
        """Pending: it leaves the queue and never runs; running: it stops before its next step."""
        self.jobs.cancel(entry_id)

    def move_job(self, entry_id: int, position: int) -> bool:
        """Move a pending entry to `position` among the pending (0: next to run)."""
        return self.jobs.move(entry_id, position)

    @Slot(int)
    def _on_entry_started(self, total_steps: int) -> None:
        self.run.update(step=0, total_steps=total_steps, eta_seconds=0.0, status="Generating...")

    @Slot(str)
    def _on_queue_emptied(self, value: str) -> None:
        if self.run.running and not self.walking:
            status = EntryStatus(value)
            self.run.update(running=False, eta_seconds=0.0, status=FINAL_STATUS[status])
            self.finished.emit(status.early)

    def reuse_last_seed(self) -> bool:
        """Set the seed to the last run's first seed and turn random seeds off."""
        if self.generation.last_seed < 0:
            return False
        self.generation.reuse_seed(self.generation.last_seed)
        return True

    def restore_from_png(self, path: str | os.PathLike[str]) -> bool:
        """Apply the settings a PNG carries (our chunk or A1111 text) to GenerationState."""
        try:
            settings = settings_from_png(path)
            note = self.generation.apply_record(settings)
            self.model.apply_record(settings)
        except Exception as exc:
            self._report(error_message(exc))
            return False
        status = with_note(f"Settings restored from {Path(path).name}", note)
        self.run.update(error="", status=status)
        return True

    # ---------------------------------------------------------------- worker signals

    @Slot(str)
    def _on_status(self, text: str) -> None:
        self.run.status = text

    @Slot(str)
    def _on_warning(self, text: str) -> None:
        self.run.warning = text

    @Slot(object)
    def _on_loaded(self, info: dict[str, Any]) -> None:
        profile = info.get("engine_profile") if has_fixed_sizes(info.get("backend")) else None
        self.model.engine_sizes = str((profile or {}).get("description", ""))
        self.model.image_encoder_unavailable = str(info.get("image_encoder_unavailable") or "")

    @Slot(object)
    def _on_progress(self, progress: Progress) -> None:
        what = "Frame" if self.walking else "Image"
        status = f"{what} {progress.image + 1}/{progress.image_count}: step "
        status += f"{progress.image_step}/{progress.steps_per_image}"
        self.run.update(step=progress.step, total_steps=progress.total_steps,
                        eta_seconds=progress.eta_seconds, status=status)  # fmt: skip

    @Slot(object)
    def _on_image(self, item: ResultItem) -> None:
        self.results.append(item)
        self.run.status = f"Saved {item.path.name}"
        self.image_ready.emit(item)

    @Slot(object)
    def _on_animation(self, path: Path) -> None:
        self.run.status = f"Saved the animation {path.name}"
        self.animation_ready.emit(path)

    @Slot(str)
    def _on_gpu_info(self, text: str) -> None:
        self.run.gpu_info = text

    @Slot(str)
    def _report(self, message: str) -> None:
        self.run.update(error=message, status="Error")
        self.failed.emit(message)

    @Slot(bool)
    def _on_finished(self, stopped_early: bool) -> None:
        """A walk ended."""
        self.walking = False
        self.run.update(running=False, eta_seconds=0.0, status=self._final_status(stopped_early))
        self.finished.emit(stopped_early)

    def _final_status(self, stopped_early: bool) -> str:
        if self.run.error:
            return "Error"
        if self._cancel_requested:
            return "Cancelled"
        if stopped_early:
            return "Stopped after this image"
        return "Done"

    # ---------------------------------------------------------------- TensorRT engines

    @Slot()
    def refresh_engine_sizes(self) -> None:
        """What the TensorRT engines of the chosen folder cover, shown before Generate."""
        self.model.engine_sizes = engine_sizes(self.model)

    def build_engines(self, profile: SizeProfile, force: bool = False) -> bool:
        """Build TensorRT engines for ModelState.model off the GUI thread (log: build_progress)."""
        if self.run.running or self.building or self._closed:
            self.build_finished.emit(False, self._busy_message())
            return False
        if not self.model.model:
            message = "choose the folder written by 'sdxs-rt export onnx' before building engines"
            self.build_finished.emit(False, message)
            return False
        precision = self.model.precision if self.model.precision in ENGINE_PRECISIONS else "fp16"
        self.building = True
        self._builder.prepare_run()
        self._start_build.emit(BuildRequest(Path(self.model.model), profile, precision, force))
        return True

    def cancel_build(self) -> None:
        if self.building:
            self._builder.cancel()

    @Slot(bool, str)
    def _on_build_finished(self, ok: bool, message: str) -> None:
        self.building = False
        if ok:
            self._worker.request_reload()  # the next run loads the new engines
            self.refresh_engine_sizes()
        self.build_finished.emit(ok, message)

    # ---------------------------------------------------------------- closing

    @Slot()
    def shutdown(self) -> None:
        """Cancel what runs and join the worker threads (the app calls this on close)."""
        if self._closed:
            return
        self._closed = True
        self._worker.cancel_now()
        self._runner.close()
        self._builder.cancel()
        for thread in self._threads:
            thread.quit()
            thread.wait()
