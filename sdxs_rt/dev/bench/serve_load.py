"""Load on `sdxs-rt serve` with locust: a locustfile and a small headless runner.

As a locustfile: `locust -f sdxs_rt/dev/bench/serve_load.py --headless --host URL -u 8 -t 20s`
(each user posts A1111 txt2img requests, 64x64 px, SDXS_LOAD_STEPS steps, default 2).

As a runner: `python -m sdxs_rt.dev.bench.serve_load --clients 4 8 16 --seconds 20
--max-queue 8` starts `sdxs-rt serve` on the built-in demo model (or uses `--url`), runs each
client count in turn and prints, per count: requests, throughput (successful generations per
second), p50/p95 latency of the successful ones, and the errors by HTTP status (0: no answer).
Each client has at most one request in flight, so with N clients at most N-1 other jobs are in
the server when one submits: N <= --max-queue never sees a 429, and past it only 429s should.
`--json PATH` also writes the rows. Importing this module imports locust (gevent patches the
standard library): run it as its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gevent
from locust import HttpUser, between, task
from locust.env import Environment

STEPS = int(os.environ.get("SDXS_LOAD_STEPS", "2"))
START_SECONDS = 120.0
IDLE_SECONDS = 30.0
PERCENTILES = (50, 95)


class ServeUser(HttpUser):
    """One A1111 client: a txt2img request, a short pause, the next one."""

    wait_time = between(0.0, 0.05)

    @task
    def txt2img(self) -> None:
        body = {"prompt": "a red circle", "width": 64, "height": 64, "steps": STEPS}
        with self.client.post(
            "/sdapi/v1/txt2img", json=body, name="txt2img", timeout=120, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")


@dataclass
class Row:
    clients: int
    seconds: float
    requests: int = 0
    ok: int = 0
    throughput: float = 0.0  # successful generations per second
    p50_ms: float | None = None
    p95_ms: float | None = None
    errors: dict[str, int] = field(default_factory=dict)  # HTTP status (0: none) -> count


def run_clients(url: str, clients: int, seconds: float) -> Row:
    """`clients` users for `seconds`; the requests still in flight at the end are not counted."""
    env = Environment(user_classes=[ServeUser], host=url)
    statuses: Counter[int] = Counter()
    latencies: list[float] = []

    def on_request(response_time: float, response: Any, exception: Any, **_: Any) -> None:
        status = getattr(response, "status_code", 0) or 0
        statuses[status] += 1
        if status == 200 and exception is None:
            latencies.append(response_time)

    env.events.request.add_listener(on_request)
    runner = env.create_local_runner()
    started = time.monotonic()
    runner.start(clients, spawn_rate=clients)
    gevent.sleep(seconds)
    counted = dict(statuses), list(latencies)  # before quit() kills the requests in flight
    elapsed = time.monotonic() - started
    runner.quit()
    done, times = counted
    row = Row(clients, round(elapsed, 1), requests=sum(done.values()), ok=done.get(200, 0))
    row.throughput = round(row.ok / elapsed, 2)
    if len(times) >= 2:
        cuts = statistics.quantiles(times, n=100, method="inclusive")
        row.p50_ms, row.p95_ms = (round(cuts[p - 1], 1) for p in PERCENTILES)
    row.errors = {str(status): n for status, n in sorted(done.items()) if status != 200}
    return row


# -- the server ----------------------------------------------------------------------------


def health(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
            body: dict[str, Any] = json.load(answer)
            return body
    except (OSError, urllib.error.URLError, ValueError):
        return None


def wait_idle(url: str) -> None:
    """Until the jobs of requests cut off at the end of a run are gone (cancelled)."""
    deadline = time.monotonic() + IDLE_SECONDS
    while time.monotonic() < deadline:
        state = health(url)
        if state is not None and not state["queue_depth"] and not state["running"]:
            return
        gevent.sleep(0.1)
    raise SystemExit(f"the server at {url} did not go idle within {IDLE_SECONDS} s")


def start_server(max_queue: int, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "sdxs_rt.commands.cli", "serve", "--port", str(port)]
    command += ["--max-queue", str(max_queue), "--preview-every", "0", "--quiet"]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}; see {log}")
        if health(url) is not None:
            return proc, url
        gevent.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not answer within {START_SECONDS} s; see {log}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


# -- the command line ----------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = [
        "| clients | seconds | requests | ok | throughput (req/s) | p50 (ms) | p95 (ms) | errors |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        errors = ", ".join(f"{n} x {status}" for status, n in r.errors.items()) or "none"
        lines.append(
            f"| {r.clients} | {r.seconds} | {r.requests} | {r.ok} | {r.throughput} "
            f"| {r.p50_ms} | {r.p95_ms} | {errors} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--seconds", type=float, default=20.0, help="per client count")
    parser.add_argument("--max-queue", type=int, default=8, help="the started server's")
    parser.add_argument("--url", default=None, help="a running server instead of a new one")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the rows here")
    parser.add_argument("--log", default="serve_load-server.log", help="the server's log")
    args = parser.parse_args(argv)
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args.max_queue, Path(args.log))
    rows = []
    try:
        for clients in args.clients:
            wait_idle(url)
            rows.append(run_clients(url, clients, args.seconds))
            print(json.dumps(asdict(rows[-1])), file=sys.stderr, flush=True)
    finally:
        if proc is not None:
            stop_server(proc)
    print(f"sdxs-rt serve load: {STEPS} steps, 64x64 px, --max-queue {args.max_queue}")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
