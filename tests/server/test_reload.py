"""Reload without downtime: admin routes, SIGHUP, the watcher, on copies of the committed
bundles in a temporary artifacts folder."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from service.app import create_app
from service.models.bundle import read_manifest, update_bundle
from service.settings import Settings
from tests.conftest import ARTIFACTS
from tests.helpers import GOOD_WAV, assert_error, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An artifacts folder with a copy of the committed gearbox bundle."""
    out = tmp_path / "artifacts"
    shutil.copytree(ARTIFACTS / "gearbox", out / "gearbox")
    return out


def _settings(root: Path, **overrides: object) -> Settings:
    return Settings(artifacts_dir=root, log_level="warning", **overrides)  # type: ignore[arg-type]


async def _score(client, model: str = "gearbox"):  # type: ignore[no-untyped-def]
    return await client.post(
        f"/v1/models/{model}/score", files={"file": ("a.wav", GOOD_WAV, "audio/wav")}
    )


async def _models(client) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    r = await client.get("/v1/models")
    assert r.status_code == 200, r.text
    return {m["name"]: m for m in r.json()["models"]}


async def _until(check: Callable[[], Awaitable[bool]], seconds: float = 20.0) -> None:
    """Poll until `check` holds (a deadline, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while not await check():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_load_during_20_reloads_sees_no_error_and_only_real_versions(root: Path) -> None:
    v0 = read_manifest(root / "gearbox").version
    versions = [v0, v0 + "-b"]
    async with serve(create_app(_settings(root))) as client:
        stop = asyncio.Event()
        seen: list[tuple[int, str | None]] = []

        async def load() -> None:
            while not stop.is_set():
                r = await _score(client)
                seen.append((r.status_code, r.json().get("model_version")))

        workers = [asyncio.create_task(load()) for _ in range(4)]
        for i in range(20):
            version = versions[(i + 1) % 2]
            update_bundle(root / "gearbox", {}, version=version)
            r = await client.post("/v1/models/gearbox/reload")
            assert r.status_code == 200, r.text
            assert r.json()["action"] == "loaded" and r.json()["version"] == version
            r = await _score(client)  # a request that starts after the swap: the new version
            assert r.status_code == 200 and r.json()["model_version"] == version
        stop.set()
        await asyncio.gather(*workers)
    assert len(seen) >= 20
    assert {status for status, _ in seen} == {200}
    assert {version for _, version in seen} <= set(versions)


async def test_request_in_flight_finishes_on_the_version_it_started_with(root: Path) -> None:
    v0 = read_manifest(root / "gearbox").version
    app = create_app(_settings(root, batch_wait_ms=0))
    async with serve(app) as client:
        old = app.state.registry.runtimes["gearbox"]
        entered, release = threading.Event(), threading.Event()
        score = old.score

        def held(images):  # type: ignore[no-untyped-def]
            entered.set()
            release.wait(30)
            return score(images)

        old.score = held  # this instance only: the version loaded by the reload is free
        task = asyncio.create_task(_score(client))
        await asyncio.to_thread(entered.wait, 30)
        update_bundle(root / "gearbox", {}, version="v-new")
        r = await client.post("/v1/models/gearbox/reload")
        assert r.json() == {
            "model": "gearbox",
            "action": "loaded",
            "version": "v-new",
            "previous_version": v0,
            "reason": None,
        }
        assert (await _models(client))["gearbox"]["version"] == "v-new"
        assert (await _score(client)).json()["model_version"] == "v-new"
        release.set()
        r = await task
        assert r.status_code == 200 and r.json()["model_version"] == v0


async def test_broken_new_version_leaves_the_old_one_serving_and_says_why(root: Path) -> None:
    v0 = read_manifest(root / "gearbox").version
    async with serve(create_app(_settings(root))) as client:
        encoder = root / "gearbox" / "encoder.onnx"
        good = encoder.read_bytes()
        encoder.write_bytes(b"not an onnx graph")
        r = await client.post("/v1/models/gearbox/reload")
        assert r.status_code == 200
        body = r.json()
        assert body["action"] == "failed" and body["version"] == v0
        assert "encoder.onnx" in body["reason"]
        info = (await _models(client))["gearbox"]
        assert info["status"] == "ready" and info["version"] == v0
        assert "encoder.onnx" in info["reload_error"]
        assert (await _score(client)).json()["model_version"] == v0

        encoder.write_bytes(good)
        r = await client.post("/v1/models/reload")
        assert [x["action"] for x in r.json()["results"]] == ["loaded"]
        assert (await _models(client))["gearbox"]["reload_error"] is None


async def test_scan_loads_new_folders_unloads_removed_ones_and_skips_unchanged(
    root: Path,
) -> None:
    async with serve(create_app(_settings(root))) as client:
        r = await client.post("/v1/models/reload")
        assert r.status_code == 200 and r.json() == {"results": []}  # nothing changed

        shutil.copytree(ARTIFACTS / "digits", root / "digits")
        shutil.copytree(ARTIFACTS / "digits", root / ".work-in-progress")
        r = await client.post("/v1/models/reload")
        assert [(x["model"], x["action"]) for x in r.json()["results"]] == [("digits", "loaded")]
        assert set(await _models(client)) == {"digits", "gearbox"}

        shutil.rmtree(root / "digits")
        r = await client.post("/v1/models/reload")
        assert [(x["model"], x["action"]) for x in r.json()["results"]] == [("digits", "removed")]
        assert_error(await _score(client, "digits"), 404, "model_not_found")
        assert_error(await client.post("/v1/models/nope/reload"), 404, "model_not_found")

        r = await client.post("/v1/models/reload", params={"force": "true"})
        assert [(x["model"], x["action"]) for x in r.json()["results"]] == [("gearbox", "loaded")]


async def test_a_removed_default_model_makes_the_service_unready(root: Path) -> None:
    async with serve(create_app(_settings(root, default_model="gearbox"))) as client:
        assert (await client.get("/readyz")).status_code == 200
        shutil.copytree(ARTIFACTS / "digits", root / "digits")
        shutil.rmtree(root / "gearbox")
        await client.post("/v1/models/reload")
        assert_error(await client.get("/readyz"), 503, "not_ready")


async def test_admin_routes_take_admin_keys_only(root: Path) -> None:
    settings = _settings(root, api_keys="score-key", admin_keys="admin-key")
    async with serve(create_app(settings)) as client:
        assert_error(await client.post("/v1/models/reload"), 401, "unauthorized")
        r = await client.post("/v1/models/reload", headers={"X-API-Key": "score-key"})
        assert_error(r, 401, "unauthorized")
        r = await client.post(
            "/v1/models/gearbox/reload", headers={"Authorization": "Bearer admin-key"}
        )
        assert r.status_code == 200 and r.json()["action"] == "loaded"
        r = await client.get("/v1/models", headers={"X-API-Key": "admin-key"})
        assert_error(r, 401, "unauthorized")  # an admin key does not score
    async with serve(create_app(_settings(root, api_keys="score-key"))) as client:
        r = await client.post("/v1/models/reload", headers={"X-API-Key": "score-key"})
        assert "AUSCULT_ADMIN_KEYS" in assert_error(r, 401, "unauthorized")["error"]["message"]


def test_admin_key_requirement_is_in_the_document(root: Path) -> None:
    def security(**keys: str) -> list:
        app = create_app(_settings(root, **keys))
        return app.openapi()["paths"]["/v1/models/reload"]["post"]["security"]

    assert security() == [{"AdminKey": []}, {}]
    assert security(admin_keys="k") == [{"AdminKey": []}]


async def test_watch_picks_up_new_changed_and_removed_folders(root: Path) -> None:
    app = create_app(_settings(root, watch=True, watch_interval_s=0.1))
    async with serve(app) as client:
        shutil.copytree(ARTIFACTS / "digits", root / "digits")

        async def digits_ready() -> bool:
            return (await _models(client)).get("digits", {}).get("status") == "ready"

        await _until(digits_ready)
        update_bundle(root / "gearbox", {}, version="watched")

        async def gearbox_watched() -> bool:
            return (await _models(client))["gearbox"]["version"] == "watched"

        await _until(gearbox_watched)
        shutil.rmtree(root / "digits")

        async def digits_gone() -> bool:
            return "digits" not in await _models(client)

        await _until(digits_gone)
        metrics = (await client.get("/metrics")).text
        assert 'auscult_model_reloads_total{model="digits",outcome="removed"} 1.0' in metrics


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
async def test_sighup_rescans_the_artifacts_folder(root: Path) -> None:
    async with serve(create_app(_settings(root))) as client:
        shutil.copytree(ARTIFACTS / "digits", root / "digits")
        os.kill(os.getpid(), signal.SIGHUP)

        async def digits_ready() -> bool:
            return (await _models(client)).get("digits", {}).get("status") == "ready"

        await _until(digits_ready)
