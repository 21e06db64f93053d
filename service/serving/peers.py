"""How one worker's API reload waits until every worker serves the result.

The workers share a small private folder (made by the supervisor, removed at exit):

- `requested`: a counter, one more for every reload through the API (under a lock file);
- `worker-N`: the last value of `requested` worker N had read before a scan (or its
  start-up load) that then completed.

A reload through the API bumps `requested` to g, has the supervisor send SIGHUP to every
worker (`notify`), and answers once every worker's file says g or more: each of them has
scanned the artifacts folder after the reload was asked for. A worker being replaced
counts once its replacement has loaded the bundles (it reads `requested` first).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

CONFIRM_TIMEOUT_S = 60.0
_POLL_S = 0.02


class WorkerPeers:
    def __init__(self, folder: Path, count: int, number: int, notify: Callable[[], None]) -> None:
        self.folder = Path(folder)
        self.count = count  # workers 1..count
        self.number = number  # this worker's
        self.notify = notify  # asks the supervisor to send SIGHUP to every worker

    def requested(self) -> int:
        """The latest reload generation asked for (0 before any)."""
        return _read_int(self.folder / "requested")

    def request(self) -> int:
        """A new reload generation, then `notify`; returns it."""
        with open(self.folder / "requested.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            generation = self.requested() + 1
            _write_int(self.folder / "requested", generation)
        self.notify()
        return generation

    def scanned(self, generation: int) -> None:
        """This worker has loaded what the folder held after `generation` was asked for."""
        _write_int(self.folder / f"worker-{self.number}", generation)

    def behind(self, generation: int) -> list[int]:
        """Workers that have not scanned since `generation`."""
        return [
            n
            for n in range(1, self.count + 1)
            if _read_int(self.folder / f"worker-{n}") < generation
        ]

    async def wait(self, generation: int, timeout: float = CONFIRM_TIMEOUT_S) -> list[int]:
        """Until every worker has scanned since `generation`; the workers still behind
        when `timeout` passed (empty: all confirmed)."""
        deadline = time.monotonic() + timeout
        while (late := self.behind(generation)) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_S)
        return late


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0


def _write_int(path: Path, value: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(str(value))
    os.replace(tmp, path)  # readers see the old value or the new one, never half
