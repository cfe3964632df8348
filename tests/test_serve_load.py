"""A short locust load run on `sdxs-rt serve` (demo model, 64x64 px, 2 steps, --max-queue 4):
4 clients never see an error, 16 clients see 429s and no other error.

Each client holds at most one request, so when one submits at most N-1 other jobs are in the
server: with N <= --max-queue nothing is refused. locust patches the standard library (gevent),
so the runner, `python -m sdxs_rt.dev.bench.serve_load`, is its own process, with a deadline.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
# Not importorskip("locust"): importing it here would let gevent patch this test process.

SECONDS = 5
DEADLINE = 240  # the server's start (about 10 s here), two runs, the waits between


def test_errors_under_load_are_429s_only_and_only_past_the_queue_limit(tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    command = [sys.executable, "-m", "sdxs_rt.dev.bench.serve_load", "--clients", "4", "16"]
    command += ["--seconds", str(SECONDS), "--max-queue", "4", "--json", str(out)]
    done = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE, check=False
    )
    log = tmp_path / "serve_load-server.log"
    server_log = log.read_text(errors="replace") if log.exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + server_log
    print(done.stdout)
    below, above = json.loads(out.read_text())
    assert below["clients"] == 4 and above["clients"] == 16
    assert below["ok"] > 0 and below["errors"] == {}, done.stdout
    assert above["ok"] > 0, done.stdout
    assert set(above["errors"]) == {"429"} and above["errors"]["429"] > 0, done.stdout
