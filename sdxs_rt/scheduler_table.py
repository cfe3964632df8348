"""The one table of samplers: our name, A1111's label, the diffusers class of the same maths.

Everything that names a sampler (the CLI's choices, the desktop's list, the metadata writer and
reader, a model's default) reads this table. Plain Python: `sdxs-rt --help` imports it without
numpy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class SamplerEntry:
    name: str  # ours: --scheduler, the `sdxs_rt` metadata, the library's `scheduler=`
    label: str  # A1111's `Sampler` label (its >= 1.9 form splits Karras into `Schedule type`)
    diffusers_class: str  # the diffusers scheduler whose steps ours reproduce
    karras: bool = False  # that class with `use_karras_sigmas: true`


SAMPLERS: tuple[SamplerEntry, ...] = (
    SamplerEntry("ddpm", "DDPM", "DDPMScheduler"),
    SamplerEntry("ddim", "DDIM", "DDIMScheduler"),
    SamplerEntry("euler", "Euler", "EulerDiscreteScheduler"),
    SamplerEntry("euler_a", "Euler a", "EulerAncestralDiscreteScheduler"),
    SamplerEntry("dpmpp_2m", "DPM++ 2M", "DPMSolverMultistepScheduler"),
    SamplerEntry("dpmpp_2m_karras", "DPM++ 2M Karras", "DPMSolverMultistepScheduler", True),
)
SCHEDULER_NAMES: tuple[str, ...] = tuple(entry.name for entry in SAMPLERS)
SCHEDULER_LABELS: dict[str, str] = {entry.name: entry.label for entry in SAMPLERS}
DIFFUSERS_CLASSES: frozenset[str] = frozenset(entry.diffusers_class for entry in SAMPLERS)
FALLBACK_SCHEDULER = "ddpm"  # the model card's scheduler, for classes we have no sampler of


def entry_for(name: str) -> SamplerEntry:
    for entry in SAMPLERS:
        if entry.name == name:
            return entry
    raise KeyError(name)


def scheduler_for_config(config: Mapping[str, Any]) -> str:
    """The sampler of a model's `scheduler_config.json`: its class (and Karras flag), else DDPM."""
    class_name = config.get("_class_name", "DDPMScheduler")
    karras = bool(config.get("use_karras_sigmas"))
    matches = [e for e in SAMPLERS if e.diffusers_class == class_name]
    for entry in matches:
        if entry.karras == karras:
            return entry.name
    return matches[0].name if matches else FALLBACK_SCHEDULER


def scheduler_for_label(label: str, schedule_type: str = "") -> str | None:
    """Our sampler for an A1111 label; A1111 >= 1.9 writes Karras as `Schedule type: Karras`.

    None when no sampler of ours replays it (another noise schedule, an unknown label).
    """
    name = label.strip().lower()
    kind = schedule_type.strip().lower()
    by_label = {entry.label.lower(): entry.name for entry in SAMPLERS}
    if kind in ("", "automatic") or (kind == "karras" and name.endswith(" karras")):
        return by_label.get(name)
    if kind == "karras":
        return by_label.get(f"{name} karras")
    return None
