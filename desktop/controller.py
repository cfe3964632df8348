"""The controller: the one object the window talks to, living in the GUI thread.

It validates before anything runs, hands jobs to the workers' threads, and turns their signals
into state (`RunState`, `ModelState.engine_sizes` and `.image_encoder_unavailable`,
`GenerationState.last_seed`) and into its own signals. None of its methods raises: a problem
becomes `run.error` (one sentence) and `failed`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal, Slot
from PySide6.QtGui import QImage
from sdxs_rt_desktop.history import settings_from_png
from sdxs_rt_desktop.prompt_check import check_prompt_syntax
from sdxs_rt_desktop.state import GenerationState, ModelState, RunState, with_note
from sdxs_rt_desktop.worker import (
    BuildRequest,
    EngineBuildWorker,
    GenerationJob,
    GenerationWorker,
    LoadRequest,
    Progress,
    ResultItem,
    WalkJob,
    error_message,
)

from sdxs_rt.backend_table import find_backend, import_backend
from sdxs_rt.errors import SdxsError, UsageError
from sdxs_rt.graphs import SizeProfile
from sdxs_rt.images import check_folder_writable
from sdxs_rt.params import GenerationParams
from sdxs_rt.rng import random_seed
from sdxs_rt.walk import Keyframe, check_animation, check_walk

__all__ = ["Controller", "ResultItem"]

ENGINE_PRECISIONS = ("fp16", "fp32")


def load_request(model: ModelState) -> LoadRequest:
    return LoadRequest(*model.key())


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise UsageError("the prompt is empty; type what the image should show")


def check_prompts(generation: GenerationState, model: ModelState) -> None:
    """Before loading: an empty prompt, malformed syntax in either prompt, an `<image:N>` with no
    such image prompt, and image prompts that the loaded model is known not to take."""
    check_prompt(generation.prompt)
    for text in (generation.prompt, generation.negative_prompt):
        check_prompt_syntax(text, generation.image_prompts)
    if generation.image_prompts and (error := model.image_prompt_error()):
        raise UsageError(error)


def has_fixed_sizes(backend: object) -> bool:
    """Engines built for a size profile (TensorRT): only certain sizes run."""
    entry = find_backend(backend)
    return entry is not None and entry.fixed_sizes


def engine_sizes(model: ModelState) -> str:
    """TensorRT: the sizes the folder's built engines cover, from its manifest ("" otherwise)."""
    if not has_fixed_sizes(model.backend) or not model.model:
        return ""
    try:
        text: str = import_backend(model.backend).engine_sizes(model.model)
    except SdxsError:  # the plugin's own dependencies missing: the load will say so
        return ""
    return text


def check_engine_sizes(model: ModelState, params: GenerationParams) -> None:
    """Refuse a size outside the TensorRT engines' profile before anything loads (a size taken
    from the input image is known once planned: the worker checks it then)."""
    if params.width is None or params.height is None:
        return
    if has_fixed_sizes(model.backend) and model.model:
        plugin = import_backend(model.backend)
        plugin.check_size_for_model(model.model, params.width, params.height, params.batch_size)


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
    finished = Signal(bool)  # True: the run ended early (Cancel now / Stop after this image)
    build_progress = Signal(str)
    build_finished = Signal(bool, str)
    _start_generation = Signal(object)
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
        self._worker = GenerationWorker()
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

    def _connect_builder(self) -> None:
        self._start_build.connect(self._builder.run)
        self._builder.progress.connect(self.build_progress)
        self._builder.finished.connect(self._on_build_finished)

    # ---------------------------------------------------------------- generation

    def generate(self) -> bool:
        """Start a run from GenerationState; False (and `run.error`) when it cannot start."""
        if self.run.running or self.building or self._closed:
            self.failed.emit(self._busy_message())  # the run in progress keeps its state
            return False
        try:
            job = self._plan_job()
        except Exception as exc:
            self._report(error_message(exc))
            return False
        self.generation.last_seed = job.params.seed
        self._start(job, job.params.num_inference_steps * job.params.num_images)
        return True

    def _start(self, job: GenerationJob | WalkJob, total_steps: int) -> None:
        self._cancel_requested = False
        self.walking = isinstance(job, WalkJob)
        self.run.update(running=True, error="", warning="", step=0, total_steps=total_steps,
                        eta_seconds=0.0, status="Starting...")  # fmt: skip
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
            job = self._walk_job(tuple(keyframes), frames_between, animation, fps)
        except Exception as exc:
            self._report(error_message(exc))
            return False
        frames = (len(keyframes) - 1) * (frames_between + 1) + 1
        self._start(job, job.params.num_inference_steps * frames)
        return True

    def _walk_job(
        self, keyframes: tuple[Keyframe, ...], frames_between: int, animation: str, fps: float
    ) -> WalkJob:
        generation = self.generation
        if error := generation.size_error():
            raise UsageError(error)
        for number, key in enumerate(keyframes, 1):
            if not key.prompt.strip():
                raise UsageError(f"keyframe {number}'s prompt is empty")
            check_prompt_syntax(key.prompt, ())
        check_prompt_syntax(generation.negative_prompt, ())
        params = GenerationParams(
            prompt="",
            negative_prompt=generation.negative_prompt,
            num_inference_steps=generation.steps,
            guidance_scale=generation.guidance,
            width=generation.width,
            height=generation.height,
            seed=keyframes[0].seed if keyframes else None,
            scheduler=generation.scheduler or None,
        )
        check_walk(keyframes, frames_between, params)
        if animation:
            check_animation(animation, fps)
        check_folder_writable(self.history_dir)
        check_engine_sizes(self.model, params)
        return WalkJob(keyframes, frames_between, params, load_request(self.model),
                       self.history_dir, animation, fps, generation.strip_metadata)  # fmt: skip

    def _busy_message(self) -> str:
        if self._closed:
            return "the app is closing"
        if self.building:
            return "engines are being built; generate when the build has finished"
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
        return GenerationJob(
            params=params,
            load=load_request(self.model),
            history_dir=self.history_dir,
            strip_metadata=generation.strip_metadata,
            preview_every=max(0, generation.preview_every),
        )

    def cancel_now(self) -> None:
        """Stop before the next step; the image in progress is neither decoded nor saved."""
        if not self.run.running:
            return
        self._cancel_requested = True
        self._worker.cancel_now()
        self.run.status = "Cancelling..."

    def stop_after_image(self) -> None:
        """Finish the image in progress, save it, then stop the run."""
        if not self.run.running:
            return
        self._worker.stop_after_image()
        self.run.status = "Stopping after this image..."

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
        self._builder.cancel()
        for thread in self._threads:
            thread.quit()
            thread.wait()
