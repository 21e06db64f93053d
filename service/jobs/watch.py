"""The service's side of finished fit jobs: a model a trainer published is loaded by every
server process without an operator's reload (each process polls the jobs folder)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import anyio

from service.jobs.spool import LIVE_STATES, Spool
from service.models.registry import ModelRegistry
from service.models.reload import Reloader

log = logging.getLogger("auscult.fits")
POLL_S = 1.0  # how often each process looks for jobs that ended
INCOMING_MAX_AGE_S = 3600.0  # a half-spooled upload older than this was left by a dead process


def served_version(registry: ModelRegistry, name: str) -> str | None:
    rt = registry.runtimes.get(name)
    return rt.manifest.version if rt is not None and rt.ready and rt.manifest else None


class FitWatcher:
    """Polls the spool; a job that succeeded gets its model (re)loaded in this process, once."""

    def __init__(
        self, spool: Spool, registry: Callable[[], ModelRegistry], reloader: Reloader
    ) -> None:
        self.spool = spool
        self.registry = registry
        self.reloader = reloader
        self.settled: set[str] = set()  # jobs this process has nothing more to do for
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self.spool.ensure)
        # the registry has just read the artifacts folder: jobs that ended before now are
        # served as far as they can be
        for job_id in await anyio.to_thread.run_sync(self.spool.job_ids):
            state = await anyio.to_thread.run_sync(self.spool.state, job_id)
            if state.get("state") not in LIVE_STATES:
                self.settled.add(job_id)
        self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def _run(self) -> None:
        sweeps = 0
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.check()
                sweeps += 1
                if sweeps % 60 == 0:
                    await anyio.to_thread.run_sync(self.spool.sweep_incoming, INCOMING_MAX_AGE_S)
            except Exception as e:  # the jobs folder may be briefly unreadable
                log.error("fit_watch_failed", extra={"detail": str(e)})

    async def check(self) -> None:
        for job_id in await anyio.to_thread.run_sync(self.spool.job_ids):
            if job_id not in self.settled:
                job = await anyio.to_thread.run_sync(self.spool.read, job_id)
                if job is not None:
                    await self.settle(job)

    async def settle(self, job: dict[str, Any]) -> None:
        """A succeeded job's model is loaded here (once); an ended job is settled."""
        state = job.get("state")
        if state in LIVE_STATES:
            return
        self.settled.add(job["id"])
        model = job.get("model") or {}
        if state != "succeeded" or not model.get("name"):
            return
        name = model["name"]
        if served_version(self.registry(), name) == model.get("version"):
            return
        (outcome,) = await self.reloader.reload(name, True, peers=False)
        log.info(
            "fit_model_loaded" if outcome.action == "loaded" else "fit_model_load_failed",
            extra={"job": job["id"], "model": name, "version": outcome.version},
        )
