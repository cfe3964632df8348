"""The tiny-model builder and the torch-free loader: layouts, errors, hub cache, model hash."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdxs_rt import loading
from sdxs_rt.errors import ModelFormatError, ModelNotFoundError, UsageError
from sdxs_rt.loading import (
    check_safetensors,
    default_model_path,
    model_hash,
    resolve_model,
    weights_path,
)
from sdxs_rt.text_encoder_files import DEFAULT_TEXT_ENCODER, resolve_text_encoder

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdxs_rt.dev.tiny import (  # noqa: E402
    MEXMA_SIGLIP_CONFIG,
    MEXMA_SIGLIP_EARLIER_CONFIG,
    REMOTE_CODE_FILE,
    build_tiny_model,
    build_tiny_text_encoder,
    main,
)
from tests.published_layout import (  # noqa: E402
    fake_hub_cache,
    offline_hub_cache,
    read_tensors,
    split_text_encoder,
)

UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _copy(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "copy"))


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- builder layout ---------------------------------------------------------------------


def test_default_layout_matches_the_sdxs_format(tiny_model: Path) -> None:
    unet = _json(tiny_model / "unet" / "config.json")
    assert unet["_class_name"] == "UNet2DConditionModel"
    assert unet["in_channels"] == unet["out_channels"] == 16
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 4
    assert unet["up_block_types"] == ["CrossAttnUpBlock2D"] * 4
    assert unet["mid_block_type"] == "UNetMidBlock2DCrossAttn"
    assert unet["cross_attention_dim"] == 1152
    assert isinstance(unet["attention_head_dim"], list) and unet["num_attention_heads"] is None
    scheduler = _json(tiny_model / "scheduler" / "scheduler_config.json")
    assert scheduler["_class_name"] == "DDPMScheduler"
    assert scheduler["clip_sample"] is False and scheduler["prediction_type"] == "epsilon"
    assert scheduler["timestep_spacing"] == "leading" and scheduler["steps_offset"] == 1
    vae = _json(tiny_model / "vae" / "config.json")
    assert vae["latent_channels"] == 16 and len(vae["block_out_channels"]) == 4
    assert vae["shift_factor"] is not None and vae["latents_mean"] is None
    index = _json(tiny_model / "model_index.json")
    assert {"unet", "vae", "scheduler", "text_encoder", "tokenizer"} <= set(index)
    second = _json(tiny_model / "sdxs" / "config.json")  # as published: a second U-Net
    assert second["block_out_channels"] != unet["block_out_channels"]


PUBLISHED_TEXT_FILES = {
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
}


def test_default_text_encoder_is_the_earlier_published_layout(tiny_model: Path) -> None:
    folder = tiny_model / "text_encoder"
    assert _json(folder / "config.json") == MEXMA_SIGLIP_EARLIER_CONFIG  # no dimensions
    assert {p.name for p in folder.iterdir()} == PUBLISHED_TEXT_FILES  # no sentencepiece model
    assert (tiny_model / "tokenizer" / "tokenizer.json").read_bytes() == (
        folder / "tokenizer.json"
    ).read_bytes()


def test_one_float32_file_holds_text_projector_and_vision(tiny_model: Path) -> None:
    table = loading.tensor_table([tiny_model / "text_encoder" / "model.safetensors"])
    groups = {key.split(".", 1)[0] for key in table}
    assert groups == {"text_model", "text_projector", "vision_model", "logit_scale", "logit_bias"}
    assert {info.dtype for info in table.values()} == {"F32"}
    assert table["text_projector.weight"].shape == (1152, 128)


def test_remote_layout_is_the_latest_published_config(tiny_model_remote: Path) -> None:
    folder = tiny_model_remote / "text_encoder"
    assert _json(folder / "config.json") == MEXMA_SIGLIP_CONFIG
    assert {p.name for p in folder.iterdir()} == PUBLISHED_TEXT_FILES | {REMOTE_CODE_FILE}
    assert "class MexmaSigLIP(" in (folder / REMOTE_CODE_FILE).read_text()


def test_sdxs_folder_and_fp16_variant(tiny_model_sdxs_fp16: Path) -> None:
    from safetensors import safe_open

    assert not (tiny_model_sdxs_fp16 / "unet").exists()
    files = resolve_model(str(tiny_model_sdxs_fp16), variant="fp16")
    assert files.unet_dir.name == "sdxs"
    assert files.unet_weights.name == "diffusion_pytorch_model.fp16.safetensors"
    with safe_open(str(files.unet_weights), framework="pt") as handle:
        assert handle.get_tensor("conv_in.weight").dtype == torch.float16
    with pytest.raises(ModelNotFoundError, match=r"--variant fp16"):
        resolve_model(str(tiny_model_sdxs_fp16))


def test_mean_std_vae(tiny_model_mean_std: Path) -> None:
    vae = resolve_model(str(tiny_model_mean_std)).vae_config
    assert len(vae["latents_mean"]) == len(vae["latents_std"]) == 16
    assert vae["shift_factor"] is None


def test_same_seed_same_bytes_other_seed_other_weights(tiny_model: Path, tmp_path: Path) -> None:
    again = build_tiny_model(tmp_path / "again", seed=0)
    assert _digests(again) == _digests(tiny_model)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert (other / "unet" / UNET_WEIGHTS).read_bytes() != (
        tiny_model / "unet" / UNET_WEIGHTS
    ).read_bytes()


def test_unet_loads_and_depends_on_its_inputs(tiny_model: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model / "unet").eval()
    assert all(p.any() for p in unet.parameters()), "a zero-initialised layer was left at zero"
    heads = unet.config.attention_head_dim
    assert unet.down_blocks[3].attentions[0].transformer_blocks[0].attn2.heads == heads[3]
    gen = torch.Generator().manual_seed(0)
    sample, context = (
        torch.randn(1, 16, 8, 8, generator=gen),
        torch.randn(1, 1, 1152, generator=gen),
    )
    with torch.no_grad():
        base = unet(sample, 500, context).sample
        other_context = unet(sample, 500, -context).sample
        other_step = unet(sample, 20, context).sample
    assert base.abs().mean() > 0.01
    assert (base - other_context).abs().max() > 1e-3
    assert (base - other_step).abs().max() > 1e-3


def test_tokenizer_loads_with_transformers_and_tokenizers(tiny_model: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    folder = tiny_model / "tokenizer"
    fast = AutoTokenizer.from_pretrained(folder)
    # transformers 5 dropped the "Fast" suffix: its XLMRobertaTokenizer is the tokenizers one
    assert type(fast).__name__ in ("XLMRobertaTokenizerFast", "XLMRobertaTokenizer")
    assert fast.is_fast and fast.model_max_length == 512
    assert (fast.bos_token_id, fast.pad_token_id, fast.eos_token_id, fast.unk_token_id) == (
        0,
        1,
        2,
        3,
    )
    assert fast.mask_token_id == len(fast) - 1
    table = loading.tensor_table([tiny_model / "text_encoder" / "model.safetensors"])
    assert len(fast) == table["text_model.embeddings.word_embeddings.weight"].shape[0]
    ids = fast("красный круг").input_ids
    assert ids[0] == 0 and ids[-1] == 2 and 3 not in ids
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert raw.encode("красный круг").ids == ids


def test_cli_builds_a_model(tmp_path: Path) -> None:
    assert main([str(tmp_path / "m"), "--seed", "2", "--unet-folder", "sdxs"]) == 0
    assert resolve_model(str(tmp_path / "m")).unet_dir.name == "sdxs"


# --- which U-Net ------------------------------------------------------------------------


def test_model_index_picks_the_unet_and_the_other_is_named(tiny_model: Path) -> None:
    files = resolve_model(str(tiny_model))
    assert files.unet_dir == tiny_model / "unet"
    assert files.notes == ("U-Net: unet/ (named by model_index.json)",)
    assert files.skipped == ("sdxs/: another U-Net, not used (unet/ is)",)


def test_model_index_naming_sdxs_wins_over_the_card_folder(
    tiny_model: Path, tmp_path: Path
) -> None:
    model = _copy(tiny_model, tmp_path)
    index = _json(model / "model_index.json")
    index["sdxs"] = index.pop("unet")
    (model / "model_index.json").write_text(json.dumps(index))
    files = resolve_model(str(model))
    assert files.unet_dir == model / "sdxs"
    assert files.unet_config["block_out_channels"] == [8, 16, 24, 24]


def test_without_model_index_the_card_folder_then_sdxs(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    (model / "model_index.json").unlink()
    assert resolve_model(str(model)).unet_dir == model / "unet"
    assert "the model card's folder" in resolve_model(str(model)).notes[0]
    shutil.rmtree(model / "unet")
    files = resolve_model(str(model))
    assert files.unet_dir == model / "sdxs" and files.skipped == ()


def test_unknown_folders_are_named(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    (model / "train_scripts").mkdir()
    assert "ignored folders: train_scripts/" in resolve_model(str(model)).skipped


def test_hub_downloads_only_the_chosen_unet(tiny_model: Path) -> None:
    """The allow-patterns of the weights fetch match unet/ and vae/ weights, never sdxs/'s."""
    from fnmatch import fnmatch

    patterns = loading._weight_patterns(("unet", "vae"), None)
    files = [str(p.relative_to(tiny_model)) for p in tiny_model.rglob("*") if p.is_file()]
    fetched = {f for f in files if any(fnmatch(f, pattern) for pattern in patterns)}
    assert f"unet/{UNET_WEIGHTS}" in fetched and f"vae/{UNET_WEIGHTS}" in fetched
    assert f"sdxs/{UNET_WEIGHTS}" not in fetched
    assert "text_encoder/model.safetensors" not in fetched  # judged from its header first
    assert "sdxs/config.json" in fetched and "text_encoder/config.json" in fetched


# --- packaged default -------------------------------------------------------------------


def test_packaged_default_model_resolves_and_is_small() -> None:
    files = resolve_model(None)
    assert files.root == default_model_path() and files.name == "demo-shapes"
    assert files.text_encoder_dir is not None and files.tokenizer_dir is not None
    total = sum(p.stat().st_size for p in files.root.rglob("*") if p.is_file())
    assert total < 25_000_000


def test_loading_does_not_import_torch() -> None:
    code = "import sys, sdxs_rt.loading as l; l.resolve_model(None); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --- loading errors ---------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="nowhere"):
        resolve_model(str(tmp_path / "nowhere"))


def test_missing_unet_weights_names_the_file(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    (model / "unet" / UNET_WEIGHTS).unlink()
    with pytest.raises(ModelNotFoundError, match=UNET_WEIGHTS):
        resolve_model(str(model))


def test_missing_unet_folder(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    shutil.rmtree(model / "unet")
    shutil.rmtree(model / "sdxs")
    with pytest.raises(ModelNotFoundError, match="U-Net folder"):
        resolve_model(str(model))


def test_truncated_safetensors(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    weights = model / "unet" / UNET_WEIGHTS
    weights.write_bytes(weights.read_bytes()[:100_000])
    with pytest.raises(ModelFormatError, match=r"truncated or corrupt") as err:
        resolve_model(str(model))
    assert str(weights) in str(err.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x05\x00", b"\xff" * 8 + b"{}", (20).to_bytes(8, "little") + b"not json!!" * 2],
)
def test_corrupt_headers(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(ModelFormatError, match="truncated or corrupt"):
        check_safetensors(path)


def test_pickled_weights_are_refused(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    (model / "unet" / UNET_WEIGHTS).rename(model / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelFormatError, match="pickled") as err:
        resolve_model(str(model))
    assert "diffusion_pytorch_model.bin" in str(err.value)


def test_missing_variant_lists_what_is_there(tiny_model: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"fp16\.safetensors.*holds: config\.json"):
        weights_path(tiny_model / "unet", "diffusion_pytorch_model", "fp16")
    with pytest.raises(UsageError):
        resolve_model(str(tiny_model), variant="int4")


def test_flow_matching_scheduler_is_refused(tmp_path: Path) -> None:
    overrides = {"_class_name": "FlowMatchEulerDiscreteScheduler"}
    model = build_tiny_model(tmp_path / "m", scheduler_overrides=overrides)
    with pytest.raises(ModelFormatError, match="FlowMatchEulerDiscreteScheduler") as err:
        resolve_model(str(model))
    assert "scheduler_config.json" in str(err.value) and "DDPMScheduler" in str(err.value)


def test_scheduler_overrides_are_written(tmp_path: Path) -> None:
    model = build_tiny_model(
        tmp_path / "m", scheduler_overrides={"prediction_type": "v_prediction"}
    )
    assert resolve_model(str(model)).scheduler_config["prediction_type"] == "v_prediction"


def test_bad_json_names_the_file(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    (model / "vae" / "config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match=r"vae.config\.json is not valid JSON"):
        resolve_model(str(model))


def test_wrong_unet_class_and_missing_keys(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    config_path = model / "unet" / "config.json"
    config = _json(config_path)
    config_path.write_text(json.dumps({**config, "_class_name": "SD3Transformer2DModel"}))
    with pytest.raises(ModelFormatError, match=r"SD3Transformer2DModel.*UNet2DConditionModel"):
        resolve_model(str(model))
    del config["cross_attention_dim"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelFormatError, match="cross_attention_dim"):
        resolve_model(str(model))


# --- hub ids, offline -------------------------------------------------------------------


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return offline_hub_cache(tmp_path, monkeypatch)


def test_cached_hub_id_resolves_offline(tiny_model: Path, offline_hub: Path) -> None:
    snapshot = fake_hub_cache(offline_hub, "org/tiny-sdxs", tiny_model)
    files = resolve_model("org/tiny-sdxs")
    assert files.root == snapshot and files.name == "org/tiny-sdxs"
    assert files.unet_weights == snapshot / "unet" / UNET_WEIGHTS


def test_hub_cache_env_var_wins(
    tiny_model: Path, tmp_path: Path, offline_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "elsewhere"
    fake_hub_cache(other, "org/tiny-sdxs", tiny_model)
    monkeypatch.setenv("HF_HUB_CACHE", str(other))
    assert resolve_model("org/tiny-sdxs").root.is_relative_to(other)


def test_a_pinned_revision_resolves_offline(tiny_model: Path, offline_hub: Path) -> None:
    snapshot = fake_hub_cache(offline_hub, "org/tiny-sdxs", tiny_model)
    files = resolve_model("org/tiny-sdxs", revision=snapshot.name)
    assert files.root == snapshot and files.revision == snapshot.name
    assert files.hub_id == "org/tiny-sdxs"
    with pytest.raises(ModelNotFoundError, match=r"org/tiny-sdxs at revision v9 is not"):
        resolve_model("org/tiny-sdxs", revision="v9")


def test_uncached_hub_id_offline_is_not_found(offline_hub: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"org/absent.*not in the hub cache.*offline"):
        resolve_model("org/absent")


def test_default_text_encoder_comes_from_the_hub_cache(
    tiny_model: Path, tmp_path: Path, offline_hub: Path
) -> None:
    model = _copy(tiny_model, tmp_path)
    shutil.rmtree(model / "text_encoder")
    card = build_tiny_text_encoder(tmp_path / "mexma-siglip")
    fake_hub_cache(offline_hub, DEFAULT_TEXT_ENCODER, card)
    files = resolve_text_encoder(None, resolve_model(str(model)))
    assert files.name == "visheratin/mexma-siglip" and files.skipped == ()
    assert files.tokenizer_dir == files.dir  # the hub folder carries its own tokenizer
    assert files.layout is not None and files.layout.width == 1152


def test_an_incomplete_own_text_encoder_falls_back_to_the_card(
    tiny_model: Path, tmp_path: Path, offline_hub: Path
) -> None:
    """A text_encoder/ that projects to 1024 cannot feed this U-Net: the card's is used."""
    from safetensors.torch import save_file

    model = _copy(tiny_model, tmp_path)
    weights = model / "text_encoder" / "model.safetensors"
    tensors = read_tensors(weights)
    tensors["text_projector.weight"] = tensors["text_projector.weight"][:1024]
    save_file(tensors, weights)
    fake_hub_cache(offline_hub, DEFAULT_TEXT_ENCODER, build_tiny_text_encoder(tmp_path / "c"))
    files = resolve_text_encoder(None, resolve_model(str(model)))
    assert files.name == DEFAULT_TEXT_ENCODER
    assert files.skipped == (
        "text_encoder/ not used: its text_encoder/ gives 1024-wide vectors and the U-Net "
        "takes 1152",
    )


def _hub_model_without_text_weights(tiny_model: Path, tmp_path: Path, cache: Path) -> None:
    """What the first, configs-only fetch of a hub model leaves: text_encoder/ without weights."""
    source = _copy(tiny_model, tmp_path)
    (source / "text_encoder" / "model.safetensors").unlink()
    fake_hub_cache(cache, "org/tiny-sdxs", source)
    fake_hub_cache(cache, DEFAULT_TEXT_ENCODER, build_tiny_text_encoder(tmp_path / "c"))


def test_hub_text_encoder_unjudgeable_offline_falls_back_to_the_card(
    tiny_model: Path, tmp_path: Path, offline_hub: Path
) -> None:
    _hub_model_without_text_weights(tiny_model, tmp_path, offline_hub)
    files = resolve_text_encoder(None, resolve_model("org/tiny-sdxs"))
    assert files.name == DEFAULT_TEXT_ENCODER
    assert "its header could not be read from the hub" in files.skipped[0]


def test_hub_text_encoder_judged_by_its_remote_header(
    tiny_model: Path, tmp_path: Path, offline_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A remote header (read with a range request online) saying 1024 wide: not fetched."""
    from types import SimpleNamespace

    from sdxs_rt import hub

    _hub_model_without_text_weights(tiny_model, tmp_path, offline_hub)
    table = loading.tensor_table([tiny_model / "text_encoder" / "model.safetensors"])
    table["text_projector.weight"] = loading.TensorInfo("F32", (1024, 128))
    header = SimpleNamespace(tensors=table)
    monkeypatch.setattr(
        hub,
        "remote_safetensors_header",
        lambda repo, name, rev: header if "encoder" in name else None,
    )
    files = resolve_text_encoder(None, resolve_model("org/tiny-sdxs"))
    assert files.name == DEFAULT_TEXT_ENCODER
    assert "gives 1024-wide vectors and the U-Net takes 1152" in files.skipped[0]


def test_a_split_text_encoder_and_projector_is_recognised(tiny_model: Path, tmp_path: Path):
    """An XLM-R `text_encoder/` (bare tower, XLM-R config) + a one-Linear `text_projector/`."""
    model = _copy(tiny_model, tmp_path)
    folder = model / "text_encoder"
    split_text_encoder(model, "model.safetensors", "weight")
    files = resolve_text_encoder(None, resolve_model(str(model)))
    assert files.dir == folder and files.layout is not None
    assert files.projector_weights == (model / "text_projector" / "model.safetensors",)
    assert files.layout.width == 1152 and files.layout.config_source == "config.json"


# --- text encoder resolution ------------------------------------------------------------


def test_text_encoder_resolution_order(tiny_model: Path, tiny_model_remote: Path) -> None:
    model = resolve_model(str(tiny_model))
    own = resolve_text_encoder(None, model)
    assert own.dir == tiny_model / "text_encoder"
    assert own.weights == (tiny_model / "text_encoder" / "model.safetensors",)
    explicit = resolve_text_encoder(str(tiny_model_remote / "text_encoder"), model)
    assert explicit.dir == tiny_model_remote / "text_encoder"
    whole_model = resolve_text_encoder(str(tiny_model_remote), model)
    assert whole_model.dir == tiny_model_remote / "text_encoder"


def test_tokenizer_falls_back_to_the_model_folder(tiny_model: Path, tmp_path: Path) -> None:
    model = _copy(tiny_model, tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (model / "text_encoder" / name).unlink()
    files = resolve_text_encoder(None, resolve_model(str(model)))
    assert files.tokenizer_dir == model / "tokenizer"


# --- model hash -------------------------------------------------------------------------


def test_model_hash_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDXS_RT_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights v1")
    expected = hashlib.sha256(b"weights v1").hexdigest()[:10]
    assert model_hash(weights) == expected
    assert (tmp_path / "cache" / "hashes.json").is_file()

    def no_rehash(path: Path) -> str:
        raise AssertionError("hashed again although size and mtime did not change")

    monkeypatch.setattr(loading, "_sha256_of", no_rehash)
    assert model_hash(weights) == expected
    monkeypatch.undo()
    monkeypatch.setenv("SDXS_RT_CACHE", str(tmp_path / "cache"))
    weights.write_bytes(b"weights v2, longer")
    assert model_hash(weights) == hashlib.sha256(b"weights v2, longer").hexdigest()[:10]
