"""Progress output: a bar on a terminal only (as `generate` decides), plain lines in a log."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest

from sdxs_rt.progress import LineProgress, bar_wanted, step_progress


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_is_wanted_on_a_terminal_only() -> None:
    assert bar_wanted(FakeTerminal())
    assert not bar_wanted(io.StringIO())
    assert not bar_wanted(object())  # type: ignore[arg-type]  # no isatty at all


def test_line_progress_prints_about_twenty_lines_with_the_postfix() -> None:
    stream = io.StringIO()
    progress = LineProgress(100, initial=10, desc="training", stream=stream)
    for step in range(10, 100):
        progress.set_postfix(loss=f"{step / 100:.2f}")
        progress.update(1)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "training: step 15/100, loss 0.14"
    assert lines[-1] == "training: step 100/100, loss 0.99"
    assert len(lines) == 18 and "\r" not in stream.getvalue()


def test_step_progress_follows_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(step_progress(10, desc="x"), LineProgress)
    monkeypatch.setattr("sys.stderr", FakeTerminal())
    bar = step_progress(10, desc="x")
    assert not isinstance(bar, LineProgress) and not bar.disable
    bar.close()
    quiet = step_progress(10, desc="x", enabled=False)  # another process than the first
    assert not isinstance(quiet, LineProgress) and quiet.disable


def test_the_trainer_draws_a_bar_on_a_terminal_only(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    trainer: Any = pytest.importorskip("sdxs_rt.training.trainer")
    run = SimpleNamespace(
        accelerator=SimpleNamespace(is_local_main_process=True),
        config=SimpleNamespace(max_steps=40),
    )
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(trainer._progress(run, 0), LineProgress)
    monkeypatch.setattr("sys.stderr", FakeTerminal())
    bar = trainer._progress(run, 0)
    assert not isinstance(bar, LineProgress)
    bar.close()
