"""Stdout carries results only: what libraries print during a noisy call goes to stderr.

ONNX Runtime announces provider fallbacks ("EP Error ... Falling back") and failed library
preloads with Python's `print`, and the native libraries it loads may write to file descriptor 1
themselves. `sdxs-rt generate --json` promises JSON lines on stdout, so such calls run inside
`stdout_to_stderr()`: Python's `sys.stdout` and the process's fd 1 both point at stderr.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from collections.abc import Iterator

STDOUT_FD = 1
STDERR_FD = 2


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Inside, everything written to stdout (Python or native) lands on stderr.

    Process-wide while it lasts (file descriptors are shared by all threads): meant for short
    calls such as creating an inference session, never around a whole run.
    """
    _flush_everything()
    saved = _point_fd_at(STDOUT_FD, STDERR_FD)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        # flush while fd 1 still points at stderr: what was buffered inside belongs there
        _flush_everything()
        if saved is not None:
            os.dup2(saved, STDOUT_FD)
            os.close(saved)


def _point_fd_at(fd: int, target: int) -> int | None:
    """dup2 `target` onto `fd`; a copy of the old `fd` to restore, or None if there is none."""
    try:
        saved = os.dup(fd)
    except OSError:  # no fd 1 at all (a windowed process): nothing native can reach stdout
        return None
    try:
        os.dup2(target, fd)
    except OSError:
        os.close(saved)
        return None
    return saved


def _flush_everything() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):  # closed or broken streams
                stream.flush()
    _flush_c_stdio()


def _flush_c_stdio() -> None:
    # C's stdout is block-buffered into a pipe or file: text native code printed inside must
    # leave the buffer before fd 1 points back at stdout.
    try:
        libc = ctypes.CDLL(None)
        libc.fflush(None)
    except (OSError, TypeError, AttributeError):  # no C library handle (Windows): nothing to do
        pass
