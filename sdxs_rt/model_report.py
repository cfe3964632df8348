"""What `generate` would use for a model, and why, read from configs and safetensors headers.

Torch-free and weight-free: only JSON files and the few-kB headers of the weight files are
read, so a check of the real multi-GB files takes well under a second. Problems are collected
(a text-width mismatch and a latent-channel mismatch are both listed), each with the exit code
of `sdxs_rt.errors`. `sdxs-rt check` prints the report; the desktop shows the same text.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sdxs_rt.components import latent_scaling_from_config, latent_scaling_note
from sdxs_rt.errors import EXIT_NOT_FOUND, ModelFormatError, SdxsError
from sdxs_rt.hub import check_revision
from sdxs_rt.loading import (
    KNOWN_FOLDERS,
    UNET_FOLDERS,
    ModelFiles,
    native_image_size,
    resolve_model,
    weights_table,
)
from sdxs_rt.scheduler_table import DIFFUSERS_CLASSES, scheduler_for_config
from sdxs_rt.text_encoder_files import (
    TextEncoderFiles,
    check_text_width,
    own_text_encoder_problem,
    resolve_text_encoder,
)
from sdxs_rt.text_layout import TensorInfo

PRECISION_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
MEMORY_NOTE = "weights only (activations excluded); the text path leaves its vision tower on disk"
UNET_KEYS = (
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "transformer_layers_per_block",
    "attention_head_dim",
    "cross_attention_dim",
    "sample_size",
)
SCHEDULER_KEYS = (
    "num_train_timesteps",
    "beta_schedule",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "clip_sample",
    "rescale_betas_zero_snr",
)
UNET_NOTE = "U-Net: "  # how loading's note on the chosen U-Net folder begins
T = TypeVar("T")


@dataclass(frozen=True)
class Problem:
    """One reason `generate` would refuse the model: a sentence and its exit code."""

    message: str
    exit_code: int


@dataclass
class ModelReport:
    """The facts of each section as plain JSON-able dicts; `errors` in the order found."""

    model: dict[str, Any] = field(default_factory=dict)
    unet: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] = field(default_factory=dict)
    scheduler: dict[str, Any] = field(default_factory=dict)
    text_encoder: dict[str, Any] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    folders: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[Problem] = field(default_factory=list)
    deep: dict[str, Any] = field(default_factory=dict)  # filled by `check --deep`
    resolved: bool = True  # False: the model itself could not be read (one error, no sections)
    encoder_files: TextEncoderFiles | None = field(default=None, repr=False)

    @property
    def exit_code(self) -> int:
        """0, or the first problem's code (they are all 3 today: model or file problems)."""
        return self.errors[0].exit_code if self.errors else 0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("encoder_files")
        data["errors"] = [problem.message for problem in self.errors]
        data["exit_code"] = self.exit_code
        return data


# --- entry point ------------------------------------------------------------------------


def build_report(
    spec: str | None,
    text_encoder: str | None = None,
    variant: str | None = None,
    revision: str | None = None,
) -> ModelReport:
    """Everything `generate --model spec` would use, from configs and safetensors headers only:
    hub weights not in the cache are judged by their remote headers, never downloaded."""
    report = ModelReport()
    try:
        check_revision(spec, revision)  # as generate: only hub ids have revisions
        files = resolve_model(spec, variant, revision, fetch_weights=False)
    except SdxsError as exc:
        report.resolved = False
        report.model = {"spec": spec, "variant": variant, "revision": revision}
        report.errors.append(Problem(str(exc), exc.exit_code))
        return report
    fill_model_sections(report, files)
    encoder = _attempt(
        report, lambda: resolve_text_encoder(text_encoder, files, fetch_weights=False)
    )
    if encoder is not None:
        fill_text_sections(report, files, encoder)
    elif text_encoder is None and (why_not := own_text_encoder_problem(files)):
        report.notes.append(f"text_encoder/ not used: {why_not}")
    report.memory = memory_estimate(report)
    report.folders = folder_roles(files, encoder)
    return report


def _attempt(report: ModelReport, step: Callable[[], T]) -> T | None:
    """Run one check; its SdxsError becomes a listed problem and the others still run."""
    try:
        return step()
    except SdxsError as exc:
        report.errors.append(Problem(str(exc), exc.exit_code))
        return None


# --- model sections ---------------------------------------------------------------------


def fill_model_sections(report: ModelReport, files: ModelFiles) -> None:
    width, height = native_image_size(files)
    report.model = {
        "name": files.name,
        "path": str(files.root),
        "hub_id": files.hub_id,
        "revision": files.revision,
        "variant": files.variant,
        "default_size": f"{width}x{height}",
    }
    unet, vae = files.unet_weights, files.vae_weights
    report.unet = {**component_facts(files.unet_dir.name, unet, files), **unet_facts(files)}
    report.vae = {**component_facts(files.vae_dir.name, vae, files), **vae_facts(files)}
    for section in (report.unet, report.vae):
        if (problem := section.pop("problem", None)) is not None:
            report.errors.append(problem)
    report.scheduler = scheduler_facts(files.scheduler_config)
    chosen = [note for note in files.notes if not note.startswith(UNET_NOTE)]  # in its section
    report.notes.extend([*chosen, *files.skipped])
    if note := latent_scaling_note(files.vae_config):
        report.notes.append(note)
    _attempt(report, lambda: check_latent_channels(files))
    _attempt(report, lambda: latent_scaling_from_config(files.vae_config, _latent_channels(files)))
    _attempt(report, lambda: scheduler_parses(files.scheduler_config))


def component_facts(folder: str, weights: Path, files: ModelFiles) -> dict[str, Any]:
    facts: dict[str, Any] = {"folder": f"{folder}/", "weights": str(weights)}
    try:
        return {**facts, **tensor_facts(weights_table(weights, files))}
    except SdxsError as exc:  # a header neither cached nor reachable: named, the rest goes on
        return {**facts, "problem": Problem(str(exc), exc.exit_code)}


def tensor_facts(table: Mapping[str, TensorInfo]) -> dict[str, Any]:
    return {
        "tensors": len(table),
        "dtypes": dict(Counter(info.dtype for info in table.values())),
        "parameters": sum(info.count for info in table.values()),
    }


def unet_facts(files: ModelFiles) -> dict[str, Any]:
    why = next((n for n in files.notes if n.startswith(UNET_NOTE)), f"{files.unet_dir.name}/")
    config = {key: files.unet_config[key] for key in UNET_KEYS if key in files.unet_config}
    return {"why": why.removeprefix(UNET_NOTE), "config": config}


def vae_facts(files: ModelFiles) -> dict[str, Any]:
    config = files.vae_config
    blocks = config.get("block_out_channels") or []
    return {
        "latent_channels": config.get("latent_channels"),
        "downscale": 2 ** (len(blocks) - 1) if blocks else None,
        "scaling_factor": config.get("scaling_factor"),
        "shift_factor": config.get("shift_factor"),
        "per_channel_mean_std": config.get("latents_mean") is not None,
        "decode": decode_formula(config),
    }


def decode_formula(vae_config: Mapping[str, Any]) -> str:
    """How generate maps U-Net latents to VAE latents, in words (see LatentScaling)."""
    scaling = vae_config.get("scaling_factor")
    if vae_config.get("shift_factor") is not None or vae_config.get("latents_mean") is None:
        shift = float(vae_config.get("shift_factor") or 0)
        return f"z / {scaling} {'-' if shift < 0 else '+'} {abs(shift)}"
    return f"z * latents_std / {scaling} + latents_mean (per channel)"


def scheduler_facts(config: Mapping[str, Any]) -> dict[str, Any]:
    class_name = config.get("_class_name", "DDPMScheduler")
    sampler = scheduler_for_config(config)
    if class_name in DIFFUSERS_CLASSES:
        why = f"the native sampler of {class_name}"
    else:
        why = f"{class_name} has no native sampler of the same maths; {sampler} is the default"
    values = {key: config[key] for key in SCHEDULER_KEYS if key in config}
    return {"class": class_name, "sampler": sampler, "why": why, "config": values}


def scheduler_parses(config: Mapping[str, Any]) -> None:
    from sdxs_rt.schedules import SchedulerConfig

    SchedulerConfig.from_dict(config)


def check_latent_channels(files: ModelFiles) -> None:
    unet_in = files.unet_config.get("in_channels")
    unet_out = files.unet_config.get("out_channels")
    vae = files.vae_config.get("latent_channels")
    if unet_in != vae:
        raise ModelFormatError(
            f"The U-Net in {files.unet_dir} takes {unet_in} latent channels but the VAE in "
            f"{files.vae_dir} has {vae}: they do not belong together."
        )
    if unet_out != unet_in:
        raise ModelFormatError(
            f"The U-Net in {files.unet_dir} takes {unet_in} latent channels but predicts "
            f"{unet_out}; sdxs-rt needs the same number in and out."
        )


def _latent_channels(files: ModelFiles) -> int:
    return int(files.unet_config.get("in_channels") or 0)


# --- text encoder -----------------------------------------------------------------------


def fill_text_sections(report: ModelReport, files: ModelFiles, encoder: TextEncoderFiles) -> None:
    report.encoder_files = encoder
    report.text_encoder = text_encoder_facts(encoder)
    report.notes.extend([*encoder.notes, *encoder.skipped])
    if encoder.layout is None:
        problem = encoder.layout_problem or f"{encoder.dir} holds no text encoder layout."
        report.errors.append(Problem(problem, EXIT_NOT_FOUND))
    _attempt(report, lambda: check_text_width(encoder, files))


def text_encoder_facts(encoder: TextEncoderFiles) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "name": encoder.name,
        "folder": str(encoder.dir),
        "tokenizer": str(encoder.tokenizer_dir),
        "weights": [str(path) for path in (*encoder.weights, *encoder.projector_weights)],
        "remote_code": "auto_map" in encoder.config,
        "problem": encoder.layout_problem,
    }
    layout = encoder.layout
    if layout is None:
        return facts
    tower = layout.tower_config
    return {
        **facts,
        "layout": layout.describe(),
        "dimensions_from": layout.config_source,
        "hidden_size": tower["hidden_size"],
        "layers": tower["num_hidden_layers"],
        "heads": tower["num_attention_heads"],
        "vocab_size": tower["vocab_size"],
        "width": layout.width,
        "projection": layout.projection.rstrip("."),
        "left_on_disk": dict(layout.unused),
        "vision_tower_on_disk": layout.has_vision_tower,
        "dtypes": dict(layout.dtypes),
        "text_parameters": layout.text_parameters,
        "vision_parameters": layout.vision_parameters,
    }


# --- memory and folders -----------------------------------------------------------------


def memory_estimate(report: ModelReport) -> dict[str, Any]:
    """Bytes of weights per precision: U-Net, VAE and the text path (tower + projection)."""
    counts = {
        "unet": report.unet.get("parameters"),
        "vae": report.vae.get("parameters"),
        "text_encoder": report.text_encoder.get("text_parameters"),
    }
    known = {part: count for part, count in counts.items() if count is not None}
    estimate: dict[str, Any] = {"note": MEMORY_NOTE, "parameters": known}
    for precision, size in PRECISION_BYTES.items():
        per_part = {part: count * size for part, count in known.items()}
        estimate[precision] = {**per_part, "total": sum(per_part.values())}
    return estimate


def folder_roles(files: ModelFiles, encoder: TextEncoderFiles | None) -> dict[str, str]:
    """Each folder of the model and what generate does with it."""
    used = {files.unet_dir, files.vae_dir, files.root / "scheduler"}
    if encoder is not None:
        used |= {encoder.dir, encoder.tokenizer_dir, *(p.parent for p in encoder.projector_weights)}
    folders = sorted(p for p in files.root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {f"{p.name}/": _role(p.name, files, p in used) for p in folders}


def _role(name: str, files: ModelFiles, used: bool) -> str:
    if name == files.unet_dir.name:
        return "U-Net (used)"
    if name in UNET_FOLDERS:
        return "another U-Net (not used)"
    if name in ("vae", "scheduler", *KNOWN_FOLDERS):
        what = "VAE" if name == "vae" else name.replace("_", " ")
        return f"{what} ({'used' if used else 'not used'})"
    return "unknown (ignored)"
