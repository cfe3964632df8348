"""Hub repos: fetch only the files a run needs (or find them in the cache when offline).

Torch-free, like `loading`. Every call takes the revision the user pinned (a branch, tag or
commit): the SDXS repo id has held different architectures over time, so "main" is not a
stable target. Failures are one sentence, as ModelNotFoundError.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sdxs_rt.errors import ModelFormatError, ModelNotFoundError, UsageError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and ".." not in spec


def check_revision(model: str | Path | None, revision: str | None) -> None:
    """Refuse a revision that cannot be honoured: only hub repos have revisions, and a local
    folder silently ignoring one would record a pin that never applied."""
    if revision is None:
        return
    if not revision.strip():
        raise UsageError("the revision is empty; give a branch, tag or commit of the hub repo")
    if model is None or Path(model).expanduser().exists():
        what = "the built-in model" if model is None else f"{model} (a local path)"
        raise UsageError(
            f"--revision {revision} applies to hub repo ids only, not to {what}; drop it"
        )


def local_folder(spec: str, what: str) -> Path | None:
    """The folder `spec` names on disk, None when it is not there (then it may be a hub id)."""
    local = Path(spec).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise ModelFormatError(f"The {what} {spec} is a file; expected a folder or a hub repo id.")
    if not is_hub_id(spec):
        raise ModelNotFoundError(f"The {what} folder {spec} does not exist.")
    return None


def local_or_snapshot(spec: str, patterns: Sequence[str], what: str, revision: str | None) -> Path:
    """A local folder as is, else the hub snapshot of the files matching `patterns`."""
    local = local_folder(spec, what)
    return local if local is not None else snapshot(spec, patterns, what, revision)


def snapshot(repo_id: str, patterns: Sequence[str], what: str, revision: str | None) -> Path:
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

    offline = is_offline()
    try:
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=list(patterns),
            cache_dir=cache_dir(),
            local_files_only=offline,
        )
    except GatedRepoError:
        raise ModelNotFoundError(
            f"The hub repo {repo_id} is gated: accept its terms and log in."
        ) from None
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"The {what} {repo_id} has no revision {revision!r}.") from None
    except (RepositoryNotFoundError, HFValidationError):
        raise ModelNotFoundError(
            f"The {what} {repo_id} is neither a local folder nor a hub repo."
        ) from None
    except LocalEntryNotFoundError:
        raise ModelNotFoundError(_not_cached(repo_id, what, revision, offline)) from None
    except HfHubHTTPError as exc:  # after its subclasses above: server errors, rate limits
        raise ModelNotFoundError(f"The {what} {repo_id} could not be downloaded ({exc}).") from None
    return Path(folder)


def remote_safetensors_header(repo_id: str, filename: str, revision: str | None) -> Any | None:
    """The header of one safetensors file on the hub, read with a range request (a few kB of a
    multi-GB file); None when offline or unreachable. Used to judge a file before fetching it."""
    if is_offline():
        return None
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        NotASafetensorsRepoError,
        SafetensorsParsingError,
    )

    try:
        return HfApi().parse_safetensors_file_metadata(repo_id, filename, revision=revision)
    except (HfHubHTTPError, NotASafetensorsRepoError, SafetensorsParsingError, OSError, ValueError):
        return None


def is_offline() -> bool:
    # Read at call time: huggingface_hub reads its env vars once, at import.
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return value in {"1", "ON", "YES", "TRUE"} or bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> str | None:
    if cache := os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE"):
        return cache
    if home := os.environ.get("HF_HOME"):
        return str(Path(home) / "hub")
    return None  # huggingface_hub's own default


def _not_cached(repo_id: str, what: str, revision: str | None, offline: bool) -> str:
    why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the hub could not be reached"
    at = f" at revision {revision}" if revision else ""
    return (
        f"The {what} {repo_id}{at} is not a local folder and not in the hub cache "
        f"({cache_dir() or 'default cache'}), and {why}."
    )
