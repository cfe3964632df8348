"""With no torch, diffusers or transformers importable, `sdxs-rt generate --backend onnx` works.

The CLI runs in a subprocess whose `sys.meta_path` refuses those packages, so an import of
them anywhere on the way (even a guarded one) cannot succeed; the test then checks that the
image exists, the exit code is 0 and that none of them is in `sys.modules`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.test_onnx_backend import write_handmade_export

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("torch", "diffusers", "transformers")

RUN_WITHOUT_TORCH = f"""
import sys

BLOCKED = {BLOCKED!r}
attempts = []


class RefuseHeavyPackages:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            attempts.append(name)
            raise ImportError(f"{{name}} is not installed (blocked by the torch-free test)")
        return None


sys.meta_path.insert(0, RefuseHeavyPackages())
from sdxs_rt.commands.cli import main

code = main(sys.argv[1:])
loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
print("TORCH_FREE_REPORT " + repr({{"loaded": loaded, "attempts": attempts}}), file=sys.stderr)
sys.exit(code if not loaded else 99)
"""


def generate_without_torch(model: Path, output: Path, precision: str = "fp32") -> dict:
    argv = [
        "generate", "a red circle on a blue background",
        "--backend", "onnx", "--model", str(model), "--precision", precision,
        "--size", "128x128", "--steps", "3", "--seed", "7", "-o", str(output), "--json",
    ]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT_TORCH, *argv],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report_line = next(
        line for line in done.stderr.splitlines() if line.startswith("TORCH_FREE_REPORT ")
    )
    report = eval(report_line.removeprefix("TORCH_FREE_REPORT "))  # our own repr() above
    assert report["loaded"] == [], report
    return json.loads(done.stdout.strip().splitlines()[-1])


def _check_image(payload: dict, output: Path) -> None:
    assert Path(payload["path"]) == output and output.is_file()
    assert payload["backend"] == "onnx"
    with Image.open(output) as image:
        assert image.size == (128, 128)


def test_generate_on_handmade_graphs_without_torch(tmp_path: Path) -> None:
    """Needs no torch at all, not even to build the graphs."""
    model = write_handmade_export(tmp_path / "export")
    output = tmp_path / "out.png"
    _check_image(generate_without_torch(model, output), output)


@pytest.fixture(scope="module")
def exported_tiny(exported_tiny_fp32: Path) -> Path:
    return exported_tiny_fp32


def test_generate_on_the_exported_tiny_model_without_torch(
    exported_tiny: Path, tmp_path: Path
) -> None:
    output = tmp_path / "tiny.png"
    _check_image(generate_without_torch(exported_tiny, output), output)
