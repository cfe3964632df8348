"""`GenerateOptions`: `sdxs-rt generate`'s arguments read once, checked once, before any model
loads (`sdxs_rt/commands/generate_options.py`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from sdxs_rt.commands.cli import build_parser, main
from sdxs_rt.commands.generate import PARAM_FLAGS
from sdxs_rt.commands.generate_options import GenerateOptions
from sdxs_rt.errors import EXIT_USAGE, UsageError
from sdxs_rt.params import GenerationParams
from sdxs_rt.pipeline import Pipeline

ROOT = Path(__file__).resolve().parents[1]
HAS_TORCH = importlib.util.find_spec("torch") is not None


def options(*flags: str) -> GenerateOptions:
    return GenerateOptions.from_args(build_parser().parse_args(["generate", *flags]))


def test_the_options_module_imports_without_numpy_or_torch() -> None:
    code = (
        "import sys\n"
        "import sdxs_rt.commands.generate_options\n"
        "heavy = {'torch', 'onnxruntime', 'tensorrt', 'diffusers', 'transformers', 'numpy'}\n"
        "loaded = {m.split('.')[0] for m in sys.modules}\n"
        "assert not heavy & loaded, sorted(heavy & loaded)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_defaults_are_the_generation_params_defaults() -> None:
    got = options("x")
    defaults = {f.name: f.default for f in dataclasses.fields(GenerationParams)}
    assert set(got.params) == set(PARAM_FLAGS.values())
    assert dict(got.params) == {name: defaults[name] for name in got.params}
    assert got.prompts == ("x",) and got.size == (None, None) and got.batch_size == 1
    run = got.run
    assert run.seed is None and run.count == 1 and run.output is None and run.metadata
    assert not (run.overwrite or run.json or run.quiet or run.preview_every or run.preview_path)
    load = got.load
    assert (load.backend, load.model, load.device, load.precision) == ("torch", None, None, None)
    assert load.fast is None and not load.low_vram and load.loras == ()
    assert load.backend_options() == {}


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (
            [
                "--steps",
                "3",
                "--cfg",
                "1",
                "-n",
                "blurry",
                "--scheduler",
                "euler",
                "--batch-size",
                "2",
            ],
            {
                "num_inference_steps": 3,
                "guidance_scale": 1.0,
                "negative_prompt": "blurry",
                "scheduler": "euler",
                "batch_size": 2,
            },
        ),
        (
            ["--init-image", "in.png", "--mask", "m.png", "--strength", "0.6", "--mask-blur", "0"],
            {"init_image": "in.png", "mask": "m.png", "strength": 0.6, "mask_blur": 0},
        ),
        (
            ["--init-image", "in.png", "--outpaint", "64,0,0,128", "--no-paste-back"],
            {"outpaint": (64, 0, 0, 128), "paste_back": False, "resize_mode": "crop"},
        ),
        (
            ["--resize-mode", "stretch", "--variation-seed", "7", "--variation-strength", "0.5"],
            {"resize_mode": "stretch", "variation_seed": 7, "variation_strength": 0.5},
        ),
        (
            ["--hires-scale", "2", "--hires-steps", "5", "--hires-upscaler", "latent"],
            {
                "hires_scale": 2.0,
                "hires_steps": 5,
                "hires_upscaler": "latent",
                "hires_strength": 0.5,
            },
        ),
    ],
)
def test_flags_become_generation_params_fields(
    flags: list[str], expected: dict[str, object]
) -> None:
    params = options("x", *flags).params
    assert {name: params[name] for name in expected} == expected
    GenerationParams(prompt="x", **params)  # every key is a field


def test_run_and_load_settings() -> None:
    got = options(
        "-p", "a cat", "--seed", "42", "--count", "3", "--size", "576x448", "-o", "out/{seed}.png",
        "--overwrite", "--no-metadata", "--json", "-q", "--preview-every", "2",
        "--preview-path", "p.png", "--model", "some/model", "--variant", "fp16",
        "--revision", "abc", "--text-encoder", "te", "--trust-remote-code", "--device", "cpu",
        "--precision", "bf16", "--low-vram",
    )  # fmt: skip
    assert got.prompts == ("a cat",) and got.size == (576, 448)
    assert dataclasses.asdict(got.run) == {
        "seed": 42, "count": 3, "output": "out/{seed}.png", "overwrite": True,
        "metadata": False, "preview_every": 2, "preview_path": "p.png", "json": True,
        "quiet": True,
    }  # fmt: skip
    load = got.load
    assert (load.model, load.variant, load.revision) == ("some/model", "fp16", "abc")
    assert (load.text_encoder, load.trust_remote_code) == ("te", True)
    assert (load.device, load.precision) == ("cpu", "bf16")
    assert load.backend_options() == {"low_vram": True}


def test_prompt_file_and_size_forms(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\n\n  two  \n", encoding="utf-8")
    got = options("--prompt-file", str(prompts), "--width", "128", "--seed", "-1")
    assert got.prompts == ("one", "two") and got.size == (128, None) and got.run.seed is None


def test_options_are_frozen() -> None:
    got = options("x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.run = got.run  # type: ignore[misc]
    with pytest.raises(TypeError):
        got.params["num_inference_steps"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--preview-path", "p.png"], "--preview-path needs --preview-every N"),
        (["--preview-every", "-1"], "--preview-every must be >= 0, got -1"),
        (["--seed", "-2"], "seed must be a whole number >= 0 (or -1 for random), got -2"),
        (["--size", "64x64", "--width", "64"], "give either --size or --width/--height"),
        (["--size", "64by64"], "--size must look like 576x448"),
        (["--outpaint", "64,0"], "outpaint takes four whole numbers"),
        (["--backend", "onnx", "--low-vram"], "--low-vram applies to --backend torch only"),
        (["--backend", "tensorrt", "--low-vram"], "TensorRT engines size their memory"),
        (["--backend", "onnx", "--lora", "x.safetensors"], "--lora applies to --backend torch"),
        (["--backend", "tensorrt", "--cuda-graphs"], "apply to --backend torch only"),
        (["--backend", "onnx", "--channels-last"], "apply to --backend torch only"),
    ],
)
def test_bad_flags_are_refused_when_the_options_are_built(flags: list[str], words: str) -> None:
    with pytest.raises(UsageError) as raised:
        options("x", *flags)
    assert words in str(raised.value)


@pytest.mark.skipif(not HAS_TORCH, reason="LoRA specs and the fast path are the torch backend's")
@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--lora", "NOWHERE"], "does not exist"),
        (["--lora", ":0.5"], "names no file"),
        (["--compile", "fastest"], "unknown compile mode 'fastest'"),
        (["--compile", "reduce-overhead", "--cuda-graphs"], "records CUDA graphs itself"),
    ],
)
def test_torch_options_are_checked_when_built(flags: list[str], words: str, tmp_path: Path) -> None:
    flags = [str(tmp_path / "none.safetensors") if f == "NOWHERE" else f for f in flags]
    with pytest.raises(UsageError) as raised:
        options("x", *flags)
    assert words in str(raised.value)


@pytest.mark.skipif(not HAS_TORCH, reason="LoRA specs and the fast path are the torch backend's")
def test_torch_options_reach_the_backend_options(tmp_path: Path) -> None:
    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"")  # only its existence is checked before loading
    got = options("x", "--lora", f"{lora}:0.5", "--channels-last", "--compile", "default")
    (spec,) = got.load.loras
    assert (spec.path, spec.scale) == (lora, 0.5)
    backend_options = got.load.backend_options()
    assert backend_options["loras"] == [spec]
    fast = backend_options["fast"]
    assert fast.channels_last and fast.compile == "default" and not fast.cuda_graphs


@pytest.mark.parametrize(
    "flags",
    [
        ["--backend", "onnx", "--low-vram"],
        ["--backend", "tensorrt", "--low-vram"],  # before the engines' size check reads MODEL
        ["--backend", "onnx", "--lora", "x.safetensors"],
        ["--backend", "tensorrt", "--compile", "default"],
        ["--preview-path", "p.png"],
    ],
)
def test_option_errors_come_before_the_model_is_looked_for(
    flags: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(Pipeline, "from_pretrained", no_loading)
    missing = tmp_path / "no-such-model"
    out = tmp_path / "x.png"
    code = main(["generate", "x", "--model", str(missing), "--steps", "1", "-o", str(out), *flags])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE, err
    assert len(err.strip().splitlines()) == 1 and str(missing) not in err, err
    assert not out.exists()
