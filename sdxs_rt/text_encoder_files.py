"""Which text encoder a model runs with, and what its files hold (headers only, torch-free).

The model card is the spec: `--text-encoder` when given; else the model's own `text_encoder/`
when it is complete for this U-Net (its vectors as wide as the U-Net's cross-attention,
including an XLM-R `text_encoder/` beside a one-Linear `text_projector/`); else the card's
`visheratin/mexma-siglip`. What is skipped is said, one line each.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdxs_rt import hub
from sdxs_rt.errors import ModelFormatError, ModelNotFoundError
from sdxs_rt.loading import (
    TOKENIZER_FILES,
    WEIGHTS_STEM_TRANSFORMERS,
    ModelFiles,
    check_safetensors,
    read_json_config,
    remote_table,
    tensor_table,
    weight_files,
)
from sdxs_rt.text_layout import TensorInfo, TextLayout, text_layout, unknown_config_error

DEFAULT_TEXT_ENCODER = "visheratin/mexma-siglip"  # what the SDXS model card loads
TEXT_ENCODER_CONFIG_PATTERNS = ("*.json", "*.py", "*.model", "*.txt")
TEXT_ENCODER_PATTERNS = (
    *TEXT_ENCODER_CONFIG_PATTERNS,
    f"{WEIGHTS_STEM_TRANSFORMERS}.safetensors",
    f"{WEIGHTS_STEM_TRANSFORMERS}-*.safetensors",
)
Tables = tuple[dict[str, TensorInfo], dict[str, TensorInfo] | None]  # (weights, projector)


@dataclass(frozen=True)
class TextEncoderFiles:
    """A text encoder folder (config.json + safetensors) and the tokenizer that goes with it."""

    dir: Path
    tokenizer_dir: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    weights: tuple[Path, ...] = ()
    projector_weights: tuple[Path, ...] = ()  # a separate `text_projector/` (split layout)
    layout: TextLayout | None = None  # None: not understood natively (see layout_problem)
    layout_problem: str | None = None
    notes: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    def native_layout(self) -> TextLayout:
        """The layout the native loader follows, or the ModelFormatError saying why not."""
        if self.layout is None:
            raise ModelFormatError(self.layout_problem or f"{self.dir} has no text encoder layout.")
        return self.layout


@dataclass(frozen=True)
class _Source:
    """Where a text encoder folder comes from, to read headers of weights not fetched."""

    repo_id: str | None = None
    revision: str | None = None
    subfolder: str = ""


def resolve_text_encoder(
    spec: str | None,
    model: ModelFiles,
    revision: str | None = None,
    fetch_weights: bool = True,
) -> TextEncoderFiles:
    """Explicit spec (folder or hub id; `revision` applies to it) > the model's own
    `text_encoder/` when it is complete for this U-Net > the model card's Mexma-SigLIP.
    `fetch_weights=False` (sdxs-rt check): hub weights are judged by their remote headers."""
    patterns = TEXT_ENCODER_PATTERNS if fetch_weights else TEXT_ENCODER_CONFIG_PATTERNS
    if spec is not None:
        local = hub.local_folder(spec, "text encoder")
        folder = local or hub.snapshot(spec, patterns, "text encoder", revision)
        source = _Source() if local else _Source(spec, revision)
        if not (folder / "config.json").is_file() and (folder / "text_encoder").is_dir():
            folder = folder / "text_encoder"  # a whole model folder was given
            source = replace(source, subfolder="text_encoder/")
        notes = (f"text encoder: {spec} (given)",)
        return _text_encoder_files(folder, spec, model, notes, source)
    own, why_not = _own_text_encoder(model, fetch_weights)
    if own is not None:
        return own
    folder = hub.snapshot(DEFAULT_TEXT_ENCODER, patterns, "text encoder", None)
    note = f"text encoder: {DEFAULT_TEXT_ENCODER} (the model card's)"
    source = _Source(DEFAULT_TEXT_ENCODER)
    files = _text_encoder_files(folder, DEFAULT_TEXT_ENCODER, model, (note,), source)
    skipped = () if model.text_encoder_dir is None else (f"text_encoder/ not used: {why_not}",)
    return replace(files, skipped=skipped)


def own_text_encoder_problem(model: ModelFiles) -> str | None:
    """Why the model's own `text_encoder/` would be passed over (None: it would be used);
    judged from headers only, so `check` can say it even when the card's one is not at hand."""
    if model.text_encoder_dir is None:
        return None
    own, why_not = _own_text_encoder(model, fetch_weights=False)
    return None if own is not None else why_not


def check_text_width(encoder: TextEncoderFiles, model: ModelFiles) -> None:
    """Refuse, before any weight is read, a text encoder whose vectors the U-Net cannot take."""
    expected = model.cross_attention_dim
    if encoder.layout is None or expected is None or encoder.layout.width == expected:
        return
    raise ModelFormatError(
        f"The text encoder {encoder.name} gives {encoder.layout.width}-wide vectors but the "
        f"U-Net in {model.unet_dir} cross-attends to {expected}-wide ones: they do not belong "
        "together (pass --text-encoder with a matching one)."
    )


# --- the model's own --------------------------------------------------------------------


def _own_text_encoder(
    model: ModelFiles, fetch_weights: bool
) -> tuple[TextEncoderFiles | None, str]:
    """The model's `text_encoder/` when it is complete for this U-Net, else (None, why not).
    From the hub its header is judged first; its weights are fetched only if it fits."""
    folder = model.text_encoder_dir
    if folder is None:
        return None, f"{model.name} has no text_encoder/ folder"
    name = f"{model.name}/text_encoder"
    note = f"text encoder: {name} (the model's own, complete for its U-Net)"
    source = _Source(model.hub_id, model.revision, "text_encoder/") if model.hub_id else _Source()
    try:
        files = _text_encoder_files(folder, name, model, (note,), source)
    except (ModelNotFoundError, ModelFormatError) as exc:
        return None, f"its text_encoder/ is not usable ({exc})"
    if files.layout is None:
        return None, f"its text_encoder/ is not understood ({files.layout_problem})"
    if model.cross_attention_dim not in (None, files.layout.width):
        return None, (
            f"its text_encoder/ gives {files.layout.width}-wide vectors and the U-Net takes "
            f"{model.cross_attention_dim}"
        )
    if fetch_weights and model.hub_id is not None and not _has_safetensors(folder):
        patterns = [f"text_encoder/{p}" for p in TEXT_ENCODER_PATTERNS] + ["text_projector/*"]
        hub.snapshot(model.hub_id, patterns, "model", model.revision)  # into the same snapshot
        files = _text_encoder_files(folder, name, model, (note,), _Source())
    return files, ""


def _has_safetensors(folder: Path) -> bool:
    return any(folder.glob("*.safetensors"))


# --- one folder -------------------------------------------------------------------------


def _text_encoder_files(
    folder: Path, name: str, model: ModelFiles, notes: tuple[str, ...], source: _Source
) -> TextEncoderFiles:
    config = read_json_config(folder / "config.json")
    weights, projector, tables = _weights_and_tables(folder, source)
    layout, problem = None, None
    try:
        layout, projector = _layout(config, tables, projector, str(folder))
    except ModelFormatError as exc:
        problem = str(exc)
    return TextEncoderFiles(
        dir=folder,
        tokenizer_dir=_tokenizer_dir_for(folder, model),
        name=name,
        config=config,
        weights=weights,
        projector_weights=projector,
        layout=layout,
        layout_problem=problem,
        notes=notes,
    )


def _weights_and_tables(
    folder: Path, source: _Source
) -> tuple[tuple[Path, ...], tuple[Path, ...], Tables]:
    """(weights, projector weights, their tensor tables): from disk, or for hub files not
    fetched, from their remote headers."""
    projector_dir = folder.parent / "text_projector"
    if _has_safetensors(folder) or source.repo_id is None:
        weights = tuple(weight_files(folder, WEIGHTS_STEM_TRANSFORMERS, None))
        projector = _projector_weights(projector_dir)
        tables: Tables = (tensor_table(weights), tensor_table(projector) if projector else None)
        return weights, projector, tables
    name = f"{WEIGHTS_STEM_TRANSFORMERS}.safetensors"
    table = remote_table(source.repo_id, f"{source.subfolder}{name}", source.revision)
    projector_table = None
    if source.subfolder and projector_dir.is_dir():
        projector_table = _quiet_remote(source, f"text_projector/{name}")
    return (folder / name,), (), (table, projector_table)


def _quiet_remote(source: _Source, filename: str) -> dict[str, TensorInfo] | None:
    assert source.repo_id is not None
    try:
        return remote_table(source.repo_id, filename, source.revision)
    except ModelNotFoundError:
        return None


def _layout(
    config: dict[str, Any], tables: Tables, projector: tuple[Path, ...], where: str
) -> tuple[TextLayout, tuple[Path, ...]]:
    """The layout, and the projector files it uses (none when the projection is inside)."""
    if unknown := unknown_config_error(config, f"{where}/config.json"):
        raise unknown
    tensors, projector_table = tables
    try:
        return text_layout(tensors, config, where), ()
    except ModelFormatError:
        if projector_table is None:  # a bare XLM-R may have its projection in text_projector/
            raise
        return text_layout(tensors, config, where, projector=projector_table), projector


def _projector_weights(folder: Path) -> tuple[Path, ...]:
    if not folder.is_dir():
        return ()
    files = sorted(folder.glob("*.safetensors"))
    for path in files:
        check_safetensors(path)
    return tuple(files)


def _tokenizer_dir_for(text_encoder_dir: Path, model: ModelFiles) -> Path:
    if any((text_encoder_dir / name).is_file() for name in TOKENIZER_FILES):
        return text_encoder_dir
    if model.tokenizer_dir is not None:
        return model.tokenizer_dir
    raise ModelNotFoundError(
        f"No tokenizer found: neither {text_encoder_dir} nor {model.root / 'tokenizer'} "
        f"holds {' or '.join(TOKENIZER_FILES)}."
    )
