"""Archive scoring (bulk/) on a local Ray with 2 CPUs, started once for the module: the same
files give the same rows as the service's batch endpoint, bad files included."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray

from bulk.pipeline import score_files
from bulk.rows import OUTPUT_SCHEMA
from tests.conftest import ARTIFACTS, REPO, SHARED_DATA, wav_bytes
from tests.helpers import png_bytes, start_service, stop_service
from training.synth import recording

GEARBOX = ARTIFACTS / "gearbox"

# file name → the error code both paths must give it (None: scored)
ARCHIVE: dict[str, str | None] = {
    "plant-a/pump-000.wav": None,
    "plant-a/pump-001.flac": None,  # stereo 44.1 kHz FLAC: downmixed and resampled
    "plant-a/pump-002.wav": None,  # 25 s: more windows than the others
    "plant-b/gear-fault.wav": None,
    "plant-b/spectrogram.png": "invalid_image",  # not the model's size
    "bad/empty.wav": "invalid_audio",
    "bad/truncated.wav": "invalid_audio",
    "bad/notes.wav": "unsupported_media_type",
    "bad/short.wav": "audio_too_short",
    "bad/one-hertz.wav": "sample_rate_out_of_range",
    "bad/huge.wav": "non_finite_values",  # float samples of 1e7
}


def _write_archive(root: Path) -> list[Path]:
    sr = 16000
    ok = recording(seconds=10, seed=0)
    content = {
        "plant-a/pump-000.wav": wav_bytes(ok),
        "plant-a/pump-001.flac": wav_bytes(
            np.stack([recording(seconds=10, seed=1, sample_rate=44100)] * 2, axis=1),
            sr=44100,
            fmt="FLAC",
        ),
        "plant-a/pump-002.wav": wav_bytes(recording(seconds=25, seed=2)),
        "plant-b/gear-fault.wav": wav_bytes(recording(seconds=10, seed=3, fault="impacts")),
        "plant-b/spectrogram.png": png_bytes(50, 20),
        "bad/empty.wav": b"",
        "bad/truncated.wav": wav_bytes(ok)[:30],
        "bad/notes.wav": b"pump 7 was serviced on Monday\n" * 10,
        "bad/short.wav": wav_bytes(ok[: sr // 20]),
        "bad/one-hertz.wav": wav_bytes(ok[:100], sr=1),
        "bad/huge.wav": wav_bytes(np.full(sr, 1e7, np.float32), subtype="FLOAT"),
    }
    paths = []
    for name, data in content.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    fsdd = SHARED_DATA / "fsdd"  # real recordings (8 kHz speech) when the shared data is here
    if fsdd.is_dir():
        for src in sorted(fsdd.glob("*.wav"))[:3]:
            shutil.copy(src, root / "plant-b" / src.name)
            paths.append(root / "plant-b" / src.name)
    return sorted(paths)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return _write_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture(scope="module")
def local_ray() -> Iterator[str]:
    """One local Ray for the module (its start-up is most of these tests' time)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def http_results(
    archive: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """The same files through `python -m service`'s POST /v1/models/gearbox/score/batch,
    one request, in order (the process as deployed: its thread and memory set-up)."""
    service = start_service(
        tmp_path_factory.mktemp("service-log"),
        AUSCULT_ARTIFACTS_DIR=str(ARTIFACTS),
        AUSCULT_LOG_LEVEL="warning",
    )
    try:
        r = httpx.post(
            f"{service.url}/v1/models/gearbox/score/batch",
            files=[("files", (p.name, p.read_bytes())) for p in archive],
            timeout=120,
        )
    finally:
        stop_service(service)
    assert r.status_code == 200, r.text
    return r.json()["results"]  # type: ignore[no-any-return]


def _check_rows(
    rows: list[dict[str, Any]], http: list[dict[str, Any]], files: list[Path], exact: bool
) -> None:
    assert [r["file"] for r in rows] == [str(p) for p in files]
    for row, res, path in zip(rows, http, files, strict=True):
        expected = ARCHIVE.get(str(path.relative_to(path.parents[1])))
        assert row["model"] == "gearbox"
        if "error" in res:
            assert row["error_code"] == res["error"]["code"] == expected, path
            assert row["error_message"] == res["error"]["message"]
            assert row["score"] is None and row["level"] is None and row["windows"] is None
            continue
        assert expected is None and row["error_code"] is None, path
        assert row["model_version"] == res["model_version"]
        assert row["duration_s"] == res["input"]["duration_s"]
        assert row["level"] == res["level"]
        assert [(w["start_s"], w["end_s"]) for w in row["windows"]] == [
            (w["start_s"], w["end_s"]) for w in res["windows"]
        ]
        got = [row["score"]] + [w["score"] for w in row["windows"]]
        want = [res["score"]] + [w["score"] for w in res["windows"]]
        if exact:
            assert got == want, path
        else:
            # float32 encoder outputs move in their last bits with the batch they run in
            # (the service's own scores do too, between a 1-file and a 10-file request)
            assert np.allclose(got, want, rtol=1e-5, atol=0), path


def test_bulk_rows_equal_the_batch_endpoint(
    local_ray: str, archive: list[Path], http_results: list[dict[str, Any]], tmp_path: Path
) -> None:
    """One model run over the files in the request's order: bit-identical scores."""
    out = tmp_path / "scores.parquet"
    summary = score_files(GEARBOX, [str(p) for p in archive], out, batch_size=len(archive))
    table = pq.read_table(out)
    assert table.schema.equals(OUTPUT_SCHEMA)
    _check_rows(table.to_pylist(), http_results, archive, exact=True)
    codes = [c for c in ARCHIVE.values() if c is not None]
    assert summary.files == len(archive)
    assert summary.errors == {c: codes.count(c) for c in codes}
    assert sum(summary.levels.values()) == len(archive) - len(codes)
    fault = table.to_pylist()[[p.name for p in archive].index("gear-fault.wav")]
    assert fault["level"] != "normal"  # the committed bundle hears the impacts


def test_cli_scores_a_folder_on_a_running_cluster(
    local_ray: str, archive: list[Path], http_results: list[dict[str, Any]], tmp_path: Path
) -> None:
    """`python -m bulk score --address` (a second driver on the module's Ray), small batches
    in the order they finish."""
    root = archive[0].parents[1]
    out = tmp_path / "nightly" / "scores.parquet"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    r = subprocess.run(
        [sys.executable, "-m", "bulk", "score", "--model", str(GEARBOX), "--in", str(root),
         "--out", str(out), "--address", local_ray, "--batch-size", "3", "--unordered",
         "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    rows = sorted(pq.read_table(out).to_pylist(), key=lambda row: row["file"])
    _check_rows(rows, http_results, archive, exact=False)
    assert f"files: {len(archive)} in " in r.stderr
    assert "errors by code: audio_too_short 1, invalid_audio 2, invalid_image 1" in r.stderr
    assert not list(out.parent.glob(".*partial"))
    assert ray.cluster_resources()["CPU"] == 2  # the second driver left the cluster up


def test_files_gone_before_the_job_are_error_rows_in_their_place(
    local_ray: str, archive: list[Path], http_results: list[dict[str, Any]], tmp_path: Path
) -> None:
    """A file listed but unreadable when the job runs (deleted since, no permission) would
    fail Ray's read task and the job: it is an `unreadable_file` row in its place instead,
    the other files' rows unchanged, across batch boundaries."""
    files = [str(p) for p in archive]
    root = archive[0].parents[1]  # names that sort first, among and after the archive's
    gone = [str(root / name) for name in ("a-first.wav", "plant-a/m-middle.wav", "zz-last.wav")]
    listed = sorted([*files, *gone])
    assert listed[0] == gone[0] and listed[-1] == gone[2] and listed[1:-1] != files
    listed.insert(listed.index(files[4]), str(tmp_path / "dir.wav"))
    (tmp_path / "dir.wav").mkdir()  # not a regular file
    out = tmp_path / "scores.parquet"
    summary = score_files(GEARBOX, listed, out, batch_size=3)
    rows = pq.read_table(out).to_pylist()
    assert [r["file"] for r in rows] == listed
    bad = [r for r in rows if r["error_code"] == "unreadable_file"]
    assert [r["file"] for r in bad] == [f for f in listed if f not in files]
    assert all(r["score"] is None and r["error_message"] for r in bad)
    _check_rows([r for r in rows if r["file"] in files], http_results, archive, exact=False)
    assert summary.files == len(listed)
    assert summary.errors["unreadable_file"] == 4
    assert 0 < summary.seconds < 300  # the job's wall time, not a row offset's


def test_a_job_of_only_unreadable_files_still_writes_its_rows(
    local_ray: str, tmp_path: Path
) -> None:
    out = tmp_path / "scores.parquet"
    summary = score_files(GEARBOX, [str(tmp_path / "gone.wav")], out)
    rows = pq.read_table(out).to_pylist()
    assert [(r["file"], r["error_code"]) for r in rows] == [
        (str(tmp_path / "gone.wav"), "unreadable_file")
    ]
    assert summary.files == 1
