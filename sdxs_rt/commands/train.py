"""`sdxs-rt train`: fine-tune the U-Net (full or LoRA) from a TOML file and/or flags.

Every setting is a TOML key and a flag of the same name (`-` for `_`); flags win. Only the
config module (standard library) is imported to build the parser: torch loads in `run`.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from sdxs_rt.training.config import (
    LOG_WITH,
    LR_SCHEDULERS,
    MIXED_PRECISIONS,
    MODES,
    OPTIMIZERS,
    TrainConfig,
)

TRAIN_EXAMPLES = """examples:
  sdxs-rt train --config train.toml
  sdxs-rt train --model AiArtLab/sdxs --variant fp16 --data photos/ --output-dir runs/photos \\
      --mode lora --max-steps 2000 --mixed-precision bf16
  sdxs-rt train --config train.toml --resume latest          # continue after an interruption
  accelerate launch -m sdxs_rt.commands.cli train --config train.toml  # several GPUs (DDP/FSDP)

train.toml holds the same settings as the flags, e.g.:
  model = "AiArtLab/sdxs"
  data = "photos"
  output_dir = "runs/photos"
  mode = "lora"
  validation_every = 250
  validation_prompts = ["a lighthouse at dawn", "кот в шляпе"]
"""

HELP = {
    "data": "training data: an image folder (.txt captions or metadata.jsonl) or parquet",
    "output_dir": "where checkpoints, logs, validation images and the result go",
    "model": "base model folder or hub id (default: the built-in demo model)",
    "text_encoder": "text encoder folder or hub id (default: the model's own, else the card's)",
    "variant": "weights variant of the base model (fp16 files load as float32 master weights)",
    "revision": "hub revision (branch, tag or commit) of --model; "
    "pin a commit for reproducible runs",
    "trust_remote_code": "run the text encoder's own code downloaded from the hub",
    "mode": "full fine-tune or LoRA (default full)",
    "lora_rank": "LoRA rank (default 16)",
    "lora_alpha": "LoRA alpha (default 16)",
    "merge_lora": "LoRA mode: also write output_dir/model with the LoRA merged in",
    "resolution": "bucket long side in px, a multiple of 64 (default 576)",
    "min_side": "shortest bucket side in px, a multiple of 64 (default: 320/576 of the "
    "resolution rounded down to 64, at least 64: 320 at 576, 64 at 64 or 128)",
    "allow_upscale": "enlarge images smaller than their bucket instead of shrinking the bucket",
    "caption_dropout": "probability of training on the empty prompt instead (default 0.1)",
    "cache_dir": "latent/embedding cache (default output_dir/cache)",
    "batch_size": "images per device per micro-batch (default 1)",
    "gradient_accumulation_steps": "micro-batches per optimizer step (default 1)",
    "max_steps": "optimizer steps (default 1000)",
    "learning_rate": "default 1e-5 (full) or 1e-4 (LoRA)",
    "lr_scheduler": "learning-rate decay after warm-up (default cosine)",
    "lr_warmup_steps": "linear warm-up steps (default 0)",
    "optimizer": "auto: 8-bit AdamW on CUDA with bitsandbytes, else AdamW",
    "weight_decay": "AdamW weight decay (default 0.01)",
    "max_grad_norm": "gradient clipping norm; 0 turns it off (default 1.0)",
    "mixed_precision": "autocast precision; weights stay float32 (default no)",
    "gradient_checkpointing": "recompute activations: less memory, slower",
    "ema": "keep an EMA of the weights and save it as the result",
    "ema_decay": "EMA decay (default 0.9999)",
    "ema_offload": "keep the EMA weights on the CPU (default on)",
    "min_snr_gamma": "min-SNR loss weighting gamma (5.0 is usual; default off)",
    "checkpoint_every": "save a resumable checkpoint every N steps; 0: never (default 500)",
    "checkpoints_total_limit": "keep only the newest N checkpoints",
    "resume": "continue from 'latest' or a checkpoint folder",
    "validation_every": "generate validation images every N steps; 0: never",
    "validation_prompts": "prompts for the validation images",
    "validation_steps": "sampling steps of validation images (default 20)",
    "validation_guidance_scale": "guidance scale of validation images (default 5.5)",
    "validation_size": "validation image side in px (default 576)",
    "seed": "seed of batch order, noise, timesteps and dropout (default 0)",
    "log_with": "tensorboard (in output_dir/logs) or none",
}
CHOICES = {
    "mode": MODES,
    "lr_scheduler": LR_SCHEDULERS,
    "optimizer": OPTIMIZERS,
    "mixed_precision": MIXED_PRECISIONS,
    "log_with": LOG_WITH,
    "variant": ("fp16",),
}


def add_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="fine-tune the U-Net (full or LoRA)",
        description="Fine-tune the SDXS U-Net on your images: full or LoRA, under accelerate. "
        "Settings come from --config FILE.toml; flags of the same name override them.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE.toml", help="settings file (TOML)")
    for item in fields(TrainConfig):
        _add_flag(p, item.name, str(item.type))


def _add_flag(parser: argparse.ArgumentParser, name: str, kind: str) -> None:
    flag = "--" + name.replace("_", "-")
    help_text = HELP.get(name, "")
    if kind == "bool":
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
    elif kind.startswith("list"):
        parser.add_argument(flag, nargs="+", metavar="TEXT", help=help_text)
    else:
        parser.add_argument(flag, type=_flag_type(kind), choices=CHOICES.get(name), help=help_text)
    parser.set_defaults(**{name: None})  # None: not given, the TOML value (or default) stays


def _flag_type(kind: str) -> Any:
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float
    return str


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    from sdxs_rt.training.config import load_toml, make_config

    toml_values = load_toml(args.config) if args.config else {}
    overrides = {item.name: getattr(args, item.name, None) for item in fields(TrainConfig)}
    return make_config(toml_values, overrides)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    from sdxs_rt.training.trainer import train

    result = train(config)
    where = result.model_dir or result.lora_path
    if where is None:  # another process of a distributed run: the main one reports
        return 0
    last = f", last loss {result.losses[-1]:.4f}" if result.losses else ""
    print(
        f"trained {result.final_step} steps in {result.seconds:.0f} s{last}; result: {where}",
        file=sys.stderr,
    )
    return 0
