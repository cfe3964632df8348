"""scripts/gpu-check.sh, the one device command, run here as it is, without CUDA: it must install
sdxs-rt from a wheelhouse, verify everything else, then stop at the "no CUDA" report (exit 4).
And `pytest -m gpu` / `-m tensorrt` fail, not skip, where the hardware is missing."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from sdxs_rt.dev.bench.preflight import stale_files  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"


def _script(tree: Path, name: str, env: dict[str, str], *args: str, timeout: float = 240.0):
    return subprocess.run(
        ["bash", str(tree / "scripts" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tree,
        env={**os.environ, "PYTHON": sys.executable, **env},
    )


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the files the device receives (tracked + untracked-not-ignored), as a fresh git
    folder: the wheel and the tree it is checked against cannot drift while others edit REPO."""
    if shutil.which("git") is None:
        pytest.skip("needs git to list the tree's files")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"],
        capture_output=True,
        check=True,
        cwd=REPO,
    ).stdout.decode()
    tree = tmp_path_factory.mktemp("snapshot") / "repo"
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, tree / name)
    subprocess.run(["git", "init", "-q"], check=True, cwd=tree)
    return tree


@pytest.fixture(scope="module")
def wheelhouse(snapshot: Path) -> Path:
    """The sdxs-rt wheel of the snapshot, built by its prepare script (offline: no diffusers)."""
    folder = snapshot.parent / "wheels"
    done = _script(snapshot, "prepare-wheelhouse.sh", {}, "--offline", str(folder), timeout=180)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run needs a machine without CUDA")
def test_without_cuda_the_script_checks_everything_else_then_exits_4(
    snapshot: Path, wheelhouse: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    env = {"OUT": str(out), "SDXS_RT_WHEELHOUSE": str(wheelhouse)}
    done = _script(snapshot, "gpu-check.sh", {**env, "SDXS_RT_SITE": str(tmp_path / "site")})
    assert done.returncode == 4, done.stdout + done.stderr
    assert "installed sdxs_rt-0.1.0-py3-none-any.whl" in done.stdout
    assert "diffusers: already on this machine" in done.stdout  # here; the GPU machine installs it
    assert re.search(r"NO CUDA: .*Everything else is in place", done.stdout)
    assert "NOT IN PLACE" not in done.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["status"] == "no cuda" and report["preflight"]["ok"]
    imports = report["preflight"]["imports"]
    assert {"sdxs_rt", "sdxs_rt_export", "diffusers", "transformers"} <= set(imports["found"])
    assert Path(imports["sdxs_rt_file"]).is_relative_to(tmp_path / "site")  # the wheel's copy
    tests = report["preflight"]["gpu_tests"]
    assert "tests/test_torch_fast_path.py" in tests["files"] and len(tests["ids"]) >= 3
    assert (out / "gpu-check.log").read_text() == done.stdout


def test_without_the_sdxs_rt_wheel_the_script_stops_at_once(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    env = {"OUT": str(tmp_path / "out"), "SDXS_RT_WHEELHOUSE": str(tmp_path / "empty")}
    done = _script(REPO, "gpu-check.sh", env, timeout=60)
    assert done.returncode == 3
    assert "run scripts/prepare-wheelhouse.sh first" in done.stdout


def test_an_install_from_another_tree_is_stale(tmp_path: Path) -> None:
    repo, site = tmp_path / "repo", tmp_path / "site"
    for tree, package in (("sdxs_rt", "sdxs_rt"), ("export", "sdxs_rt_export")):
        for root in ((repo / tree), (site / package)):
            (root / "sub").mkdir(parents=True)
            (root / "sub" / "a.py").write_text("A = 1\n")
    assert stale_files(site, repo) == []
    (repo / "export" / "sub" / "a.py").write_text("A = 2\n")
    (repo / "sdxs_rt" / "new.py").write_text("")
    assert stale_files(site, repo) == ["sdxs_rt/new.py", "sdxs_rt_export/sub/a.py"]


# --- the CUDA side of gpu_check, with its phases faked (no GPU here) ---------------------------


def _row(path: str, allocated: float, reserved: float) -> dict:
    return {
        "path": path,
        "status": "ok",
        "precision": "fp16",
        "cuda_max_allocated_mb": allocated,
        "cuda_max_reserved_mb": reserved,
    }


@pytest.fixture
def faked_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """gpu_check.main as on a GPU machine, each phase's work replaced by a canned result."""
    from sdxs_rt.dev.bench import gpu_check, report, runner
    from sdxs_rt.dev.bench import preflight as pf

    rows = [_row("reference", 7000.0, 7400.0), _row("torch", 5600.0, 6100.0)]
    rows.append({"path": "torch-compile", "status": "over-budget", "reason": "stopped"})
    canned: dict = {
        "checks": [{"check": "fold", "ok": True}, {"check": "fp16", "ok": True, "psnr_db": 41.0}],
        "bench": {"size": 576, "rows": rows},
        "budgets": [],
    }
    monkeypatch.setenv("OUT", str(tmp_path))
    ready = {"ok": True, "problems": [], "imports": {"found": {"torch": "2"}, "missing": {}}}
    monkeypatch.setattr(gpu_check, "preflight", lambda site, tests: ready)
    monkeypatch.setattr(pf, "cuda_report", lambda probe: {"cuda_available": True})
    monkeypatch.setattr(report, "environment", lambda device: {"gpu": "Fake H100"})
    monkeypatch.setattr(gpu_check, "_gpu_properties", lambda: {"memory_gib": 79.1})
    monkeypatch.setattr(gpu_check, "run_gpu_tests", lambda log: {"ok": True, "summary": "3 passed"})
    monkeypatch.setattr(runner, "ensure_model", lambda preset, cache: tmp_path / "model")
    monkeypatch.setattr(gpu_check, "run_checks", lambda model, variant: canned["checks"])

    def bench(preset: str, budget_s: float) -> tuple[int, dict]:
        canned["budgets"].append(budget_s)
        return 0, canned["bench"]

    monkeypatch.setattr(gpu_check, "run_bench", bench)
    return canned


def test_on_cuda_the_summary_has_phases_checks_tests_and_peak_vram(
    faked_cuda: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sdxs_rt.dev.bench import gpu_check

    assert gpu_check.main(["--tests", "--budget-s", "400"]) == 0
    out = capsys.readouterr().out
    summary = out[out.index("== summary") :]
    for phase in ("preflight", "gpu tests", "build model", "checks", "bench"):
        assert f"phase {phase}" in summary
    assert "peak VRAM torch (fp16, 576x576, 1 image): 5600 MiB allocated, 6100 MiB reserved" in out
    assert summary.rstrip().endswith("gpu_check: PASSED")
    assert 370 < faked_cuda["budgets"][0] <= 400 - gpu_check.BENCH_RESERVE_S
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "passed" and report["gpu_tests"]["ok"]
    assert report["peak_vram"]["torch"]["allocated_mib"] == 5600.0
    assert "torch-compile" not in report["peak_vram"]  # over budget: reported by the bench table
    assert set(report["phases_s"]) == set(gpu_check.PHASE_ESTIMATES_S)


def test_on_cuda_a_failed_check_fails_the_run(faked_cuda: dict, tmp_path: Path) -> None:
    from sdxs_rt.dev.bench import gpu_check

    faked_cuda["checks"][1].update(ok=False, psnr_db=20.0)
    assert gpu_check.main(["--tests", "--skip-bench"]) == gpu_check.EXIT_FAILED
    assert json.loads((tmp_path / "gpu_check.json").read_text())["status"] == "failed"


def test_on_cuda_a_crashed_phase_still_writes_the_report(
    faked_cuda: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdxs_rt.dev.bench import gpu_check, runner

    def disk_full(preset: object, cache: object) -> Path:
        raise OSError("No space left on device")

    monkeypatch.setattr(runner, "ensure_model", disk_full)
    assert gpu_check.main(["--tests"]) == gpu_check.EXIT_FAILED
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "failed" and "No space left" in report["error"]
    assert report["gpu_tests"]["ok"] and "build model" in report["phases_s"]


# --- `-m gpu` / `-m tensorrt` on purpose: a skip is a failure (tests/conftest.py) ---------------

MARKED_TESTS = """
import pytest

@pytest.mark.gpu
def test_gpu_skips():
    pytest.skip("needs a CUDA GPU")

@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_missing():
    pytest.importorskip("no_such_module_for_sdxs_rt_tests")

@pytest.mark.gpu
def test_gpu_passes():
    pass

@pytest.mark.gpu
@pytest.mark.xfail(reason="known")
def test_gpu_xfails():
    raise AssertionError
"""


def _run_marked(tmp_path: Path, markexpr: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_marked.py").write_text(MARKED_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    gpu: x\n    tensorrt: y\n")
    cmd = [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider"]
    args = ["-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), "-m", markexpr]
    return subprocess.run(
        [*cmd, *args, str(tmp_path / "test_marked.py")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def test_a_skip_fails_when_its_hardware_marker_was_selected_on_purpose(tmp_path: Path) -> None:
    done = _run_marked(tmp_path, "gpu")
    assert done.returncode == 1
    assert "2 failed, 1 passed, 1 xfailed" in done.stdout
    assert "-m selected the 'gpu' tests on purpose, but this one skipped" in done.stdout
    assert "needs a CUDA GPU" in done.stdout
    trt = _run_marked(tmp_path, "tensorrt and not slow")
    assert "1 failed" in trt.stdout and "selected the 'tensorrt' tests on purpose" in trt.stdout


def test_a_skip_stays_a_skip_when_the_marker_was_not_asked_for(tmp_path: Path) -> None:
    done = _run_marked(tmp_path, "not slow")
    assert done.returncode == 0, done.stdout
    assert "1 passed, 2 skipped, 1 xfailed" in done.stdout


def test_the_scripts_are_executable_bash() -> None:
    for name in ("gpu-check.sh", "prepare-wheelhouse.sh"):
        assert os.access(SCRIPTS / name, os.X_OK)
        if shutil.which("bash"):
            assert subprocess.run(["bash", "-n", str(SCRIPTS / name)]).returncode == 0
