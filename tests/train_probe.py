"""`sdxs-rt train` in one process of a `torch.distributed.run` job, with checks a test reads back.

Started as `python -m tests.train_probe train <arguments>` by tests/test_train_distributed.py:

- Every `Accelerator` call that is collective under FSDP (`save_state`, `load_state`,
  `get_state_dict`) first meets the other processes at a gloo `monitored_barrier` with a bounded
  wait. Under DDP these calls happen not to communicate, so a call made by the main process
  alone would pass unnoticed; here it fails the run within BARRIER_SECONDS. Each process logs
  the calls it made to `$SDXS_PROBE_LOG/rank-<r>.txt`.
- Process 1 starts writing its part of every checkpoint late: a rename that does not wait for
  all writers leaves its files out (or leaves them in a stray temporary folder).
- `SDXS_PROBE_FSDP2=1`: accelerate runs FSDP2 on the CPU. It offers FSDP on accelerators only,
  so the probe switches the distributed type after the Accelerator is built; everything after
  that (torch's `fully_shard` on gloo, accelerate's FSDP2 prepare, sharded `save_state` and
  `load_state`, `get_state_dict`) is the real code.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

BARRIER_SECONDS = 60
LATE_WRITER_SECONDS = 2.0
COLLECTIVE_CALLS = ("save_state", "load_state", "get_state_dict")
WRAP_CLASSES = ["BasicTransformerBlock", "ResnetBlock2D"]  # shards inside the U-Net, as on GPUs


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _log(name: str) -> None:
    folder = Path(os.environ["SDXS_PROBE_LOG"])
    with (folder / f"rank-{_rank()}.txt").open("a", encoding="utf-8") as handle:
        handle.write(name + "\n")


def _all_processes_meet(name: str) -> None:
    import torch.distributed as dist

    _log(name)
    dist.monitored_barrier(timeout=timedelta(seconds=BARRIER_SECONDS), wait_all_ranks=True)


_depth = [0]  # calls inside a wrapped call (save_state calls get_state_dict) are not logged


def _collective(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _depth[0]:
            return method(self, *args, **kwargs)
        _all_processes_meet(name)
        if name == "save_state" and _rank() == 1:
            time.sleep(LATE_WRITER_SECONDS)
        _depth[0] += 1
        try:
            return method(self, *args, **kwargs)
        finally:
            _depth[0] -= 1

    return wrapper


def _patch_collectives() -> None:
    from accelerate import Accelerator

    for name in COLLECTIVE_CALLS:
        setattr(Accelerator, name, _collective(name, getattr(Accelerator, name)))


def _switch_to_fsdp2(accelerator: Any) -> None:
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        auto_wrap_policy="transformer_based_wrap",
        transformer_cls_names_to_wrap=WRAP_CLASSES,
        state_dict_type="SHARDED_STATE_DICT",
    )
    # AcceleratorState copies PartialState's fields whenever it is instantiated: set both
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin


def _patch_fsdp2() -> None:
    from sdxs_rt.training import trainer

    make = trainer.make_accelerator

    def make_fsdp2(config: Any) -> Any:
        accelerator = make(config)
        _switch_to_fsdp2(accelerator)
        return accelerator

    trainer.make_accelerator = make_fsdp2


def main(argv: list[str]) -> int:
    from sdxs_rt.commands.cli import main as cli_main

    _patch_collectives()
    if os.environ.get("SDXS_PROBE_FSDP2") == "1":
        _patch_fsdp2()
    code = cli_main(argv)
    _log(f"exit {code}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
