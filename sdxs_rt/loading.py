"""Find and check a model's files: local folders and hub repos, configs, safetensors weights.

Torch-free on purpose (the ONNX path and `--help` must not pay for torch): this module only
reads JSON and safetensors headers. Every failure is one sentence naming the file and what was
expected, raised as ModelNotFoundError (missing) or ModelFormatError (present but unusable).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdxs_rt import hub
from sdxs_rt.errors import ModelFormatError, ModelNotFoundError, UsageError
from sdxs_rt.safetensors_header import check_safetensors, tensor_table
from sdxs_rt.text_layout import TensorInfo

DEFAULT_MODEL_NAME = "demo-shapes"
DEFAULT_IMAGE_SIZE = (576, 576)  # SDXS trains at 576 px (model card)
UNET_FOLDERS = ("unet", "sdxs")  # one published revision kept the U-Net in `sdxs/`
WEIGHTS_STEM_DIFFUSERS = "diffusion_pytorch_model"
WEIGHTS_STEM_TRANSFORMERS = "model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "sentencepiece.bpe.model")
PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# Noise schedules the native samplers can follow (epsilon / v / sample diffusion).
# Flow-matching schedulers (later SDXS revisions) describe a different process: refused.
SUPPORTED_SCHEDULERS = frozenset(
    {
        "DDPMScheduler",
        "DDIMScheduler",
        "PNDMScheduler",
        "LMSDiscreteScheduler",
        "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler",
        "DPMSolverMultistepScheduler",
        "DPMSolverSinglestepScheduler",
        "UniPCMultistepScheduler",
        "HeunDiscreteScheduler",
        "DEISMultistepScheduler",
    }
)
# Folders of AiArtLab/sdxs that the runtime knows, used or not (the card's U-Net is unet/).
KNOWN_FOLDERS = ("vae", "scheduler", "text_encoder", "text_projector", "tokenizer")
# The small files read before deciding which weights to fetch from the hub.
MODEL_CONFIG_PATTERNS = ("model_index.json", "*/config.json", "scheduler/*.json", "tokenizer/*")
UNET_REQUIRED_KEYS = ("in_channels", "out_channels", "block_out_channels", "cross_attention_dim")
VAE_REQUIRED_KEYS = ("latent_channels", "block_out_channels", "scaling_factor")


@dataclass(frozen=True)
class ModelFiles:
    """Where a model's parts live, with the configs already read and checked."""

    root: Path
    unet_dir: Path
    vae_dir: Path
    scheduler_config: dict[str, Any]
    text_encoder_dir: Path | None
    tokenizer_dir: Path | None
    name: str
    variant: str | None
    unet_config: dict[str, Any]
    vae_config: dict[str, Any]
    unet_weights: Path  # the one safetensors file, header-checked (hash it with model_hash)
    vae_weights: Path
    revision: str | None = None
    hub_id: str | None = None  # set when the model came from the hub
    notes: tuple[str, ...] = ()  # what was chosen and why, one line each
    skipped: tuple[str, ...] = ()  # what is there but not used or not understood (said at load)

    @property
    def cross_attention_dim(self) -> int | None:
        width = self.unet_config.get("cross_attention_dim")
        if isinstance(width, list) and len(set(width)) == 1:
            width = width[0]
        return int(width) if isinstance(width, int) else None


# --- public entry points ----------------------------------------------------------------


def default_model_path() -> Path:
    """The tiny model packaged with sdxs-rt: works offline, right after `pip install`."""
    return Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME


def resolve_model(
    spec: str | None,
    variant: str | None = None,
    revision: str | None = None,
    fetch_weights: bool = True,
) -> ModelFiles:
    """A model folder, a hub repo id or None (the packaged default) -> its checked files.
    From the hub only what is used is fetched: configs first, then the chosen U-Net's weights
    and the VAE's (never two U-Nets). `fetch_weights=False` stops after the configs: weights
    not in the cache are then judged by their remote headers (`weights_table`)."""
    if variant not in (None, "fp16"):
        raise UsageError(f"Unknown weights variant {variant!r}: expected none or 'fp16'.")
    if spec is None:
        return _resolve_model_folder(default_model_path(), DEFAULT_MODEL_NAME, variant)
    local = hub.local_folder(spec, "model")
    if local is not None:
        return _resolve_model_folder(local, local.resolve().name, variant)
    configs = hub.snapshot(spec, MODEL_CONFIG_PATTERNS, "model", revision)
    unet_folder, _, _ = choose_unet_folder(configs)
    folders = (unet_folder, "vae") if fetch_weights else ()
    root = hub.snapshot(spec, _weight_patterns(folders, variant), "model", revision)
    files = _resolve_model_folder(root, spec, variant, weights_required=fetch_weights)
    return replace(files, revision=revision, hub_id=spec)


def weights_table(path: Path, files: ModelFiles) -> dict[str, TensorInfo]:
    """The tensors of one weights file: from its header on disk, else (a hub model resolved
    without its weights) from its header on the hub, a few kB read with a range request."""
    if path.is_file() or files.hub_id is None:
        return tensor_table([path])
    relative = path.relative_to(files.root).as_posix()
    return remote_table(files.hub_id, relative, files.revision)


def remote_table(repo_id: str, filename: str, revision: str | None) -> dict[str, TensorInfo]:
    header = hub.remote_safetensors_header(repo_id, filename, revision)
    if header is None:
        raise ModelNotFoundError(
            f"{repo_id}/{filename} is not in the hub cache and its header could not be read "
            "from the hub (offline or unreachable)."
        )
    return {k: TensorInfo(str(v.dtype), tuple(v.shape)) for k, v in header.tensors.items()}


def native_image_size(files: ModelFiles) -> tuple[int, int]:
    """(width, height) the model was made for: the U-Net's `sample_size` (an int or [h, w])
    times the VAE's downscale, as diffusers pipelines default; SDXS's 576x576 without one."""
    sample = files.unet_config.get("sample_size")
    blocks = files.vae_config.get("block_out_channels") or [0] * 4
    scale = 2 ** (len(blocks) - 1)
    if isinstance(sample, int) and sample > 0:
        return sample * scale, sample * scale
    if isinstance(sample, list | tuple) and len(sample) == 2 and all(int(v) > 0 for v in sample):
        return int(sample[1]) * scale, int(sample[0]) * scale
    return DEFAULT_IMAGE_SIZE


def weights_path(component_dir: Path, stem: str, variant: str | None) -> Path:
    """The one safetensors file `<stem>[.<variant>].safetensors`, header-checked."""
    files = weight_files(component_dir, stem, variant)
    if len(files) != 1:
        raise ModelFormatError(
            f"{component_dir} holds {stem} weights sharded in {len(files)} files; "
            "sdxs-rt expects a single safetensors file for this component."
        )
    return files[0]


def weight_files(component_dir: Path, stem: str, variant: str | None) -> list[Path]:
    """The safetensors files of one component (one file, or the shards an index names).

    Pickled weights (.bin/.pt) are never loaded: unpickling runs arbitrary code.
    """
    component_dir = Path(component_dir)
    if not component_dir.is_dir():
        raise ModelNotFoundError(f"The folder {component_dir} does not exist.")
    name = f"{stem}.{variant}.safetensors" if variant else f"{stem}.safetensors"
    single, index = component_dir / name, component_dir / f"{name}.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        files = _shards_from_index(index)
    else:
        raise _missing_weights_error(component_dir, name, variant)
    for path in files:
        check_safetensors(path)
    return files


def read_json_config(path: Path) -> dict[str, Any]:
    """Read a JSON config file: ModelNotFoundError if absent, ModelFormatError if not JSON."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"The config file {path} does not exist.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path} should hold a JSON object, not {type(data).__name__}.")
    return data


def model_hash(path: str | Path) -> str:
    """A1111-style short model hash: the first 10 hex digits of the file's sha256."""
    return file_sha256(path)[:10]


def file_sha256(path: str | Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) so multi-GB weights are hashed once."""
    path = Path(path).resolve()
    stat = path.stat()
    key, stamp = str(path), [stat.st_size, stat.st_mtime_ns]
    cache_file = user_cache_dir() / "hashes.json"
    cache = _read_hash_cache(cache_file)
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        return str(entry["sha256"])
    digest = _sha256_of(path)
    cache[key] = {"stamp": stamp, "sha256": digest}
    _write_hash_cache(cache_file, cache)
    return digest


def user_cache_dir() -> Path:
    """sdxs-rt's cache folder: $SDXS_RT_CACHE, else the platform's user cache dir."""
    if override := os.environ.get("SDXS_RT_CACHE"):
        return Path(override).expanduser()
    if os.name == "nt" and (local := os.environ.get("LOCALAPPDATA")):
        return Path(local) / "sdxs-rt" / "cache"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sdxs-rt"


# --- model folders ----------------------------------------------------------------------


def _resolve_model_folder(
    root: Path, name: str, variant: str | None, weights_required: bool = True
) -> ModelFiles:
    if not root.is_dir():
        raise ModelNotFoundError(f"The model folder {root} does not exist.")
    unet_folder, unet_note, unused_unets = choose_unet_folder(root)
    unet_dir = root / unet_folder
    unet_config = _component_config(unet_dir / "config.json", {"UNet2DConditionModel"})
    _require_keys(unet_dir / "config.json", unet_config, UNET_REQUIRED_KEYS)
    vae_dir = root / "vae"
    vae_config = _component_config(vae_dir / "config.json", {"AutoencoderKL"})
    _require_keys(vae_dir / "config.json", vae_config, VAE_REQUIRED_KEYS)
    scheduler_path = root / "scheduler" / "scheduler_config.json"
    scheduler = _component_config(scheduler_path, SUPPORTED_SCHEDULERS)
    return ModelFiles(
        root=root,
        unet_dir=unet_dir,
        vae_dir=vae_dir,
        scheduler_config=scheduler,
        text_encoder_dir=_optional_dir(root / "text_encoder", ("config.json",)),
        tokenizer_dir=_optional_dir(root / "tokenizer", TOKENIZER_FILES),
        name=name,
        variant=variant,
        unet_config=unet_config,
        vae_config=vae_config,
        unet_weights=_component_weights(unet_dir, variant, weights_required),
        vae_weights=_component_weights(vae_dir, variant, weights_required),
        notes=(unet_note,),
        skipped=(*unused_unets, *_unknown_folder_notes(root, unet_folder)),
    )


def _component_weights(folder: Path, variant: str | None, required: bool) -> Path:
    """The checked weights file; without `required`, where it would be when not fetched."""
    name = f"{WEIGHTS_STEM_DIFFUSERS}.{variant}" if variant else WEIGHTS_STEM_DIFFUSERS
    expected = folder / f"{name}.safetensors"
    if required or expected.is_file():
        return weights_path(folder, WEIGHTS_STEM_DIFFUSERS, variant)
    return expected


def choose_unet_folder(root: Path) -> tuple[str, str, list[str]]:
    """(folder, why, lines naming the U-Net folders left aside): the U-Net `model_index.json`
    names, else the card's `unet/`, else `sdxs/` (a published revision kept it there). Only
    folders with a config.json count."""
    present = [f for f in _unet_candidates(root) if (root / f / "config.json").is_file()]
    indexed = [f for f in _model_index_unets(root) if f in present]
    if indexed:
        chosen, why = indexed[0], "named by model_index.json"
    elif present:
        chosen = next(f for f in UNET_FOLDERS if f in present)
        why = "the model card's folder" if chosen == "unet" else "no unet/ folder"
    else:
        raise ModelNotFoundError(
            f"{root} has no U-Net folder: expected {root / 'unet'} (or {root / 'sdxs'}) "
            "with a config.json."
        )
    unused = [f"{f}/: another U-Net, not used ({chosen}/ is)" for f in present if f != chosen]
    absent = [f for f in _model_index_unets(root) if f not in present]
    unused += [f"model_index.json names {f}/, which is not there" for f in absent]
    return chosen, f"U-Net: {chosen}/ ({why})", unused


def _unet_candidates(root: Path) -> list[str]:
    return list(dict.fromkeys([*_model_index_unets(root), *UNET_FOLDERS]))


def _model_index_unets(root: Path) -> list[str]:
    """Folders model_index.json declares as a diffusers UNet2DConditionModel."""
    path = root / "model_index.json"
    if not path.is_file():
        return []
    index = read_json_config(path)
    return [
        key
        for key, value in index.items()
        if isinstance(value, list) and len(value) == 2 and value[1] == "UNet2DConditionModel"
    ]


def _unknown_folder_notes(root: Path, unet_folder: str) -> list[str]:
    known = {*UNET_FOLDERS, unet_folder, *KNOWN_FOLDERS}
    unknown = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in known)
    unknown = [name for name in unknown if not name.startswith(".")]
    return [f"ignored folders: {', '.join(n + '/' for n in unknown)}"] if unknown else []


def _component_config(path: Path, expected_classes: set[str] | frozenset[str]) -> dict[str, Any]:
    config = read_json_config(path)
    found = config.get("_class_name")
    if found not in expected_classes:
        expected = ", ".join(sorted(expected_classes))
        raise ModelFormatError(
            f"{path} describes a {found or 'component without _class_name'}; "
            f"sdxs-rt supports: {expected}."
        )
    return config


def _require_keys(path: Path, config: dict[str, Any], keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in config]
    if missing:
        raise ModelFormatError(f"{path} lacks the required keys {', '.join(missing)}.")


def _optional_dir(folder: Path, any_of: tuple[str, ...]) -> Path | None:
    return folder if any((folder / name).is_file() for name in any_of) else None


def _weight_patterns(folders: Iterable[str], variant: str | None) -> list[str]:
    """Configs plus the asked weights variant of `folders`: never the whole repo."""
    weights = f"{WEIGHTS_STEM_DIFFUSERS}.{variant}" if variant else WEIGHTS_STEM_DIFFUSERS
    patterns = list(MODEL_CONFIG_PATTERNS)
    for folder in folders:
        patterns += [f"{folder}/{weights}.safetensors", f"{folder}/{weights}-*.safetensors"]
        patterns.append(f"{folder}/{weights}.safetensors.index.json")
    # The model's own text encoder: configs and tokenizer only; its weights are fetched once
    # its header shows it fits this U-Net (see sdxs_rt.text_encoder_files).
    return [*patterns, "text_encoder/*.json", "text_encoder/*.model", "text_projector/*.json"]


# --- weights ----------------------------------------------------------------------------


def _shards_from_index(index: Path) -> list[Path]:
    weight_map = read_json_config(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelFormatError(f"{index} has no 'weight_map' naming its shard files.")
    return [index.parent / name for name in sorted(set(weight_map.values()))]


def _missing_weights_error(folder: Path, name: str, variant: str | None) -> Exception:
    present = sorted(p.name for p in folder.iterdir() if p.is_file())
    pickled = [n for n in present if n.endswith(PICKLED_SUFFIXES)]
    if pickled and not any(n.endswith(".safetensors") for n in present):
        return ModelFormatError(
            f"{folder} holds only pickled weights ({', '.join(pickled)}); sdxs-rt refuses "
            "pickled weights for safety (loading them can run code): convert them to safetensors."
        )
    hint = ""
    if variant is None and any(n.endswith(".fp16.safetensors") for n in present):
        hint = " (the fp16 variant is there: pass --variant fp16)"
    elif variant is not None and any(n.endswith(".safetensors") for n in present):
        hint = f" (other weights are there: try without --variant {variant})"
    listing = ", ".join(present) if present else "nothing"
    return ModelNotFoundError(f"{folder / name} is missing{hint}; the folder holds: {listing}.")


# --- hash cache -------------------------------------------------------------------------


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _read_hash_cache(cache_file: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_hash_cache(cache_file: Path, cache: dict[str, Any]) -> None:
    """Best effort and atomic: a read-only cache dir only costs a re-hash next time."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cache, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, cache_file)
    except OSError:
        pass
