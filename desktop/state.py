"""State objects: typed Qt properties with `*_changed` signals and no widgets (Krita AI's split).

Widgets bind to these; the worker reads them; QSettings persists them between runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import suppress
from typing import Any, ClassVar

from PySide6.QtCore import Property, QObject, QSettings, Signal
from sdxs_rt_desktop.image_prompts import image_prompt_entries, not_restored_note

from sdxs_rt.errors import UsageError
from sdxs_rt.params import GenerationParams, check_size
from sdxs_rt.rng import random_seed

# The model was trained at 576 px with 64-px buckets: one side 576, the other 320..576.
ASPECT_BUCKETS: tuple[tuple[int, int], ...] = tuple(
    sorted({(576, s) for s in range(320, 577, 64)} | {(s, 576) for s in range(320, 577, 64)},
           key=lambda wh: (-wh[0] * wh[1], wh))
)  # fmt: skip


# Seeds go up to 2**63 - 1: their signals and properties are 64-bit (a plain `int` is 32-bit in Qt).
INT64 = "qlonglong"

RESIZE_MODES = ("crop", "stretch")  # sdxs_rt.image_inputs.RESIZE_MODES
AUTO_STRENGTH = 0.0  # GenerationState.strength: the library's default (0.75; 1.0 when outpainting)
DEFAULT_VARIATION_STRENGTH = 0.3  # "Vary this image"
OUTPAINT_FIELDS = ("outpaint_left", "outpaint_right", "outpaint_top", "outpaint_bottom")
# Restored by "Reuse all" when the record has them (None: the image had no such input).
IMAGE_INPUT_RECORD_FIELDS = ("strength", "resize_mode", "mask_blur", "paste_back")
INPUT_NOT_RESTORED = "the input image is not restored; open it again under Image input"
INPUTS_NOT_RESTORED = "the input image and its mask are not restored; open and paint them again"


def state_property(
    name: str, kind: type, notify: Signal, qt_type: type | str | None = None
) -> Property:
    """A Qt property stored in `self._<name>` that emits `notify` only on a real change."""
    attribute = "_" + name

    def getter(self: QObject) -> Any:
        return getattr(self, attribute)

    def setter(self: QObject, value: Any) -> None:
        value = kind(value)
        if getattr(self, attribute) != value:
            setattr(self, attribute, value)
            getattr(self, notify_name(name)).emit(value)

    return Property(qt_type or kind, getter, setter, notify=notify)


def notify_name(name: str) -> str:
    return f"{name}_changed"


def as_is(value: Any) -> Any:
    """The `kind` of a property that holds any Python object (a PIL image, or None)."""
    return value


class StateObject(QObject):
    """Base: `FIELDS` maps property name -> default; subclasses declare signals and properties."""

    FIELDS: ClassVar[dict[str, Any]] = {}
    SESSION_ONLY: ClassVar[frozenset[str]] = frozenset()  # fields never saved in QSettings

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        for name, default in self.FIELDS.items():
            setattr(self, "_" + name, default)

    def values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.FIELDS}

    def update(self, **values: Any) -> None:
        for name, value in values.items():
            if name not in self.FIELDS:
                raise AttributeError(f"{type(self).__name__} has no field {name!r}")
            setattr(self, name, value)

    def save(self, settings: QSettings, group: str) -> None:
        settings.beginGroup(group)
        for name, value in self.values().items():
            if name not in self.SESSION_ONLY:
                settings.setValue(name, value)
        settings.endGroup()

    def load(self, settings: QSettings, group: str) -> None:
        """Restore saved values; a value of the wrong type (an old settings file) is skipped."""
        settings.beginGroup(group)
        for name, default in self.FIELDS.items():
            if name not in self.SESSION_ONLY and settings.contains(name):
                with suppress(TypeError, ValueError):
                    setattr(self, name, _coerce(settings.value(name), type(default)))
        settings.endGroup()


def _coerce(value: Any, kind: type) -> Any:
    if kind is bool and isinstance(value, str):  # some QSettings backends store "true"/"false"
        return value.lower() == "true"
    return kind(value)


class GenerationState(StateObject):
    """What to generate, from noise or from an init image (img2img, inpainting, outpainting)."""

    FIELDS: ClassVar[dict[str, Any]] = {
        "prompt": "",
        "negative_prompt": "",
        "seed": 0,
        "random_seed": True,
        "last_seed": -1,
        "steps": 40,
        "guidance": 5.5,
        "scheduler": "",  # "": the model's own scheduler
        "width": 576,  # replaced by the model's own size at start (model_size.py)
        "height": 576,
        "size_model": "",  # the model the size was set for ("": none yet, e.g. old settings)
        "batch_count": 1,
        "preview_every": 5,
        "strip_metadata": False,
        # Image input: "" = none (text to image).
        "init_image": "",
        "strength": AUTO_STRENGTH,
        "resize_mode": "crop",
        "size_from_input": True,  # with an init image: width/height None (the library's rule)
        "mask": None,  # a PIL "L" image at the init image's size (white = repaint), or None
        "mask_blur": 4,
        "paste_back": True,
        "outpaint_left": 0,
        "outpaint_right": 0,
        "outpaint_top": 0,
        "outpaint_bottom": 0,
        "variation_seed": 0,
        "variation_strength": 0.0,  # 0: no variation
        "image_prompts": (),  # ((path, weight), ...): through the vision tower (image_prompts.py)
    }
    # The inputs of one session: a restart must not silently repaint last week's photo.
    SESSION_ONLY: ClassVar[frozenset[str]] = frozenset(
        {"init_image", "mask", *OUTPAINT_FIELDS, "variation_seed", "variation_strength"}
        | {"image_prompts"}
    )
    prompt_changed = Signal(str)
    prompt = state_property("prompt", str, prompt_changed)
    negative_prompt_changed = Signal(str)
    negative_prompt = state_property("negative_prompt", str, negative_prompt_changed)
    seed_changed = Signal(INT64)
    seed = state_property("seed", int, seed_changed, INT64)
    random_seed_changed = Signal(bool)
    random_seed = state_property("random_seed", bool, random_seed_changed)
    last_seed_changed = Signal(INT64)
    last_seed = state_property("last_seed", int, last_seed_changed, INT64)
    steps_changed = Signal(int)
    steps = state_property("steps", int, steps_changed)
    guidance_changed = Signal(float)
    guidance = state_property("guidance", float, guidance_changed)
    scheduler_changed = Signal(str)
    scheduler = state_property("scheduler", str, scheduler_changed)
    width_changed = Signal(int)
    width = state_property("width", int, width_changed)
    height_changed = Signal(int)
    height = state_property("height", int, height_changed)
    size_model_changed = Signal(str)
    size_model = state_property("size_model", str, size_model_changed)
    batch_count_changed = Signal(int)
    batch_count = state_property("batch_count", int, batch_count_changed)
    preview_every_changed = Signal(int)
    preview_every = state_property("preview_every", int, preview_every_changed)
    strip_metadata_changed = Signal(bool)
    strip_metadata = state_property("strip_metadata", bool, strip_metadata_changed)
    init_image_changed = Signal(str)
    init_image = state_property("init_image", str, init_image_changed)
    strength_changed = Signal(float)
    strength = state_property("strength", float, strength_changed)
    resize_mode_changed = Signal(str)
    resize_mode = state_property("resize_mode", str, resize_mode_changed)
    size_from_input_changed = Signal(bool)
    size_from_input = state_property("size_from_input", bool, size_from_input_changed)
    mask_changed = Signal(object)
    mask = state_property("mask", as_is, mask_changed, object)
    mask_blur_changed = Signal(int)
    mask_blur = state_property("mask_blur", int, mask_blur_changed)
    paste_back_changed = Signal(bool)
    paste_back = state_property("paste_back", bool, paste_back_changed)
    outpaint_left_changed = Signal(int)
    outpaint_left = state_property("outpaint_left", int, outpaint_left_changed)
    outpaint_right_changed = Signal(int)
    outpaint_right = state_property("outpaint_right", int, outpaint_right_changed)
    outpaint_top_changed = Signal(int)
    outpaint_top = state_property("outpaint_top", int, outpaint_top_changed)
    outpaint_bottom_changed = Signal(int)
    outpaint_bottom = state_property("outpaint_bottom", int, outpaint_bottom_changed)
    variation_seed_changed = Signal(INT64)
    variation_seed = state_property("variation_seed", int, variation_seed_changed, INT64)
    variation_strength_changed = Signal(float)
    variation_strength = state_property("variation_strength", float, variation_strength_changed)
    image_prompts_changed = Signal(object)
    image_prompts = state_property(
        "image_prompts", image_prompt_entries, image_prompts_changed, object
    )

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        # A mask belongs to the image it was painted on.
        self.init_image_changed.connect(lambda _: setattr(self, "mask", None))

    def uses_input_size(self) -> bool:
        """The output size follows the init image (width and height are not used)."""
        return bool(self.init_image) and self.size_from_input

    def size_error(self) -> str:
        """'' when the size is valid, else the one-sentence reason (shown in the UI)."""
        if self.uses_input_size():
            return ""
        try:
            check_size("width", self.width)
            check_size("height", self.height)
        except UsageError as exc:
            return str(exc)
        return ""

    def outpaint(self) -> tuple[int, int, int, int] | None:
        amounts = tuple(getattr(self, name) for name in OUTPAINT_FIELDS)
        return amounts if any(amounts) else None  # type: ignore[return-value]

    def to_params(self, seed: int) -> GenerationParams:
        """Validated parameters for one run starting at `seed` (raises UsageError)."""
        from_input = self.uses_input_size()
        return GenerationParams(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            num_inference_steps=self.steps,
            guidance_scale=self.guidance,
            width=None if from_input else self.width,
            height=None if from_input else self.height,
            seed=seed,
            scheduler=self.scheduler or None,
            num_images=self.batch_count,
            batch_size=1,
            image_prompts=self.image_prompts,
            **self._image_input_params(),
            **self._variation_params(),
        ).validate()

    def _image_input_params(self) -> dict[str, Any]:
        if not self.init_image:
            return {}
        return {
            "init_image": self.init_image,
            "strength": None if self.strength <= AUTO_STRENGTH else self.strength,
            "resize_mode": self.resize_mode,
            "mask": self.mask,
            "mask_blur": self.mask_blur,
            "paste_back": self.paste_back,
            "outpaint": self.outpaint(),
        }

    def _variation_params(self) -> dict[str, Any]:
        if self.variation_strength <= 0:
            return {}
        return {
            "variation_seed": self.variation_seed,
            "variation_strength": self.variation_strength,
        }

    def reuse_seed(self, seed: int) -> None:
        self.update(seed=seed, random_seed=False)

    def vary(self, seed: int, strength: float = DEFAULT_VARIATION_STRENGTH) -> None:
        """Variations of the image drawn from `seed`: that seed, a new variation seed."""
        self.reuse_seed(seed)
        self.update(variation_seed=random_seed(), variation_strength=strength)

    def apply_record(self, record: dict[str, Any]) -> str:
        """'Reuse all': take every field a PNG's metadata carries (our chunk or A1111 text).

        The input image, mask and image prompts are not stored in a record (only their
        digests), so they are not restored: the note returned says so ("" when the image had
        none). The prompts come back as they were typed (blends, schedules, emphasis and all).
        """
        mapping = {
            "prompt": "prompt",
            "negative_prompt": "negative_prompt",
            "steps": "steps",
            "guidance_scale": "guidance",
            "scheduler": "scheduler",
            "width": "width",
            "height": "height",
        }
        self.update(**{ours: record[key] for key, ours in mapping.items() if key in record})
        if "seed" in record:
            self.reuse_seed(int(record["seed"]))
        self._apply_image_inputs(record)
        self._apply_variation(record)
        notes = (input_not_restored_note(record), not_restored_note(record))
        return "; ".join(note for note in notes if note)

    def _apply_image_inputs(self, record: dict[str, Any]) -> None:
        present = {k: record[k] for k in IMAGE_INPUT_RECORD_FIELDS if record.get(k) is not None}
        if present.get("resize_mode") not in (None, *RESIZE_MODES):
            del present["resize_mode"]
        self.update(**present)
        if record.get("init_image"):  # an image from an input: its outpainting, or none
            amounts = outpaint_amounts(record.get("outpaint"))
            self.update(**dict(zip(OUTPAINT_FIELDS, amounts, strict=True)))

    def _apply_variation(self, record: dict[str, Any]) -> None:
        seed, strength = record.get("variation_seed"), record.get("variation_strength")
        if seed is not None and strength:
            self.update(variation_seed=seed, variation_strength=strength)
        else:  # the image had no variation: none now either, or it would not come out the same
            self.variation_strength = 0.0


def input_not_restored_note(record: dict[str, Any]) -> str:
    if not record.get("init_image"):
        return ""
    return INPUTS_NOT_RESTORED if record.get("mask") else INPUT_NOT_RESTORED


def with_note(status: str, note: str) -> str:
    """'Settings restored from a.png' + '; the input image is not restored ...'."""
    return f"{status}; {note}" if note else status


def outpaint_amounts(value: Any) -> tuple[int, int, int, int]:
    """A record's `outpaint` ([left, right, top, bottom]) as four ints; anything else: zeros."""
    if isinstance(value, (list, tuple)) and len(value) == 4:
        with suppress(TypeError, ValueError):
            return tuple(int(v) for v in value)  # type: ignore[return-value]
    return (0, 0, 0, 0)


# ModelState fields that identify a loaded pipeline, in `worker.LoadRequest`'s order.
LOAD_FIELDS = ("model", "text_encoder", "backend", "precision", "device", "low_vram", "revision")


class ModelState(StateObject):
    """Which model runs, and where."""

    FIELDS: ClassVar[dict[str, Any]] = {
        "model": "",  # "": the built-in default model
        "revision": "",  # "": the hub repo's default branch (hub ids only)
        "text_encoder": "",
        "backend": "torch",
        "precision": "fp32",
        "device": "cpu",
        "low_vram": False,  # PyTorch: the small-card mode (Pipeline backend option low_vram)
        "engine_sizes": "",  # TensorRT: the sizes the engines cover, shown before Generate
        # Why the loaded model cannot take image prompts (its pipeline info), "" when it can or
        # before it is loaded; cleared when the choice of model changes.
        "image_encoder_unavailable": "",
    }
    SESSION_ONLY: ClassVar[frozenset[str]] = frozenset({"image_encoder_unavailable"})
    model_changed = Signal(str)
    model = state_property("model", str, model_changed)
    revision_changed = Signal(str)
    revision = state_property("revision", str, revision_changed)
    text_encoder_changed = Signal(str)
    text_encoder = state_property("text_encoder", str, text_encoder_changed)
    backend_changed = Signal(str)
    backend = state_property("backend", str, backend_changed)
    precision_changed = Signal(str)
    precision = state_property("precision", str, precision_changed)
    device_changed = Signal(str)
    device = state_property("device", str, device_changed)
    low_vram_changed = Signal(bool)
    low_vram = state_property("low_vram", bool, low_vram_changed)
    engine_sizes_changed = Signal(str)
    engine_sizes = state_property("engine_sizes", str, engine_sizes_changed)
    image_encoder_unavailable_changed = Signal(str)
    image_encoder_unavailable = state_property(
        "image_encoder_unavailable", str, image_encoder_unavailable_changed
    )

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        for name in LOAD_FIELDS:  # what the loaded model could do is known again at its load
            getattr(self, notify_name(name)).connect(
                lambda *_: setattr(self, "image_encoder_unavailable", "")
            )

    def image_prompt_error(self) -> str:
        """'' when image prompts may work, else the library's sentence saying why not."""
        reason = self.image_encoder_unavailable
        return f"image prompts cannot be used: {reason}" if reason else ""

    def key(self) -> tuple[str | bool, ...]:
        """What identifies a loaded pipeline (`worker.LoadRequest`'s fields, in order): a change
        means loading again."""
        return tuple(getattr(self, name) for name in LOAD_FIELDS)

    def apply_record(self, record: dict[str, Any]) -> None:
        """'Reuse all': the image's hub revision, when its model is the one chosen now (a
        revision belongs to its repo; the model itself is left as the user chose it)."""
        if record.get("model") and record["model"] == self.model:
            self.revision = record.get("revision") or ""


class RunState(StateObject):
    """The run in progress: drives the progress bar, status line and buttons."""

    FIELDS: ClassVar[dict[str, Any]] = {
        "running": False,
        "step": 0,
        "total_steps": 0,
        "eta_seconds": 0.0,
        "status": "Ready",
        "error": "",
        "warning": "",  # the library's warnings about this run (emphasis stripped), one line
        "gpu_info": "",
    }
    running_changed = Signal(bool)
    running = state_property("running", bool, running_changed)
    step_changed = Signal(int)
    step = state_property("step", int, step_changed)
    total_steps_changed = Signal(int)
    total_steps = state_property("total_steps", int, total_steps_changed)
    eta_seconds_changed = Signal(float)
    eta_seconds = state_property("eta_seconds", float, eta_seconds_changed)
    status_changed = Signal(str)
    status = state_property("status", str, status_changed)
    error_changed = Signal(str)
    error = state_property("error", str, error_changed)
    warning_changed = Signal(str)
    warning = state_property("warning", str, warning_changed)
    gpu_info_changed = Signal(str)
    gpu_info = state_property("gpu_info", str, gpu_info_changed)


PERSISTED = ("generation", "model")  # RunState is per run, never saved


def persisted(states: dict[str, StateObject]) -> Iterator[tuple[str, StateObject]]:
    return ((group, states[group]) for group in PERSISTED if group in states)


def save_settings(states: dict[str, StateObject], settings: QSettings) -> None:
    for group, state in persisted(states):
        state.save(settings, group)
    settings.sync()


def load_settings(states: dict[str, StateObject], settings: QSettings) -> None:
    for group, state in persisted(states):
        state.load(settings, group)
