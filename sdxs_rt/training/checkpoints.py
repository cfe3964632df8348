"""Training checkpoints: `output_dir/checkpoints/step-NNNNNN`, written atomically, pruned.

A checkpoint is what `accelerator.save_state` writes (model, optimizer, LR scheduler, RNG
states), the EMA weights as safetensors, and `trainer_state.json` with the global step. It is
written into a hidden temporary folder and renamed into place, so a crash never leaves a
half-written checkpoint that `resume = "latest"` could pick.

Every process writes into the folder (its RNG state; under FSDP its shards and its EMA shard),
and `save_state` does not wait for the others: the main process renames only after a barrier.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from sdxs_rt.errors import ModelNotFoundError, UsageError
from sdxs_rt.training.optim import EMA

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
EMA_FILE = "ema.safetensors"
_NAME = re.compile(r"^step-(\d{6,})$")


def checkpoint_root(output_dir: Path) -> Path:
    return output_dir / CHECKPOINTS


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Finished checkpoints (with their state file), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(
    accelerator: Any, output_dir: Path, step: int, ema: EMA | None, keep: int | None
) -> Path:
    """Every process calls this (sharded states need all of them); the main one renames."""
    final = checkpoint_root(output_dir) / f"step-{step:06d}"
    temporary = checkpoint_root(output_dir) / f".tmp-step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    name = ema_file(accelerator)
    if ema is not None and name is not None:
        ema.save(temporary / name)
    accelerator.wait_for_everyone()  # all processes' files are in `temporary` before it moves
    if accelerator.is_main_process:
        (temporary / STATE_FILE).write_text(json.dumps({"global_step": step}), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        prune_checkpoints(output_dir, keep)
    accelerator.wait_for_everyone()  # nobody looks for the checkpoint before it is in place
    return final


def is_sharded(accelerator: Any) -> bool:
    """FSDP (1 or 2): each process holds only shards of the weights (DistributedType is a str)."""
    return bool(accelerator.distributed_type == "FSDP")


def ema_file(accelerator: Any) -> str | None:
    """This process's EMA file in a checkpoint, or None when it writes none: sharded, every
    process writes its own shard's average; otherwise the main process writes the one copy."""
    if is_sharded(accelerator):
        index, count = accelerator.process_index, accelerator.num_processes
        return f"ema-{index:05d}-of-{count:05d}.safetensors"
    return EMA_FILE if accelerator.is_main_process else None


def prune_checkpoints(output_dir: Path, keep: int | None) -> list[Path]:
    """Delete all but the newest `keep` checkpoints; returns the deleted ones."""
    if keep is None:
        return []
    existing = list_checkpoints(output_dir)
    doomed = existing[: max(0, len(existing) - keep)]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def find_checkpoint(output_dir: Path, resume: str) -> Path:
    """`resume`: "latest" (the newest in output_dir) or a checkpoint folder."""
    if resume == "latest":
        existing = list_checkpoints(output_dir)
        if not existing:
            raise ModelNotFoundError(
                f"resume = 'latest' but {checkpoint_root(output_dir)} holds no checkpoint."
            )
        return existing[-1]
    path = Path(resume).expanduser()
    if not (path / STATE_FILE).is_file():
        raise ModelNotFoundError(f"{path} is not a training checkpoint (no {STATE_FILE}).")
    return path


def resume_checkpoint(accelerator: Any, output_dir: Path, resume: str, ema: EMA | None) -> int:
    """Find and restore the checkpoint `resume` names, on every process; returns its step."""
    accelerator.wait_for_everyone()  # no process reads while another may still be writing
    return load_checkpoint(accelerator, find_checkpoint(output_dir, resume), ema)


def load_checkpoint(accelerator: Any, path: Path, ema: EMA | None) -> int:
    """Restore a checkpoint; returns its global step. Every process calls this."""
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    accelerator.load_state(str(path))
    if ema is not None:
        ema.load(_ema_to_load(accelerator, path))
    return int(state["global_step"])


def _ema_to_load(accelerator: Any, path: Path) -> Path:
    """Sharded: this process's own shard file; otherwise the one copy, read by every process."""
    name = ema_file(accelerator) if is_sharded(accelerator) else EMA_FILE
    if (path / str(name)).is_file():
        return path / str(name)
    if not any(path.glob("ema*.safetensors")):
        raise UsageError(f"{path} was saved without EMA weights; turn ema off to resume it.")
    raise UsageError(
        f"{path} holds EMA weights saved by another process layout (no {name}); resume it "
        f"with the distributed setup that wrote it."
    )
