"""`sdxs-rt generate` / `sdxs-rt info`: flags, exit codes, JSON output, files never clobbered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sdxs_rt.commands.cli import build_parser, main
from sdxs_rt.metadata import read_metadata
from sdxs_rt.scheduler_table import SCHEDULER_NAMES

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--size", "128x128", "--steps", "3"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_is_fast_and_imports_no_torch() -> None:
    code = (
        "import sys, time; t = time.perf_counter()\n"
        "from sdxs_rt.commands.cli import main\n"
        "try:\n    main(['generate', '--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'onnxruntime', 'tensorrt', 'diffusers', 'transformers', 'numpy'}\n"
        "assert not heavy & {m.split('.')[0] for m in sys.modules}, sys.modules.keys()\n"
        "print(time.perf_counter() - t)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "examples:" in done.stdout and "RUNS CODE DOWNLOADED" in done.stdout
    assert float(done.stdout.strip().splitlines()[-1]) < 1.0


def test_every_sampler_is_a_scheduler_choice() -> None:
    for name in SCHEDULER_NAMES:
        args = build_parser().parse_args(["generate", "x", "--scheduler", name])
        assert args.scheduler == name


def test_generate_writes_png_with_metadata_and_json(capsys, tmp_path: Path) -> None:
    out = tmp_path / "img-{seed}.png"
    code, stdout, stderr = run_cli(
        capsys,
        "generate",
        "a red circle",
        "--seed",
        "7",
        "--count",
        "2",
        "-o",
        str(out),
        "--json",
        *FAST,
    )
    assert code == 0, stderr
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["seed"] for r in rows] == [7, 8]
    for row in rows:
        path = Path(row["path"])
        assert path.name == f"img-{row['seed']}.png"
        assert Image.open(path).size == (128, 128)
        parameters, chunk = read_metadata(path)
        assert parameters is not None and "Seed: " + str(row["seed"]) in parameters
        assert chunk is not None and chunk["seed"] == row["seed"] and chunk["rng"] == "numpy-pcg64"
    assert "seed 7 ->" in stderr
    assert "Traceback" not in stderr


def test_same_seed_reproduces_the_same_file_pixels(capsys, tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        assert (
            run_cli(capsys, "generate", "x", "--seed", "3", "-o", str(tmp_path / name), *FAST)[0]
            == 0
        )
    a, b = (np.asarray(Image.open(tmp_path / n), dtype=np.int16) for n in ("a.png", "b.png"))
    # Two runs are two computations: a float32 kernel may round its last bit the other way, and
    # that can move a pixel that sits on a rounding boundary by one level.
    assert a.shape == b.shape and np.abs(a - b).max() <= 1


def test_info_reads_back_the_parameters(capsys, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    run_cli(
        capsys, "generate", "a blue square", "-n", "blurry", "--seed", "5", "-o", str(path), *FAST
    )
    code, stdout, _ = run_cli(capsys, "info", str(path), "--json")
    assert code == 0
    data = json.loads(stdout)
    assert data["sdxs_rt"]["prompt"] == "a blue square"
    assert data["sdxs_rt"]["negative_prompt"] == "blurry"
    code, stdout, _ = run_cli(capsys, "info", str(path))
    assert code == 0 and "a blue square" in stdout


def test_no_metadata_flag(capsys, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    assert run_cli(capsys, "generate", "x", "--no-metadata", "-o", str(path), *FAST)[0] == 0
    assert read_metadata(path) == (None, None)


@pytest.mark.parametrize(
    ("argv", "exit_code", "fragment"),
    [
        (["generate", ""], 2, "prompt is empty"),
        (["generate", "x", "--width", "500"], 2, "nearest valid: 448 or 512"),
        (["generate", "x", "--size", "0x576"], 2, "must be positive"),
        (["generate", "x", "--size", "99999x576"], 2, "too large"),
        (["generate", "x", "--steps", "0"], 2, "steps must be"),
        (["generate", "x", "--cfg", "nan"], 2, "guidance scale"),
        (["generate", "x", "--cfg", "-2"], 2, "guidance scale"),
        (["generate", "x", "--model", "/nonexistent/model"], 3, "/nonexistent/model"),
        (["generate", "x", "-o", "out.jpg"], 2, "PNG"),
        (["info", "/nonexistent.png"], 3, "/nonexistent.png"),
    ],
)
def test_bad_input_gives_one_sentence_and_exit_code(capsys, argv, exit_code, fragment) -> None:
    code, _, err = run_cli(capsys, *argv)
    assert code == exit_code
    assert fragment in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_unknown_scheduler_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["generate", "x", "--scheduler", "plms"])
    assert raised.value.code == 2
    assert "invalid choice: 'plms'" in capsys.readouterr().err


def test_existing_output_is_never_overwritten(capsys, tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(b"precious")
    code, _, err = run_cli(capsys, "generate", "x", "-o", str(path), *FAST)
    assert code == 2 and "--overwrite" in err
    assert path.read_bytes() == b"precious"
    assert run_cli(capsys, "generate", "x", "-o", str(path), "--overwrite", *FAST)[0] == 0
    assert Image.open(path).size == (128, 128)


def test_unwritable_output_folder(capsys, tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "locked"
    target.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, m: False if Path(p) == target else real_access(p, m)
    )
    code, _, err = run_cli(capsys, "generate", "x", "-o", str(target / "x.png"), *FAST)
    assert code == 2 and str(target) in err


def test_broken_model_files_exit_3(capsys, tmp_path: Path) -> None:
    from sdxs_rt.dev.tiny import build_tiny_model

    model = build_tiny_model(tmp_path / "m")
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = run_cli(capsys, "generate", "x", "--model", str(model), *FAST)
    assert code == 3 and "diffusion_pytorch_model.safetensors" in err
    weights.unlink()
    code, _, err = run_cli(capsys, "generate", "x", "--model", str(model), *FAST)
    assert code == 3 and "unet" in err
    (model / "scheduler" / "scheduler_config.json").write_text(
        '{"_class_name": "FlowMatchEulerDiscreteScheduler"}'
    )
    code, _, err = run_cli(capsys, "generate", "x", "--model", str(model), *FAST)
    assert code == 3


def test_long_prompt_is_truncated_with_a_warning(capsys, tmp_path: Path) -> None:
    prompt = "red circle " * 400
    code, _, err = run_cli(capsys, "generate", prompt, "-o", str(tmp_path / "x.png"), *FAST)
    assert code == 0
    assert "truncated" in err


def test_interrupt_keeps_finished_images_and_exits_130(capsys, tmp_path: Path, monkeypatch) -> None:
    from sdxs_rt.pipeline import ImageEvent, Pipeline

    real_generate = Pipeline.generate

    def interrupted(self, *args, **kwargs):
        for event in real_generate(self, *args, **kwargs):
            yield event
            if isinstance(event, ImageEvent):
                raise KeyboardInterrupt

    monkeypatch.setattr(Pipeline, "generate", interrupted)
    code, _, err = run_cli(
        capsys, "generate", "x", "--count", "3", "-o", str(tmp_path / "{index}.png"), *FAST
    )
    assert code == 130 and "interrupted" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.png"]


def test_sigint_in_a_real_process(tmp_path: Path) -> None:
    """Ctrl-C mid-run: exit 130, finished PNGs complete, no partial or temporary file left."""
    argv = [
        sys.executable,
        "-m",
        "sdxs_rt.commands.cli",
        "generate",
        "x",
        "--count",
        "50",
        "--size",
        "128x128",
        "--steps",
        "20",
        "-o",
        str(tmp_path / "{index}.png"),
    ]
    process = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "0.png").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    files = sorted(tmp_path.iterdir())
    assert files and all(p.suffix == ".png" for p in files)
    for path in files:
        Image.open(path).load()  # every file left is a complete image


def test_a_plain_run_prints_only_its_own_lines(tmp_path: Path) -> None:
    """No third-party notice (transformers' model-type warning, bitsandbytes, diffusers)
    reaches stderr of a normal run; each library resets its logger at import, so this needs
    a fresh process."""
    argv = [
        sys.executable,
        "-m",
        "sdxs_rt.commands.cli",
        "generate",
        "a red circle",
        "--steps",
        "2",
    ]
    argv += ["-o", str(tmp_path / "a.png"), "--seed", "1"]
    env = {k: v for k, v in os.environ.items() if not k.endswith("_VERBOSITY")}
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines and all(line.startswith(("prompt ", "seed ")) for line in lines), lines


def test_fp16_variant_in_sdxs_folder_generates(
    capsys, tmp_path: Path, tiny_model_sdxs_fp16
) -> None:
    argv = ["generate", "x", "--model", str(tiny_model_sdxs_fp16), "--variant", "fp16"]
    code, _, err = run_cli(capsys, *argv, "-o", str(tmp_path / "x.png"), *FAST)
    assert code == 0, err
    code, _, err = run_cli(capsys, "generate", "x", "--model", str(tiny_model_sdxs_fp16), *FAST)
    assert code == 3 and "fp16" in err  # only fp16 files there: say so instead of guessing


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_give_an_image_close_to_fp32(capsys, tmp_path: Path, precision) -> None:
    import numpy as np

    for name in ("fp32", precision):
        argv = ["generate", "x", "--seed", "1", "--precision", name, "-o", str(tmp_path / name)]
        assert run_cli(capsys, *argv, *FAST)[0] == 0
    full, half = (
        np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=np.float64) for n in ("fp32", precision)
    )
    assert half.std() > 5  # not black, not flat
    assert np.abs(full - half).mean() < 8


def test_mean_std_vae_model_generates(capsys, tmp_path: Path, tiny_model_mean_std) -> None:
    argv = ["generate", "x", "--model", str(tiny_model_mean_std), "-o", str(tmp_path / "x.png")]
    assert run_cli(capsys, *argv, *FAST)[0] == 0


def test_cuda_on_a_machine_without_it_exits_4(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(capsys, "generate", "x", "--device", "cuda", *FAST)
    assert code == 4 and "cuda" in err.lower()


def test_previews_are_written_every_n_steps(capsys, tmp_path: Path, monkeypatch) -> None:
    from sdxs_rt.pipeline import Pipeline

    decoded: list[int] = []
    real_decode = Pipeline.decode
    monkeypatch.setattr(
        Pipeline, "decode", lambda self, x: decoded.append(1) or real_decode(self, x)
    )
    preview = tmp_path / "preview.png"
    argv = ["generate", "x", "-o", str(tmp_path / "x.png"), "--preview-every", "2"]
    code, _, err = run_cli(capsys, *argv, "--preview-path", str(preview), "--size", "128x128",
                           "--steps", "5")  # fmt: skip
    assert code == 0, err
    assert Image.open(preview).size == (128, 128)
    assert len(decoded) == 2 + 1  # steps 2 and 4, then the final image
    code, _, err = run_cli(capsys, "generate", "x", "--preview-path", str(preview), *FAST)
    assert code == 2 and "--preview-every" in err


def test_export_onnx_then_generate_with_onnx_runtime(capsys, tmp_path: Path, tiny_model) -> None:
    out = tmp_path / "onnx"
    code, stdout, err = run_cli(
        capsys, "export", "onnx", "--model", str(tiny_model), "--out", str(out)
    )
    assert code == 0, err
    assert stdout.strip() == str(out) and (out / "manifest.json").is_file()
    argv = [
        "generate",
        "x",
        "--backend",
        "onnx",
        "--model",
        str(out),
        "-o",
        str(tmp_path / "x.png"),
    ]
    code, _, err = run_cli(capsys, *argv, *FAST)
    assert code == 0, err
    _, chunk = read_metadata(tmp_path / "x.png")
    assert chunk is not None and chunk["backend"] == "onnx"


def test_onnx_backend_on_a_diffusers_folder_says_to_export_first(capsys, tiny_model) -> None:
    code, _, err = run_cli(capsys, "generate", "x", "--backend", "onnx", "--model", str(tiny_model))
    assert code == 3 and "sdxs-rt export onnx" in err


def test_engine_commands_without_tensorrt(capsys, tmp_path: Path, monkeypatch, tiny_model) -> None:
    monkeypatch.setenv("SDXS_RT_ENGINE_CACHE", str(tmp_path / "engines"))
    code, stdout, err = run_cli(capsys, "engine", "list", "--json")
    assert code == 0, err
    assert json.loads(stdout) == []
    code, _, err = run_cli(capsys, "export", "tensorrt", "--model", str(tmp_path / "nowhere"))
    assert code in (3, 4) and "Traceback" not in err


def test_fast_path_flags_keep_the_image(capsys, tmp_path: Path) -> None:
    import numpy as np

    plain = ["generate", "x", "--seed", "2", "-o", str(tmp_path / "plain.png"), *FAST]
    assert run_cli(capsys, *plain)[0] == 0
    fast = ["generate", "x", "--seed", "2", "-o", str(tmp_path / "fast.png"), *FAST]
    code, _, err = run_cli(capsys, *fast, "--channels-last", "--offload-text-encoder")
    assert code == 0, err
    a, b = (np.asarray(Image.open(tmp_path / n), dtype=np.int16) for n in ("plain.png", "fast.png"))
    assert np.abs(a - b).max() <= 1
    code, _, err = run_cli(capsys, "generate", "x", "--backend", "onnx", "--cuda-graphs", *FAST)
    assert code == 2 and "--backend torch only" in err


def test_bench_is_wired_into_the_cli(capsys) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["bench", "--help"])
    assert raised.value.code == 0
    assert "--preset" in capsys.readouterr().out  # the run itself: tests/test_bench.py
