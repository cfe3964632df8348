"""The desktop's job queue (pytest-qt, offscreen, the built-in model): Generate while a run is
in progress queues the request; the queue runs one job after another; pending jobs can be moved
or cancelled, the running one cancelled; the window shows the entries.

A gate in front of the U-Net (each call waits for a permit from the test) holds the first job
mid-run, so that "pending" is deterministic; every wait has a timeout."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")
pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PySide6.QtCore import QSettings, Qt
from sdxs_rt_desktop.app import build_window
from sdxs_rt_desktop.controller import Controller
from sdxs_rt_desktop.history import settings_from_png
from sdxs_rt_desktop.queue_state import EntryStatus, QueueEntry, QueueState, short_prompt
from sdxs_rt_desktop.state import GenerationState, ModelState, RunState
from sdxs_rt_desktop.worker import LoadRequest

from sdxs_rt.pipeline import Pipeline
from tests.gate import Gate

TIMEOUT_MS = 60_000
WAIT = 30.0  # seconds a gated U-Net call waits for its permit


class GatedUNet:
    def __init__(self, unet: Any, gate: Gate) -> None:
        self.unet, self.gate = unet, gate

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.gate.hook()
        return self.unet(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.unet, name)


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    """Every pipeline the desktop loads has its U-Net behind the gate."""
    gate = Gate(WAIT)
    load = LoadRequest.load

    def gated_load(request: LoadRequest) -> Pipeline:
        pipe = load(request)
        pipe.components.unet = GatedUNet(pipe.components.unet, gate)
        return pipe

    monkeypatch.setattr(LoadRequest, "load", gated_load)
    yield gate
    gate.open()  # never leave a worker waiting


@pytest.fixture
def states() -> SimpleNamespace:
    generation = GenerationState()
    generation.update(prompt="a red fox", width=64, height=64, steps=2, guidance=2.0,
                      random_seed=False, seed=1, preview_every=0, batch_count=1)  # fmt: skip
    return SimpleNamespace(generation=generation, model=ModelState(), run=RunState())


@pytest.fixture
def controller(qtbot, states: SimpleNamespace, tmp_path: Path, gate: Gate) -> Iterator[Controller]:
    controller = Controller(states.generation, states.model, states.run, tmp_path / "history")
    yield controller
    gate.open()
    controller.shutdown()


def queue_job(controller: Controller, prompt: str, seed: int, **settings: Any) -> int:
    """Generate with this prompt and seed; the new entry's id."""
    controller.generation.update(prompt=prompt, seed=seed, **settings)
    assert controller.generate(), controller.run.error
    return controller.queue.entries[-1].id


def start_held(qtbot, controller: Controller, gate: Gate, **settings: Any) -> int:
    """Job A, held at its first U-Net call (it is running in the JobQueue)."""
    first = queue_job(controller, "job A", 100, **settings)
    gate.wait_entered()
    qtbot.waitUntil(lambda: controller.queue.entries[0].status is EntryStatus.RUNNING)
    return first


def prompts(controller: Controller) -> list[str]:
    return [item.record.prompt for item in controller.results]


def history_prompts(controller: Controller) -> list[str]:
    paths = sorted(controller.history_dir.glob("*.png"))
    return [settings_from_png(path)["prompt"] for path in paths]


def run_until_finished(qtbot, controller: Controller, gate: Gate) -> bool:
    with qtbot.waitSignal(controller.finished, timeout=TIMEOUT_MS) as blocker:
        gate.open()
    return bool(blocker.args[0])


# ---------------------------------------------------------------- running in order


def test_three_jobs_queued_while_the_first_runs_arrive_in_order(qtbot, controller, gate, states):
    running: list[bool] = []
    start_held(qtbot, controller, gate)
    for name, seed in (("job B", 200), ("job C", 300), ("job D", 400)):
        running.append(states.run.running)
        queue_job(controller, name, seed)
    assert running == [True, True, True]  # each one queued while job A ran
    assert [e.status for e in controller.queue.entries] == [EntryStatus.RUNNING] + [
        EntryStatus.PENDING
    ] * 3
    starts: list[int] = []
    states.run.running_changed.connect(lambda value: starts.append(value))
    assert run_until_finished(qtbot, controller, gate) is False

    assert prompts(controller) == ["job A", "job B", "job C", "job D"]
    assert [item.seed for item in controller.results] == [100, 200, 300, 400]
    assert history_prompts(controller) == ["job A", "job B", "job C", "job D"]  # 00000-, 00001-...
    assert starts == [False]  # one run from the first Generate to the last image
    assert len(controller.queue) == 0 and states.run.status == "Done"
    assert (states.run.step, states.run.total_steps) == (2, 2)  # the last job's steps


def test_results_keep_their_metadata_and_reuse_all(qtbot, controller, gate, states):
    start_held(qtbot, controller, gate)
    queue_job(controller, "job B, in rain", 7, steps=3, guidance=4.0)
    run_until_finished(qtbot, controller, gate)
    item = controller.results[1]
    saved = settings_from_png(item.path)
    assert (saved["prompt"], saved["seed"], saved["steps"]) == ("job B, in rain", 7, 3)
    assert (item.record.prompt, item.record.guidance_scale) == ("job B, in rain", 4.0)
    states.generation.update(prompt="something else", seed=1, steps=2)
    states.generation.apply_record(settings_from_png(controller.results[0].path))
    assert (states.generation.prompt, states.generation.seed) == ("job A", 100)


# ---------------------------------------------------------------- reorder and cancel


def test_moving_a_pending_job_changes_the_run_order(qtbot, controller, gate):
    start_held(qtbot, controller, gate)
    b = queue_job(controller, "job B", 200)
    c = queue_job(controller, "job C", 300)
    d = queue_job(controller, "job D", 400)
    assert controller.move_job(d, 0)  # D next
    assert controller.move_job(b, 5)  # B last (clamped)
    assert controller.queue.pending_ids() == [d, c, b]
    assert not controller.move_job(controller.queue.entries[0].id, 1)  # the running one stays
    run_until_finished(qtbot, controller, gate)
    assert prompts(controller) == ["job A", "job D", "job C", "job B"]


def test_cancelling_a_pending_job_removes_it_and_it_never_runs(qtbot, controller, gate, states):
    start_held(qtbot, controller, gate)
    b = queue_job(controller, "job B", 200)
    c = queue_job(controller, "job C", 300)
    controller.cancel_job(b)
    assert controller.queue.pending_ids() == [c] and states.run.running
    assert run_until_finished(qtbot, controller, gate) is False
    assert prompts(controller) == ["job A", "job C"]
    assert history_prompts(controller) == ["job A", "job C"]
    assert states.run.status == "Done" and states.run.error == ""


def test_cancelling_the_running_job_stops_it_and_the_next_still_runs(
    qtbot, controller, gate, states
):
    a = start_held(qtbot, controller, gate, steps=30)
    queue_job(controller, "job B", 200, steps=2)
    steps_of_a: list[int] = []
    states.run.step_changed.connect(
        lambda step: steps_of_a.append(step) if states.run.total_steps == 30 else None
    )
    controller.cancel_job(a)
    assert controller.queue.get(a) is not None  # it leaves once it has stopped
    assert run_until_finished(qtbot, controller, gate) is False  # B, the last job, was done
    assert prompts(controller) == ["job B"] and history_prompts(controller) == ["job B"]
    assert [s for s in steps_of_a if s > 0] == []  # no step of A shown after the cancel
    assert len(controller.queue) == 0 and states.run.status == "Done"


def test_cancel_all_and_stop_after_this_image(qtbot, controller, gate, states):
    start_held(qtbot, controller, gate, batch_count=3)
    queue_job(controller, "job B", 200, batch_count=1)
    controller.stop_after_image()  # acts on the running job A
    assert run_until_finished(qtbot, controller, gate) is False
    assert prompts(controller) == ["job A", "job B"]  # one of A's three images, then B

    gate.close()
    start_held(qtbot, controller, gate, batch_count=1)
    queue_job(controller, "job B", 200)
    with qtbot.waitSignal(controller.finished, timeout=TIMEOUT_MS) as blocker:
        controller.jobs.cancel_all()
        gate.open()
    assert blocker.args == [True] and len(controller.results) == 2
    assert states.run.status == "Cancelled" and not states.run.running


def test_a_failing_job_is_reported_and_the_queue_goes_on(qtbot, controller, gate, states):
    start_held(qtbot, controller, gate)
    states.model.model = str(controller.history_dir / "missing-model")  # fails in the worker,
    queue_job(controller, "job B", 200)  # once job A is done (another model loads then)
    states.model.model = ""
    queue_job(controller, "job C", 300)
    failures: list[str] = []
    controller.failed.connect(failures.append)
    run_until_finished(qtbot, controller, gate)
    assert prompts(controller) == ["job A", "job C"]
    assert len(failures) == 1 and "\n" not in failures[0] and states.run.error == failures[0]


# ---------------------------------------------------------------- state and window


def test_queue_state_orders_running_first_and_summarizes():
    state = QueueState()
    changes: list[int] = []
    state.changed.connect(lambda: changes.append(len(state)))
    for number in (1, 2, 3):
        state.add(QueueEntry(number, f"prompt {number}", 4))
    state.set_running(2)
    assert [e.id for e in state.entries] == [2, 1, 3] and state.pending_ids() == [1, 3]
    assert state.move(3, 0) and state.pending_ids() == [3, 1]
    assert not state.move(2, 1)  # running
    assert state.remove(3) and not state.remove(3)
    assert changes == [1, 2, 3, 3, 3, 2]
    long = "a very long prompt about a lighthouse on a cliff at dusk, with waves and gulls"
    assert short_prompt(long) == "a very long prompt about a lighthouse on a…"
    assert short_prompt("two\nlines") == "two lines"


@pytest.fixture
def window(qtbot, tmp_path: Path, gate: Gate):
    window = build_window(
        QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat), tmp_path / "h"
    )
    qtbot.addWidget(window)
    generation = window.states.generation
    generation.update(prompt="job A", width=64, height=64, steps=2, random_seed=False, seed=1,
                      preview_every=0, batch_count=1)  # fmt: skip
    yield window
    gate.open()
    window.close()


def test_the_window_shows_the_queue_and_its_buttons_act(qtbot, window, gate):
    buttons, panel = window.run_buttons, window.queue_panel
    assert panel is not None and panel.labels() == [] and not buttons.queue_button.isEnabled()
    qtbot.mouseClick(buttons.generate_button, Qt.MouseButton.LeftButton)
    gate.wait_entered()
    jobs = window.controller.queue
    qtbot.waitUntil(lambda: jobs.entries[0].status is EntryStatus.RUNNING)
    assert buttons.queue_button.isEnabled() and not buttons.generate_button.isEnabled()
    assert buttons.queue_button.shortcut().toString() == "Ctrl+Return"  # moved from Generate
    assert buttons.generate_button.shortcut().isEmpty()
    for prompt in ("job B", "job C"):
        window.states.generation.prompt = prompt
        qtbot.mouseClick(buttons.queue_button, Qt.MouseButton.LeftButton)
    assert panel.labels() == [
        "1. ▶ running — job A — 1 image, 64×64, seed 1",
        "2. waiting — job B — 1 image, 64×64, seed 1",
        "3. waiting — job C — 1 image, 64×64, seed 1",
    ]
    assert panel.title() == "Queue (3)"
    panel.list_widget.setCurrentRow(2)  # job C
    assert panel.up_button.isEnabled() and not panel.down_button.isEnabled()
    qtbot.mouseClick(panel.up_button, Qt.MouseButton.LeftButton)
    assert [label.split(" — ")[1] for label in panel.labels()] == ["job A", "job C", "job B"]
    assert panel.list_widget.currentRow() == 1  # the selection follows job C
    panel.list_widget.setCurrentRow(2)  # job B
    qtbot.mouseClick(panel.cancel_button, Qt.MouseButton.LeftButton)
    assert [label.split(" — ")[1] for label in panel.labels()] == ["job A", "job C"]
    with qtbot.waitSignal(window.controller.finished, timeout=TIMEOUT_MS):
        gate.open()
    assert panel.labels() == [] and window.gallery.list_widget.count() == 2
    assert [item.record.prompt for item in window.controller.results] == ["job A", "job C"]
