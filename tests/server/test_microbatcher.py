"""The micro-batcher adds no wait to a lone request and stacks the ones that queue behind a run;
each caller submits a block of windows (k, h, w) and gets its own k rows back."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.models.scoring import MicroBatcher

pytestmark = pytest.mark.anyio


def recording_model(sizes: list[int]):  # type: ignore[no-untyped-def]
    def fn(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return batch.reshape(len(batch), -1).sum(axis=1)

    return fn


async def test_lone_input_runs_at_once_without_waiting() -> None:
    sizes: list[int] = []

    async def run(call):  # type: ignore[no-untyped-def]
        return call()

    batcher = MicroBatcher(recording_model(sizes), run, max_batch=8, wait_s=5.0)
    start = time.perf_counter()
    out = await batcher.submit(np.ones((1, 2, 2), np.float32))
    assert time.perf_counter() - start < 1.0  # not the 5 s wait
    assert out.tolist() == [4.0] and sizes == [1]


async def test_inputs_arriving_during_a_run_share_the_next_run() -> None:
    sizes: list[int] = []
    release = asyncio.Event()

    async def run(call):  # type: ignore[no-untyped-def]
        await release.wait()  # the first run is "in flight" until released
        return call()

    batcher = MicroBatcher(recording_model(sizes), run, max_batch=8, wait_s=5.0)
    first = asyncio.ensure_future(batcher.submit(np.full((1, 1, 1), 1.0, np.float32)))
    await asyncio.sleep(0)
    rest = [
        asyncio.ensure_future(batcher.submit(np.full((1, 1, 1), v, np.float32))) for v in (2, 3)
    ]
    # a long clip: three windows in one block, whose rows come back together and in order
    rest.append(
        asyncio.ensure_future(batcher.submit(np.arange(4, 7, dtype=np.float32)[:, None, None]))
    )
    await asyncio.sleep(0.01)
    assert sizes == []
    release.set()
    results = await asyncio.gather(first, *rest)
    assert [r.tolist() for r in results] == [[1.0], [2.0], [3.0], [4.0, 5.0, 6.0]]
    assert sizes == [1, 5]  # the blocks that queued went together, right after the first run


async def test_run_inline_only_when_the_model_is_idle() -> None:
    sizes: list[int] = []
    release = asyncio.Event()

    async def run(call):  # type: ignore[no-untyped-def]
        await release.wait()
        return call()

    batcher = MicroBatcher(recording_model(sizes), run, max_batch=8, wait_s=5.0)
    out = await asyncio.to_thread(batcher.run_inline, np.ones((1, 1, 3), np.float32))
    assert out is not None and out.tolist() == [3.0]
    busy = asyncio.ensure_future(batcher.submit(np.ones((1, 1, 1), np.float32)))
    await asyncio.sleep(0)
    assert await asyncio.to_thread(batcher.run_inline, np.ones((1, 1, 1), np.float32)) is None
    release.set()
    await busy
    assert sizes == [1, 1]
