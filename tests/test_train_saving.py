"""What the trainer saves and validates comes from the state dict it gathered, not from the
module it trained: under FSDP the module holds shards only (the two-process runs are in
tests/test_train_distributed.py; these pin the same contracts in one process, quickly)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from diffusers import UNet2DConditionModel  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from sdxs_rt.backends.torch.weights import load_diffusers_module  # noqa: E402
from sdxs_rt.errors import UsageError  # noqa: E402
from sdxs_rt.loading import ModelFiles, resolve_model  # noqa: E402
from sdxs_rt.training import checkpoints  # noqa: E402
from sdxs_rt.training.config import TrainConfig  # noqa: E402
from sdxs_rt.training.optim import EMA  # noqa: E402
from sdxs_rt.training.outputs import save_full_model  # noqa: E402
from sdxs_rt.training.validation import validation_unet  # noqa: E402


def _unet(files: ModelFiles) -> UNet2DConditionModel:
    return load_diffusers_module(
        UNet2DConditionModel, files.unet_config, files.unet_weights, "cpu", torch.float32
    )


def _shifted(state: dict[str, torch.Tensor], by: float) -> dict[str, torch.Tensor]:
    return {k: v + by if v.is_floating_point() else v for k, v in state.items()}


def _output(unet: torch.nn.Module, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 16, 8, 8, generator=generator)
    context = torch.randn(1, 1, 1152, generator=generator)
    with torch.no_grad():
        return unet(sample, 300, encoder_hidden_states=context).sample


def test_full_model_holds_the_given_weights_and_a_real_fp16_variant(
    tiny_model_sdxs_fp16: Path, tmp_path: Path
) -> None:
    files = resolve_model(str(tiny_model_sdxs_fp16), "fp16")
    unet = _unet(files)
    gathered = _shifted(unet.state_dict(), 0.25)  # not what the module holds
    target = save_full_model(files, unet, gathered, tmp_path)
    full = load_file(target / "sdxs" / "diffusion_pytorch_model.safetensors")
    half = load_file(target / "sdxs" / "diffusion_pytorch_model.fp16.safetensors")
    assert full.keys() == half.keys() == gathered.keys()
    for key, value in gathered.items():
        assert torch.equal(full[key], value), key
        assert half[key].dtype == torch.float16, key
        torch.testing.assert_close(half[key].float(), value, rtol=1e-3, atol=1e-3)
    reloaded = _unet(resolve_model(str(target), "fp16"))  # the folder loads as its base did
    unet.load_state_dict(gathered)
    torch.testing.assert_close(_output(reloaded), _output(unet), rtol=1e-2, atol=1e-2)


def _config(mode: str = "full") -> TrainConfig:
    return TrainConfig(mode=mode, lora_rank=4, lora_alpha=4.0)


def test_validation_unet_computes_with_the_gathered_weights(tiny_model: Path) -> None:
    files = resolve_model(str(tiny_model))
    trained = _unet(files)
    before = _output(trained)
    gathered = _shifted(trained.state_dict(), 0.01)
    built = validation_unet(_config(), files, gathered)
    trained.load_state_dict(gathered)  # the module the gathered weights describe
    assert not built.training and not any(p.requires_grad for p in built.parameters())
    torch.testing.assert_close(_output(built), _output(trained))
    assert (_output(built) - before).abs().max() > 1e-2  # the shift shows: a real check


def test_validation_unet_in_lora_mode_has_the_adapter(tiny_model: Path) -> None:
    from sdxs_rt.training.lora import add_lora_adapter

    files = resolve_model(str(tiny_model))
    trained = _unet(files)
    add_lora_adapter(trained, 4, 4.0)
    with torch.no_grad():
        for name, parameter in trained.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    built = validation_unet(_config("lora"), files, trained.state_dict())
    torch.testing.assert_close(_output(built), _output(trained))
    assert not torch.equal(_output(built), _output(_unet(files)))  # the adapter acts


def test_validation_unet_refuses_a_state_missing_a_weight(tiny_model: Path) -> None:
    files = resolve_model(str(tiny_model))
    state = _unet(files).state_dict()
    state.pop("conv_in.weight")
    with pytest.raises(RuntimeError, match=r"conv_in\.weight"):
        validation_unet(_config(), files, state)


def test_lora_file_takes_the_adapter_from_the_gathered_state(
    tiny_model: Path, tmp_path: Path
) -> None:
    from sdxs_rt.training.lora import PREFIX, add_lora_adapter, save_lora

    files = resolve_model(str(tiny_model))
    unet = _unet(files)
    add_lora_adapter(unet, 4, 4.0)
    gathered = _shifted(unet.state_dict(), 0.5)
    saved = load_file(save_lora(unet, tmp_path / "l.safetensors", None, gathered))
    for key, value in saved.items():
        module_key = key.removeprefix(PREFIX).replace(".weight", ".default.weight")
        assert torch.equal(value, gathered[module_key]), key


# --- EMA files in checkpoints -------------------------------------------------------------


def _accelerator(kind: str, index: int = 0, count: int = 2) -> SimpleNamespace:
    return SimpleNamespace(distributed_type=kind, process_index=index, num_processes=count,
                           is_main_process=index == 0)  # fmt: skip


def test_ema_file_per_process_when_sharded_else_one_from_the_main_process() -> None:
    assert checkpoints.ema_file(_accelerator("FSDP", 1)) == "ema-00001-of-00002.safetensors"
    assert checkpoints.ema_file(_accelerator("MULTI_GPU", 0)) == checkpoints.EMA_FILE
    assert checkpoints.ema_file(_accelerator("MULTI_GPU", 1)) is None


def _ema(*shapes: tuple[int, ...]) -> EMA:
    return EMA([torch.nn.Parameter(torch.ones(s)) for s in shapes], 0.9, offload=True)


def test_resuming_sharded_ema_needs_this_process_s_own_file(tmp_path: Path) -> None:
    ema = _ema((3,), (2, 2))
    ema.save(tmp_path / "ema-00000-of-00004.safetensors")  # written by four processes
    with pytest.raises(UsageError, match="another process layout"):
        checkpoints._ema_to_load(_accelerator("FSDP", 0, 2), tmp_path)
    with pytest.raises(UsageError, match="without EMA"):
        checkpoints._ema_to_load(_accelerator("FSDP", 0, 2), tmp_path / "none")


def test_ema_refuses_a_file_of_other_shapes(tmp_path: Path) -> None:
    _ema((3,), (2, 2)).save(tmp_path / "e.safetensors")
    with pytest.raises(UsageError, match="do not fit"):
        _ema((3,), (4,)).load(tmp_path / "e.safetensors")


def test_swapped_in_restores_the_trained_weights() -> None:
    parameter = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([parameter], 0.5, offload=False)
    with torch.no_grad():
        parameter.fill_(1.0)
    ema.update()  # decay min(0.5, 1/10): 0.1 * 0 + 0.9 * 1
    with ema.swapped_in():
        torch.testing.assert_close(parameter.detach(), torch.full((3,), 0.9))
    torch.testing.assert_close(parameter.detach(), torch.ones(3))
