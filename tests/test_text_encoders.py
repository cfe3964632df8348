"""Torch text encoders: remote code vs native, unpadded vs the card's padding, layouts refused."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from safetensors.torch import load_file, save_file  # noqa: E402

from sdxs_rt.backends.torch.text_encoder import (  # noqa: E402
    MAX_TOKENS,
    NativeTextEncoder,
    RemoteCodeTextEncoder,
    load_text_encoder,
)
from sdxs_rt.errors import ModelFormatError  # noqa: E402
from sdxs_rt.loading import TextEncoderFiles, resolve_model, resolve_text_encoder  # noqa: E402

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
        tensors = edit_tensors(load_file(folder / "model.safetensors"))
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
    assert torch.equal(native("кот"), native(["кот"]))  # a lone string is one prompt
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
        return config["text_config"]

    files = _edited_copy(remote_files, tmp_path, unprefixed, top_level)
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
    with pytest.raises(ModelFormatError, match=r"encoder_model, proj.*mexma_siglip"):
        NativeTextEncoder.load(files, "cpu", torch.float32)


def test_unknown_text_model_type_is_refused(remote_files: TextEncoderFiles, tmp_path: Path):
    def t5(config: dict) -> dict:
        return {"model_type": "t5", "architectures": ["T5EncoderModel"], "d_model": 32}

    files = _edited_copy(remote_files, tmp_path, edit_config=t5)
    with pytest.raises(ModelFormatError, match=r"'t5'.*T5EncoderModel.*XLM-RoBERTa"):
        NativeTextEncoder.load(files, "cpu", torch.float32)


def test_tower_weights_must_match_the_config(remote_files: TextEncoderFiles, tmp_path: Path):
    def missing_layer(tensors: dict) -> dict:
        return {k: v for k, v in tensors.items() if ".layer.1." not in k}

    files = _edited_copy(remote_files, tmp_path, edit_tensors=missing_layer)
    with pytest.raises(
        ModelFormatError, match=r"do not match its config: missing encoder\.layer\.1\."
    ):
        NativeTextEncoder.load(files, "cpu", torch.float32)


def test_tower_shapes_must_match_the_config(remote_files: TextEncoderFiles, tmp_path: Path):
    def wider_config(config: dict) -> dict:
        config["text_config"]["intermediate_size"] = 48
        return config

    files = _edited_copy(remote_files, tmp_path, edit_config=wider_config)
    with pytest.raises(ModelFormatError, match=r"do not match its config: size mismatch"):
        NativeTextEncoder.load(files, "cpu", torch.float32)


# --- remote code ------------------------------------------------------------------------


def test_remote_code_needs_auto_map(tiny_model: Path) -> None:
    with pytest.raises(ModelFormatError, match="could not be loaded with its remote code"):
        RemoteCodeTextEncoder.load(_files(tiny_model), "cpu", torch.float32)


def test_remote_code_needs_encode_texts(remote_files: TextEncoderFiles, tmp_path: Path) -> None:
    files = _edited_copy(remote_files, tmp_path)
    module = files.dir / "modeling_mexma_siglip.py"
    module.write_text(module.read_text().replace("def encode_texts", "def embed_texts"))
    with pytest.raises(ModelFormatError, match="no encode_texts method"):
        RemoteCodeTextEncoder.load(files, "cpu", torch.float32)
