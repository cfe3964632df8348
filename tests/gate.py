"""A gate for U-Net calls: each call announces itself and waits for a permit unless the gate
is open, so a test decides exactly when each step of a generation runs. Every wait has a
timeout, so a bug fails the test instead of hanging it."""

from __future__ import annotations

import threading


class Gate:
    def __init__(self, wait: float = 10.0) -> None:
        self.wait = wait  # seconds: only reached when something is broken
        self.entered = threading.Semaphore(0)
        self.permits = threading.Semaphore(0)
        self.is_open = threading.Event()

    def hook(self) -> None:
        if self.is_open.is_set():
            return
        self.entered.release()
        if not self.permits.acquire(timeout=self.wait):
            raise TimeoutError("the test never let this U-Net call run")

    def wait_entered(self) -> None:
        assert self.entered.acquire(timeout=self.wait), "no U-Net call started"

    def allow(self, calls: int = 1) -> None:
        for _ in range(calls):
            self.permits.release()

    def open(self) -> None:
        self.is_open.set()
        self.allow(100)

    def close(self) -> None:
        self.is_open.clear()
        while self.permits.acquire(blocking=False):
            pass
