"""`TrainConfig`: every setting of `sdxs-rt train`, read from TOML and overridden by flags.

TOML keys and config fields share names; a command-line flag is the key with `-` for `_`
(`learning_rate` <-> `--learning-rate`). Only the standard library is imported here, so the
CLI can build its parser (and `--help`) without torch.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sdxs_rt.errors import ModelNotFoundError, UsageError
from sdxs_rt.hub import check_revision

MODES = ("full", "lora")
LR_SCHEDULERS = ("constant", "linear", "cosine")
OPTIMIZERS = ("auto", "adamw", "adamw8bit")
MIXED_PRECISIONS = ("no", "fp16", "bf16")
LOG_WITH = ("tensorboard", "none")
DEFAULT_LEARNING_RATE = {"full": 1e-5, "lora": 1e-4}
BUCKET_STEP = 64
# SDXS's buckets: 576 px long, 320 px shortest. Other resolutions keep that ratio by default.
DEFAULT_SIDES = (576, 320)


def default_min_side(resolution: int) -> int:
    """320/576 of `resolution`, rounded down to the 64-px step, within [64, resolution]."""
    long_side, short_side = DEFAULT_SIDES
    derived = resolution * short_side // long_side // BUCKET_STEP * BUCKET_STEP
    return min(max(derived, BUCKET_STEP), resolution)


@dataclass
class TrainConfig:
    """One training run. Groups: what to train, data/buckets, schedule, optimizer, precision,
    EMA/objective, checkpoints, validation, housekeeping."""

    # what to train and where it goes
    data: str = ""
    output_dir: str = ""
    model: str | None = None  # folder or hub id; None: the packaged demo model
    text_encoder: str | None = None
    variant: str | None = None
    revision: str | None = None  # hub branch, tag or commit of `model`
    trust_remote_code: bool = False
    mode: str = "full"
    lora_rank: int = 16
    lora_alpha: float = 16.0
    merge_lora: bool = False  # LoRA mode: also write output_dir/model with the LoRA merged in
    # data and buckets
    resolution: int = 576  # the buckets' long side
    min_side: int | None = None  # None: default_min_side(resolution)
    allow_upscale: bool = False
    caption_dropout: float = 0.1
    cache_dir: str | None = None  # default: output_dir/cache
    # schedule
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_steps: int = 1000
    learning_rate: float | None = None  # None: 1e-5 full, 1e-4 LoRA
    lr_scheduler: str = "cosine"
    lr_warmup_steps: int = 0
    # optimizer
    optimizer: str = "auto"
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    # precision and memory
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    # EMA and objective
    ema: bool = False
    ema_decay: float = 0.9999
    ema_offload: bool = True  # EMA weights live on the CPU
    min_snr_gamma: float | None = None
    # checkpoints
    checkpoint_every: int = 500  # 0: never
    checkpoints_total_limit: int | None = None
    resume: str | None = None  # None, "latest" or a checkpoint folder
    # validation
    validation_every: int = 0  # 0: never
    validation_prompts: list[str] = field(default_factory=list)
    validation_steps: int = 20
    validation_guidance_scale: float = 5.5
    validation_size: int = 576
    # housekeeping
    seed: int = 0
    log_with: str = "tensorboard"

    @property
    def lr(self) -> float:
        """The learning rate, with the per-mode default when none was given."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LEARNING_RATE[self.mode]

    @property
    def bucket_min_side(self) -> int:
        """The shortest bucket side: `min_side`, else derived from the resolution."""
        return self.min_side if self.min_side is not None else default_min_side(self.resolution)

    @property
    def cache_path(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else Path(self.output_dir) / "cache"

    def validate(self) -> TrainConfig:
        """Check every value; one-sentence UsageError for the first bad one."""
        for check in (_check_required, _check_choices, _check_counts, _check_numbers):
            check(self)
        return self


def field_names() -> list[str]:
    return [f.name for f in fields(TrainConfig)]


def load_toml(path: str | Path) -> dict[str, Any]:
    """The settings of a TOML file, flat; unknown keys are refused naming the valid ones."""
    source = Path(path).expanduser()
    if not source.is_file():
        raise ModelNotFoundError(f"The training config {source} does not exist.")
    try:
        values = tomllib.loads(source.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"The training config {source} is not valid TOML ({error}).") from None
    _check_keys(values, str(source))
    return values


def _check_keys(values: Mapping[str, Any], where: str) -> None:
    valid = field_names()
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise UsageError(
            f"Unknown setting {unknown[0]!r} in {where}; valid settings: {', '.join(valid)}."
        )


def make_config(
    toml_values: Mapping[str, Any] | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """TOML values, then `overrides` (flags; None means "not given") on top, validated."""
    merged = dict(toml_values or {})
    merged.update({k: v for k, v in (overrides or {}).items() if v is not None})
    _check_keys(merged, "the settings")
    config = TrainConfig(**{name: _coerce(name, value) for name, value in merged.items()})
    return config.validate()


_FIELD_TYPES = {f.name: str(f.type) for f in fields(TrainConfig)}


def _coerce(name: str, value: Any) -> Any:
    """Check the TOML/flag value's type against the field's; ints are accepted as floats."""
    kind = _FIELD_TYPES[name]
    if value is None and "None" in kind:
        return None
    expected: tuple[type, ...]
    if kind.startswith("bool"):
        expected = (bool,)
    elif kind.startswith("int"):
        expected = (int,)
    elif kind.startswith("float"):
        expected = (int, float)
    elif kind.startswith("list"):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        raise UsageError(f"{name} must be a list of strings, got {value!r}.")
    else:
        expected = (str,)
    if (isinstance(value, bool) and bool not in expected) or not isinstance(value, expected):
        raise UsageError(f"{name} must be a {expected[-1].__name__}, got {value!r}.")
    return float(value) if float in expected else value


def _check_required(config: TrainConfig) -> None:
    if not config.data:
        raise UsageError("Give the training data folder (data = ... or --data).")
    if not config.output_dir:
        raise UsageError("Give the output folder (output_dir = ... or --output-dir).")


def _check_choices(config: TrainConfig) -> None:
    choices = {
        "mode": MODES,
        "lr_scheduler": LR_SCHEDULERS,
        "optimizer": OPTIMIZERS,
        "mixed_precision": MIXED_PRECISIONS,
        "log_with": LOG_WITH,
    }
    for name, allowed in choices.items():
        if getattr(config, name) not in allowed:
            raise UsageError(
                f"{name} must be one of {', '.join(allowed)}; got {getattr(config, name)!r}."
            )
    if config.variant not in (None, "fp16"):
        raise UsageError(f"variant must be 'fp16' or absent; got {config.variant!r}.")
    check_revision(config.model, config.revision)  # as generate: hub repo ids only


def _check_counts(config: TrainConfig) -> None:
    positive = ["lora_rank", "batch_size", "gradient_accumulation_steps", "max_steps"]
    positive.append("validation_steps")
    for name in positive:
        if getattr(config, name) < 1:
            raise UsageError(f"{name} must be at least 1; got {getattr(config, name)}.")
    at_least_zero = ("lr_warmup_steps", "checkpoint_every", "validation_every", "seed")
    for name in at_least_zero:
        if getattr(config, name) < 0:
            raise UsageError(f"{name} must be 0 or more; got {getattr(config, name)}.")
    limit = config.checkpoints_total_limit
    if limit is not None and limit < 1:
        raise UsageError(f"checkpoints_total_limit must be at least 1; got {limit}.")
    for name in ("resolution", "min_side", "validation_size"):
        value = getattr(config, name)
        if value is not None and (value < BUCKET_STEP or value % BUCKET_STEP):
            raise UsageError(f"{name} must be a multiple of 64 (at least 64); got {value}.")
    if config.bucket_min_side > config.resolution:
        raise UsageError(
            f"min_side {config.bucket_min_side} must not exceed the resolution {config.resolution}."
        )


def _check_numbers(config: TrainConfig) -> None:
    if not (config.learning_rate is None or 0 < config.learning_rate < math.inf):
        raise UsageError(f"learning_rate must be a positive number; got {config.learning_rate}.")
    unit = {"caption_dropout": config.caption_dropout, "ema_decay": config.ema_decay}
    unit |= {"adam_beta1": config.adam_beta1, "adam_beta2": config.adam_beta2}
    for name, value in unit.items():
        if not 0.0 <= value <= 1.0:
            raise UsageError(f"{name} must be between 0 and 1; got {value}.")
    non_negative = {"weight_decay": config.weight_decay, "max_grad_norm": config.max_grad_norm}
    non_negative |= {
        "adam_epsilon": config.adam_epsilon,
        "validation_guidance_scale": config.validation_guidance_scale,
    }
    for name, value in non_negative.items():
        if not 0.0 <= value < math.inf:
            raise UsageError(f"{name} must be a finite number >= 0; got {value}.")
    if config.min_snr_gamma is not None and not config.min_snr_gamma > 0:
        raise UsageError(
            f"min_snr_gamma must be positive (5.0 is usual); got {config.min_snr_gamma}."
        )
    if config.validation_every and not config.validation_prompts:
        raise UsageError("validation_every needs at least one validation prompt.")


def with_changes(config: TrainConfig, **changes: Any) -> TrainConfig:
    """A validated copy with some fields changed (tests and resumed runs)."""
    return dataclasses.replace(config, **changes).validate()
