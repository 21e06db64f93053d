"""Faults with fake runtimes: overload, a runtime that raises, the service keeps answering."""

from __future__ import annotations

import threading
import time
from functools import partial
from pathlib import Path

import anyio
import numpy as np
import pytest

from service.app import create_app
from service.models.bundle import read_manifest
from service.models.registry import ModelRegistry
from service.settings import Settings
from tests.helpers import GOOD_WAV, FakeAnomalyRuntime, assert_error, assert_still_scores, serve

pytestmark = pytest.mark.anyio


def clip() -> dict:
    return {"files": {"file": ("a.wav", GOOD_WAV, "audio/wav")}}


def batch() -> dict:
    return {"files": [("files", ("a.wav", GOOD_WAV)), ("files", ("b.wav", GOOD_WAV))]}


class Gate:
    """Holds every model run until opened; tells when a run has started."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def score(self, images: np.ndarray) -> np.ndarray:
        self.entered.set()
        if not self.release.wait(timeout=10):
            raise TimeoutError("the test never opened the gate")
        return np.full(len(images), 1.0)

    async def wait_entered(self) -> None:
        deadline = time.monotonic() + 10
        while not self.entered.is_set():
            assert time.monotonic() < deadline, "the held request never reached the model"
            await anyio.sleep(0.005)


@pytest.fixture
def settings(tiny_bundle: Path) -> Settings:
    return Settings(artifacts_dir=tiny_bundle.parent, max_concurrency=1)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/models/slow/score", clip, id="score"),
        pytest.param("/v1/models/slow/score/batch", batch, id="batch"),
    ],
)
async def test_request_beyond_max_concurrency_is_overloaded_with_retry_after(
    settings: Settings, tiny_bundle: Path, path: str, body
) -> None:  # type: ignore[no-untyped-def]
    gate = Gate()
    manifest = read_manifest(tiny_bundle)
    registry = ModelRegistry({"slow": FakeAnomalyRuntime("slow", manifest, gate.score)})
    async with serve(create_app(settings, registry=registry)) as client:
        held: dict = {}

        async def first() -> None:
            held["response"] = await client.post("/v1/models/slow/score", **clip())

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await gate.wait_entered()
            r = await client.post(path, **body())
            assert_error(r, 503, "overloaded")
            assert int(r.headers["retry-after"]) >= 1
            gate.release.set()
        assert held["response"].status_code == 200, held["response"].text
        assert held["response"].json()["score"] == 1.0
        # The slot was given back: the next request is served.
        assert (await client.post(path, **body())).status_code == 200
        metrics = (await client.get("/metrics")).text
        assert 'auscult_errors_total{code="overloaded"} 1.0' in metrics
        assert "auscult_inflight_requests 0.0" in metrics


async def test_health_routes_are_not_bound_by_max_concurrency(
    settings: Settings, tiny_bundle: Path
) -> None:
    gate = Gate()
    registry = ModelRegistry(
        {"slow": FakeAnomalyRuntime("slow", read_manifest(tiny_bundle), gate.score)}
    )
    app = create_app(settings, registry=registry)
    async with serve(app) as client, anyio.create_task_group() as tg:
        tg.start_soon(partial(client.post, "/v1/models/slow/score", **clip()))
        await gate.wait_entered()
        for path in ("/healthz", "/readyz", "/v1/models", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
        gate.release.set()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param("/v1/models/broken/score", clip, id="score"),
        pytest.param("/v1/models/broken/score/batch", batch, id="batch"),
    ],
)
async def test_runtime_that_raises_gives_internal_error_and_service_still_answers(
    tiny_bundle: Path, path: str, body
) -> None:  # type: ignore[no-untyped-def]
    def explode(images: np.ndarray) -> np.ndarray:
        raise RuntimeError("onnxruntime exploded")

    manifest = read_manifest(tiny_bundle)
    registry = ModelRegistry(
        {
            "broken": FakeAnomalyRuntime("broken", manifest, explode),
            "tiny": FakeAnomalyRuntime("tiny", manifest),
        }
    )
    settings = Settings(artifacts_dir=tiny_bundle.parent)
    async with serve(create_app(settings, registry=registry)) as client:
        r = await client.post(path, **body(), headers={"x-request-id": "fault-1"})
        body_ = assert_error(r, 500, "internal_error")
        assert "exploded" not in body_["error"]["message"]  # internals stay in the log
        assert r.headers["x-request-id"] == "fault-1"
        await assert_still_scores(client, "tiny")
        metrics = (await client.get("/metrics")).text
        assert 'auscult_errors_total{code="internal_error"} 1.0' in metrics


async def test_fake_runtime_scores_flow_through_the_api(tiny_bundle: Path) -> None:
    manifest = read_manifest(tiny_bundle)
    registry = ModelRegistry({"mean": FakeAnomalyRuntime("mean", manifest)})
    async with serve(
        create_app(Settings(artifacts_dir=tiny_bundle.parent), registry=registry)
    ) as c:
        body = (await c.post("/v1/models/mean/score", **clip())).json()
        assert body["model"] == "mean" and 0 < body["score"] < 1
        assert body["model_version"] == manifest.version
