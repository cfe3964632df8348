"""Before the GPU check spends device time: is everything in place, and is there a CUDA device?

- `import_report`: the packages import in a fresh interpreter started outside the working tree,
  so an installed copy (not the checkout) is what answers.
- `stale_files`: the sdxs-rt installed from the wheelhouse is the working tree's code (a wheel
  built from an older tree would test other code than the commit the report names).
- `gpu_test_files` / `collect_tests`: the gpu-marked tests are there and pytest collects them.
- `cuda_report`: what torch (in that fresh interpreter) and nvidia-smi say about CUDA.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

# import name -> distribution, for the versions printed
REQUIRED_IMPORTS = {
    "sdxs_rt": "sdxs-rt",
    "sdxs_rt_export": "sdxs-rt",
    "torch": "torch",
    "diffusers": "diffusers",
    "transformers": "transformers",
    "huggingface_hub": "huggingface_hub",
    "tokenizers": "tokenizers",
    "safetensors": "safetensors",
    "numpy": "numpy",
    "PIL": "pillow",
    "tqdm": "tqdm",
    "pytest": "pytest",
}
# where each installed package's code comes from in the working tree (pyproject's package-dir)
SOURCE_DIRS = {"sdxs_rt": "sdxs_rt", "sdxs_rt_export": "export", "sdxs_rt_desktop": "desktop"}
GPU_MARKER_TEXT = "@pytest.mark.gpu"

_IMPORT_PROBE = """
import importlib, importlib.metadata as md, json, sys
found, missing = {}, {}
for name, dist in json.loads(sys.argv[1]).items():
    try:
        module = importlib.import_module(name)
    except Exception as exc:
        missing[name] = f"{type(exc).__name__}: {exc}"
        continue
    try:
        found[name] = md.version(dist)
    except md.PackageNotFoundError:
        found[name] = getattr(module, "__version__", "?")
where = getattr(sys.modules.get("sdxs_rt"), "__file__", None)
cuda = {}
if "torch" in found:
    import torch
    cuda = {"torch": torch.__version__, "torch_cuda_build": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "device_count": torch.cuda.device_count()}
print(json.dumps({"found": found, "missing": missing, "sdxs_rt_file": where, "cuda": cuda}))
"""


def import_report(timeout_s: float = 180.0) -> dict[str, Any]:
    """Import every required package in a fresh interpreter whose cwd is outside the repo (so
    the installed copy answers), and read torch's view of CUDA there."""
    with tempfile.TemporaryDirectory(prefix="sdxs-preflight-") as cwd:
        proc = subprocess.run(
            [sys.executable, "-c", _IMPORT_PROBE, json.dumps(REQUIRED_IMPORTS)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            cwd=cwd,
        )
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"found": {}, "missing": {"python": tail}, "sdxs_rt_file": None, "cuda": {}}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def stale_files(site: Path, repo: Path) -> list[str]:
    """Python files that differ between the packages installed in `site` and the working tree
    (missing on either side counts); empty when the install is this tree's code."""
    stale = []
    for package, source in SOURCE_DIRS.items():
        installed, tree = _py_files(site / package), _py_files(repo / source)
        for name in sorted(set(installed) | set(tree)):
            same = name in installed and name in tree
            if not same or installed[name].read_bytes() != tree[name].read_bytes():
                stale.append(f"{package}/{name}")
    return stale


def _py_files(folder: Path) -> dict[str, Path]:
    return {
        str(path.relative_to(folder)): path
        for path in folder.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def gpu_test_files(repo: Path) -> list[Path]:
    """The test modules that hold gpu-marked tests."""
    return sorted(p for p in (repo / "tests").glob("test_*.py") if GPU_MARKER_TEXT in p.read_text())


def collect_tests(repo: Path, files: list[Path], markexpr: str, timeout_s: float = 180.0) -> dict:
    """`pytest --collect-only` of `files` under `markexpr`: the test ids, or why none."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"]
    proc = subprocess.run(
        [*cmd, "-m", markexpr, *map(str, files)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=repo,
    )
    ids = [line for line in proc.stdout.splitlines() if "::" in line]
    tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
    return {"ids": ids, "returncode": proc.returncode, "tail": tail}


def cuda_report(probe: dict[str, Any]) -> dict[str, Any]:
    """torch's view of CUDA (from the import probe), plus what the driver tool says."""
    report: dict[str, Any] = {"cuda_available": False, "torch": None, "torch_cuda_build": None}
    report.update(probe.get("cuda", {}))
    report["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES")
    smi = shutil.which("nvidia-smi")
    if smi is None:
        report["nvidia_smi"] = "not installed"
        return report
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
        report["nvidia_smi"] = (out.stdout or out.stderr).strip()
    except (OSError, subprocess.SubprocessError) as exc:
        report["nvidia_smi"] = f"{type(exc).__name__}: {exc}"
    return report
