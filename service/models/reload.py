"""Reload without downtime: one coordinator for the admin routes, SIGHUP and the watcher.

`Reloader.reload` runs `ModelRegistry.reload` in a thread (never on the event loop),
one reload at a time, then warms the feature path of any new feature parameters and
updates the metrics. SIGHUP re-scans the artifacts folder; with AUSCULT_WATCH=1 a
background task polls it every AUSCULT_WATCH_INTERVAL_S (a new folder is a new model,
a removed one is unloaded, a changed one is re-read).

With several worker processes each has its own registry: a reload through the API then
asks every worker to re-scan (`peers`, set by the worker: the supervisor sends SIGHUP to
all, service/serving/workers.py) and answers once every one of them has (or after
`CONFIRM_TIMEOUT_S`, with a warning), so the next request finds the model on any worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import anyio

from service import features
from service.models.registry import ModelRegistry, ReloadOutcome
from service.observability import Metrics
from service.settings import Settings

if TYPE_CHECKING:
    from service.serving.peers import WorkerPeers

log = logging.getLogger("auscult.reload")
T = TypeVar("T")


class Reloader:
    def __init__(
        self, registry: Callable[[], ModelRegistry], settings: Settings, metrics: Metrics
    ) -> None:
        self.registry = registry  # the app's registry of the moment
        self.settings = settings
        self.metrics = metrics
        self.lock = asyncio.Lock()
        self.tasks: set[asyncio.Task[None]] = set()
        self.signal_installed = False
        self.peers: WorkerPeers | None = None  # the other worker processes, if any

    async def reload(
        self, name: str | None = None, force: bool = False, peers: bool = True
    ) -> list[ReloadOutcome]:
        """Re-read one bundle (always) or scan all (changed ones, or all with `force`); with
        other worker processes, return once every one has re-scanned too (changed bundles),
        unless `peers` is False (every worker does this reload on its own)."""
        try:
            return await self._reload(name, force)
        finally:
            if self.peers is not None and peers:
                generation = self.peers.request()
                late = await self.peers.wait(generation)
                if late:
                    log.warning("reload_unconfirmed", extra={"workers": late})

    async def write_and_reload(self, name: str, write: Callable[[], T]) -> tuple[T, ReloadOutcome]:
        """Run `write` (which replaces the bundle folder `name` atomically) in a thread while
        no scan runs (a scan must not see the folder mid-swap), then reload that model."""
        async with self.lock:
            result = await anyio.to_thread.run_sync(write)
        (outcome,) = await self.reload(name, True)
        return result, outcome

    async def _reload(self, name: str | None = None, force: bool = False) -> list[ReloadOutcome]:
        reg = self.registry()
        async with self.lock:
            asked = self.peers.requested() if self.peers is not None else 0
            try:
                outcomes = await anyio.to_thread.run_sync(self._reload_and_warm, reg, name, force)
            finally:
                if self.peers is not None and name is None:  # a scan: every changed bundle
                    self.peers.scanned(asked)  # (a failed one too: nobody waits in vain)
        for o in outcomes:
            self.metrics.reloads.labels(o.model, o.action).inc()
        self.metrics.models_ready.set(reg.ready_count)
        return outcomes

    @staticmethod
    def _reload_and_warm(reg: ModelRegistry, name: str | None, force: bool) -> list[ReloadOutcome]:
        outcomes = reg.reload(name, force)
        for o in outcomes:
            rt = reg.runtimes.get(o.model)
            if o.action == "loaded" and rt is not None and rt.manifest is not None:
                features.warm_up(rt.manifest.features)  # cached: new parameters only
        return outcomes

    def _spawn(self, reason: str) -> None:
        async def run() -> None:
            try:
                outcomes = await self._reload()
            except Exception as e:  # a scan must never take the service down
                log.error("reload_failed", extra={"trigger": reason, "detail": str(e)})
                return
            if outcomes or reason == "sighup":
                log.info(
                    "reload_done",
                    extra={"trigger": reason, "changes": [o.action for o in outcomes]},
                )

        task = asyncio.ensure_future(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _watch(self) -> None:
        interval = self.settings.watch_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                outcomes = await self._reload()
            except Exception as e:  # e.g. the artifacts folder itself went away for a while
                log.error("reload_failed", extra={"trigger": "watch", "detail": str(e)})
                continue
            if outcomes:
                log.info(
                    "reload_done",
                    extra={"trigger": "watch", "changes": [o.action for o in outcomes]},
                )

    def start(self) -> None:
        """SIGHUP → scan (where the platform has it and this is the main thread); with
        `watch`, the polling task."""
        loop = asyncio.get_running_loop()
        if hasattr(signal, "SIGHUP"):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signal.SIGHUP, self._spawn, "sighup")
                self.signal_installed = True
        if self.settings.watch:
            task = asyncio.ensure_future(self._watch())
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def stop(self) -> None:
        if self.signal_installed:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            self.signal_installed = False
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
