"""The tiny test model's tokenizer, written once per test session into a temporary folder
(the packaged default model is the trained demo, whose tokenizer knows other words)."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def tiny_tokenizer_dir() -> Path:
    from sdxs_rt.dev import tiny

    root = Path(tempfile.mkdtemp(prefix="sdxs-tiny-tokenizer-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    tiny.write_tokenizer(tiny.build_tokenizer(), root / "tokenizer")
    return root / "tokenizer"
