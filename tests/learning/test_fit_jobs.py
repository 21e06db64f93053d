"""Fit jobs end to end: the service (ASGI app, its lifespan and fit watcher run) spools a
job, the real trainer (`python -m training worker`, a subprocess) fits it with a tiny
network, and the model is served. Failure modes: cancel during training, a trainer killed
mid-fit, a full disk while publishing."""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.conftest import ARTIFACTS, REPO, tone, wav_bytes
from tests.helpers import serve

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

TINY = "--filters 4,8,8 --latent-dim 8 --n-mels 32 --max-components 16"
CLIPS = [wav_bytes(tone(2.0, freq=300 + 20 * i, seed=i)) for i in range(8)]  # 16 s


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "artifacts").mkdir()
    shutil.copytree(ARTIFACTS / "gearbox", tmp_path / "artifacts" / "gearbox")
    return tmp_path


@pytest.fixture
async def client(root: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        artifacts_dir=root / "artifacts", jobs_dir=root / "jobs", fit_min_seconds=10
    )  # type: ignore[call-arg]
    async with serve(create_app(settings)) as c:
        yield c


def trainer(root: Path, *extra: str, fit_args: str = TINY + " --epochs 2") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "training", "worker", "--jobs", str(root / "jobs")]
    cmd += ["--artifacts", str(root / "artifacts"), "--poll", "0.2", "--fit-args", fit_args]
    return subprocess.Popen(
        [*cmd, *extra], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


async def post_job(client: httpx.AsyncClient, name: str = "pump", **fields: str) -> str:
    files = [("files", (f"healthy_{i}.wav", c, "audio/wav")) for i, c in enumerate(CLIPS)]
    r = await client.post("/v1/fits", data={"name": name, "preset": "quick", **fields}, files=files)
    assert r.status_code == 202, r.text
    return str(r.json()["url"])


async def wait_for(
    client: httpx.AsyncClient, url: str, until: Any, timeout: float = 240
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = (await client.get(url)).json()
        if until(job):
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.2)


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}


def ended(job: dict[str, Any]) -> bool:
    return job["state"] not in ("queued", "running")


async def test_a_job_is_fitted_published_and_served_leaving_only_its_bundle_and_report(
    client: httpx.AsyncClient, root: Path
) -> None:
    before = (await client.get("/v1/models/gearbox")).json()["version"]
    url = await post_job(client, "gearbox", replace="true")
    proc = trainer(root, "--once")
    try:
        job = await wait_for(client, url, ended)
    finally:
        out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 0, out
    assert job["state"] == "succeeded", job
    assert job["progress"] == {"epoch": 2, "epochs": 2, "percent": 100.0}
    assert any(line.startswith("epoch 2/2") for line in job["log"])
    version = job["model"]["version"]
    assert job["model"] == {"name": "gearbox", "version": version, "served": True}
    assert version != before
    report = job["report"]
    assert report["false_alarm_rate"] == 0.01 and report["thresholds"]["severe"] > 0
    assert sum(report["scores"]["histogram"]["counts"]) == 8  # 8 pieces of 2 s
    r = await client.post(
        "/v1/models/gearbox/score", files={"file": ("a.wav", CLIPS[0], "audio/wav")}
    )
    assert r.status_code == 200 and r.json()["model_version"] == version
    # no upload is left anywhere: the job keeps its record and report, artifacts the bundle
    job_id = job["id"]
    assert files_under(root / "jobs") == {
        f"{job_id}/job.json",
        f"{job_id}/state.json",
        f"{job_id}/claim.json",
        f"{job_id}/report.json",
    }
    arts = root / "artifacts"
    assert os.readlink(arts / "gearbox") == f".versions/gearbox-{version}"
    assert sorted(p.name for p in (arts / ".versions").iterdir()) == sorted(
        [f"gearbox-{before}", f"gearbox-{version}"]  # the replaced version is kept, one back
    )
    assert "report.json" in files_under(arts / "gearbox")


async def test_cancel_during_training_stops_the_fit_and_publishes_nothing(
    client: httpx.AsyncClient, root: Path
) -> None:
    url = await post_job(client)
    proc = trainer(root, "--once", fit_args=TINY + " --epochs 1000 --patience 1000")
    try:
        await wait_for(client, url, lambda j: (j["progress"].get("epoch") or 0) >= 1)
        r = await client.delete(url)
        assert r.status_code == 200 and r.json()["cancel_requested"] is True
        job = await wait_for(client, url, ended, timeout=60)
    finally:
        out = proc.communicate(timeout=60)[0].decode()
    assert job["state"] == "cancelled", (job, out)
    assert job["progress"]["epoch"] < 1000
    assert files_under(root / "artifacts") == {
        f"gearbox/{f}" for f in files_under(ARTIFACTS / "gearbox")
    }
    assert not (root / "jobs" / job["id"] / "clips").exists()
    # the name is free again
    assert (
        await client.post(
            "/v1/fits", data={"name": "pump"}, files=[("files", ("a.wav", CLIPS[0], "audio/wav"))]
        )
    ).json()["error"]["code"] == "not_enough_audio"


async def test_a_trainer_killed_mid_fit_leaves_the_job_failed_on_the_next_start(
    client: httpx.AsyncClient, root: Path
) -> None:
    url = await post_job(client)
    proc = trainer(root, fit_args=TINY + " --epochs 1000 --patience 1000")
    try:
        await wait_for(client, url, lambda j: (j["progress"].get("epoch") or 0) >= 1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    job = (await client.get(url)).json()
    assert job["state"] == "running"  # nobody has said otherwise yet
    assert any((root / "artifacts" / ".versions").glob(".build-*"))  # half built, hidden
    again = trainer(root, "--once")
    out = again.communicate(timeout=120)[0].decode()
    assert again.returncode == 0, out
    job = (await client.get(url)).json()
    assert job["state"] == "failed"
    assert "stopped before the fit ended" in job["error"]
    assert {p.name for p in (root / "artifacts").iterdir()} == {"gearbox", ".versions"}
    assert list((root / "artifacts" / ".versions").iterdir()) == []  # nothing partial
    assert not (root / "jobs" / job["id"] / "clips").exists()
    models = (await client.get("/v1/models")).json()["models"]
    assert [m["name"] for m in models] == ["gearbox"]


async def test_a_full_disk_while_publishing_fails_the_job_and_the_service_keeps_serving(
    client: httpx.AsyncClient, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import worker

    url = await post_job(client)

    def full_disk(*_: object, **__: object) -> str:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(worker, "publish", full_disk)
    t = worker.Trainer(
        root / "jobs", root / "artifacts", extra_args=[*TINY.split(), "--epochs", "1"]
    )
    await asyncio.to_thread(t.serve, True)
    job = (await client.get(url)).json()
    assert job["state"] == "failed"
    assert job["error"].startswith("the disk is full")
    assert {p.name for p in (root / "artifacts").iterdir()} == {"gearbox", ".versions"}
    assert list((root / "artifacts" / ".versions").iterdir()) == []
    r = await client.post(
        "/v1/models/gearbox/score", files={"file": ("a.wav", CLIPS[0], "audio/wav")}
    )
    assert r.status_code == 200


async def test_with_ray_a_job_runs_as_a_ray_task_with_the_same_states_and_progress(
    client: httpx.AsyncClient, root: Path
) -> None:
    pytest.importorskip("ray")
    url = await post_job(client)
    proc = trainer(root, "--once", "--ray", "local")
    try:
        job = await wait_for(client, url, ended, timeout=300)
    finally:
        out = proc.communicate(timeout=120)[0].decode()
    assert job["state"] == "succeeded", (job, out)
    assert job["progress"] == {"epoch": 2, "epochs": 2, "percent": 100.0}
    assert any(line.startswith("epoch 2/2") for line in job["log"])
    assert job["model"]["served"] is True
    r = await client.post("/v1/models/pump/score", files={"file": ("a.wav", CLIPS[0], "audio/wav")})
    assert r.status_code == 200


def _built(tmp: Path, name: str, version: str) -> Path:
    """A bundle folder (the committed gearbox's files) whose manifest says `version`."""
    import json

    out = tmp / f".build-{version}" / name
    shutil.copytree(ARTIFACTS / "gearbox", out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest.update(name=name, version=version)
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_publishing_flips_the_link_and_keeps_one_version_back(tmp_path: Path) -> None:
    from service.models.registry import ModelRegistry
    from training.worker import publish

    arts = tmp_path / "artifacts"
    arts.mkdir()
    for version in ("20260101-aaaaaaaa", "20260102-bbbbbbbb", "20260103-cccccccc"):
        assert publish(_built(tmp_path, "pump", version), arts, "pump") == version
        assert os.readlink(arts / "pump") == f".versions/pump-{version}"
        registry = ModelRegistry.from_dir(arts)
        assert registry.runtimes["pump"].manifest.version == version  # type: ignore[union-attr]
    assert sorted(p.name for p in (arts / ".versions").iterdir()) == [
        "pump-20260102-bbbbbbbb",
        "pump-20260103-cccccccc",
    ]
    assert sorted(p.name for p in arts.iterdir()) == [".versions", "pump"]
