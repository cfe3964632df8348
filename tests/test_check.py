"""`sdxs-rt check`: what generate would use and why, from configs and headers alone; every
problem listed with exit code 3; `--deep` compares the native and remote-code text paths."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sdxs_rt.commands.cli import main
from sdxs_rt.loading import read_json_config
from sdxs_rt.model_report_text import OK_LINE
from tests.published_layout import fake_hub_cache, read_tensors

ROOT = Path(__file__).resolve().parents[1]


def check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["check", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def check_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code, out, _ = check(capsys, *argv, "--json")
    return code, json.loads(out)


def copy_model(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "model"))


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def narrow_text_encoder(folder: Path, width: int = 1024) -> None:
    """Rewrite text_projector.weight to project to `width` instead of the U-Net's 1152."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    path = folder / "model.safetensors"
    tensors = read_tensors(path)
    tower = tensors["text_projector.weight"].shape[1]
    tensors["text_projector.weight"] = torch.randn(width, tower)
    save_file(tensors, str(path))


@pytest.fixture
def narrow_encoder(tiny_model: Path, tmp_path: Path) -> Path:
    folder = Path(shutil.copytree(tiny_model / "text_encoder", tmp_path / "narrow_te"))
    narrow_text_encoder(folder)
    return folder


# --- what the report says ---------------------------------------------------------------


def test_report_names_the_unet_folder_and_the_unused_one(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = check(capsys, tiny_model)
    assert code == 0
    assert "U-Net: unet/ (named by model_index.json)" in out
    assert "sdxs/: another U-Net, not used (unet/ is)" in out
    assert out.rstrip().endswith(OK_LINE)
    for section in ("Model:", "VAE: vae/", "Scheduler: DDPMScheduler -> sampler ddpm", "Memory"):
        assert section in out


def test_text_encoder_layout_from_tensor_shapes_with_vision_tower_left_on_disk(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = check_json(capsys, tiny_model)
    text = report["text_encoder"]
    assert code == 0 and report["errors"] == []
    assert (text["hidden_size"], text["layers"], text["heads"]) == (128, 2, 2)
    assert text["dimensions_from"] == "tensor shapes" and text["width"] == 1152
    assert text["vision_tower_on_disk"] and text["left_on_disk"]["vision_model"] > 0
    assert text["vision_parameters"] > 0 and not text["remote_code"]
    _, out, _ = check(capsys, tiny_model)
    assert "XLM-R 128 wide, 2 layers, 2 heads" in out and "vision_model (" in out


def test_json_has_every_section(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, report = check_json(capsys, tiny_model)
    assert code == 0 and report["exit_code"] == 0 and report["errors"] == []
    assert report["unet"]["folder"] == "unet/" and report["unet"]["dtypes"] == {"F32": 580}
    assert report["unet"]["config"]["cross_attention_dim"] == 1152
    assert report["vae"]["latent_channels"] == 16 and report["vae"]["decode"] == "z / 1.5 + 0.1"
    assert report["scheduler"]["sampler"] == "ddpm"
    assert report["model"]["default_size"] == "576x576"
    assert report["folders"]["sdxs/"] == "another U-Net (not used)"
    memory, params = report["memory"], report["memory"]["parameters"]
    assert "activations excluded" in memory["note"]
    assert memory["fp32"]["total"] == 4 * sum(params.values()) == 2 * memory["fp16"]["total"]
    assert params["unet"] == report["unet"]["parameters"]
    assert params["text_encoder"] == report["text_encoder"]["text_parameters"]


def test_per_channel_latents_are_described(
    tiny_model_mean_std: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = check_json(capsys, tiny_model_mean_std)
    assert code == 0 and report["vae"]["per_channel_mean_std"]
    assert report["vae"]["decode"].startswith("z * latents_std / 1.5 + latents_mean")


# --- problems ---------------------------------------------------------------------------


def test_a_narrower_text_encoder_is_refused_by_check(
    tiny_model: Path, narrow_encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = check(capsys, tiny_model, "--text-encoder", narrow_encoder)
    assert code == 3
    assert "gives 1024-wide vectors" in out and "cross-attends to 1152-wide ones" in out
    assert "FAILED" in out and OK_LINE not in out


def test_a_narrower_text_encoder_is_refused_by_generate_before_any_weight_loads(
    tiny_model: Path,
    narrow_encoder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loader = pytest.importorskip("sdxs_rt.backends.torch.loader")

    def no_weights(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("weights were loaded before the width check")

    monkeypatch.setattr(loader, "_load_models", no_weights)
    argv = ["generate", "a cat", "--model", str(tiny_model), "--text-encoder", str(narrow_encoder)]
    code = main([*argv, "-o", str(tmp_path / "out.png"), "--steps", "1"])
    err = capsys.readouterr().err
    assert code == 3 and "gives 1024-wide vectors" in err and "1152" in err
    assert not (tmp_path / "out.png").exists()


def test_latent_channel_and_width_mismatches_are_both_listed(
    tiny_model: Path, narrow_encoder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = copy_model(tiny_model, tmp_path)
    vae_config = read_json_config(model / "vae" / "config.json")
    write_json(model / "vae" / "config.json", {**vae_config, "latent_channels": 8})
    code, report = check_json(capsys, model, "--text-encoder", narrow_encoder)
    assert code == 3 and report["exit_code"] == 3 and len(report["errors"]) == 2
    latent, width = report["errors"]
    assert "takes 16 latent channels but the VAE" in latent and "has 8" in latent
    assert "1024-wide" in width
    assert report["unet"]["parameters"] > 0  # the other sections are still there


def test_a_missing_vae_weights_file_is_named(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = copy_model(tiny_model, tmp_path)
    (model / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    code, out, err = check(capsys, model)
    assert code == 3 and out == ""
    assert "vae/diffusion_pytorch_model.safetensors is missing" in err
    code, report = check_json(capsys, model)
    assert code == 3 and not report["resolved"]
    assert "diffusion_pytorch_model.safetensors is missing" in report["errors"][0]


def test_an_unusable_own_text_encoder_says_why_it_was_passed_over(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Offline, the card's text encoder is not cached: that is the error; the note says why
    the model's own text_encoder/ was not taken."""
    model = copy_model(tiny_model, tmp_path)
    narrow_text_encoder(model / "text_encoder")
    code, report = check_json(capsys, model)
    assert code == 3 and "visheratin/mexma-siglip" in report["errors"][0]
    assert any("1024-wide vectors and the U-Net takes 1152" in n for n in report["notes"])


def test_a_revision_for_a_local_folder_is_a_usage_error(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(capsys, tiny_model, "--revision", "main")
    assert code == 2 and out == "" and "hub repo ids only" in err


@pytest.fixture
def hub_without_weights(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the configs-only fetch of `check` leaves configs and tokenizer, none of the weights
    return fake_hub_cache(tmp_path / "hub", "org/sdxs-like", tiny_model, ignore=("*.safetensors",))


def test_a_hub_model_is_judged_by_its_remote_headers(
    tiny_model: Path,
    hub_without_weights: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Weights not in the cache are read as headers from the hub (here: the real headers of
    the tiny model's files stand in for the range requests), and never downloaded."""
    from types import SimpleNamespace

    from sdxs_rt import hub
    from sdxs_rt.loading import tensor_table

    def remote_header(repo_id: str, filename: str, revision: str | None) -> object:
        assert repo_id == "org/sdxs-like"
        path = tiny_model / filename
        return SimpleNamespace(tensors=tensor_table([path])) if path.is_file() else None

    monkeypatch.setattr(hub, "remote_safetensors_header", remote_header)
    code, report = check_json(capsys, "org/sdxs-like")
    assert code == 0, report["errors"]
    unet_table = tensor_table([tiny_model / "unet" / "diffusion_pytorch_model.safetensors"])
    assert report["unet"]["tensors"] == len(unet_table)
    assert report["text_encoder"]["width"] == 1152
    assert not list(hub_without_weights.rglob("*.safetensors"))  # nothing was downloaded


def test_a_hub_model_offline_without_its_weights_names_what_is_missing(
    hub_without_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = check_json(capsys, "org/sdxs-like")
    assert code == 3
    assert "unet/diffusion_pytorch_model.safetensors is not in the hub cache" in " ".join(
        report["errors"]
    )


# --- cost and the deep comparison -------------------------------------------------------


def test_check_imports_no_torch_and_is_fast(tiny_model: Path) -> None:
    script = (
        "import sys, time\n"
        "start = time.perf_counter()\n"
        "from sdxs_rt.commands.cli import main\n"
        f"code = main(['check', {str(tiny_model)!r}])\n"
        "heavy = sorted({'torch', 'diffusers', 'transformers'} & set(sys.modules))\n"
        "print('RESULT', code, heavy, round(time.perf_counter() - start, 3))\n"
    )
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    wall = time.perf_counter() - began
    result = done.stdout.strip().splitlines()[-1]
    assert result.startswith("RESULT 0 []"), done.stdout + done.stderr
    assert float(result.split()[-1]) < 5 and wall < 30  # headers only; 2 busy CPU cores


def test_deep_without_trust_remote_code_is_a_usage_error(
    tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(capsys, tiny_model, "--deep")
    assert code == 2 and out == ""
    assert "--trust-remote-code" in err and len(err.strip().splitlines()) == 1


def test_deep_compares_the_native_and_remote_code_text_paths(
    tiny_model_remote: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("transformers")
    code, report = check_json(capsys, tiny_model_remote, "--deep", "--trust-remote-code")
    assert code == 0 and report["text_encoder"]["remote_code"]
    deep = report["deep"]
    assert set(deep["per_prompt"]) == {"кот", "a red circle on a blue background", ""}
    assert deep["max_abs_difference"] <= 1e-5
