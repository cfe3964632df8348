"""The checkpoint's own model class (its remote code), built and filled without from_pretrained.

The card loads Mexma-SigLIP with `AutoModel.from_pretrained(..., trust_remote_code=True)`. Under
transformers 5 that call cannot build the published class: its `__init__` never calls
`post_init()`, which from_pretrained now relies on (`all_tied_weights_keys`). So, on every
transformers version, the class is taken from the remote module, built from its config, and
filled from the checkpoint's safetensors with every tensor accounted for: the same code and the
same weights as the card's call, whatever transformers does around them.
"""

from __future__ import annotations

from typing import Any

import torch

from sdxs_rt.errors import DeviceError, ModelFormatError, ModelNotFoundError
from sdxs_rt.text_encoder_files import TextEncoderFiles

# Buffers that some transformers versions persist and others do not: never a weight.
OPTIONAL_BUFFERS = ("position_ids", "token_type_ids")


def load_remote_model(files: TextEncoderFiles, device: torch.device, dtype: torch.dtype) -> Any:
    """The remote class of `files`, with its weights, on `device` in `dtype`, in eval mode."""
    model = _build_model(files)
    _fill_weights(model, files)
    if not callable(getattr(model, "encode_texts", None)):
        raise ModelFormatError(
            f"The text encoder in {files.dir} ({type(model).__name__}) has no encode_texts "
            "method; sdxs-rt needs a Mexma-SigLIP-style model."
        )
    return model.to(device, dtype).eval()


def _build_model(files: TextEncoderFiles) -> Any:
    from transformers import AutoConfig
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    try:
        config = AutoConfig.from_pretrained(str(files.dir), trust_remote_code=True)
        reference = (getattr(config, "auto_map", None) or {}).get("AutoModel")
        if not reference:
            raise ValueError("its config.json has no auto_map naming an AutoModel class")
        model_class = get_class_from_dynamic_module(reference, str(files.dir))
        return model_class(config)
    except ImportError as exc:  # transformers lists the packages the remote code imports
        raise DeviceError(
            f"The remote code of {files.dir} needs Python packages that are not installed "
            f"({_first_line(exc)}); install them or drop --trust-remote-code."
        ) from None
    except OSError as exc:  # e.g. the tower configs the published code fetches from the hub
        raise ModelNotFoundError(
            f"The remote code of {files.dir} needs a file it could not get "
            f"({_first_line(exc)}); it fetches tower configs from the hub, so run it online "
            "once or drop --trust-remote-code."
        ) from None
    except (ValueError, KeyError, AttributeError, TypeError) as exc:
        raise ModelFormatError(
            f"{files.dir} could not be loaded with its remote code ({_first_line(exc)})."
        ) from None


def _fill_weights(model: Any, files: TextEncoderFiles) -> None:
    """Every parameter from the file, every tensor of the file used (buffers may differ)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for path in files.weights:
        state.update(load_file(str(path)))
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith(OPTIONAL_BUFFERS)]
    unexpected = [k for k in result.unexpected_keys if not k.endswith(OPTIONAL_BUFFERS)]
    if missing or unexpected:
        raise ModelFormatError(
            f"The weights in {files.dir} do not fit its remote code's model: missing "
            f"{', '.join(missing[:4]) or 'none'}; unexpected {', '.join(unexpected[:4]) or 'none'}."
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
