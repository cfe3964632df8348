"""`sdxs-rt serve` as a real process on a free 127.0.0.1 port, for the server tests.

Every wait is bounded: start-up polls /healthz for at most START_SECONDS, stop waits at most
STOP_SECONDS and then kills. The server's output goes to a log file that a failing test shows;
with `log_pipe` it goes through a pipe that a thread of this process copies to that file (for a
server whose own file writes are limited, as in the disk-full test).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx

START_SECONDS = 120.0
STOP_SECONDS = 60.0
HOST = "127.0.0.1"
CLI = (sys.executable, "-m", "sdxs_rt.commands.cli")  # what runs `serve ARGS`


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server process (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS in /proc status")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = STOP_SECONDS) -> int:
        """Send `sig`, wait for the exit; kill (and fail loudly) past `timeout`."""
        if self.alive():
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"the server did not stop within {timeout} s:\n{self.log()}"
            ) from None


def start_server(
    workdir: Path,
    args: Sequence[str] = (),
    *,
    env: dict[str, str] | None = None,
    preexec_fn: Callable[[], None] | None = None,
    headers: dict[str, str] | None = None,
    log_pipe: bool = False,
    launcher: Sequence[str] = CLI,
) -> ServerProcess:
    """Start `sdxs-rt serve ARGS` on the built-in model (unless ARGS name another) and wait
    until /healthz answers 200. `log_pipe`: the server writes its log to a pipe, not a file;
    `launcher`: the command line before `serve` (e.g. a script that blocks torch)."""
    port = free_port()
    log_path = workdir / f"server-{port}.log"
    command = [*launcher, "serve", "--port", str(port), *args]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=workdir,
            stdout=subprocess.PIPE if log_pipe else log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=preexec_fn,
        )
    if log_pipe:
        assert proc.stdout is not None
        threading.Thread(target=_copy, args=(proc.stdout, log_path), daemon=True).start()
    server = ServerProcess(proc, port, log_path)
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if not server.alive():
            raise AssertionError(f"the server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(f"{server.url}/healthz", timeout=2.0, headers=headers).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    server.stop(signal.SIGKILL)
    raise AssertionError(f"the server did not answer /healthz within {START_SECONDS} s")


def _copy(pipe: IO[bytes], path: Path) -> None:
    """The server's piped output into its log file, line by line, until the pipe closes."""
    with pipe, path.open("ab") as log:
        for line in pipe:
            log.write(line)
            log.flush()


def wait_for(what: str, check: Callable[[], Any], seconds: float = 20.0) -> Any:
    """`check()`'s first truthy value, polled every 50 ms; AssertionError after `seconds`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {seconds} s")
