"""TrainConfig: TOML + flags, unknown keys, bad values, and the command's parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdxs_rt.commands.cli import build_parser
from sdxs_rt.commands.train import config_from_args
from sdxs_rt.errors import ModelNotFoundError, UsageError
from sdxs_rt.training.config import default_min_side, load_toml, make_config

TOML = """
model = "some/model"
data = "data"
output_dir = "out"
mode = "lora"
max_steps = 50
learning_rate = 3e-4
ema = true
validation_every = 10
validation_prompts = ["a red circle", "кот"]
min_snr_gamma = 5
"""


def _toml(tmp_path: Path, text: str = TOML) -> Path:
    path = tmp_path / "train.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_values_and_flags_override(tmp_path: Path) -> None:
    argv = ["train", "--config", str(_toml(tmp_path)), "--max-steps", "7", "--no-ema"]
    argv += ["--validation-prompts", "one", "two", "--lora-rank", "4"]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.model, config.mode, config.learning_rate) == ("some/model", "lora", 3e-4)
    assert config.max_steps == 7 and config.ema is False and config.lora_rank == 4
    assert config.validation_prompts == ["one", "two"]
    assert config.min_snr_gamma == 5.0 and isinstance(config.min_snr_gamma, float)
    assert config.cache_path == Path("out") / "cache"


def test_flags_alone_and_learning_rate_defaults() -> None:
    full = make_config(overrides={"data": "d", "output_dir": "o"})
    assert (full.mode, full.lr, full.lr_scheduler, full.caption_dropout) == (
        "full",
        1e-5,
        "cosine",
        0.1,
    )
    lora = make_config(overrides={"data": "d", "output_dir": "o", "mode": "lora"})
    assert lora.lr == 1e-4


def test_unknown_toml_key_names_it_and_lists_valid_ones(tmp_path: Path) -> None:
    path = _toml(tmp_path, TOML + "learnin_rate = 1e-4\n")
    with pytest.raises(UsageError, match="learnin_rate") as error:
        load_toml(path)
    assert "learning_rate" in str(error.value) and "max_steps" in str(error.value)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"mode": "dreambooth"}, "mode must be one of"),
        ({"resolution": 100}, "multiple of 64"),
        ({"min_side": 640}, "must not exceed"),
        ({"caption_dropout": 1.5}, "between 0 and 1"),
        ({"learning_rate": -1.0}, "positive"),
        ({"max_steps": 0}, "at least 1"),
        ({"lr_scheduler": "step"}, "lr_scheduler"),
        ({"validation_every": 5}, "validation prompt"),
        ({"max_steps": "ten"}, "must be a int"),
        ({"ema": 1}, "must be a bool"),
        ({"min_snr_gamma": 0}, "min_snr_gamma"),
        ({"data": ""}, "training data"),
        ({"revision": "abc123"}, "applies to hub repo ids only"),  # the built-in model
    ],
)
def test_bad_values_are_one_sentence_errors(change: dict, words: str) -> None:
    values = {"data": "d", "output_dir": "o", **change}
    with pytest.raises(UsageError, match=words):
        make_config(values)


@pytest.mark.parametrize(
    ("resolution", "expected"),
    [(576, 320), (64, 64), (128, 64), (256, 128), (512, 256), (768, 384), (1024, 512)],
)
def test_min_side_defaults_to_the_sdxs_ratio_of_the_resolution(
    resolution: int, expected: int
) -> None:
    assert default_min_side(resolution) == expected
    config = make_config(overrides={"data": "d", "output_dir": "o", "resolution": resolution})
    assert config.min_side is None and config.bucket_min_side == expected
    given = make_config(overrides={"data": "d", "output_dir": "o", "min_side": 64})
    assert given.bucket_min_side == 64


def test_train_resolution_64_alone_is_a_valid_command() -> None:
    argv = ["train", "--data", "d", "--output-dir", "o", "--resolution", "64"]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.resolution, config.bucket_min_side) == (64, 64)
    with pytest.raises(UsageError, match="min_side 128 must not exceed the resolution 64"):
        config_from_args(build_parser().parse_args([*argv, "--min-side", "128"]))


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not valid TOML"):
        load_toml(_toml(tmp_path, "model = \n"))
    with pytest.raises(ModelNotFoundError):
        load_toml(tmp_path / "nope.toml")


def test_help_mentions_accelerate_and_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, contextlib, io\n"
        "from sdxs_rt.commands.cli import build_parser\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    build_parser().parse_args(['train', '--help'])\n"
        "assert 'accelerate launch -m sdxs_rt.commands.cli train' in out.getvalue()\n"
        "assert '--learning-rate' in out.getvalue()\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def test_the_readme_toml_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    config = make_config(load_toml(_toml(tmp_path, block)))
    assert (config.mode, config.max_steps, config.variant) == ("lora", 2000, "fp16")
    assert config.validation_prompts == ["a lighthouse at dawn", "кот"]
