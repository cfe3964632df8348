"""LoRA: the file format (diffusers); merged at run time == applied by peft == merged folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from sdxs_rt.backends.torch.lora import (  # noqa: E402
    LoraFormatError,
    LoraSpec,
    apply_loras,
    merged_weights,
    parse_lora_spec,
    read_lora,
)
from sdxs_rt.errors import EXIT_NOT_FOUND, EXIT_USAGE, UsageError  # noqa: E402
from sdxs_rt.training.lora import (  # noqa: E402
    DEFAULT_TARGETS,
    EXTENDED_TARGETS,
    add_lora_adapter,
    merge_lora_into_folder,
    save_lora,
)

RANK, ALPHA = 4, 8.0  # alpha != rank: a reader that ignores alpha gets a different model
TARGETS = (*EXTENDED_TARGETS, "conv1")  # conv1: the resnets' 3x3 convolutions (conv LoRA)


def _plain_unet(model: Path) -> Any:
    from diffusers import UNet2DConditionModel

    from sdxs_rt.backends.torch.weights import load_diffusers_module
    from sdxs_rt.loading import resolve_model

    files = resolve_model(str(model))
    return load_diffusers_module(
        UNet2DConditionModel, files.unet_config, files.unet_weights, "cpu", torch.float32
    )


def _inputs() -> tuple[Any, Any, Any]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 16, 8, 8, generator=g), 500.0, torch.randn(1, 1, 1152, generator=g)


def _run(unet: Any, sample: Any, t: float, context: Any) -> Any:
    with torch.no_grad():
        return unet(sample, torch.tensor(t), encoder_hidden_states=context).sample


@pytest.fixture(scope="module")
def lora(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A LoRA with random non-zero A and B (peft starts B at zero), and the peft model's output."""
    unet = _plain_unet(tiny_model)
    add_lora_adapter(unet, RANK, ALPHA, TARGETS)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.1)
    path = save_lora(unet, tmp_path_factory.mktemp("lora") / "style.safetensors", {"steps": "7"})
    sample, t, context = _inputs()
    base = _run(_plain_unet(tiny_model), sample, t, context)
    return {"path": path, "unet": unet, "peft": _run(unet, sample, t, context), "base": base}


def _differences(name: str, got: Any, want: Any, base: Any) -> float:
    """Print max abs and relative differences (for the record); returns the relative one."""
    diff = (got - want).abs().max().item()
    relative = diff / want.abs().max().item()
    effect = (want - base).abs().max().item()
    print(f"{name}: max abs {diff:.3g}, relative {relative:.3g} (LoRA effect {effect:.3g})")
    return relative


# ---------------------------------------------------------------- training side and the file


def test_adapter_freezes_the_base_and_trains_only_lora(tiny_model: Path) -> None:
    unet = _plain_unet(tiny_model)
    add_lora_adapter(unet, 2, 2.0)
    trainable = [n for n, p in unet.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(".attn2.to_q." in n or ".attn2.to_k." in n for n in trainable)
    assert {n.split(".lora_")[0].split(".", 1)[0] for n in trainable} >= {"down_blocks"}
    assert all(any(f".{t}." in n for t in DEFAULT_TARGETS) for n in trainable)


def test_file_has_diffusers_keys_and_metadata(lora: dict[str, Any]) -> None:
    path: Path = lora["path"]
    with safe_open(path, framework="pt") as handle:
        keys, header = list(handle.keys()), handle.metadata()
    assert keys and all(k.startswith("unet.") for k in keys)
    assert all(k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)
    assert any(".resnets.0.conv1.lora_A.weight" in k for k in keys)
    assert header["format"] == "pt" and header["steps"] == "7"
    config = json.loads(header["lora_adapter_metadata"])
    assert config["unet.r"] == RANK and config["unet.lora_alpha"] == ALPHA
    assert set(config["unet.target_modules"]) == set(TARGETS)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


def test_diffusers_own_loader_reads_the_file(lora: dict[str, Any], tiny_model: Path) -> None:
    """diffusers' load_lora_adapter (what load_lora_weights calls) gives the peft output."""
    unet = _plain_unet(tiny_model)
    path: Path = lora["path"]
    unet.load_lora_adapter(
        str(path.parent), weight_name=path.name, prefix="unet", local_files_only=True
    )
    got = _run(unet, *_inputs())
    assert _differences("diffusers loader vs peft", got, lora["peft"], lora["base"]) < 1e-6


# ---------------------------------------------------------------- merged == applied


def test_runtime_merge_equals_peft_and_merged_folder(
    lora: dict[str, Any], tiny_model: Path, tmp_path: Path
) -> None:
    from sdxs_rt.backends.torch import load_components

    sample, t, context = _inputs()
    runtime = load_components(str(tiny_model), loras=[f"{lora['path']}:1.0"])
    assert runtime.info["loras"][0]["name"] == "style" and runtime.info["loras"][0]["scale"] == 1
    assert runtime.unet.folded_blocks > 0  # merged, then folded
    merged = merge_lora_into_folder(tiny_model, lora["path"], 1.0, tmp_path / "merged")
    folder = load_components(str(merged))
    a, b = runtime.unet(sample, t, context), folder.unet(sample, t, context)
    assert _differences("runtime merge vs peft", a, lora["peft"], lora["base"]) < 1e-5
    assert _differences("merged folder vs peft", b, lora["peft"], lora["base"]) < 1e-5
    assert _differences("runtime merge vs merged folder", a, b, lora["base"]) < 1e-6
    assert folder.info["model_hash"] != runtime.info["model_hash"]


def test_scale_zero_is_the_base_and_half_halves_the_delta(
    lora: dict[str, Any], tiny_model: Path
) -> None:
    base = dict(_plain_unet(tiny_model).named_parameters())
    weights = {}
    for scale in (0.0, 0.5, 1.0):
        unet = _plain_unet(tiny_model)
        apply_loras(unet, [LoraSpec(lora["path"], scale)])
        weights[scale] = dict(unet.named_parameters())
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert all(torch.equal(weights[0.0][k], base[k]) for k in base)
    full, half = weights[1.0][key] - base[key], weights[0.5][key] - base[key]
    assert full.abs().max() > 0
    torch.testing.assert_close(half, 0.5 * full, rtol=1e-5, atol=1e-6)


def test_two_loras_add_up(lora: dict[str, Any], tiny_model: Path) -> None:
    layers = read_lora(lora["path"])
    weights = dict(_plain_unet(tiny_model).named_parameters())
    once = merged_weights(weights, [(layers, 0.5, lora["path"])])
    twice = merged_weights(weights, [(layers, 0.2, lora["path"]), (layers, 0.3, lora["path"])])
    assert once.keys() == twice.keys()
    for key in once:
        torch.testing.assert_close(once[key], twice[key], rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- specs and errors


@pytest.mark.parametrize(
    ("spec", "path", "scale"),
    [
        ("a.safetensors", "a.safetensors", 1.0),
        ("a.safetensors:0.8", "a.safetensors", 0.8),
        ("dir/a.safetensors:-1.5", "dir/a.safetensors", -1.5),
        ("C:\\loras\\x.safetensors:0.5", "C:\\loras\\x.safetensors", 0.5),
        ("C:\\loras\\x.safetensors", "C:\\loras\\x.safetensors", 1.0),
        ("C:/loras/x.safetensors", "C:/loras/x.safetensors", 1.0),
        ("odd:dir/x.safetensors", "odd:dir/x.safetensors", 1.0),
    ],
)
def test_parse_lora_spec(spec: str, path: str, scale: float) -> None:
    assert parse_lora_spec(spec) == LoraSpec(Path(path), scale)


@pytest.mark.parametrize(
    "spec", ["a.safetensors:abc", "a.safetensors:", ":0.5", "x.safetensors:nan", ""]
)
def test_bad_specs_are_usage_errors(spec: str) -> None:
    with pytest.raises(UsageError, match="LoRA"):
        parse_lora_spec(spec)


def _write_lora(path: Path, tensors: dict[str, Any]) -> Path:
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


ATTN = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"


def test_missing_file_is_a_usage_error(tiny_model: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        apply_loras(_plain_unet(tiny_model), [f"{tmp_path / 'none.safetensors'}:0.5"])


def test_unknown_layer_and_wrong_shape_name_file_and_key(tiny_model: Path, tmp_path: Path) -> None:
    weights = dict(_plain_unet(tiny_model).named_parameters())
    width = weights[ATTN.removeprefix("unet.") + ".weight"].shape[1]
    unknown = _write_lora(
        tmp_path / "unknown.safetensors",
        {
            "unet.nowhere.lora_A.weight": torch.zeros(2, 8),
            "unet.nowhere.lora_B.weight": torch.zeros(8, 2),
        },
    )
    with pytest.raises(LoraFormatError, match=r"unknown\.safetensors.*unet\.nowhere\.lora_A"):
        merged_weights(weights, [(read_lora(unknown), 1.0, unknown)])
    shape = _write_lora(
        tmp_path / "shape.safetensors",
        {
            f"{ATTN}.lora_A.weight": torch.zeros(2, width + 1),
            f"{ATTN}.lora_B.weight": torch.zeros(width, 2),
        },
    )
    with pytest.raises(LoraFormatError, match=r"shape\.safetensors.*to_q\.lora_A\.weight.*shape"):
        merged_weights(weights, [(read_lora(shape), 1.0, shape)])


def test_other_formats_are_refused_clearly(tmp_path: Path) -> None:
    kohya = _write_lora(
        tmp_path / "k.safetensors", {"lora_unet_x.lora_down.weight": torch.zeros(1)}
    )
    with pytest.raises(LoraFormatError, match="kohya"):
        read_lora(kohya)
    stray = _write_lora(tmp_path / "s.safetensors", {f"{ATTN}.something": torch.zeros(1)})
    with pytest.raises(LoraFormatError, match="something"):
        read_lora(stray)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(LoraFormatError, match="readable"):
        read_lora(tmp_path / "junk.safetensors")


# ---------------------------------------------------------------- CLI


def _generate(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from sdxs_rt.commands.cli import main

    common = ["generate", "a red circle", "--size", "64x64", "--steps", "2", "--seed", "3"]
    code = main([*common, "--quiet", "--json", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_lora_equals_merge_lora_folder(
    lora: dict[str, Any], tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from sdxs_rt.commands.cli import main
    from sdxs_rt.metadata import read_metadata

    merged = tmp_path / "merged"
    assert main(["merge-lora", str(tiny_model), f"{lora['path']}:0.7", "-o", str(merged)]) == 0
    assert (merged / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    code, out, _ = _generate(["--model", str(tiny_model), "--lora", f"{lora['path']}:0.7",
                           "-o", str(tmp_path / "lora.png")], capsys)  # fmt: skip
    assert code == 0
    payload = json.loads(out)
    assert payload["loras"][0]["name"] == "style" and payload["loras"][0]["scale"] == 0.7
    parameters, record = read_metadata(tmp_path / "lora.png")
    assert parameters is not None and 'LoRA: "style: 0.7"' in parameters
    assert "Lora hashes" in parameters
    assert record is not None and record["extra"]["loras"][0]["file"] == "style.safetensors"
    code, _, _ = _generate(["--model", str(merged), "-o", str(tmp_path / "merged.png")], capsys)
    assert code == 0
    with Image.open(tmp_path / "lora.png") as a, Image.open(tmp_path / "merged.png") as b:
        diff = np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max()
    print(f"--lora X:0.7 image vs merge-lora folder image: max diff {diff}/255")
    assert diff <= 1


def test_lora_image_replays_with_the_lora_found_by_hash(
    lora: dict[str, Any], tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`info --replay` finds the recorded LoRA in --inputs DIR and merges it again."""
    from sdxs_rt.commands.cli import main

    out = tmp_path / "lora.png"
    argv = ["--model", str(tiny_model), "--lora", f"{lora['path']}:0.7", "-o", str(out)]
    assert _generate(argv, capsys)[0] == 0
    replay = ["info", str(out), "--replay", "--model", str(tiny_model)]
    assert main([*replay, "--inputs", str(Path(lora["path"]).parent)]) == 0
    assert capsys.readouterr().out == "replay: identical (64 x 64)\n"
    assert main([*replay, "--inputs", str(tmp_path)]) == EXIT_NOT_FOUND  # no LoRA there
    assert "the LoRA style.safetensors" in capsys.readouterr().err


def test_cli_lora_with_onnx_backend_is_a_usage_error(
    lora: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--backend", "onnx", "--lora", str(lora["path"]), "-o", str(tmp_path / "x.png")]
    code, _, err = _generate(argv, capsys)
    assert code == EXIT_USAGE
    assert "--backend torch only" in err and "sdxs-rt merge-lora" in err


def test_cli_missing_lora_and_merge_errors(
    tiny_model: Path, lora: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdxs_rt.commands.cli import main

    missing = ["--lora", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "x.png")]
    assert _generate(missing, capsys)[0] == EXIT_USAGE
    assert (
        main(["merge-lora", str(tiny_model), f"{lora['path']}:x", "-o", str(tmp_path / "o")])
        == EXIT_USAGE
    )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    out = ["-o", str(tmp_path / "full")]
    assert main(["merge-lora", str(tiny_model), str(lora["path"]), *out]) == EXIT_USAGE
    assert "already exists" in capsys.readouterr().err


def test_merge_keeps_folder_name_dtype_and_variant(
    lora: dict[str, Any], tiny_model_sdxs_fp16: Path, tmp_path: Path
) -> None:
    """A model with its U-Net in `sdxs/` and only fp16 files stays so, and loads as before."""
    from sdxs_rt.backends.torch import load_components

    out = merge_lora_into_folder(tiny_model_sdxs_fp16, lora["path"], 1.0, tmp_path / "m")
    name = "diffusion_pytorch_model.fp16.safetensors"
    key = ATTN.removeprefix("unet.") + ".weight"
    with (
        safe_open(out / "sdxs" / name, framework="pt") as merged,
        safe_open(tiny_model_sdxs_fp16 / "sdxs" / name, framework="pt") as source,
    ):
        assert merged.get_tensor(key).dtype == torch.float16
        assert not torch.equal(merged.get_tensor(key), source.get_tensor(key))
        assert merged.keys() == source.keys()
    assert not (out / "unet").exists()
    components = load_components(str(out), variant="fp16")
    assert components.info["variant"] == "fp16"


def test_merge_refuses_an_output_inside_the_model(
    lora: dict[str, Any], tiny_model: Path, tmp_path: Path
) -> None:
    import shutil

    model = shutil.copytree(tiny_model, tmp_path / "model")
    with pytest.raises(UsageError, match="inside the model folder"):
        merge_lora_into_folder(model, lora["path"], 1.0, model / "merged")
