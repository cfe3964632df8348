"""`sdxs-rt check --deep`: the native text path against the checkpoint's own code.

Both load on the CPU in float32 and encode each prompt alone (no padding in play), so the
difference measures the loaders, not the batching. The remote code runs: callers must have
the user's explicit opt-in (`--trust-remote-code`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from sdxs_rt.backends.torch.text_encoder import NativeTextEncoder, RemoteCodeTextEncoder
from sdxs_rt.errors import ModelFormatError, SdxsError
from sdxs_rt.text_encoder_files import TextEncoderFiles

T = TypeVar("T")
WHAT = "native vs remote-code text path, cpu float32, largest absolute difference per prompt"


def compare_text_paths(files: TextEncoderFiles, prompts: Sequence[str]) -> dict[str, float]:
    """prompt -> max |native - remote| over its pooled vector."""
    native = NativeTextEncoder.load(files, "cpu", torch.float32)
    remote = _guarded(lambda: RemoteCodeTextEncoder.load(files, "cpu", torch.float32), files)
    differences = {}
    for prompt in prompts:
        ours = native([prompt])
        theirs = _guarded(lambda: remote([prompt]).float(), files)  # noqa: B023 (called at once)
        if ours.shape != theirs.shape:
            raise ModelFormatError(
                f"The text encoder {files.name} gives {tuple(theirs.shape)} with its own code "
                f"and {tuple(ours.shape)} natively: the two paths disagree on the layout."
            )
        differences[prompt] = float((ours - theirs).abs().max())
    return differences


def _guarded(step: Callable[[], T], files: TextEncoderFiles) -> T:
    """Remote code may raise anything: one sentence naming the checkpoint instead."""
    try:
        return step()
    except SdxsError:
        raise
    except Exception as exc:  # code from the hub, not ours: any failure is its format's
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        raise ModelFormatError(
            f"The remote code of the text encoder {files.name} failed ({first})."
        ) from None
