"""Fit jobs, the service's side: POST /v1/fits spools a job (and only there), GET reads it,
DELETE cancels it; quotas, names and a full disk are refused with the documented bodies."""

from __future__ import annotations

import errno
import io
import os
import shutil
import tarfile
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.jobs.spool import Spool
from service.settings import Settings
from tests.conftest import ARTIFACTS, tone, wav_bytes
from tests.helpers import assert_error, serve

pytestmark = pytest.mark.anyio

CLIP = wav_bytes(tone(5.0))  # 5 s of healthy sound
BROKEN = b"RIFF\x00\x00\x00\x00WAVEjunk"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "artifacts").mkdir()
    shutil.copytree(ARTIFACTS / "gearbox", tmp_path / "artifacts" / "gearbox")
    return tmp_path


def settings(root: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "artifacts_dir": root / "artifacts",
        "jobs_dir": root / "jobs",
        "fit_min_seconds": 10.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def client(root: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(settings(root))) as c:
        yield c


def form(name: str = "pump", n: int = 4, **fields: str) -> dict:
    files = [("files", (f"healthy_{i}.wav", CLIP, "audio/wav")) for i in range(n)]
    return {"data": {"name": name, "preset": "quick", **fields}, "files": files}


def uploads_on_disk(root: Path) -> list[Path]:
    """Every file under the test's folder that is not a bundle file."""
    return sorted(
        p for p in root.rglob("*") if p.is_file() and "artifacts" not in p.relative_to(root).parts
    )


async def test_post_spools_a_queued_job_and_get_says_no_trainer_was_seen(
    client: httpx.AsyncClient, root: Path
) -> None:
    r = await client.post("/v1/fits", **form())
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["state"] == "queued" and body["url"] == f"/v1/fits/{body['id']}"
    job = (await client.get(body["url"])).json()
    assert job["state"] == "queued" and job["name"] == "pump" and job["preset"] == "quick"
    assert job["clips"] == 4 and job["audio_seconds"] == pytest.approx(20.0)
    assert job["trainer"]["seen"] is False
    assert "no trainer has been seen" in job["trainer"]["message"]
    clips = sorted(p.name for p in (root / "jobs" / body["id"] / "clips").iterdir())
    assert clips == ["clip_0000.wav", "clip_0001.wav", "clip_0002.wav", "clip_0003.wav"]
    listed = (await client.get("/v1/fits")).json()["fits"]
    assert [j["id"] for j in listed] == [body["id"]]


async def test_a_fresh_trainer_heartbeat_is_reported(client: httpx.AsyncClient, root: Path) -> None:
    r = await client.post("/v1/fits", **form())
    Spool(root / "jobs").heartbeat("t1")
    job = (await client.get(r.json()["url"])).json()
    assert job["trainer"]["seen"] is True and job["trainer"]["message"] is None


async def test_an_archive_is_unpacked_and_unreadable_clips_are_skipped_with_the_reason(
    client: httpx.AsyncClient, root: Path
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(3):
            z.writestr(f"rec/../../etc/healthy_{i}.wav", CLIP)
        z.writestr("notes.txt", b"not audio at all")
        z.writestr("broken.wav", BROKEN)
        z.writestr("__MACOSX/._healthy_0.wav", b"junk")
    files = [("files", ("clips.zip", buf.getvalue(), "application/zip"))]
    r = await client.post("/v1/fits", data={"name": "pump"}, files=files)
    assert r.status_code == 202, r.text
    job = (await client.get(r.json()["url"])).json()
    assert job["clips"] == 3
    skipped = {s["filename"]: s["code"] for s in job["skipped"]}
    assert skipped == {"notes.txt": "unsupported_media_type", "broken.wav": "invalid_audio"}
    assert not (root / "etc").exists()  # member paths are never used on disk
    names = sorted(p.name for p in (root / "jobs" / job["id"] / "clips").iterdir())
    assert names == ["clip_0000.wav", "clip_0001.wav", "clip_0002.wav"]


async def test_a_tar_archive_is_unpacked(client: httpx.AsyncClient) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for i in range(3):
            info = tarfile.TarInfo(f"healthy_{i}.wav")
            info.size = len(CLIP)
            t.addfile(info, io.BytesIO(CLIP))
    files = [("files", ("clips.tgz", buf.getvalue(), "application/gzip"))]
    r = await client.post("/v1/fits", data={"name": "pump"}, files=files)
    assert r.status_code == 202, r.text
    assert (await client.get(r.json()["url"])).json()["clips"] == 3


async def test_too_little_readable_audio_is_refused_naming_the_bad_clips(
    client: httpx.AsyncClient, root: Path
) -> None:
    files = [
        ("files", ("good.wav", CLIP, "audio/wav")),
        ("files", ("bad.wav", BROKEN, "audio/wav")),
    ]
    r = await client.post("/v1/fits", data={"name": "pump"}, files=files)
    assert_error(r, 422, "not_enough_audio")
    assert "bad.wav" in r.json()["error"]["message"]
    assert uploads_on_disk(root) == []


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"name": "../evil"}, 422, "invalid_request"),
        ({"name": ".hidden"}, 422, "invalid_request"),
        ({"name": "a/b"}, 422, "invalid_request"),
        ({"name": ""}, 422, "invalid_request"),
        ({"name": "x" * 65}, 422, "invalid_request"),
        ({"name": "pump", "preset": "huge"}, 422, "invalid_request"),
        ({"name": "pump", "false_alarm_rate": "0.7"}, 422, "invalid_request"),
        ({"name": "pump", "false_alarm_rate": "lots"}, 422, "invalid_request"),
        ({"name": "pump", "replace": "maybe"}, 422, "invalid_request"),
        ({"name": "gearbox"}, 409, "model_exists"),
    ],
)
async def test_bad_fields_are_refused_and_nothing_is_kept(
    client: httpx.AsyncClient, root: Path, fields: dict, status: int, code: str
) -> None:
    f = form()
    f["data"] = {"preset": "quick", **fields}
    r = await client.post("/v1/fits", **f)
    assert_error(r, status, code)
    assert uploads_on_disk(root) == []


async def test_replace_true_takes_an_existing_name(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/fits", **form("gearbox", replace="true"))
    assert r.status_code == 202, r.text
    assert (await client.get(r.json()["url"])).json()["replace"] is True


async def test_two_live_jobs_for_one_name_are_refused(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/fits", **form())
    assert first.status_code == 202
    r = await client.post("/v1/fits", **form())
    assert_error(r, 409, "fit_in_progress")
    assert first.json()["id"] in r.json()["error"]["message"]
    # once the first is cancelled the name is free again
    assert (await client.delete(first.json()["url"])).json()["state"] == "cancelled"
    assert (await client.post("/v1/fits", **form())).status_code == 202


async def test_cancelling_a_queued_job_removes_its_uploads(
    client: httpx.AsyncClient, root: Path
) -> None:
    r = await client.post("/v1/fits", **form())
    job = (await client.delete(r.json()["url"])).json()
    assert job["state"] == "cancelled" and job["finished_at"] is not None
    left = {p.relative_to(root / "jobs").as_posix() for p in uploads_on_disk(root)}
    assert left == {f"{job['id']}/job.json", f"{job['id']}/state.json", f"{job['id']}/claim.json"}
    again = await client.delete(r.json()["url"])
    assert again.status_code == 200 and again.json()["state"] == "cancelled"


async def test_unknown_jobs_are_404(client: httpx.AsyncClient) -> None:
    for job_id in ("0" * 32, "nope", "...", "0" * 31 + "G"):
        assert_error(await client.get(f"/v1/fits/{job_id}"), 404, "fit_not_found")
    assert_error(await client.delete("/v1/fits/" + "f" * 32), 404, "fit_not_found")


async def test_quotas_are_settings(root: Path) -> None:
    s = settings(root, fit_max_clips=3)
    async with serve(create_app(s)) as c:
        assert_error(await c.post("/v1/fits", **form()), 413, "batch_too_large")
    s = settings(root, fit_max_job_bytes=3 * len(CLIP))
    async with serve(create_app(s)) as c:
        assert_error(await c.post("/v1/fits", **form()), 413, "payload_too_large")
    s = settings(root, fit_max_jobs=1)
    async with serve(create_app(s)) as c:
        assert (await c.post("/v1/fits", **form("a"))).status_code == 202
        r = await c.post("/v1/fits", **form("b"))
        assert_error(r, 503, "overloaded")
        assert r.headers["retry-after"]
    s = settings(root, fit_max_spool_bytes=len(CLIP) * 7)  # one job of 4 clips is in it
    async with serve(create_app(s)) as c:
        assert_error(await c.post("/v1/fits", **form("c")), 507, "insufficient_storage")
    assert len(uploads_on_disk(root)) == 4 + 3  # the first job's clips, job.json, state.json


async def test_a_full_disk_while_spooling_is_507_and_the_service_keeps_serving(
    client: httpx.AsyncClient, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.jobs import intake

    class FullDisk(io.BytesIO):
        def write(self, data: object) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real = intake.SpoolFiles.__call__

    def spool_to_a_full_disk(self: intake.SpoolFiles, index: int):  # type: ignore[no-untyped-def]
        handle = real(self, index)
        handle.f.close()
        handle.f = FullDisk()  # the file exists; writing to it fails as on a full disk
        return handle

    monkeypatch.setattr(intake.SpoolFiles, "__call__", spool_to_a_full_disk)
    r = await client.post("/v1/fits", **form())
    assert_error(r, 507, "insufficient_storage")
    assert "full" in r.json()["error"]["message"]
    assert uploads_on_disk(root) == []
    monkeypatch.setattr(intake.SpoolFiles, "__call__", real)
    score = await client.post(
        "/v1/models/gearbox/score", files={"file": ("a.wav", CLIP, "audio/wav")}
    )
    assert score.status_code == 200
    assert (await client.post("/v1/fits", **form())).status_code == 202


async def test_fit_routes_take_the_admin_key(root: Path) -> None:
    s = settings(root, api_keys=["score-key"], admin_keys=["admin-key"])
    async with serve(create_app(s)) as c:
        for headers in ({}, {"X-API-Key": "score-key"}):
            assert_error(await c.post("/v1/fits", **form(), headers=headers), 401, "unauthorized")
            assert_error(await c.get("/v1/fits", headers=headers), 401, "unauthorized")
        r = await c.post("/v1/fits", **form(), headers={"X-API-Key": "admin-key"})
        assert r.status_code == 202


async def test_without_a_jobs_folder_fits_are_disabled(root: Path) -> None:
    async with serve(create_app(settings(root, jobs_dir=None))) as c:
        assert_error(await c.post("/v1/fits", **form()), 503, "fits_disabled")
        assert_error(await c.get("/v1/fits"), 503, "fits_disabled")
