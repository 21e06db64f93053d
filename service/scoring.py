"""The service layer: uploads → model inputs → one model run → typed results.

Routes call `Scorer.score` / `Scorer.classify` with a list of uploads; the
single and batch endpoints share this code. CPU work (decoding, features,
onnxruntime, Mahalanobis) runs in worker threads, never on the event loop.
Single-clip requests that arrive together are stacked into one model run by a
`MicroBatcher` (a few milliseconds of wait, configurable, 0 = off).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import numpy as np

from service.bundle import level_for
from service.errors import AuscultError, Overloaded
from service.features import Prepared, prepare
from service.observability import Metrics
from service.runtime import AnomalyRuntime, ClassifierRuntime, ModelRuntime
from service.schemas import (
    ClassifyResult,
    ErrorDetail,
    FileError,
    InputInfo,
    ScoreResult,
    ThresholdValues,
)
from service.settings import Settings
from service.uploads import Upload


class MicroBatcher:
    """Collects single inputs for up to `wait_s` (or `max_batch` items) and runs them as
    one batch: `fn((b, h, w)) → (b, …)`; each caller gets its own row back."""

    def __init__(
        self,
        fn: Callable[[np.ndarray], np.ndarray],
        run: Callable[[Callable[[], np.ndarray]], asyncio.Future | object],
        max_batch: int,
        wait_s: float,
    ) -> None:
        self.fn = fn
        self.run = run
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def submit(self, image: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        self.pending.append((image, fut))
        if len(self.pending) >= self.max_batch:
            self._flush()
        elif self.timer is None:
            self.timer = loop.call_later(self.wait_s, self._flush)
        return await fut

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        items, self.pending = self.pending, []
        if items:
            task = asyncio.ensure_future(self._execute(items))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _execute(self, items: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        batch = np.stack([img for img, _ in items])
        try:
            out = await self.run(lambda: self.fn(batch))  # type: ignore[misc]
        except Exception as e:
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(e)
            return
        for i, (_, fut) in enumerate(items):
            if not fut.done():
                fut.set_result(out[i])


@dataclass
class _Item:
    upload: Upload
    prepared: Prepared | None = None
    error: AuscultError | None = None


def _input_info(p: Prepared) -> InputInfo:
    return InputInfo(
        kind=p.kind,
        format=p.format,
        duration_s=round(p.duration_s, 4) if p.duration_s is not None else None,
        sample_rate=p.sample_rate,
        channels=p.channels,
    )


class Scorer:
    """Owns the worker threads, the concurrency bound and the micro-batchers."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.limiter = anyio.CapacityLimiter(settings.cpu_workers)
        self.inflight = 0
        self.batchers: dict[str, MicroBatcher] = {}

    async def in_thread(self, fn: Callable[[], np.ndarray]) -> np.ndarray:
        return await anyio.to_thread.run_sync(fn, limiter=self.limiter)

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Bound the requests in flight; the excess is refused, not queued without end."""
        if self.inflight >= self.settings.max_concurrency:
            raise Overloaded(
                f"more than {self.settings.max_concurrency} requests in flight; retry shortly",
                headers={"Retry-After": "1"},
            )
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        try:
            yield
        finally:
            self.inflight -= 1
            self.metrics.inflight.set(self.inflight)

    async def _prepare_all(
        self, runtime: ModelRuntime, uploads: list[Upload], raise_errors: bool
    ) -> list[_Item]:
        assert runtime.manifest is not None
        params = runtime.manifest.features
        max_s = self.settings.max_audio_seconds
        items = [_Item(u) for u in uploads]

        async def one(item: _Item) -> None:
            try:
                item.prepared = await anyio.to_thread.run_sync(
                    prepare, item.upload.data, params, max_s, limiter=self.limiter
                )
            except AuscultError as e:
                item.error = e
                if not raise_errors:  # raised errors are counted by the error handler
                    self.metrics.errors.labels(e.code).inc()

        async with anyio.create_task_group() as tg:
            for item in items:
                tg.start_soon(one, item)
        if raise_errors:
            for item in items:
                if item.error is not None:
                    raise item.error
        return items

    async def _run_model(
        self,
        runtime: ModelRuntime,
        fn: Callable[[np.ndarray], np.ndarray],
        images: list[np.ndarray],
    ) -> np.ndarray:
        """Single inputs go through the micro-batcher; several run as one stacked batch."""
        wait_s = self.settings.batch_wait_ms / 1000
        if len(images) == 1 and wait_s > 0:
            batcher = self.batchers.get(runtime.name)
            if batcher is None:
                batcher = MicroBatcher(
                    self._observed(fn), self.in_thread, self.settings.max_micro_batch, wait_s
                )
                self.batchers[runtime.name] = batcher
            return np.asarray(await batcher.submit(images[0]))[None]
        batch = np.stack(images)
        return await self.in_thread(lambda: self._observed(fn)(batch))

    def _observed(
        self, fn: Callable[[np.ndarray], np.ndarray]
    ) -> Callable[[np.ndarray], np.ndarray]:
        def run(batch: np.ndarray) -> np.ndarray:
            self.metrics.batch_size.labels("encoder").observe(len(batch))
            return fn(batch)

        run.__wrapped__ = fn  # type: ignore[attr-defined]
        return run

    async def score(
        self, runtime: AnomalyRuntime, uploads: list[Upload], raise_errors: bool = False
    ) -> list[ScoreResult | FileError]:
        """Anomaly scores for every upload, in order; bad files become FileError entries
        (or, with raise_errors, the first bad file's error is raised)."""
        m = runtime.manifest
        assert m is not None and m.thresholds is not None
        items = await self._prepare_all(runtime, uploads, raise_errors)
        good = [it for it in items if it.prepared is not None]
        scores = (
            await self._run_model(runtime, runtime.score, [it.prepared.image for it in good])  # type: ignore[union-attr]
            if good
            else np.empty(0)
        )
        score_of = {id(it): float(s) for it, s in zip(good, scores, strict=True)}
        thresholds = ThresholdValues(
            needs_maintenance=m.thresholds.needs_maintenance, severe=m.thresholds.severe
        )
        results: list[ScoreResult | FileError] = []
        for it in items:
            if it.prepared is None:
                assert it.error is not None
                results.append(_file_error(it))
                continue
            s = score_of[id(it)]
            level = level_for(s, m.thresholds)
            self.metrics.clips.labels(runtime.name, level).inc()
            results.append(
                ScoreResult(
                    model=runtime.name,
                    model_version=m.version,
                    score=s,
                    level=level,
                    thresholds=thresholds,
                    input=_input_info(it.prepared),
                    filename=it.upload.filename,
                )
            )
        return results

    async def classify(
        self, runtime: ClassifierRuntime, uploads: list[Upload], raise_errors: bool = False
    ) -> list[ClassifyResult | FileError]:
        """Label, confidence and every label's probability for each upload, in order."""
        m = runtime.manifest
        assert m is not None and m.labels is not None
        items = await self._prepare_all(runtime, uploads, raise_errors)
        good = [it for it in items if it.prepared is not None]
        probs = (
            await self._run_model(
                runtime,
                runtime.probabilities,
                [it.prepared.image for it in good],  # type: ignore[union-attr]
            )
            if good
            else np.empty((0, len(m.labels)))
        )
        row_of = {id(it): p for it, p in zip(good, probs, strict=True)}
        results: list[ClassifyResult | FileError] = []
        for it in items:
            if it.prepared is None:
                results.append(_file_error(it))
                continue
            p = row_of[id(it)]
            best = int(np.argmax(p))
            self.metrics.clips.labels(runtime.name, m.labels[best]).inc()
            results.append(
                ClassifyResult(
                    model=runtime.name,
                    model_version=m.version,
                    label=m.labels[best],
                    confidence=float(p[best]),
                    probabilities={lab: float(v) for lab, v in zip(m.labels, p, strict=True)},
                    input=_input_info(it.prepared),
                    filename=it.upload.filename,
                )
            )
        return results


def _file_error(item: _Item) -> FileError:
    assert item.error is not None
    return FileError(
        filename=item.upload.filename,
        error=ErrorDetail(code=item.error.code, message=item.error.message),
    )
