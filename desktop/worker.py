"""Workers that run off the GUI thread and turn the pipeline's generator into Qt signals.

`GenerationWorker` lives in a QThread: it loads (and keeps) the pipeline and owns the signals
that report steps, previews, saved images and errors. Generation jobs go through the job queue
(`queue_runner.QueueRunner`, same thread, runs them on `sdxs_rt.jobs.JobQueue`'s thread); a
`WalkJob` (a latent walk, `sdxs_rt.walk`) runs here on the same pipeline: each frame is reported
and saved like a generated image, then the animation is written next to the frames. Nothing
raises out of the threads: an `SdxsError` comes out as its one-sentence message, anything else as
"unexpected error: ...". `cancel_now` and `stop_after_image` (walks) are safe from the GUI thread.
`EngineBuildWorker` builds TensorRT engines the same way, with log lines as progress.
"""

from __future__ import annotations

import logging
import statistics
import sys
import threading
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QImage
from sdxs_rt_desktop.history import pil_to_qimage, save_to_history
from sdxs_rt_desktop.preview import LatentPreviewer

from sdxs_rt.backend_table import DEFAULT_BACKEND, find_backend, import_backend
from sdxs_rt.errors import SdxsError
from sdxs_rt.graphs import SizeProfile
from sdxs_rt.metadata import ImageRecord, make_record
from sdxs_rt.params import GenerationParams
from sdxs_rt.pipeline import ImageEvent, Pipeline, StepEvent
from sdxs_rt.plan import GenerationPlan
from sdxs_rt.walk import FrameEvent, Keyframe, render, save_animation, walk_frames

logger = logging.getLogger(__name__)

PipelineEvents = Generator[StepEvent | ImageEvent, None, None]
ETA_WINDOW = 25  # step times the running median looks at
GIB = 1024**3


@dataclass(frozen=True)
class LoadRequest:
    """What identifies a loaded pipeline (`ModelState.key()`): "" means the backend's default."""

    model: str = ""
    text_encoder: str = ""
    backend: str = DEFAULT_BACKEND
    precision: str = ""
    device: str = ""
    low_vram: bool = False  # the small-card mode (PyTorch); other backends ignore it here
    revision: str = ""  # a hub branch, tag or commit of `model`

    def load(self) -> Pipeline:
        return Pipeline.from_pretrained(
            self.model or None,
            text_encoder=self.text_encoder or None,
            backend=self.backend,
            device=self.device or None,
            dtype=self.precision or None,
            revision=self.revision.strip() or None,
            backend_options=self.backend_options(),
        )

    def backend_options(self) -> dict[str, Any]:
        # the box is shown only where the backend has the mode, but stays ticked when another
        # backend is chosen
        entry = find_backend(self.backend)
        return {"low_vram": True} if self.low_vram and entry and entry.low_vram else {}


@dataclass(frozen=True)
class GenerationJob:
    """One Generate click: images use seeds params.seed, params.seed + 1, ..."""

    params: GenerationParams
    load: LoadRequest
    history_dir: Path
    strip_metadata: bool = False
    preview_every: int = 0  # 0: no previews
    entry: int = 0  # its id in the window's queue (`queue_state.QueueEntry.id`)


@dataclass(frozen=True)
class WalkJob:
    """One Render click in the Latent walk dialog: frames saved to the history folder, then the
    animation beside them (named after the first frame: `00012-7-walk.webp`)."""

    keyframes: tuple[Keyframe, ...]
    frames_between: int
    params: GenerationParams  # what every frame shares (`walk_frames`); its prompt is unused
    load: LoadRequest
    history_dir: Path
    animation: str = "webp"  # a key of sdxs_rt.walk.ANIMATION_FORMATS, or "" for none
    fps: float = 8.0
    strip_metadata: bool = False


@dataclass(frozen=True)
class Progress:
    step: int  # steps done in the whole run (1-based)
    total_steps: int
    image: int  # 0-based index of the image being sampled
    image_count: int
    image_step: int  # steps done for this image (1-based)
    steps_per_image: int
    eta_seconds: float


@dataclass(frozen=True)
class ResultItem:
    """A finished image of this session (the gallery's entries)."""

    path: Path
    seed: int
    record: ImageRecord
    qimage: QImage


def error_message(exc: BaseException) -> str:
    """One sentence for the window: our errors as they are, anything else marked unexpected."""
    if isinstance(exc, SdxsError):
        return str(exc)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return f"unexpected error: {text[:300]}"


def gpu_summary(info: dict[str, Any], torch_module: Any = None) -> str:
    """The GPU line, e.g. "NVIDIA H200 — 3.1 / 139.8 GB" (memory in use), when on CUDA.

    Asks torch only when the pipeline already imported it (torch or TensorRT backend); "" else.
    """
    device = str(info.get("device", ""))
    torch = torch_module or sys.modules.get("torch")
    if not device.startswith("cuda") or torch is None:
        return ""
    try:
        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        free, total = torch.cuda.mem_get_info(index)
        name = torch.cuda.get_device_name(index)
    except Exception:  # no driver, a lost device: the line is informative only
        return ""
    return f"{name} — {(total - free) / GIB:.1f} / {total / GIB:.1f} GB"


def as_generator(events: Iterator[StepEvent | ImageEvent]) -> PipelineEvents:
    """`Pipeline.generate` is a generator (typed as an Iterator): closing it stops the run."""
    return cast(PipelineEvents, events)


class RunCounter:
    """Steps and images done in a run, and the ETA from a running median of step times."""

    def __init__(self, plan: GenerationPlan) -> None:
        self.steps_per_image = plan.steps_run
        self.image_count = plan.params.num_images
        self.images_done = 0
        self.steps_done = 0
        self.step_seconds: deque[float] = deque(maxlen=ETA_WINDOW)
        self.decode_seconds = 0.0

    def add_step(self, image_index: int, step: int, seconds: float) -> Progress:
        """A step done: `step` 0-based within the image (StepEvent's), `seconds` its wall time."""
        self.steps_done += 1
        self.step_seconds.append(seconds)
        return Progress(
            step=self.steps_done,
            total_steps=self.steps_per_image * self.image_count,
            image=image_index,
            image_count=self.image_count,
            image_step=step + 1,
            steps_per_image=self.steps_per_image,
            eta_seconds=self.eta_seconds(),
        )

    def add_image(self, event: ImageEvent) -> None:
        self.images_done += 1
        self.decode_seconds = event.timings.get("decode", 0.0)

    def eta_seconds(self) -> float:
        remaining_steps = self.steps_per_image * self.image_count - self.steps_done
        remaining_images = self.image_count - self.images_done
        median = statistics.median(self.step_seconds) if self.step_seconds else 0.0
        return median * remaining_steps + self.decode_seconds * remaining_images


class GenerationWorker(QObject):
    """Loads the pipeline and runs walks in its thread; see the module docstring."""

    status = Signal(str)  # "Loading model...", "Fitting the preview..."
    warning = Signal(str)  # the library's warnings about a run's request, once per run
    loaded = Signal(object)  # the pipeline's info dict, after each (re)load
    progress = Signal(object)  # Progress, after every step
    preview = Signal(QImage)  # every `preview_every` steps
    image = Signal(object)  # ResultItem, once saved to the history folder
    animation = Signal(object)  # Path of a walk's animation, once written
    gpu_info = Signal(str)
    failed = Signal(str)  # one sentence
    finished = Signal(bool)  # True: the run ended before all its images (cancel / stop)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cancel = threading.Event()
        self._stop_after_image = threading.Event()
        self._reload = threading.Event()
        self._loaded: tuple[LoadRequest, Pipeline, LatentPreviewer] | None = None
        self._active: Pipeline | None = None
        self.before_load: Callable[[], None] | None = None  # drops what holds the old pipeline

    # ---- called from the GUI thread
    def prepare_run(self) -> None:
        """Clear the stop flags before a job is queued (so an early cancel is never lost)."""
        self._cancel.clear()
        self._stop_after_image.clear()

    def cancel_now(self) -> None:
        """Stop before the next step: nothing more is decoded or saved."""
        self._cancel.set()
        pipe = self._active
        if pipe is not None:
            pipe.cancel()

    def stop_after_image(self) -> None:
        self._stop_after_image.set()

    def request_reload(self) -> None:
        """Load the pipeline again at the next job (new engines were built, say)."""
        self._reload.set()

    # ---- runs in the worker thread
    @Slot(object)
    def run(self, job: WalkJob) -> None:
        stopped_early = False
        try:
            stopped_early = self._run(job)
        except Exception as exc:  # never out of the thread: the window shows one sentence
            if not isinstance(exc, SdxsError):
                logger.exception("generation failed")
            self.failed.emit(error_message(exc))
        finally:
            self._active = None
            self.finished.emit(stopped_early)

    def _run(self, job: WalkJob) -> bool:
        pipe, _ = self.pipeline_for(job.load)
        if self._cancel.is_set():
            return True
        return self._walk(pipe, job)

    def plan(self, pipe: Pipeline, params: GenerationParams) -> GenerationPlan:
        """`pipe.plan`, its warnings (emphasis stripped, a prompt kept as written) sent on as one
        line for the window and logged, instead of printed on the console only. The warnings
        filters are process-wide: for this short call a warning from another thread is caught
        here too (and shown), never lost."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = pipe.plan(params)
        messages = user_warnings(caught)
        for message in messages:
            logger.warning("%s", message)
        if messages:
            self.warning.emit("; ".join(messages))
        return plan

    def prepare_previews(self, previewer: LatentPreviewer, every: int) -> int:
        """Fit the preview map once per VAE (then cached); a failed fit only turns previews off."""
        if every <= 0 or previewer.ready:
            return max(every, 0)
        self.status.emit("Fitting the preview...")
        try:
            _ = previewer.projection
        except Exception:
            logger.exception("fitting the preview failed; no previews in this run")
            return 0
        return every

    def pipeline_for(self, load: LoadRequest) -> tuple[Pipeline, LatentPreviewer]:
        """The loaded pipeline, loaded anew when `load` changed or a reload was requested."""
        if self._loaded is None or self._loaded[0] != load or self._reload.is_set():
            if self.before_load is not None:
                self.before_load()
            self._loaded = None  # free the old pipeline before loading the next
            self._reload.clear()
            self.status.emit("Loading model...")
            pipe = load.load()
            self._loaded = (load, pipe, LatentPreviewer(pipe))
            self.loaded.emit(dict(pipe.info))
            self.gpu_info.emit(gpu_summary(pipe.info))
        return self._loaded[1], self._loaded[2]

    def save_image(
        self,
        event: ImageEvent,
        pipe: Pipeline,
        job: GenerationJob | WalkJob,
        counter: RunCounter,
    ) -> Path:
        record = make_record(pipe, event.plan, event.index)
        path = save_to_history(event.image, record, job.history_dir, job.strip_metadata)
        counter.add_image(event)
        self.image.emit(ResultItem(path, event.seed, record, pil_to_qimage(event.image)))
        self.gpu_info.emit(gpu_summary(pipe.info))
        return path

    def _walk(self, pipe: Pipeline, job: WalkJob) -> bool:
        """Every frame planned (inputs checked) first, then drawn: progress counts frames as a
        run counts images, and each frame is saved and shown like a generated image. The
        animation is written only when every frame was drawn."""
        frames = walk_frames(job.keyframes, job.frames_between, job.params)
        plans = [self.plan(pipe, frame.params) for frame in frames]
        for plan in plans:
            check_engine_covers(pipe, plan.params)
        counter = RunCounter(plans[0])
        counter.image_count = len(frames)
        self.status.emit(f"Walking through {len(frames)} frames...")
        self._active = pipe
        images: list[Any] = []
        paths: list[Path] = []
        # a generator (typed as an Iterator): closing it stops the walk
        events = cast(Generator[StepEvent | FrameEvent, None, None], render(pipe, frames, plans))
        try:
            for event in events:
                if self._cancel.is_set():
                    break  # the frame in flight is dropped
                if isinstance(event, FrameEvent):
                    plan = event.plan
                    image = ImageEvent(plan, 0, plan.seeds[0], event.image, event.timings)
                    paths.append(self.save_image(image, pipe, job, counter))
                    images.append(event.image)
                    if self._stop_after_image.is_set():
                        break
                else:
                    progress = counter.add_step(event.image_index, event.step, event.seconds)
                    self.progress.emit(replace(progress, image=counter.images_done))
        finally:
            events.close()
        if len(images) < len(frames):
            return True
        if job.animation:
            self.status.emit("Writing the animation...")
            path = paths[0].with_name(f"{paths[0].stem}-walk.{job.animation}")
            self.animation.emit(save_animation(images, path, job.fps))
        return False


def user_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """The distinct UserWarning messages among `caught`, in order (library warnings to users;
    deprecations and the like stay out of the window)."""
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return list(dict.fromkeys(messages))


def check_engine_covers(pipe: Pipeline, params: GenerationParams) -> None:
    """TensorRT: refuse a size the loaded engines cannot run, naming what they cover."""
    entry = find_backend(pipe.info.get("backend"))
    if entry is not None and entry.fixed_sizes:
        plugin = import_backend(entry.name)
        plugin.check_size(pipe.components, params.width, params.height, params.batch_size)


# ---------------------------------------------------------------- TensorRT engine builds


@dataclass(frozen=True)
class BuildRequest:
    model_dir: Path  # a folder written by `sdxs-rt export onnx`
    profile: SizeProfile
    precision: str = "fp16"
    force: bool = False


class BuildLog:
    """TensorRT build events -> log lines; lines that advance the build carry "NN%" overall."""

    def __init__(self, emit: Callable[[str], None], graphs: tuple[str, ...]) -> None:
        self.emit = emit
        self.graphs = graphs
        self.phase_steps: dict[str, int] = {}  # top-level phase -> its number of steps
        self.last_percent = -1

    def percent(self, graph: str, fraction: float) -> int:
        index = self.graphs.index(graph) if graph in self.graphs else 0
        return int(100 * (index + fraction) / len(self.graphs))

    def __call__(self, event: Any) -> None:
        for line in self.lines(event):
            self.emit(line)

    def lines(self, event: Any) -> Iterator[str]:
        graph, kind = event.graph, event.kind
        if kind == "skip":
            yield f"{graph}: already built ({event.path}) {self.percent(graph, 1)}%"
        elif kind == "start":
            yield f"{graph}: building the TensorRT engine (this takes a while)"
        elif kind == "done":
            yield f"{graph}: wrote {event.path} {self.percent(graph, 1)}%"
        elif kind == "note":
            yield f"{graph}: {event.message}"
        elif kind == "phase_start" and event.parent is None:
            self.phase_steps[event.phase] = event.total
            yield f"{graph}: {event.phase}"
        elif kind == "step" and self.phase_steps.get(event.phase):
            total = self.phase_steps[event.phase]
            percent = self.percent(graph, (event.step + 1) / total)
            if percent > self.last_percent:
                self.last_percent = percent
                yield f"{graph}: {event.phase} {event.step + 1}/{total} {percent}%"


class EngineBuildWorker(QObject):
    """Builds TensorRT engines in its thread; `cancel` stops at the builder's next step."""

    progress = Signal(str)
    finished = Signal(bool, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._cancel = threading.Event()

    def prepare_run(self) -> None:
        self._cancel.clear()

    def cancel(self) -> None:
        self._cancel.set()

    @Slot(object)
    def run(self, request: BuildRequest) -> None:
        try:
            message = self._build(request)
        except Exception as exc:
            if not isinstance(exc, SdxsError):
                logger.exception("engine build failed")
            self.finished.emit(False, error_message(exc))
        else:
            self.finished.emit(True, message)

    def _build(self, request: BuildRequest) -> str:
        from sdxs_rt.backends.tensorrt import build_engines, engine_graphs

        graphs = engine_graphs(request.model_dir)  # with vae_encoder where the export has it
        log = BuildLog(self.progress.emit, graphs)

        def on_event(event: Any) -> bool:
            log(event)
            return not self._cancel.is_set()  # False from a step event cancels the build

        paths = build_engines(
            request.model_dir, request.profile, request.precision, request.force, on_event
        )
        message = f"Built {len(paths)} engines; they cover {request.profile.describe()}."
        if "vae_encoder" not in graphs:
            message += " No VAE encoder engine: img2img needs a new export (see the log)."
        return message
