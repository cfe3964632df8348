"""Progress on stderr: a tqdm bar on a terminal, a plain line now and then in a log.

A bar redraws itself with carriage returns, which a log file (stderr redirected) keeps as one
ever-growing line of bars; so commands draw one only when stderr is a TTY (`bar_wanted`), as
`sdxs-rt generate` does, and print a few plain lines instead where a log needs to show progress.
"""

from __future__ import annotations

import sys
from typing import Any, TextIO

LINES_PER_RUN = 20  # plain progress lines over a whole run


def bar_wanted(stream: TextIO | None = None) -> bool:
    """Whether a progress bar suits `stream` (default stderr): only a terminal redraws one."""
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class LineProgress:
    """tqdm's update / set_postfix / close, as a line 'desc: step n/total, k=v' every few steps."""

    def __init__(self, total: int, initial: int = 0, desc: str = "", stream: TextIO | None = None):
        self.total, self.n, self.desc = total, initial, desc
        self.stream = stream
        self.every = max(1, total // LINES_PER_RUN)
        self.postfix: dict[str, Any] = {}

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.n // self.every > before // self.every or self.n == self.total:
            details = "".join(f", {key} {value}" for key, value in self.postfix.items())
            stream = self.stream or sys.stderr
            print(f"{self.desc}: step {self.n}/{self.total}{details}", file=stream, flush=True)

    def close(self) -> None:
        pass


def step_progress(total: int, initial: int = 0, desc: str = "", enabled: bool = True) -> Any:
    """A tqdm bar on a terminal, LineProgress in a log, a silent bar where not `enabled`
    (e.g. every process but the first under accelerate)."""
    if enabled and not bar_wanted():
        return LineProgress(total, initial, desc)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True)  # fmt: skip
