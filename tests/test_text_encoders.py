"""Torch text encoders: remote code vs native, unpadded vs the card's padding, layouts refused."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import save_file  # noqa: E402

from sdxs_rt.backends.torch.text_encoder import (  # noqa: E402
    MAX_TOKENS,
    NativeTextEncoder,
    RemoteCodeTextEncoder,
    load_text_encoder,
)
from sdxs_rt.dev.tiny import REMOTE_CODE_FILE, text_config  # noqa: E402
from sdxs_rt.errors import DeviceError, ModelFormatError, ModelNotFoundError  # noqa: E402
from sdxs_rt.loading import resolve_model  # noqa: E402
from sdxs_rt.text_encoder_files import TextEncoderFiles, resolve_text_encoder  # noqa: E402
from tests.published_layout import read_tensors, split_text_encoder  # noqa: E402

PROMPTS = [
    "a red circle on a white background",
    "кот сидит на синей коробке",
    "",
    "two yellow stars above a black line, flat colours, simple drawing, minimal style",
]
TOLERANCE = 1e-5  # acceptance figure for both comparisons


def _files(model: Path) -> TextEncoderFiles:
    return resolve_text_encoder(None, resolve_model(str(model)))


@pytest.fixture(scope="module")
def remote_files(tiny_model_remote: Path) -> TextEncoderFiles:
    return _files(tiny_model_remote)


@pytest.fixture(scope="module")
def native(remote_files: TextEncoderFiles) -> NativeTextEncoder:
    return NativeTextEncoder.load(remote_files, "cpu", torch.float32)


def _edited_copy(files: TextEncoderFiles, tmp_path: Path, edit_tensors=None, edit_config=None):
    """A copy of the text encoder folder with its weights and/or config rewritten."""
    folder = Path(shutil.copytree(files.dir, tmp_path / "text_encoder"))
    if edit_tensors is not None:
        tensors = edit_tensors(read_tensors(folder / "model.safetensors"))
        save_file(tensors, folder / "model.safetensors")
    if edit_config is not None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(edit_config(config)))
    model = resolve_model(str(files.dir.parent))
    return resolve_text_encoder(str(folder), model)


def test_remote_code_and_native_agree(
    remote_files: TextEncoderFiles, native: NativeTextEncoder, record_property
) -> None:
    remote = RemoteCodeTextEncoder.load(remote_files, "cpu", torch.float32)
    ours, card = native(PROMPTS), remote(PROMPTS)
    assert ours.shape == card.shape == (len(PROMPTS), 1152)
    assert native.width == remote.width == 1152
    diff = (ours - card).abs().max().item()
    print(f"remote-code vs native text encoder: max |diff| = {diff:.3g}")
    record_property("remote_vs_native_max_diff", diff)
    assert diff <= TOLERANCE


def test_unpadded_matches_padding_to_512(
    remote_files: TextEncoderFiles, native: NativeTextEncoder, record_property
) -> None:
    padded = NativeTextEncoder.load(remote_files, "cpu", torch.float32, pad_to_max_length=True)
    ids, mask = native.tokenize(PROMPTS)
    padded_ids, padded_mask = padded.tokenize(PROMPTS)
    assert ids.shape[1] == int(mask.sum(1).max()) < MAX_TOKENS
    assert padded_ids.shape[1] == MAX_TOKENS
    assert torch.equal(padded_mask[:, : mask.shape[1]], mask)
    scale = padded(PROMPTS).abs().max().item()
    diff = (native(PROMPTS) - padded(PROMPTS)).abs().max().item()
    print(f"unpadded vs padded-to-512: max |diff| = {diff:.3g} (output scale {scale:.3g})")
    record_property("unpadded_vs_padded_max_diff", diff)
    assert diff <= TOLERANCE


def test_prompts_give_different_vectors(native: NativeTextEncoder) -> None:
    vectors = native(PROMPTS)
    assert torch.cdist(vectors, vectors).fill_diagonal_(1e9).min() > 0.1
    # a lone string is one prompt (two separate forward passes: compared within float32 noise)
    torch.testing.assert_close(native("кот"), native(["кот"]), rtol=1e-5, atol=1e-6)
    assert native([]).shape == (0, 1152)


def test_long_prompt_is_truncated_with_a_warning(native: NativeTextEncoder) -> None:
    with pytest.warns(UserWarning, match=r"only the first 512"):
        vector = native(["red circle " * 400])
    assert vector.shape == (1, 1152) and torch.isfinite(vector).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        native(["red circle"])


def test_load_text_encoder_picks_the_loader(tiny_model: Path, remote_files) -> None:
    native = load_text_encoder(_files(tiny_model), "cpu", torch.float32, trust_remote_code=False)
    assert isinstance(native, NativeTextEncoder)
    remote = load_text_encoder(remote_files, "cpu", torch.float32, trust_remote_code=True)
    assert isinstance(remote, RemoteCodeTextEncoder)


def test_dimensions_come_from_the_tensor_shapes(
    remote_files: TextEncoderFiles, native: NativeTextEncoder
) -> None:
    """The published config.json states no dimension: all of them are read from the header."""
    assert "hidden_size" not in json.dumps(remote_files.config)
    layout = remote_files.native_layout()
    assert layout.config_source == "tensor shapes"
    config = native.tower.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (128, 2, 2)
    assert (config.intermediate_size, config.max_position_embeddings) == (256, 514)
    assert layout.unused == {"vision_model": 32, "logit_scale": 1, "logit_bias": 1}


def test_the_vision_tower_is_never_used_for_text(
    remote_files: TextEncoderFiles, native: NativeTextEncoder, tmp_path: Path
) -> None:
    def poisoned_vision(tensors: dict) -> dict:
        return {
            k: torch.full_like(v, float("nan")) if k.startswith("vision_model.") else v
            for k, v in tensors.items()
        }

    files = _edited_copy(remote_files, tmp_path, edit_tensors=poisoned_vision)
    vectors = NativeTextEncoder.load(files, "cpu", torch.float32)(PROMPTS)
    assert torch.isfinite(vectors).all()
    assert (vectors - native(PROMPTS)).abs().max() <= TOLERANCE


def test_the_config_dtype_is_not_trusted(remote_files: TextEncoderFiles) -> None:
    """The latest config says bfloat16; the file holds float32, and float32 is what loads."""
    assert remote_files.config["torch_dtype"] == "bfloat16"
    encoder = NativeTextEncoder.load(remote_files, "cpu", torch.float32)
    assert {p.dtype for p in encoder.tower.parameters()} == {torch.float32}


def test_a_pooler_and_legacy_buffers_are_left_aside(
    remote_files: TextEncoderFiles, native: NativeTextEncoder, tmp_path: Path
) -> None:
    """Saved by some transformers versions: XLM-R's pooler and its position/type-id buffers."""

    def with_extras(tensors: dict) -> dict:
        return {
            **tensors,
            "text_model.pooler.dense.weight": torch.ones(128, 128),
            "text_model.pooler.dense.bias": torch.ones(128),
            "text_model.embeddings.position_ids": torch.arange(514)[None],
            "text_model.embeddings.token_type_ids": torch.zeros(1, 514, dtype=torch.long),
        }

    files = _edited_copy(remote_files, tmp_path, edit_tensors=with_extras)
    assert files.native_layout().unused["text_model.pooler"] == 2
    vectors = NativeTextEncoder.load(files, "cpu", torch.float32)(PROMPTS)
    assert (vectors - native(PROMPTS)).abs().max() <= TOLERANCE


def test_an_unknown_tensor_is_refused_by_name(
    remote_files: TextEncoderFiles, tmp_path: Path
) -> None:
    def extra(tensors: dict) -> dict:
        return {**tensors, "image_adapter.weight": torch.ones(2, 2)}

    files = _edited_copy(remote_files, tmp_path, edit_tensors=extra)
    with pytest.raises(ModelFormatError, match=r"does not know \(image_adapter\.weight\)"):
        NativeTextEncoder.load(files, "cpu", torch.float32)


def test_the_split_layout_gives_the_same_vectors(
    remote_files: TextEncoderFiles, native: NativeTextEncoder, tmp_path: Path
) -> None:
    """text_encoder/ as a bare XLM-R with its own config + text_projector/ holding the Linear."""
    model = Path(shutil.copytree(remote_files.dir.parent, tmp_path / "model"))
    split_text_encoder(model, "diffusion_pytorch_model.safetensors", "linear.weight")
    files = resolve_text_encoder(None, resolve_model(str(model)))
    vectors = NativeTextEncoder.load(files, "cpu", torch.float32)(PROMPTS)
    assert (vectors - native(PROMPTS)).abs().max() <= TOLERANCE


def test_bfloat16(remote_files: TextEncoderFiles, native: NativeTextEncoder) -> None:
    half = NativeTextEncoder.load(remote_files, "cpu", torch.bfloat16)
    vectors = half(PROMPTS[:2])
    assert vectors.dtype == torch.bfloat16 and half.dtype == torch.bfloat16
    assert (vectors.float() - native(PROMPTS[:2])).abs().max() < 0.2


# --- native layouts ---------------------------------------------------------------------


def test_native_accepts_text_projection_with_bias_and_ignores_vision(
    remote_files: TextEncoderFiles, native: NativeTextEncoder, tmp_path: Path
) -> None:
    bias = torch.linspace(-1, 1, 1152)

    def siglip_style(tensors: dict) -> dict:
        tensors["text_projection.weight"] = tensors.pop("text_projector.weight")
        tensors["text_projection.bias"] = bias
        tensors["vision_model.embeddings.patch_embedding.weight"] = torch.ones(4, 3, 2, 2)
        tensors["logit_scale"] = torch.ones(1)
        return tensors

    files = _edited_copy(remote_files, tmp_path, edit_tensors=siglip_style)
    vectors = NativeTextEncoder.load(files, "cpu", torch.float32)(PROMPTS)
    assert (vectors - (native(PROMPTS) + bias)).abs().max() <= TOLERANCE


def test_native_accepts_a_bare_xlm_r_checkpoint(
    remote_files: TextEncoderFiles, native: NativeTextEncoder, tmp_path: Path
) -> None:
    def unprefixed(tensors: dict) -> dict:
        return {k.removeprefix("text_model."): v for k, v in tensors.items()}

    def top_level(config: dict) -> dict:
        return text_config(409)  # an XLM-R config.json that states the dimensions

    files = _edited_copy(remote_files, tmp_path, unprefixed, top_level)
    assert files.native_layout().config_source == "config.json"
    vectors = NativeTextEncoder.load(files, "cpu", torch.float32)(PROMPTS)
    assert (vectors - native(PROMPTS)).abs().max() <= TOLERANCE


def test_unrecognised_weight_layout_is_refused(
    remote_files: TextEncoderFiles, tmp_path: Path
) -> None:
    def renamed(tensors: dict) -> dict:
        out = {k.replace("text_model.", "encoder_model."): v for k, v in tensors.items()}
        out["proj.weight"] = out.pop("text_projector.weight")
        return out

    files = _edited_copy(remote_files, tmp_path, edit_tensors=renamed)
    names = "encoder_model, logit_bias, logit_scale, proj, vision_model"
    with pytest.raises(ModelFormatError, match=f"no single text projection.*{names}"):
        NativeTextEncoder.load(files, "cpu", torch.float32)


def test_unknown_text_model_type_is_refused(remote_files: TextEncoderFiles, tmp_path: Path):
    def t5(config: dict) -> dict:
        return {"model_type": "t5", "architectures": ["T5EncoderModel"], "d_model": 32}

    files = _edited_copy(remote_files, tmp_path, edit_config=t5)
    with pytest.raises(ModelFormatError, match=r"'t5'.*T5EncoderModel.*XLM-RoBERTa"):
        NativeTextEncoder.load(files, "cpu", torch.float32)


def test_a_missing_tower_tensor_is_named(remote_files: TextEncoderFiles, tmp_path: Path):
    name = "text_model.encoder.layer.1.output.dense.weight"

    def missing_tensor(tensors: dict) -> dict:
        return {k: v for k, v in tensors.items() if k != name}

    files = _edited_copy(remote_files, tmp_path, edit_tensors=missing_tensor)
    assert files.layout is None
    with pytest.raises(ModelFormatError, match=r"\(2 layers\) lacks encoder\.layer\.1\.output"):
        NativeTextEncoder.load(files, "cpu", torch.float32)


def test_stated_dimensions_must_match_the_shapes(remote_files: TextEncoderFiles, tmp_path: Path):
    def wrong_config(config: dict) -> dict:
        return {**config, "text_config": {**text_config(409), "intermediate_size": 48}}

    files = _edited_copy(remote_files, tmp_path, edit_config=wrong_config)
    with pytest.raises(ModelFormatError, match=r"intermediate_size 48 \(the tensors say 256\)"):
        NativeTextEncoder.load(files, "cpu", torch.float32)


# --- remote code ------------------------------------------------------------------------


def test_remote_code_needs_auto_map(tiny_model: Path) -> None:
    with pytest.raises(ModelFormatError, match="could not be loaded with its remote code"):
        RemoteCodeTextEncoder.load(_files(tiny_model), "cpu", torch.float32)


def test_remote_code_needs_encode_texts(remote_files: TextEncoderFiles, tmp_path: Path) -> None:
    files = _edited_copy(remote_files, tmp_path)
    module = files.dir / REMOTE_CODE_FILE
    module.write_text(module.read_text().replace("def encode_texts", "def embed_texts"))
    with pytest.raises(ModelFormatError, match="no encode_texts method"):
        RemoteCodeTextEncoder.load(files, "cpu", torch.float32)


def test_remote_code_missing_package_is_one_sentence_exit_4(
    remote_files: TextEncoderFiles, tmp_path: Path
) -> None:
    files = _edited_copy(remote_files, tmp_path)
    module = files.dir / REMOTE_CODE_FILE
    module.write_text("import sdxs_rt_absent_package\n" + module.read_text())
    with pytest.raises(DeviceError, match=r"sdxs_rt_absent_package.*drop --trust-remote-code"):
        RemoteCodeTextEncoder.load(files, "cpu", torch.float32)


def test_remote_code_needing_the_hub_offline_is_exit_3(
    remote_files: TextEncoderFiles, tmp_path: Path
) -> None:
    """The published code fetches facebook/MEXMA's config at run time; offline that fails."""
    files = _edited_copy(remote_files, tmp_path)
    module = files.dir / REMOTE_CODE_FILE
    source = module.read_text().replace(
        "text_config = XLMRobertaConfig(**TEXT_CONFIG)",
        "text_config = XLMRobertaConfig.from_pretrained('facebook/MEXMA')",
    )
    module.write_text(source)
    with pytest.raises(ModelNotFoundError, match=r"could not get .*run it online once") as err:
        RemoteCodeTextEncoder.load(files, "cpu", torch.float32)
    assert err.value.exit_code == 3 and "\n" not in str(err.value)
