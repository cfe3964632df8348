"""The one table of backends: names, labels, plugin modules, defaults and what each can do.

Everything that has to know what a backend offers (the CLI's choices and refusals, the desktop's
list and which of its options it shows, the pipeline's defaults) asks this table for a
capability instead of comparing names. Plain Python: `sdxs-rt --help` imports it without numpy
or torch, and nothing here imports a backend until `import_backend` is called.

A backend with `fixed_sizes` (engines built for a size profile) offers, in its plugin module,
`check_size(components, width, height, batch)` (the loaded engines),
`check_size_for_model(folder, width, height, batch)` (before loading, from the manifest) and
`engine_sizes(folder) -> str` (what the built engines cover, for display).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from sdxs_rt.errors import DeviceError, UsageError

# "always": every model it loads has the encoder; "when_exported": only a folder whose export
# holds the graph (TensorRT: and a built engine for it). What a loaded model has:
# `Components.vae_encoder` / `.image_encoder` (None, with info["..._unavailable"] saying why).
Availability = Literal["always", "when_exported"]


@dataclass(frozen=True)
class Backend:
    name: str  # --backend, `Pipeline.from_pretrained(backend=)`, the metadata's `backend`
    label: str  # what the desktop shows
    module: str  # the plugin package, imported only when the backend is used
    extra: str  # what to pip install when the plugin's dependencies are missing
    default_device: str
    default_precision: str | None  # None: the precision the exported graphs were written in
    precisions: tuple[str, ...]  # what --precision may ask of it
    exported: bool  # True: a folder written by 'sdxs-rt export onnx'; False: diffusers/hub id
    vae_encoder: Availability  # img2img, the pixel hires fix
    # image prompts (the text encoder's vision tower): "when_exported" also needs the export's
    # image_encoder/ graph (TensorRT: and the image_encoder engine 'engine build' makes from it)
    image_prompts: Availability
    runtime_lora: bool = False  # merges LoRA files at load time (`loras=`)
    low_vram: bool = False  # the small-card mode (`low_vram=True`)
    fast_path: bool = False  # CUDA graphs, torch.compile, channels-last, text-encoder offload
    fixed_sizes: bool = False  # engines cover only the sizes of their build profile
    needs_cuda: bool = False  # runs on an NVIDIA GPU only


BACKENDS: tuple[Backend, ...] = (
    Backend(
        "torch",
        "PyTorch",
        "sdxs_rt.backends.torch",
        "sdxs-rt[torch]",
        default_device="cpu",
        default_precision="fp32",
        precisions=("fp32", "fp16", "bf16"),
        exported=False,
        vae_encoder="always",
        image_prompts="always",
        runtime_lora=True,
        low_vram=True,
        fast_path=True,
    ),
    Backend(
        "onnx",
        "ONNX Runtime",
        "sdxs_rt.backends.onnx",
        "sdxs-rt[onnx]",
        default_device="cpu",
        default_precision=None,
        precisions=("fp32", "fp16"),
        exported=True,
        vae_encoder="when_exported",
        image_prompts="when_exported",
    ),
    Backend(
        "tensorrt",
        "TensorRT",
        "sdxs_rt.backends.tensorrt",
        "sdxs-rt[tensorrt]",
        default_device="cuda",
        default_precision="fp16",
        precisions=("fp16", "fp32"),
        exported=True,
        vae_encoder="when_exported",
        image_prompts="when_exported",
        fixed_sizes=True,
        needs_cuda=True,
    ),
)
DEFAULT_BACKEND = "torch"
BACKEND_NAMES: tuple[str, ...] = tuple(entry.name for entry in BACKENDS)
# Every precision some backend offers, in table order: the CLI's --precision choices.
ALL_PRECISIONS: tuple[str, ...] = tuple(
    dict.fromkeys(p for entry in BACKENDS for p in entry.precisions)
)


def find_backend(name: object) -> Backend | None:
    """The table's entry, or None for a name it does not hold (an old settings file, say)."""
    for entry in BACKENDS:
        if entry.name == name:
            return entry
    return None


def backend(name: str) -> Backend:
    """The table's entry for `name`; an unknown name is a UsageError listing the choices."""
    entry = find_backend(name)
    if entry is None:
        names = ", ".join(entry.name for entry in BACKENDS)
        raise UsageError(f"unknown backend {name!r}; choose one of: {names}")
    return entry


def names_with(capability: str) -> tuple[str, ...]:
    """The backends whose flag `capability` (e.g. "runtime_lora") is set, in table order."""
    return tuple(entry.name for entry in BACKENDS if getattr(entry, capability))


def names_without(capability: str) -> tuple[str, ...]:
    return tuple(entry.name for entry in BACKENDS if not getattr(entry, capability))


def import_backend(name: str) -> ModuleType:
    """Import a backend plugin; a missing one (or a missing dependency of it) is a clear error."""
    entry = backend(name)
    try:
        return importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:
        if exc.name == entry.module:
            raise DeviceError(
                f"the {name} backend is not part of this sdxs-rt version yet"
            ) from None
        raise DeviceError(
            f"the {name} backend needs the Python package {exc.name!r}; "
            f"install it with: pip install '{entry.extra}'"
        ) from None
