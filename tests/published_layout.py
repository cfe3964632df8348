"""Test helpers that lay files out as they are published: a hub cache, a split text encoder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def offline_hub_cache(tmp_path: Path, monkeypatch: Any) -> Path:
    """An empty hub cache at $HF_HOME/hub with the hub offline, for fake_hub_cache to fill."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # cache = $HF_HOME/hub
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def fake_hub_cache(
    cache: Path,
    repo_id: str,
    source: Path,
    sha: str = COMMIT,
    ignore: tuple[str, ...] = (),
) -> Path:
    """What huggingface_hub leaves on disk after downloading `repo_id` at commit `sha` (real
    files, no blob links); `ignore`: glob patterns of files never fetched."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / sha
    shutil.copytree(source, snapshot, ignore=shutil.ignore_patterns(*ignore) if ignore else None)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(sha)
    return snapshot


def read_tensors(path: Path) -> dict:
    """A file's tensors as copies: safetensors before 0.5 hands back views of its memory map, so
    rewriting the same file from them crashes the process (SIGBUS)."""
    from safetensors.torch import load_file

    return {key: value.clone() for key, value in load_file(str(path)).items()}


def split_text_encoder(model: Path, projector_file: str, projector_key: str) -> None:
    """Rewrite `model/text_encoder` as a bare XLM-R (its own XLM-R config.json, no remote code)
    beside a `text_projector/` folder holding the one Linear."""
    from safetensors.torch import save_file

    from sdxs_rt.dev.tiny import REMOTE_CODE_FILE, text_config

    folder = model / "text_encoder"
    tensors = read_tensors(folder / "model.safetensors")
    tower = {k.removeprefix("text_model."): v for k, v in tensors.items() if "text_model." in k}
    save_file(tower, folder / "model.safetensors")
    vocab = tower["embeddings.word_embeddings.weight"].shape[0]
    (folder / "config.json").write_text(json.dumps(text_config(vocab)))
    (folder / REMOTE_CODE_FILE).unlink(missing_ok=True)
    (model / "text_projector").mkdir()
    projector = {projector_key: tensors["text_projector.weight"]}
    save_file(projector, model / "text_projector" / projector_file)
