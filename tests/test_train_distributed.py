"""`sdxs-rt train` in two processes on the CPU (gloo), with DDP and with FSDP2, as a launcher
starts it.

`accelerate launch` refuses several CPU processes, and with `--multi_gpu` it runs
`torch.distributed.run`; so this starts `torch.distributed.run` itself with accelerate's CPU
switch, the same environment each process gets on a multi-GPU machine minus CUDA. Each process
runs `tests/train_probe.py`: the calls that are collective under FSDP must be made by both
processes (else the run fails within the probe's barrier timeout), and process 1 writes its
part of each checkpoint late. FSDP2 runs for real (torch's `fully_shard` over gloo), with
accelerate switched to it by the probe; FSDP1 needs GPUs and is not run here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from sdxs_rt.dev.demo.data import all_combinations, write_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_SECONDS = 300
UNET_FILE = Path("model") / "unet" / "diffusion_pytorch_model.safetensors"
ARGS = [
    "--resolution", "64", "--min-side", "64", "--batch-size", "2", "--max-steps", "4",
    "--checkpoint-every", "2", "--log-with", "none", "--seed", "3",
    "--learning-rate", "1e-3", "--lr-scheduler", "constant", "--lr-warmup-steps", "0",
    # a large epsilon keeps Adam's steps proportional to tiny gradients: DDP's all-reduce and
    # FSDP's reduce-scatter round differently, and must not flip whole lr-sized steps
    "--optimizer", "adamw", "--adam-epsilon", "1e-3", "--ema", "--ema-decay", "0.5",
    "--validation-every", "4", "--validation-prompts", "a red circle",
    "--validation-steps", "2", "--validation-size", "64",
]  # fmt: skip


@dataclass
class Launch:
    output: Path
    result: dict
    calls: list[list[str]]  # per process: the collective calls it made, in order


def _launch(tiny_model: Path, data: Path, output: Path, *extra: str, fsdp2: bool = False) -> Launch:
    logs = output.parent / f"{output.name}-calls"
    logs.mkdir(parents=True)
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
        "-m", "tests.train_probe", "train", "--model", str(tiny_model), "--data", str(data),
        "--output-dir", str(output), *ARGS, *extra,
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "SDXS_PROBE_LOG": str(logs), "SDXS_PROBE_FSDP2": "1" if fsdp2 else "0"}  # fmt: skip
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=LAUNCH_SECONDS
    )
    assert done.returncode == 0, done.stderr[-4000:]
    calls = [(logs / f"rank-{r}.txt").read_text().split("\n")[:-1] for r in (0, 1)]
    result = json.loads((output / "train_result.json").read_text())
    return Launch(output, result, calls)


def _check_both_processes_took_part(launch: Launch, expected: list[str]) -> None:
    """Both processes made the same collective calls and finished (the probe's barrier would
    have failed the run otherwise); no checkpoint was renamed before process 1 finished it."""
    assert launch.calls[0] == launch.calls[1] == [*expected, "exit 0"]
    root = launch.output / "checkpoints"
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")]  # no stray tmp folder
    for step in ("step-000002", "step-000004"):
        names = {p.name for p in (root / step).iterdir()}
        assert {"random_states_0.pkl", "random_states_1.pkl"} <= names, names


FIRST_RUN_CALLS = ["save_state", "save_state", "get_state_dict", "get_state_dict"]
RESUME_CALLS = ["load_state", "save_state", "get_state_dict", "get_state_dict"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dist_data") / "data"
    write_dataset(folder, all_combinations()[:4], images_per_combo=2, size=64)
    return folder


@pytest.fixture(scope="module")
def ddp_run(tiny_model: Path, data: Path, tmp_path_factory: pytest.TempPathFactory) -> Launch:
    return _launch(tiny_model, data, tmp_path_factory.mktemp("ddp") / "out")


def _resume(tiny_model: Path, data: Path, first: Launch, output: Path, fsdp2: bool) -> Launch:
    step = "checkpoints/step-000002"
    shutil.copytree(first.output / step, output / step)
    return _launch(tiny_model, data, output, "--resume", "latest", fsdp2=fsdp2)


def test_ddp_trains_checkpoints_validates_and_resumes_exactly(
    ddp_run: Launch, tiny_model: Path, data: Path, tmp_path: Path
) -> None:
    _check_both_processes_took_part(ddp_run, FIRST_RUN_CALLS)
    assert (ddp_run.output / "checkpoints" / "step-000004" / "ema.safetensors").is_file()
    assert (ddp_run.output / "validation" / "step-000004" / "00.png").is_file()
    assert (ddp_run.output / UNET_FILE).is_file()
    # Resume a copy of the step-2 checkpoint: steps 3-4 must end on the same loss.
    resumed = _resume(tiny_model, data, ddp_run, tmp_path / "resumed", fsdp2=False)
    _check_both_processes_took_part(resumed, RESUME_CALLS)
    assert resumed.result["last_loss"] == pytest.approx(ddp_run.result["last_loss"], rel=1e-5)


def _pixels(launch: Launch) -> np.ndarray:
    path = launch.output / "validation" / "step-000004" / "00.png"
    return np.asarray(Image.open(path), dtype=np.int16)


def test_fsdp2_saves_validates_and_resumes_as_ddp(
    ddp_run: Launch, tiny_model: Path, data: Path, tmp_path: Path
) -> None:
    """The same run sharded: the gathered EMA weights, the validation image (from the gathered
    weights) and the loss after resuming per-process EMA shards all match the DDP run's."""
    fsdp = _launch(tiny_model, data, tmp_path / "fsdp", fsdp2=True)
    _check_both_processes_took_part(fsdp, FIRST_RUN_CALLS)
    names = {p.name for p in (fsdp.output / "checkpoints" / "step-000004").iterdir()}
    assert {"ema-00000-of-00002.safetensors", "ema-00001-of-00002.safetensors"} <= names
    assert fsdp.result["last_loss"] == pytest.approx(ddp_run.result["last_loss"], rel=1e-4)

    base = load_file(tiny_model / "unet" / "diffusion_pytorch_model.safetensors")
    sharded, plain = load_file(fsdp.output / UNET_FILE), load_file(ddp_run.output / UNET_FILE)
    assert sharded.keys() == plain.keys() == base.keys()
    moved = _norm({k: plain[k] - base[k] for k in base})
    apart = _norm({k: sharded[k] - plain[k] for k in base})
    print(f"\nFSDP2 vs DDP saved weights: {apart:.3g} apart, trained {moved:.3g} from the base")
    assert apart <= 1e-3 * moved
    assert np.abs(_pixels(fsdp) - _pixels(ddp_run)).max() <= 2

    resumed = _resume(tiny_model, data, fsdp, tmp_path / "resumed", fsdp2=True)
    _check_both_processes_took_part(resumed, RESUME_CALLS)
    assert resumed.result["last_loss"] == pytest.approx(fsdp.result["last_loss"], rel=1e-5)


def _norm(tensors: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values())))


def test_fsdp2_lora_saves_the_whole_adapter(tiny_model: Path, data: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    from sdxs_rt.backends.torch.lora import PREFIX
    from sdxs_rt.backends.torch.weights import load_diffusers_module
    from sdxs_rt.loading import resolve_model
    from sdxs_rt.training.lora import add_lora_adapter, lora_state_dict

    lora_args = ["--mode", "lora", "--lora-rank", "4", "--lora-alpha", "4"]
    run = _launch(tiny_model, data, tmp_path / "lora", *lora_args, fsdp2=True)
    _check_both_processes_took_part(run, FIRST_RUN_CALLS)
    assert (run.output / "validation" / "step-000004" / "00.png").is_file()
    saved = load_file(run.output / "lora.safetensors")
    files = resolve_model(str(tiny_model))
    unet = load_diffusers_module(
        UNet2DConditionModel, files.unet_config, files.unet_weights, "cpu", torch.float32
    )
    add_lora_adapter(unet, 4, 4.0)
    fresh = lora_state_dict(unet)
    assert {k: tuple(v.shape) for k, v in saved.items()} == {
        k: tuple(v.shape) for k, v in fresh.items()
    }
    # B starts at zero: the saved (averaged) B matrices moved, so they came from training.
    # Except the query/key of an attention over ONE token (self-attention on the 1x1 grid of
    # the deepest level at 64 px; the single-token cross-attention): softmax over one key is
    # 1 whatever q.k is, so their gradient is exactly zero and their B stays zero.
    ups = [k for k in saved if k.startswith(PREFIX) and "lora_B" in k]
    still = [k for k in ups if saved[k].abs().max() == 0]
    assert ups and len(still) < len(ups) // 4, still
    assert all(".to_q." in k or ".to_k." in k for k in still), still
