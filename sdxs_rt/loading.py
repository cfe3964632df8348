"""Find and check a model's files: local folders and hub repos, configs, safetensors weights.

Torch-free on purpose (the ONNX path and `--help` must not pay for torch): this module only
reads JSON and safetensors headers. Every failure is one sentence naming the file and what was
expected, raised as ModelNotFoundError (missing) or ModelFormatError (present but unusable).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdxs_rt.errors import ModelFormatError, ModelNotFoundError, UsageError

DEFAULT_MODEL_NAME = "demo-shapes"
DEFAULT_IMAGE_SIZE = (576, 576)  # SDXS trains at 576 px (model card)
DEFAULT_TEXT_ENCODER = "visheratin/mexma-siglip"  # what the SDXS model card loads
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
UNET_REQUIRED_KEYS = ("in_channels", "out_channels", "block_out_channels", "cross_attention_dim")
VAE_REQUIRED_KEYS = ("latent_channels", "block_out_channels", "scaling_factor")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


@dataclass(frozen=True)
class TextEncoderFiles:
    """A text encoder folder (config.json + safetensors) and the tokenizer that goes with it."""

    dir: Path
    tokenizer_dir: Path
    name: str
    config: dict[str, Any] = field(default_factory=dict)
    weights: tuple[Path, ...] = ()


# --- public entry points ----------------------------------------------------------------


def default_model_path() -> Path:
    """The tiny model packaged with sdxs-rt: works offline, right after `pip install`."""
    return Path(__file__).resolve().parent / "models" / DEFAULT_MODEL_NAME


def resolve_model(spec: str | None, variant: str | None = None) -> ModelFiles:
    """A model folder, a hub repo id or None (the packaged default) -> its checked files."""
    if variant not in (None, "fp16"):
        raise UsageError(f"Unknown weights variant {variant!r}: expected none or 'fp16'.")
    if spec is None:
        return _resolve_model_folder(default_model_path(), DEFAULT_MODEL_NAME, variant)
    root = _local_or_hub(spec, _model_patterns(variant), what="model")
    name = spec if root != Path(spec).expanduser() else root.resolve().name
    return _resolve_model_folder(root, name, variant)


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


def resolve_text_encoder(spec: str | None, model: ModelFiles) -> TextEncoderFiles:
    """Explicit spec (folder or hub id) > the model's own `text_encoder/` > the card's default."""
    if spec is not None:
        folder, name = _local_or_hub(spec, _text_encoder_patterns(), what="text encoder"), spec
        if not (folder / "config.json").is_file() and (folder / "text_encoder").is_dir():
            folder = folder / "text_encoder"  # a whole model folder was given
    elif model.text_encoder_dir is not None:
        folder, name = model.text_encoder_dir, f"{model.name}/text_encoder"
    else:
        folder = _hub_snapshot(DEFAULT_TEXT_ENCODER, _text_encoder_patterns(), "text encoder")
        name = DEFAULT_TEXT_ENCODER
    config = read_json_config(folder / "config.json")
    tokenizer_dir = _tokenizer_dir_for(folder, model)
    weights = tuple(weight_files(folder, WEIGHTS_STEM_TRANSFORMERS, None))
    return TextEncoderFiles(folder, tokenizer_dir, name, config, weights)


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


def check_safetensors(path: Path) -> None:
    """Validate a safetensors header (length, JSON, data offsets) without reading tensors."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"The weights file {path} does not exist.")
    size = path.stat().st_size
    try:
        header = _read_safetensors_header(path, size)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{path} is truncated or corrupt: {exc}.") from None
    data_size = size - 8 - header.pop("_header_len")
    data_end = _data_end(header, path)
    if data_end > data_size:
        raise ModelFormatError(
            f"{path} is truncated or corrupt: its header describes {data_end} bytes of tensor "
            f"data but the file holds only {data_size}."
        )


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


def _resolve_model_folder(root: Path, name: str, variant: str | None) -> ModelFiles:
    if not root.is_dir():
        raise ModelNotFoundError(f"The model folder {root} does not exist.")
    unet_dir = _find_unet_dir(root)
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
        unet_weights=weights_path(unet_dir, WEIGHTS_STEM_DIFFUSERS, variant),
        vae_weights=weights_path(vae_dir, WEIGHTS_STEM_DIFFUSERS, variant),
    )


def _find_unet_dir(root: Path) -> Path:
    for folder in UNET_FOLDERS:
        if (root / folder).is_dir():
            return root / folder
    raise ModelNotFoundError(
        f"{root} has no U-Net folder: expected {root / 'unet'} (or {root / 'sdxs'})."
    )


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


def _tokenizer_dir_for(text_encoder_dir: Path, model: ModelFiles) -> Path:
    if _optional_dir(text_encoder_dir, TOKENIZER_FILES):
        return text_encoder_dir
    if model.tokenizer_dir is not None:
        return model.tokenizer_dir
    raise ModelNotFoundError(
        f"No tokenizer found: neither {text_encoder_dir} nor {model.root / 'tokenizer'} "
        f"holds {' or '.join(TOKENIZER_FILES)}."
    )


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


def _read_safetensors_header(path: Path, size: int) -> dict[str, Any]:
    with path.open("rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise ValueError(f"the file is {size} bytes, shorter than the 8-byte header length")
        header_len = int.from_bytes(prefix, "little")
        if header_len > size - 8 or header_len > 100_000_000:
            raise ValueError(f"the header claims {header_len} bytes, the file has {size}")
        header = json.loads(stream.read(header_len))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    header["_header_len"] = header_len
    return header


def _data_end(header: dict[str, Any], path: Path) -> int:
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and 0 <= offsets[0] <= offsets[1]):
            raise ModelFormatError(f"{path} is truncated or corrupt: bad entry for tensor {key}.")
        end = max(end, int(offsets[1]))
    return end


# --- hub --------------------------------------------------------------------------------


def _local_or_hub(spec: str, patterns: list[str], what: str) -> Path:
    local = Path(spec).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise ModelFormatError(f"The {what} {spec} is a file; expected a folder or a hub repo id.")
    if not _HUB_ID.match(spec) or ".." in spec:
        raise ModelNotFoundError(f"The {what} folder {spec} does not exist.")
    return _hub_snapshot(spec, patterns, what)


def _hub_snapshot(repo_id: str, patterns: list[str], what: str) -> Path:
    """Fetch (or, offline, find in the cache) the files we need from a hub repo."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = _hub_offline()
    try:
        folder = snapshot_download(
            repo_id, allow_patterns=patterns, cache_dir=_hub_cache_dir(), local_files_only=offline
        )
    except GatedRepoError:
        raise ModelNotFoundError(
            f"The hub repo {repo_id} is gated: accept its terms and log in."
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, HFValidationError):
        raise ModelNotFoundError(
            f"The {what} {repo_id} is neither a local folder nor a hub repo."
        ) from None
    except LocalEntryNotFoundError:
        why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the hub could not be reached"
        raise ModelNotFoundError(
            f"The {what} {repo_id} is not a local folder and not in the hub cache "
            f"({_hub_cache_dir() or 'default cache'}), and {why}."
        ) from None
    except HfHubHTTPError as exc:  # after its subclasses above: server errors, rate limits
        raise ModelNotFoundError(f"The {what} {repo_id} could not be downloaded ({exc}).") from None
    return Path(folder)


def _hub_offline() -> bool:
    # Read at call time: huggingface_hub reads its env vars once, at import.
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return value in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def _hub_cache_dir() -> str | None:
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return cache
    if home := os.environ.get("HF_HOME"):
        return str(Path(home) / "hub")
    return None  # huggingface_hub's own default


def _model_patterns(variant: str | None) -> list[str]:
    """Configs, the asked weights variant and tokenizer files: never the whole repo."""
    weights = f"{WEIGHTS_STEM_DIFFUSERS}.{variant}" if variant else WEIGHTS_STEM_DIFFUSERS
    patterns = ["model_index.json", "scheduler/scheduler_config.json", "tokenizer/*"]
    for folder in (*UNET_FOLDERS, "vae"):
        patterns += [f"{folder}/*.json", f"{folder}/{weights}.safetensors"]
        patterns.append(f"{folder}/{weights}-*.safetensors")
    patterns += [f"text_encoder/{p}" for p in _text_encoder_patterns()]
    return patterns


def _text_encoder_patterns() -> list[str]:
    stem = WEIGHTS_STEM_TRANSFORMERS
    return ["*.json", "*.py", "*.model", "*.txt", f"{stem}.safetensors", f"{stem}-*.safetensors"]


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
