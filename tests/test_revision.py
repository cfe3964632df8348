"""`--revision`: a hub model pinned to a commit loads from the cache, lands in the PNG metadata
and in `sdxs-rt info`; a revision that is missing, or given for a local folder, is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdxs_rt.commands.cli import main
from sdxs_rt.errors import UsageError
from sdxs_rt.hub import check_revision
from sdxs_rt.metadata import read_metadata
from tests.published_layout import fake_hub_cache, offline_hub_cache

REPO = "org/tiny-sdxs"
SHA = "89abcdef0123456789abcdef0123456789abcdef"
FAST = ["--size", "64x64", "--steps", "2", "--seed", "1"]


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> Path:
    """An offline hub cache holding the tiny model as REPO at commit SHA."""
    return fake_hub_cache(offline_hub_cache(tmp_path, monkeypatch), REPO, tiny_model, SHA)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_pinned_hub_model_records_its_revision(capsys, tmp_path: Path, offline_hub) -> None:
    path = tmp_path / "x.png"
    argv = ["generate", "x", "--model", REPO, "--revision", SHA, "-o", str(path), "--json"]
    code, out, err = run_cli(capsys, *argv, *FAST)
    assert code == 0, err
    assert json.loads(out)["revision"] == SHA
    parameters, chunk = read_metadata(path)
    assert chunk is not None and chunk["revision"] == SHA and chunk["model"] == REPO
    assert parameters is not None and parameters.endswith(f"Scheduler: ddpm, Revision: {SHA}")
    code, out, _ = run_cli(capsys, "info", str(path), "--json")
    info = json.loads(out)
    assert code == 0 and info["sdxs_rt"]["revision"] == SHA
    assert info["parsed"]["params"]["Revision"] == SHA
    code, out, _ = run_cli(capsys, "info", str(path))
    assert code == 0 and f"Revision:         {SHA}" in out


def test_unpinned_run_writes_no_revision_key(capsys, tmp_path: Path, offline_hub) -> None:
    path = tmp_path / "x.png"
    code, _, err = run_cli(capsys, "generate", "x", "--model", REPO, "-o", str(path), *FAST)
    assert code == 0, err
    parameters, chunk = read_metadata(path)
    assert chunk is not None and chunk["revision"] is None
    assert parameters is not None and "Revision" not in parameters


def test_missing_revision_exits_3_naming_it(capsys, tmp_path: Path, offline_hub) -> None:
    other = "0" * 40
    argv = ["generate", "x", "--model", REPO, "--revision", other, "-o", str(tmp_path / "x.png")]
    code, _, err = run_cli(capsys, *argv, *FAST)
    assert code == 3
    assert other in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("command", ["generate", "export"])
def test_revision_of_a_local_folder_is_a_usage_error(
    capsys, tmp_path: Path, tiny_model: Path, command: str
) -> None:
    argv = {
        "generate": ["generate", "x", "--model", str(tiny_model), "-o", str(tmp_path / "x.png")],
        "export": ["export", "onnx", "--model", str(tiny_model), "--out", str(tmp_path / "o")],
    }[command]
    code, _, err = run_cli(capsys, *argv, "--revision", SHA)
    assert code == 2
    assert "applies to hub repo ids only" in err and str(tiny_model) in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "o").exists()


def test_merge_lora_refuses_a_revision_of_a_local_folder(capsys, tmp_path, tiny_model) -> None:
    argv = ["merge-lora", str(tiny_model), "l.safetensors", "-o", str(tmp_path / "m")]
    code, _, err = run_cli(capsys, *argv, "--revision", "main")
    assert code == 2 and "applies to hub repo ids only" in err


def test_check_revision_rules() -> None:
    check_revision(REPO, SHA)  # a hub id: fine (resolved later)
    check_revision(None, None)
    with pytest.raises(UsageError, match="built-in model"):
        check_revision(None, "main")
    with pytest.raises(UsageError, match="empty"):
        check_revision(REPO, " ")
