"""`sdxs-rt train` end to end on the tiny model and 64x64 images (8x8 latents), on the CPU."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")

from safetensors.torch import load_file  # noqa: E402

from sdxs_rt.dev.demo.data import all_combinations, write_dataset  # noqa: E402
from sdxs_rt.errors import UsageError  # noqa: E402
from sdxs_rt.training import cache as cache_module  # noqa: E402
from sdxs_rt.training.config import make_config  # noqa: E402
from sdxs_rt.training.trainer import TrainEvent, TrainResult, train  # noqa: E402

BASE_STEPS, CHECKPOINT_AT = 16, 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("train_data") / "data"
    write_dataset(folder, all_combinations()[:2], images_per_combo=2, size=64)
    return folder


def _settings(model: Path, data: Path, output: Path, **changes: Any) -> dict[str, Any]:
    values = {
        "model": str(model), "data": str(data), "output_dir": str(output),
        "resolution": 64, "min_side": 64, "batch_size": 4, "max_steps": 2,
        "learning_rate": 3e-3, "lr_scheduler": "constant", "optimizer": "adamw",
        "caption_dropout": 0.0, "checkpoint_every": 0, "log_with": "none",
    }  # fmt: skip
    values.update(changes)
    return values


def _train(values: dict[str, Any], events: list[Any] | None = None) -> TrainResult:
    return train(make_config(values), on_event=None if events is None else events.append)


def _unet_state(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def base_run(tiny_model: Path, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """16 steps, a checkpoint at 8, validation at 16, TensorBoard on; records every event
    and every text-encoder call in one list."""
    output = tmp_path_factory.mktemp("base") / "run"
    events: list[Any] = []
    real_loader = cache_module.load_text_encoder

    def recording_loader(*args: Any, **kwargs: Any) -> Any:
        encoder = real_loader(*args, **kwargs)

        def call(prompts: Any) -> Any:
            events.append(("text_encoder_call", list(prompts)))
            return encoder(prompts)

        return call

    values = _settings(
        tiny_model, dataset, output, max_steps=BASE_STEPS, checkpoint_every=CHECKPOINT_AT,
        validation_every=BASE_STEPS, validation_prompts=["a red circle on a blue background"],
        validation_steps=2, validation_size=64, log_with="tensorboard",
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache_module, "load_text_encoder", recording_loader)
        result = _train(values, events)
    return values, result, events


def test_loss_falls_on_a_small_set(base_run: Any) -> None:
    _, result, _ = base_run
    assert len(result.losses) == BASE_STEPS and result.final_step == BASE_STEPS
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < 0.92 * first, result.losses


def test_text_encoder_runs_only_before_the_first_step(base_run: Any) -> None:
    _, _, events = base_run
    kinds = ["te" if isinstance(e, tuple) else e.kind for e in events]
    assert "te" in kinds and "step" in kinds
    assert max(i for i, k in enumerate(kinds) if k == "te") < kinds.index("cache_ready")
    assert kinds.index("cache_ready") < kinds.index("step")
    encoded = [p for e in events if isinstance(e, tuple) for p in e[1]]
    assert "" in encoded and "a red circle on a blue background" in encoded


def test_resume_continues_with_the_same_losses(
    base_run: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values, result, _ = base_run
    output = tmp_path / "resumed"
    checkpoint = Path(values["output_dir"]) / "checkpoints" / f"step-{CHECKPOINT_AT:06d}"
    shutil.copytree(checkpoint, output / "checkpoints" / checkpoint.name)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cache should have made this load unnecessary")

    # Same cache: neither the text encoder nor the VAE encoder may load.
    monkeypatch.setattr(cache_module, "load_text_encoder", refuse)
    monkeypatch.setattr(cache_module, "load_vae_encoder", refuse)
    cache_dir = str(Path(values["output_dir"]) / "cache")
    resumed = _train({
        **values, "output_dir": str(output), "cache_dir": cache_dir, "resume": "latest",
        "validation_every": 0, "log_with": "none",
    })  # fmt: skip
    assert len(resumed.losses) == BASE_STEPS - CHECKPOINT_AT
    torch.testing.assert_close(
        torch.tensor(resumed.losses),
        torch.tensor(result.losses[CHECKPOINT_AT:]),
        rtol=1e-5,
        atol=1e-6,
    )
    torch.testing.assert_close(
        _unet_state(output / "model"), _unet_state(Path(values["output_dir"]) / "model")
    )


def test_saved_folder_generates_and_differs_from_base(base_run: Any, tiny_model: Path) -> None:
    from sdxs_rt.pipeline import Pipeline

    values, result, _ = base_run
    assert result.model_dir == Path(values["output_dir"]) / "model"
    pipe = Pipeline.from_pretrained(str(result.model_dir))
    image = pipe("a red circle", num_inference_steps=2, width=64, height=64, seed=1).images[0]
    assert image.size == (64, 64)
    trained, base = _unet_state(result.model_dir), _unet_state(tiny_model)
    assert trained.keys() == base.keys()
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    assert (result.model_dir / "vae").is_dir() and (result.model_dir / "model_index.json").is_file()


def test_validation_images_checkpoints_and_tensorboard(base_run: Any) -> None:
    values, result, events = base_run
    output = Path(values["output_dir"])
    assert (output / "validation" / f"step-{BASE_STEPS:06d}" / "00.png").is_file()
    assert [p.name for p in result.checkpoints] == ["step-000008", "step-000016"]
    assert list((output / "logs").rglob("events.out.tfevents.*"))
    assert any(isinstance(e, TrainEvent) and e.kind == "validation" for e in events)


def test_finished_run_is_refused_without_resume(base_run: Any) -> None:
    values, _, _ = base_run
    with pytest.raises(UsageError, match="finished training run"):
        _train(values)


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("small_cache"))


@pytest.fixture(scope="module")
def plain_run(tiny_model: Path, dataset: Path, small_cache: str, tmp_path_factory: Any) -> Any:
    output = tmp_path_factory.mktemp("plain") / "run"
    return _train(_settings(tiny_model, dataset, output, cache_dir=small_cache))


def test_ema_with_decay_zero_saves_the_trained_weights(
    plain_run: TrainResult, tiny_model: Path, dataset: Path, small_cache: str, tmp_path: Path
) -> None:
    values = _settings(tiny_model, dataset, tmp_path / "ema", cache_dir=small_cache)
    ema = _train({**values, "ema": True, "ema_decay": 0.0})
    assert plain_run.model_dir is not None and ema.model_dir is not None
    torch.testing.assert_close(_unet_state(ema.model_dir), _unet_state(plain_run.model_dir))
    slow = _train({**values, "output_dir": str(tmp_path / "slow"), "ema": True, "ema_decay": 0.5})
    # the average never feeds back into training (two runs: equal up to kernel rounding)
    torch.testing.assert_close(slow.losses, ema.losses, rtol=1e-5, atol=1e-6)
    assert slow.model_dir is not None
    trained, averaged = _unet_state(ema.model_dir), _unet_state(slow.model_dir)
    assert any(not torch.equal(trained[k], averaged[k]) for k in trained)


def test_min_snr_weighting(
    plain_run: TrainResult, tiny_model: Path, dataset: Path, small_cache: str, tmp_path: Path
) -> None:
    values = _settings(tiny_model, dataset, tmp_path / "a", cache_dir=small_cache, max_steps=1)
    unclipped = _train({**values, "min_snr_gamma": 1e9})  # eps weights min(snr, g)/snr = 1
    assert unclipped.losses[0] == pytest.approx(plain_run.losses[0], rel=1e-5)  # two runs
    clipped = _train({**values, "output_dir": str(tmp_path / "b"), "min_snr_gamma": 0.01})
    assert clipped.losses[0] < 0.9 * plain_run.losses[0]  # weights < 1 where snr > 0.01


def test_caption_dropout_one_trains_on_the_empty_prompt_only(
    tiny_model: Path, dataset: Path, small_cache: str, tmp_path: Path
) -> None:
    events: list[TrainEvent] = []
    values = _settings(tiny_model, dataset, tmp_path / "run", cache_dir=small_cache)
    _train({**values, "caption_dropout": 1.0}, events)
    micro = [e for e in events if e.kind == "micro_step"]
    assert len(micro) == 2
    empty = None
    for event in micro:
        assert bool(event.data["dropped"].all())
        context = event.data["context"]
        empty = context[0] if empty is None else empty
        assert torch.equal(context, empty.expand_as(context))
    captions = [p for p in (Path(small_cache) / "embeddings").rglob("*.safetensors")]
    matches = [p for p in captions if torch.equal(load_file(p)["embedding"], empty[0])]
    assert len(matches) == 1  # exactly the cached "" embedding


def test_lora_mode_writes_a_lora_and_a_merged_model(
    tiny_model: Path, dataset: Path, small_cache: str, tmp_path: Path
) -> None:
    from sdxs_rt.pipeline import Pipeline

    values = _settings(tiny_model, dataset, tmp_path / "lora", cache_dir=small_cache)
    result = _train({**values, "mode": "lora", "lora_rank": 4, "merge_lora": True})
    assert result.lora_path == tmp_path / "lora" / "lora.safetensors" and result.lora_path.is_file()
    assert result.model_dir is not None
    merged, base = _unet_state(result.model_dir), _unet_state(tiny_model)
    assert any(not torch.equal(merged[k], base[k]) for k in base)
    pipe = Pipeline.from_pretrained(str(result.model_dir))
    assert pipe("x", num_inference_steps=1, width=64, height=64, seed=0).images


def test_images_too_small_for_any_bucket_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    from PIL import Image

    data = tmp_path / "small"
    data.mkdir()
    for i in range(3):
        Image.new("RGB", (48, 48)).save(data / f"{i}.png")
        (data / f"{i}.txt").write_text("tiny", encoding="utf-8")
    with pytest.raises(UsageError, match="All 3 training images were skipped"):
        _train(_settings(tiny_model, data, tmp_path / "out"))


def test_cli_train_end_to_end_and_exit_codes(
    tiny_model: Path, dataset: Path, small_cache: str, tmp_path: Path, capfd: Any
) -> None:
    from sdxs_rt.commands.cli import main

    toml = tmp_path / "train.toml"
    toml.write_text(  # min_side left to its default, derived from the resolution
        f'model = "{tiny_model}"\ndata = "{dataset}"\nresolution = 64\n'
        f'cache_dir = "{small_cache}"\nlog_with = "none"\n',
        encoding="utf-8",
    )
    output = tmp_path / "cli"
    argv = ["train", "--config", str(toml), "--output-dir", str(output), "--max-steps", "1"]
    assert main(argv) == 0
    log = capfd.readouterr().err  # stderr is no terminal here: plain lines, never a bar
    assert "training: step 1/1, loss " in log and "\r" not in log and "it/s" not in log
    assert (output / "model" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert main(argv) == 2  # a finished run, no --resume
    assert main([*argv[:-2], "--max-steps", "0"]) == 2
    toml.write_text(toml.read_text(encoding="utf-8") + "colour = 1\n", encoding="utf-8")
    assert main(["train", "--config", str(toml), "--output-dir", str(tmp_path / "x")]) == 2
