"""Which models a request may name: the loaded one, and the folders of the --models-dir
allow-list, by name only. A request never names a path; this server never loads a model
because a request asked (switching models is a restart with --model)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sdxs_rt.errors import UsageError
from sdxs_rt.serve.http_errors import ModelNotServed

PATH_MARKS = ("/", "\\", "..", "\x00", ":")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    folder: Path | None  # None: the built-in model
    loaded: bool


def listed_models(models_dir: Path | None) -> list[str]:
    """Sub-folders of the allow-list that look like diffusers models, sorted by name."""
    if models_dir is None or not models_dir.is_dir():
        return []
    return sorted(
        entry.name
        for entry in models_dir.iterdir()
        if entry.is_dir() and (entry / "model_index.json").is_file()
    )


def served_models(loaded: str, models_dir: Path | None) -> list[ModelEntry]:
    entries = [ModelEntry(loaded, None, True)]
    for name in listed_models(models_dir):
        if name != loaded:
            assert models_dir is not None
            entries.append(ModelEntry(name, models_dir / name, False))
    return entries


def check_model_name(name: object, loaded: str, models_dir: Path | None) -> None:
    """Accept None, "" or the loaded model's name (A1111 titles "name [hash]" too)."""
    if name is None or name == "":
        return
    if not isinstance(name, str):
        raise UsageError(f"a model must be named by a string, e.g. {loaded!r}")
    if any(mark in name for mark in PATH_MARKS):
        raise UsageError(f"model {name[:80]!r} looks like a path; name a model, e.g. {loaded!r}")
    base = name.split(" [", 1)[0].strip()
    if base == loaded:
        return
    if base in listed_models(models_dir):
        raise ModelNotServed(
            f"model {base!r} is in the allow-list but this server has {loaded!r} loaded; "
            f"restart it with --model to serve {base!r}"
        )
    raise UsageError(f"unknown model {base[:80]!r}; this server serves {loaded!r}")
