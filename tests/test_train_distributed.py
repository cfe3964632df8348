"""`sdxs-rt train` in two processes (DDP over gloo on the CPU), as a launcher starts it.

`accelerate launch` refuses several CPU processes, and with `--multi_gpu` it runs
`torch.distributed.run`; so this starts `torch.distributed.run` itself with accelerate's
CPU switch, the same environment each process gets on a multi-GPU machine minus CUDA.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("accelerate")

from sdxs_rt.training.demo_data import all_combinations, write_dataset

ROOT = Path(__file__).resolve().parents[1]


def _launch(tiny_model: Path, data: Path, output: Path, *extra: str) -> dict:
    argv = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--standalone", "-m", "sdxs_rt.cli", "train",
        "--model", str(tiny_model), "--data", str(data), "--output-dir", str(output),
        "--resolution", "64", "--min-side", "64", "--batch-size", "2", "--max-steps", "4",
        "--checkpoint-every", "2", "--log-with", "none", "--seed", "3", *extra,
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((output / "train_result.json").read_text())


def test_two_processes_train_checkpoint_validate_and_resume_exactly(
    tiny_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    write_dataset(data, all_combinations()[:4], images_per_combo=2, size=64)
    first = tmp_path / "first"
    validation = ["--validation-every", "4", "--validation-prompts", "a red circle",
                  "--validation-steps", "2", "--validation-size", "64", "--ema"]  # fmt: skip
    result = _launch(tiny_model, data, first, *validation)
    step = first / "checkpoints" / "step-000004"
    assert {"random_states_0.pkl", "random_states_1.pkl", "ema.safetensors"} <= {
        p.name for p in step.iterdir()
    }  # both ranks' RNG states: it really ran as two processes
    assert (first / "validation" / "step-000004" / "00.png").is_file()
    assert (first / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()

    # Resume a copy of the step-2 checkpoint: steps 3-4 must end on the same loss.
    second = tmp_path / "second"
    shutil.copytree(first / "checkpoints" / "step-000002", second / "checkpoints" / "step-000002")
    resumed = _launch(tiny_model, data, second, *validation, "--resume", "latest")
    assert resumed["last_loss"] == pytest.approx(result["last_loss"], rel=1e-5)
