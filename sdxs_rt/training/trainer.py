"""`train(config)`: fine-tune the SDXS U-Net (full or LoRA) under accelerate.

Runs unchanged on one device, with DDP or FSDP (`accelerate launch`), and on the CPU for tests.
Randomness is derived per step: the batch order from a seeded per-epoch permutation of bucket
batches, and noise, timesteps and caption dropout from a generator seeded with (seed, step,
micro-batch, process). A resumed run therefore sees exactly the batches and noise an
uninterrupted one would have, and its losses match.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DConditionModel

from sdxs_rt.backends.torch.weights import load_diffusers_module
from sdxs_rt.errors import UsageError
from sdxs_rt.loading import ModelFiles, resolve_model
from sdxs_rt.progress import bar_wanted, step_progress
from sdxs_rt.training import checkpoints, outputs
from sdxs_rt.training.buckets import Bucket, assign_buckets, bucket_batches, make_buckets
from sdxs_rt.training.cache import CacheRequest, TrainingCache, build_cache
from sdxs_rt.training.config import TrainConfig
from sdxs_rt.training.objective import NoiseSchedule, drop_captions, min_snr_weights, weighted_mse
from sdxs_rt.training.optim import EMA, averaged_weights, make_lr_scheduler, make_optimizer
from sdxs_rt.training.sources import load_sources
from sdxs_rt.training.validation import Validator

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainEvent:
    """What `on_event` receives: kind is "cache_ready", "micro_step", "step", "checkpoint",
    "validation" or "done"; `data` holds the details (loss, lr, paths, ...)."""

    kind: str
    step: int
    data: dict[str, Any] = field(default_factory=dict)


EventCallback = Callable[[TrainEvent], None]


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path | None
    lora_path: Path | None
    final_step: int
    losses: list[float]  # one per optimizer step of this run (after the resumed step)
    seconds: float
    checkpoints: list[Path] = field(default_factory=list)


@dataclass
class TrainingSet:
    cache: TrainingCache
    latent_paths: list[Path]
    captions: list[str]
    buckets: list[Bucket]


@dataclass
class Run:
    """Everything the loop touches."""

    config: TrainConfig
    accelerator: Any
    unet: Any
    optimizer: Any
    lr_scheduler: Any
    ema: EMA | None
    schedule: NoiseSchedule
    data: TrainingSet
    emit: EventCallback


class BatchPlan:
    """The endless stream of micro-batches: epoch e is `bucket_batches(seed + e)`."""

    def __init__(self, buckets: list[Bucket], batch_size: int, seed: int) -> None:
        self.buckets, self.batch_size, self.seed = buckets, batch_size, seed
        self._epochs: dict[int, list[list[int]]] = {}

    def epoch(self, number: int) -> list[list[int]]:
        if number not in self._epochs:
            batches = bucket_batches(self.buckets, self.batch_size, self.seed + number)
            self._epochs = {number: list(batches)}  # keep one epoch: the stream moves forward
        return self._epochs[number]

    def batch(self, position: int) -> list[int]:
        per_epoch = len(self.epoch(0))
        return self.epoch(position // per_epoch)[position % per_epoch]


def step_generator(seed: int, step: int, micro: int, process: int) -> torch.Generator:
    """A CPU generator that depends only on these four numbers (not on what ran before)."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro}/{process}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


# --- setup ------------------------------------------------------------------------------


def make_accelerator(config: TrainConfig) -> Any:
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    output = Path(config.output_dir)
    project = ProjectConfiguration(
        project_dir=str(output),
        logging_dir=str(output / "logs"),
        automatic_checkpoint_naming=False,
    )
    return Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.log_with == "none" else config.log_with,
        project_config=project,
    )


def check_output_dir(config: TrainConfig) -> None:
    output = Path(config.output_dir)
    if config.resume is not None:
        return
    if (output / outputs.RESULT_FILE).is_file():
        raise UsageError(
            f"{output} holds a finished training run; choose another output_dir "
            "(or set resume to continue it)."
        )
    if checkpoints.list_checkpoints(output):
        raise UsageError(
            f"{output} holds checkpoints of an earlier run; set resume = 'latest' to continue "
            "it, or choose another output_dir."
        )


def prepare_data(config: TrainConfig, files: ModelFiles, accelerator: Any) -> TrainingSet:
    sources = load_sources(config.data)
    buckets = make_buckets(config.resolution, config.bucket_min_side)
    chosen = assign_buckets([s.size for s in sources], buckets, config.allow_upscale)
    kept = [(s, b) for s, b in zip(sources, chosen, strict=True) if b is not None]
    skipped = len(sources) - len(kept)
    if not kept:
        raise UsageError(
            f"All {len(sources)} training images were skipped: each is under 64 px on a side, "
            "too small for any bucket (set allow_upscale to enlarge them)."
        )
    if skipped:
        logger.warning("skipped %d image(s) under 64 px on a side (too small)", skipped)
    request = CacheRequest(
        files,
        config.text_encoder,
        config.trust_remote_code,
        config.allow_upscale,
        accelerator.device,
        show_progress=accelerator.is_local_main_process and bar_wanted(),  # bars: a TTY only
    )
    cache, paths = build_cache(
        request, kept, config.validation_prompts, config.cache_path, accelerator.main_process_first
    )
    return TrainingSet(cache, paths, [s.caption for s, _ in kept], [b for _, b in kept])


def load_trainable_unet(config: TrainConfig, files: ModelFiles) -> Any:
    """A plain diffusers U-Net with float32 master weights (fp16 variant files are upcast)."""
    unet = load_diffusers_module(
        UNet2DConditionModel, files.unet_config, files.unet_weights, "cpu", torch.float32
    )
    if config.mode == "lora":
        from sdxs_rt.training.lora import add_lora_adapter

        add_lora_adapter(unet, config.lora_rank, config.lora_alpha)
    else:
        unet.requires_grad_(True)
    if config.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return unet


def make_run(config: TrainConfig, files: ModelFiles, accelerator: Any, emit: EventCallback) -> Run:
    data = prepare_data(config, files, accelerator)
    emit(TrainEvent("cache_ready", 0, {"images": len(data.latent_paths)}))
    unet = load_trainable_unet(config, files)
    optimizer = make_optimizer(config, unet.parameters())
    lr_scheduler = make_lr_scheduler(config, optimizer, accelerator.num_processes)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    ema = None
    if config.ema:
        ema = EMA(accelerator.unwrap_model(unet).parameters(), config.ema_decay, config.ema_offload)
    schedule = NoiseSchedule.from_config(files.scheduler_config)
    return Run(config, accelerator, unet, optimizer, lr_scheduler, ema, schedule, data, emit)


# --- the loop ---------------------------------------------------------------------------


def micro_step(run: Run, indices: list[int], generator: torch.Generator) -> torch.Tensor:
    """Loss of one micro-batch; draws dropout, noise and timesteps from `generator` in order."""
    data, schedule, device = run.data, run.schedule, run.accelerator.device
    latents = data.cache.latents([data.latent_paths[i] for i in indices]).to(device)
    context = data.cache.embeddings([data.captions[i] for i in indices])
    context, dropped = drop_captions(
        context, data.cache.embedding(""), run.config.caption_dropout, generator
    )
    noise = torch.randn(latents.shape, generator=generator).to(device)
    timesteps = schedule.sample_timesteps(len(indices), generator)
    noisy = schedule.add_noise(latents, noise, timesteps)
    target = schedule.training_target(latents, noise, timesteps)
    prediction = run.unet(
        noisy, timesteps.to(device), encoder_hidden_states=context.to(device)
    ).sample
    weights = None
    if run.config.min_snr_gamma is not None:
        snr = schedule.snr(timesteps)
        weights = min_snr_weights(snr, run.config.min_snr_gamma, schedule.prediction_type)
    detail = {"indices": indices, "timesteps": timesteps, "dropped": dropped, "context": context}
    run.emit(TrainEvent("micro_step", -1, detail))
    return weighted_mse(prediction, target, weights)


def optimizer_step(run: Run, plan: BatchPlan, step: int) -> float:
    """One optimizer step over `gradient_accumulation_steps` micro-batches; the mean loss."""
    accelerator, config = run.accelerator, run.config
    accumulation, processes = config.gradient_accumulation_steps, accelerator.num_processes
    losses = []
    for micro in range(accumulation):
        position = (step * accumulation + micro) * processes + accelerator.process_index
        generator = step_generator(config.seed, step, micro, accelerator.process_index)
        with accelerator.accumulate(run.unet):
            loss = micro_step(run, plan.batch(position), generator)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(run.unet.parameters(), config.max_grad_norm)
            run.optimizer.step()
            run.lr_scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
        losses.append(accelerator.gather(loss.detach().reshape(1)).mean())
    if run.ema is not None:
        run.ema.update()
    return float(torch.stack(losses).mean())


def _progress(run: Run, start: int) -> Any:
    """A bar on a terminal, plain lines in a log (as `generate`), only on the first process."""
    main = run.accelerator.is_local_main_process
    return step_progress(run.config.max_steps, start, "training", enabled=main)


def after_step(run: Run, step: int, validator: Validator, saved: list[Path]) -> None:
    """Checkpoint and validation duties after optimizer step `step` (1-based count)."""
    config, accelerator = run.config, run.accelerator
    output = Path(config.output_dir)
    if config.checkpoint_every and step % config.checkpoint_every == 0:
        path = checkpoints.save_checkpoint(
            accelerator, output, step, run.ema, config.checkpoints_total_limit
        )
        saved.append(path)
        run.emit(TrainEvent("checkpoint", step, {"path": path}))
    if config.validation_every and step % config.validation_every == 0:
        validate(run, validator, step)


def validate(run: Run, validator: Validator, step: int) -> None:
    """Every process takes part in gathering the weights; the main one generates from them.

    Why not the main process alone: under FSDP it holds only shards (see validation.py).
    """
    accelerator = run.accelerator
    # Generate inside the block: under DDP the "gathered" state is the live, swapped-in weights.
    with averaged_weights(run.ema):  # every process swaps in the average of what it holds
        state = accelerator.get_state_dict(run.unet)  # collective; whole only on the main one
        if accelerator.is_main_process:
            tracker = _tensorboard(run.config, accelerator)
            paths = validator.run(state, step, tracker)
            run.emit(TrainEvent("validation", step, {"paths": paths}))
    accelerator.wait_for_everyone()


def _tensorboard(config: TrainConfig, accelerator: Any) -> Any:
    """The TensorBoard tracker, or None with logging off (accelerate would hand back a blank
    tracker without `log_images`)."""
    if config.log_with != "tensorboard":
        return None
    return accelerator.get_tracker("tensorboard")


def train_loop(run: Run, start: int, validator: Validator) -> tuple[list[float], list[Path]]:
    plan = BatchPlan(run.data.buckets, run.config.batch_size, run.config.seed)
    losses: list[float] = []
    saved: list[Path] = []
    bar = _progress(run, start)
    for step in range(start, run.config.max_steps):
        loss = optimizer_step(run, plan, step)
        lr = float(run.lr_scheduler.get_last_lr()[0])
        losses.append(loss)
        run.accelerator.log({"loss": loss, "lr": lr}, step=step + 1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        bar.update(1)
        run.emit(TrainEvent("step", step + 1, {"loss": loss, "lr": lr}))
        after_step(run, step + 1, validator, saved)
    bar.close()
    return losses, saved


# --- entry point ------------------------------------------------------------------------


def train(config: TrainConfig, *, on_event: EventCallback | None = None) -> TrainResult:
    """Train as `config` says; returns where the results went and the losses."""
    config.validate()
    started = time.perf_counter()
    emit: EventCallback = on_event or (lambda event: None)
    check_output_dir(config)
    files = resolve_model(config.model, config.variant, config.revision)
    accelerator = make_accelerator(config)
    try:
        return _train(config, files, accelerator, emit, started)
    finally:
        accelerator.end_training()
        _reset_accelerate_state()


def _train(
    config: TrainConfig, files: ModelFiles, accelerator: Any, emit: EventCallback, started: float
) -> TrainResult:
    output = Path(config.output_dir)
    if config.log_with != "none":
        accelerator.init_trackers("sdxs-rt-train", config=_hyperparameters(config))
    run = make_run(config, files, accelerator, emit)
    start = 0
    if config.resume is not None:
        start = checkpoints.resume_checkpoint(accelerator, output, config.resume, run.ema)
    validator = Validator(config, files, run.data.cache, accelerator.device)
    losses, saved = train_loop(run, start, validator)
    model_dir, lora_path = save_outputs(run, files, config.max_steps)
    result = TrainResult(
        output, model_dir, lora_path, config.max_steps, losses, time.perf_counter() - started, saved
    )
    if accelerator.is_main_process:
        outputs.write_result(output, _summary(result))
    emit(TrainEvent("done", config.max_steps, {"result": result}))
    return result


def save_outputs(run: Run, files: ModelFiles, step: int) -> tuple[Path | None, Path | None]:
    """The trained weights (EMA ones when on) as a model folder or a LoRA file.

    Every process calls this: under FSDP each holds shards only, so the weights to save come
    from the collective `get_state_dict` (whole on the main process), never from the module.
    """
    accelerator, config = run.accelerator, run.config
    output = Path(config.output_dir)
    accelerator.wait_for_everyone()
    if run.ema is not None:
        run.ema.copy_to_model()  # every process: the average of the part it holds
    state = accelerator.get_state_dict(run.unet)  # collective: every process calls it
    unet = accelerator.unwrap_model(run.unet)  # its config and LoRA settings, not its weights
    model_dir = lora_path = None
    if accelerator.is_main_process and config.mode == "full":
        model_dir = outputs.save_full_model(files, unet, state, output)
    elif accelerator.is_main_process:
        lora_path, model_dir = outputs.save_lora_outputs(config, files, unet, state, output, step)
    accelerator.wait_for_everyone()
    return model_dir, lora_path


def _hyperparameters(config: TrainConfig) -> dict[str, Any]:
    # TensorBoard's hparams take scalars only
    values = {k: v for k, v in vars(config).items() if not isinstance(v, list)}
    return {k: "none" if v is None else v for k, v in values.items()}


def _summary(result: TrainResult) -> dict[str, Any]:
    return {
        "final_step": result.final_step,
        "model_dir": str(result.model_dir) if result.model_dir else None,
        "lora_path": str(result.lora_path) if result.lora_path else None,
        "last_loss": result.losses[-1] if result.losses else None,
        "seconds": round(result.seconds, 3),
    }


def _reset_accelerate_state() -> None:
    """Forget this run's accelerate settings, so the next `train` in this process may differ."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
