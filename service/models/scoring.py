"""The service layer: uploads → model inputs → one model run → typed results.

Routes call `Scorer.score` / `Scorer.classify` with a list of uploads; the
single and batch endpoints share this code. CPU work (decoding, features,
onnxruntime, Mahalanobis) runs in worker threads, never on the event loop.
Single-clip requests that arrive together are stacked into one model run by a
`MicroBatcher` (a few milliseconds of wait, configurable, 0 = off).
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np

from service.budgets import BufferBudget, Upload
from service.errors import (
    AuscultError,
    Failure,
    InvalidRequest,
    NonFiniteValues,
    Overloaded,
    public_message,
)
from service.features import Prepared
from service.inputs import InputLimits, SampleBudget, prepare_bounded
from service.models.runtimes import AnomalyRuntime, ClassifierRuntime, ModelRuntime
from service.models.verdict import Verdict
from service.observability import Metrics
from service.schemas import (
    ClassifyResult,
    ConditionUsed,
    ErrorDetail,
    FileError,
    InputInfo,
    InputWarningDetail,
    ScoreResult,
    ThresholdValues,
    WindowScore,
    WorstStretch,
)
from service.serving.process import release_memory
from service.settings import Settings

T = TypeVar("T")

# a request that decoded more samples gives memory back after: a small compressed upload
# (eight silent 300-s FLACs are 112 kB) can cost hundreds of MB of decoding work
TRIM_AFTER_SAMPLES = 2_000_000
TRIM_AFTER_BYTES = 8 * 1024 * 1024  # and so does a request that buffered more


class MicroBatcher:
    """Stacks inputs into one model run: `fn((b, h, w)) → (b, …)`; each caller submits a
    block of windows `(k, h, w)` and gets its own k rows back.

    An idle model runs a block at once, so a lone request waits for nothing; a worker
    thread that has just prepared a block can run it itself (`run_inline`), saving a
    second hand-over to a thread. Blocks that arrive while a run is in flight (or queued
    for a worker thread) are held and go together as soon as it ends, after at most
    `wait_s`, or at `max_batch` windows.
    """

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
        self.pending_rows = 0
        self.timer: asyncio.TimerHandle | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.running = 0  # runs scheduled or in progress; guarded by lock (worker threads too)
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.owner: object = None  # the runtime whose `fn` this is (Scorer._batcher)

    async def submit(self, block: np.ndarray) -> np.ndarray:
        """(k, h, w) → the model's (k, …) rows for them."""
        loop = self.loop = asyncio.get_running_loop()
        fut: asyncio.Future[np.ndarray] = loop.create_future()
        self.pending.append((block, fut))
        self.pending_rows += len(block)
        with self.lock:
            idle = self.running == 0
        if idle or self.pending_rows >= self.max_batch:
            self._flush()
        elif self.timer is None:
            self.timer = loop.call_later(self.wait_s, self._flush)
        return await fut

    def _flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        items, self.pending, self.pending_rows = self.pending, [], 0
        if items:
            with self.lock:
                self.running += 1
            task = asyncio.ensure_future(self._execute(items))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _execute(self, items: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        try:
            batch = items[0][0] if len(items) == 1 else np.concatenate([b for b, _ in items])
            out = await self.run(lambda: self.fn(batch))  # type: ignore[misc]
        except Exception as e:
            for _, fut in items:
                if not fut.done():
                    fut.set_exception(e)
            return
        finally:
            with self.lock:
                self.running -= 1
            self._drain()
        start = 0
        for block, fut in items:
            if not fut.done():
                fut.set_result(out[start : start + len(block)])
            start += len(block)

    def _drain(self) -> None:
        """Once the model is idle, what queued behind the last run goes now, as one batch."""
        with self.lock:
            idle = self.running == 0
        if idle and self.pending:
            self._flush()

    def run_inline(self, block: np.ndarray) -> np.ndarray | None:
        """From a worker thread: run a (k, h, w) block now if the model is idle, else None
        (then `submit` it). Blocks that queue meanwhile are flushed when this run ends."""
        with self.lock:
            if self.running:
                return None
            self.running += 1
        try:
            return np.asarray(self.fn(block))
        finally:
            with self.lock:
                self.running -= 1
            if self.loop is not None and self.pending:
                self.loop.call_soon_threadsafe(self._drain)


@dataclass(frozen=True)
class _Error:
    """A file's error kept as data: an exception object would keep its traceback, and
    with it the frames' locals (the upload's bytes), alive until the cycle collector runs."""

    status_code: int
    code: str
    message: str

    @classmethod
    def of(cls, e: AuscultError) -> _Error:
        return cls(e.status_code, e.code, public_message(e.message))


@dataclass
class _Item:
    upload: Upload
    prepared: Prepared | None = None
    error: _Error | None = None
    output: np.ndarray | None = None  # (n_windows, …) model output, when the preparing
    # thread ran it too


def _input_info(p: Prepared) -> InputInfo:
    return InputInfo(
        kind=p.kind,
        format=p.format,
        duration_s=round(p.duration_s, 4) if p.duration_s is not None else None,
        sample_rate=p.sample_rate,
        channels=p.channels,
        bandwidth_hz=None if p.bandwidth_hz is None else round(p.bandwidth_hz),
        bitrate_kbps=None if p.bitrate_kbps is None else round(p.bitrate_kbps, 1),
    )


class Scorer:
    """Owns the worker threads, the concurrency bound and the micro-batchers."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.executor: ThreadPoolExecutor | None = None
        self.inflight = 0
        self.batchers: dict[str, MicroBatcher] = {}
        self.buffers = BufferBudget(settings.max_buffered_bytes)
        self.trimming: asyncio.Future[bool] | None = None
        self.trim_pending = False  # a request decoded a lot: trim when it ends

    async def in_thread(self, fn: Callable[[], T]) -> T:
        """Run fn on one of `cpu_workers` worker threads (a plain executor: anyio's
        to_thread cost the event loop ~0.1 ms per hand-over in its bookkeeping)."""
        if self.executor is None:
            self.executor = ThreadPoolExecutor(
                self.settings.cpu_workers, thread_name_prefix="auscult-worker"
            )
        ctx = contextvars.copy_context()  # the request id, for anything that logs there
        return await asyncio.get_running_loop().run_in_executor(self.executor, ctx.run, fn)

    def close(self) -> None:
        """Stop the worker threads (lifespan shutdown); a later call starts new ones."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    def request_done(self, buffered_bytes: int) -> None:
        """At the end of a request: give memory back when it buffered or decoded a lot."""
        if buffered_bytes >= TRIM_AFTER_BYTES or self.trim_pending:
            self.release_memory_soon()

    def release_memory_soon(self) -> None:
        """After a request that buffered a lot: return freed memory to the OS, in a
        thread (a trim takes milliseconds), one at a time."""
        self.trim_pending = False
        if self.trimming is None or self.trimming.done():
            self.trimming = asyncio.get_running_loop().run_in_executor(None, release_memory)

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
        self,
        runtime: ModelRuntime,
        uploads: list[Upload],
        raise_errors: bool,
        fn: Callable[[np.ndarray], np.ndarray],
    ) -> list[_Item]:
        """Decode and compute features in worker threads. A lone upload whose model is
        idle is also run through `fn` in the same thread call (one hand-over, not two)."""
        assert runtime.manifest is not None
        params = runtime.manifest.features
        s = self.settings
        limits = InputLimits(s.max_audio_seconds, s.min_sample_rate, s.max_sample_rate)
        budget = SampleBudget(s.max_request_samples)
        items = [_Item(u) for u in uploads]
        batcher = self._batcher(runtime, fn) if len(items) == 1 else None

        def work(upload: Upload) -> tuple[Prepared, np.ndarray | None]:
            try:
                prepared = prepare_bounded(upload.data, params, limits, budget)
            finally:
                upload.data = b""  # the bytes are not needed past this point
            return prepared, batcher.run_inline(prepared.images) if batcher else None

        def work_group(group: list[_Item]) -> None:
            for item in group:
                try:
                    item.prepared = prepare_bounded(item.upload.data, params, limits, budget)
                except AuscultError as e:
                    item.error = _Error.of(e)
                finally:
                    item.upload.data = b""

        if len(items) == 1:
            (item,) = items
            try:
                item.prepared, item.output = await self.in_thread(lambda: work(item.upload))
            except AuscultError as e:
                if raise_errors:
                    raise  # counted by the error handler
                item.error = _Error.of(e)
        else:
            # One hand-over per worker, not per file: a batch of 32 costs 2 thread wake-ups
            # on the event loop instead of 32 (each is a measurable share of its CPU).
            n = min(len(items), self.settings.cpu_workers)
            groups = [items[i::n] for i in range(n)]
            await asyncio.gather(*(self.in_thread(partial(work_group, g)) for g in groups))
        if budget.limit - budget.left >= TRIM_AFTER_SAMPLES:
            self.trim_pending = True  # the request's end gives the working set back
        for item in items:
            if item.error is not None:
                if raise_errors:
                    err = item.error
                    raise Failure(err.status_code, err.code, err.message)  # counted by the handler
                self.metrics.errors.labels(item.error.code).inc()
        return items

    def _non_finite(self, item: _Item, raise_errors: bool, what: str) -> None:
        """A non-finite model output: the file's error, never a score or a label."""
        e = NonFiniteValues(f"the model's {what} for this input is not a finite number")
        if raise_errors:
            raise e
        item.error = _Error.of(e)
        item.prepared = None
        self.metrics.errors.labels(e.code).inc()

    async def _outputs(
        self, runtime: ModelRuntime, fn: Callable[[np.ndarray], np.ndarray], good: list[_Item]
    ) -> list[np.ndarray]:
        """Model outputs (n_windows, …) per prepared item, in order: already computed, or
        one model run over every item's windows."""
        if len(good) == 1 and good[0].output is not None:
            return [good[0].output]
        blocks = [it.prepared.images for it in good]  # type: ignore[union-attr]
        batcher = self._batcher(runtime, fn) if len(blocks) == 1 else None
        if batcher is not None:
            return [np.asarray(await batcher.submit(blocks[0]))]
        batch = np.concatenate(blocks)
        out = await self.in_thread(lambda: self._observed(fn)(batch))
        bounds = np.cumsum([len(b) for b in blocks])[:-1]
        return np.split(out, bounds)

    async def run_model(
        self, runtime: ModelRuntime, fn: Callable[[np.ndarray], np.ndarray], block: np.ndarray
    ) -> np.ndarray:
        """fn (a runtime's scoring function) over a block (k, h, w) of its inputs, in a
        worker thread, through the model's micro-batcher when batching is on: windows of
        live streams share model runs with each other and with uploads."""
        batcher = self._batcher(runtime, fn)
        if batcher is not None:
            return np.asarray(await batcher.submit(block))
        return await self.in_thread(lambda: self._observed(fn)(block))

    def _batcher(
        self, runtime: ModelRuntime, fn: Callable[[np.ndarray], np.ndarray]
    ) -> MicroBatcher | None:
        """The model's micro-batcher (one per model), or None when batching is off."""
        wait_s = self.settings.batch_wait_ms / 1000
        if wait_s <= 0:
            return None
        # Keyed by the runtime object, not the name: after a reload, requests on the new
        # version must not run through the old version's session (nor the reverse). A
        # batcher whose runtime is no longer current is dropped with its last request.
        batcher = self.batchers.get(runtime.name)
        if batcher is None or batcher.owner is not runtime:
            batcher = MicroBatcher(
                self._observed(fn), self.in_thread, self.settings.max_micro_batch, wait_s
            )
            batcher.owner = runtime
            self.batchers[runtime.name] = batcher
        return batcher

    def _observed(
        self, fn: Callable[[np.ndarray], np.ndarray]
    ) -> Callable[[np.ndarray], np.ndarray]:
        def run(batch: np.ndarray) -> np.ndarray:
            self.metrics.batch_size.labels("encoder").observe(len(batch))
            return fn(batch)

        run.__wrapped__ = fn  # type: ignore[attr-defined]
        return run

    async def score(
        self,
        runtime: AnomalyRuntime,
        uploads: list[Upload],
        raise_errors: bool = False,
        condition: str | None = None,
        lossy: bool | None = None,
    ) -> list[ScoreResult | FileError]:
        """Anomaly scores for every upload, in order; bad files become FileError entries
        (or, with raise_errors, the first bad file's error is raised). `condition`: one of
        runtime.conditions (checked by the caller), or None for the nearest; `lossy`: the
        sound went through a lossy codec before it was encoded as uploaded (None: decide by
        the upload's format)."""
        m = runtime.manifest
        assert m is not None and m.thresholds is not None
        items = await self._prepare_all(runtime, uploads, raise_errors, runtime.score)
        good = [it for it in items if it.prepared is not None]
        outputs = await self._outputs(runtime, runtime.score, good) if good else []
        windows_of = {id(it): w for it, w in zip(good, outputs, strict=True)}
        thresholds = ThresholdValues(
            needs_maintenance=m.thresholds.needs_maintenance, severe=m.thresholds.severe
        )
        results: list[ScoreResult | FileError] = []
        for it in items:
            if it.prepared is not None:
                raw = windows_of[id(it)]
                v = runtime.verdict_of(raw, it.prepared, condition, lossy)
                if not (math.isfinite(v.score) and np.isfinite(raw).all()):
                    self._non_finite(it, raise_errors, "score")
            if it.prepared is None:
                assert it.error is not None
                results.append(_file_error(it))
                continue
            self.metrics.clips.labels(runtime.name, v.level).inc()
            results.append(
                score_result(
                    runtime,
                    v,
                    thresholds,
                    _input_info(it.prepared),
                    it.upload.filename,
                    it.prepared.spans,
                )
            )
        return results

    async def latents(self, runtime: AnomalyRuntime, uploads: list[Upload]) -> list[np.ndarray]:
        """Each upload's window latents (n_windows, d), in order, for enrolling a condition;
        the first bad file's error is raised, naming the file."""
        m = runtime.manifest
        assert m is not None
        s = self.settings
        limits = InputLimits(s.max_audio_seconds, s.min_sample_rate, s.max_sample_rate)
        budget = SampleBudget(s.max_request_samples)

        def work() -> list[np.ndarray]:
            out = []
            for u in uploads:
                try:
                    prepared = prepare_bounded(u.data, m.features, limits, budget)
                except AuscultError as e:
                    raise Failure(e.status_code, e.code, f"{u.filename}: {e.message}") from None
                finally:
                    u.data = b""
                if prepared.spans is None:
                    raise InvalidRequest(f"{u.filename}: enrol healthy audio, not a picture")
                out.append(runtime.latents(prepared.images))
            return out

        return await self.in_thread(work)

    async def classify(
        self, runtime: ClassifierRuntime, uploads: list[Upload], raise_errors: bool = False
    ) -> list[ClassifyResult | FileError]:
        """Label, confidence and every label's probability for each upload, in order."""
        m = runtime.manifest
        assert m is not None and m.labels is not None
        items = await self._prepare_all(runtime, uploads, raise_errors, runtime.probabilities)
        good = [it for it in items if it.prepared is not None]
        probs = await self._outputs(runtime, runtime.probabilities, good) if good else []
        row_of = {id(it): p[0] for it, p in zip(good, probs, strict=True)}
        results: list[ClassifyResult | FileError] = []
        for it in items:
            if it.prepared is not None and not np.isfinite(row_of[id(it)]).all():
                self._non_finite(it, raise_errors, "probabilities")
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


def score_result(
    runtime: AnomalyRuntime,
    v: Verdict,
    thresholds: ThresholdValues,
    info: InputInfo,
    filename: str | None,
    spans: list[tuple[float, float]] | None,
) -> ScoreResult:
    """A clip's Verdict → the API's ScoreResult (`spans`: each window's (start_s, end_s))."""
    assert runtime.manifest is not None
    worst = None
    if spans is not None:
        first, last = v.worst
        worst = WorstStretch(
            start_s=round(spans[first][0], 3),
            end_s=round(spans[last][1], 3),
            score=float(v.window_scores[first : last + 1].mean()),
        )
    return ScoreResult(
        model=runtime.name,
        model_version=runtime.manifest.version,
        score=v.score,
        level=v.level,
        thresholds=thresholds,
        input=info,
        filename=filename,
        windows=None
        if spans is None
        else [
            WindowScore(start_s=round(a, 3), end_s=round(b, 3), score=float(w))
            for (a, b), w in zip(spans, v.window_scores, strict=True)
        ],
        worst=worst,
        condition=ConditionUsed(name=v.condition, chosen=v.condition_source)
        if runtime.conditions
        else None,
        warnings=[InputWarningDetail(code=w.code, message=w.message) for w in v.warnings],
    )


def _file_error(item: _Item) -> FileError:
    assert item.error is not None
    return FileError(
        filename=item.upload.filename,
        error=ErrorDetail(code=item.error.code, message=item.error.message),
    )
