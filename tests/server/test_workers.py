"""Several worker processes on one port (AUSCULT_WORKERS=2, service/serving/workers.py): both serve,
metrics add up across them, a reload reaches every worker, SIGTERM leaves nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from service.models.bundle import read_manifest, update_bundle
from service.serving.process import available_cpus, cgroup_cpu_quota
from service.settings import Settings
from tests.conftest import ARTIFACTS, REPO
from tests.helpers import GOOD_WAV, RunningService, start_service, stop_service

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork and /proc")
SCORE = "/v1/models/{name}/score"


def _children(pid: int) -> set[int]:
    """Processes whose parent is `pid` (from /proc)."""
    out = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.add(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _until(check, seconds: float = 60.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    """Poll until `check()` holds (a deadline, not a timing assertion)."""
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, f"{what} not met in {seconds:g} s"
        time.sleep(0.05)


def _all_ready(svc: RunningService, n: int = 2) -> set[int]:
    """Wait until `n` workers have logged `ready` (start_service returns at the first);
    their pids."""

    def pids() -> set[int]:
        return {
            json.loads(line)["pid"]
            for line in svc.log.read_text().splitlines()
            if line.startswith("{") and '"event": "ready"' in line
        }

    _until(lambda: len(pids()) >= n, what=f"{n} workers ready")
    return pids()


def _served_by(svc: RunningService) -> dict[str, int]:
    """request id → pid of the worker that logged the request."""
    out = {}
    for line in svc.log.read_text().splitlines():
        if line.startswith("{"):
            rec = json.loads(line)
            if rec.get("event") == "request" and "request_id" in rec:
                out[rec["request_id"]] = rec["pid"]
    return out


def _spread(svc: RunningService, method: str, path: str, prefix: str, n: int = 8) -> dict:
    """`n` requests at once, each on a new connection (so the kernel spreads them over the
    workers), with request ids prefix-0..n-1 → {request id: response}."""

    def one(i: int) -> tuple[str, httpx.Response]:
        rid = f"{prefix}-{i}"
        files = {"file": ("a.wav", GOOD_WAV, "audio/wav")} if method == "POST" else None
        with httpx.Client(base_url=svc.url, timeout=60) as c:
            return rid, c.request(method, path, files=files, headers={"x-request-id": rid})

    with ThreadPoolExecutor(n) as pool:
        return dict(pool.map(one, range(n)))


def _counter(svc: RunningService, name: str, **labels: str) -> float:
    text = httpx.get(f"{svc.url}/metrics", timeout=30).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("workers") / "artifacts"
    shutil.copytree(ARTIFACTS / "gearbox", out / "gearbox")
    return out


@pytest.fixture(scope="module")
def two(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    svc = start_service(
        tmp_path_factory.mktemp("workers-log"),
        AUSCULT_WORKERS="2",
        AUSCULT_ARTIFACTS_DIR=str(root),
        AUSCULT_LOG_LEVEL="info",
    )
    try:
        _all_ready(svc)
        yield svc
    finally:
        stop_service(svc)


@linux_only
def test_both_workers_serve_and_the_metrics_add_up(two: RunningService) -> None:
    workers = _children(two.proc.pid)
    assert len(workers) == 2, workers
    before = _counter(two, "auscult_requests_total", route=SCORE, status="200")
    sent, served_by, batch = 0, {}, 0

    def both_served() -> bool:
        nonlocal sent, batch
        answers = _spread(two, "POST", "/v1/models/gearbox/score", f"m{batch}")
        batch += 1
        sent += len(answers)
        assert all(r.status_code == 200 for r in answers.values())
        _until(lambda: set(answers) <= set(_served_by(two)), what="access lines written")
        served_by.update({k: v for k, v in _served_by(two).items() if k.startswith("m")})
        return set(served_by.values()) == workers

    _until(both_served, what="both workers answered")
    after = _counter(two, "auscult_requests_total", route=SCORE, status="200")
    assert after - before == sent
    assert _counter(two, "auscult_clips_scored_total", model="gearbox") >= sent
    assert _counter(two, "auscult_inflight_requests") == 0


@linux_only
def test_sighup_and_an_api_reload_reach_every_worker(two: RunningService, root: Path) -> None:
    workers = _children(two.proc.pid)
    v0 = read_manifest(root / "gearbox").version
    batch = 0

    def every_worker_answers(version: str) -> None:
        def check() -> bool:
            nonlocal batch
            answers = _spread(two, "GET", "/v1/models/gearbox", f"v{batch}")
            batch += 1
            _until(lambda: set(answers) <= set(_served_by(two)), what="access lines written")
            pids = _served_by(two)
            new = {pids[rid] for rid, r in answers.items() if r.json()["version"] == version}
            seen_new.update(new)
            return seen_new == workers

        seen_new: set[int] = set()
        _until(check, what=f"every worker serves {version}")

    update_bundle(root / "gearbox", {}, version=v0 + "-hup")
    os.kill(two.proc.pid, signal.SIGHUP)  # to the supervisor, which sends it on
    every_worker_answers(v0 + "-hup")

    update_bundle(root / "gearbox", {}, version=v0 + "-api")
    r = httpx.post(f"{two.url}/v1/models/gearbox/reload", timeout=60)  # one worker answers
    assert r.status_code == 200 and r.json()["version"] == v0 + "-api", r.text
    every_worker_answers(v0 + "-api")
    assert _children(two.proc.pid) == workers  # reloads replace no process


@linux_only
def test_a_worker_that_dies_is_replaced_and_its_counts_stay(two: RunningService) -> None:
    workers = _children(two.proc.pid)
    metrics_dir = Path(two.log.read_text().split("metrics folder ", 1)[1].split()[0])
    answers = _spread(two, "POST", "/v1/models/gearbox/score", "d", n=4)
    # counted just after the answer went out, before the access line is written
    _until(lambda: set(answers) <= set(_served_by(two)), what="access lines written")
    before = _counter(two, "auscult_requests_total", route=SCORE, status="200")
    victim = min(workers)
    assert (metrics_dir / f"gauge_livesum_{victim}.db").exists()
    os.kill(victim, signal.SIGKILL)
    _until(lambda: len(_children(two.proc.pid) - workers) == 1, what="a new worker")
    assert victim not in _children(two.proc.pid)
    assert not (metrics_dir / f"gauge_livesum_{victim}.db").exists()  # marked dead
    assert _counter(two, "auscult_requests_total", route=SCORE, status="200") == before
    # the least-ready live worker: 0 while the new one loads, then 1
    _until(lambda: _counter(two, "auscult_models_ready") == 1, what="the new worker ready")


@linux_only
def test_sigterm_stops_every_worker_and_removes_the_metrics_folder(
    root: Path, tmp_path: Path
) -> None:
    svc = start_service(tmp_path, AUSCULT_WORKERS="2", AUSCULT_ARTIFACTS_DIR=str(root))
    workers = _children(svc.proc.pid)
    assert _all_ready(svc) == workers
    metrics_dir = Path(svc.log.read_text().split("metrics folder ", 1)[1].split()[0])
    assert metrics_dir.is_dir() and any(metrics_dir.iterdir())
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.proc.wait(timeout=60) == 0, svc.log.read_text()[-3000:]
    assert not any(_alive(pid) for pid in workers)
    assert not metrics_dir.exists()
    assert svc.log.read_text().count("Finished server process") == 2  # both drained


@linux_only
def test_workers_end_with_a_killed_supervisor(root: Path, tmp_path: Path) -> None:
    svc = start_service(tmp_path, AUSCULT_WORKERS="2", AUSCULT_ARTIFACTS_DIR=str(root))
    workers = _children(svc.proc.pid)
    assert _all_ready(svc) == workers
    metrics_dir = Path(svc.log.read_text().split("metrics folder ", 1)[1].split()[0])
    svc.proc.kill()  # no chance to stop them: the kernel's parent-death signal does
    svc.proc.wait(timeout=30)
    _until(lambda: not any(_alive(pid) for pid in workers), what="workers gone")
    assert not metrics_dir.exists()  # the workers removed it


FAIL_AT_START = """
import runpy
from service.models.registry import ModelRegistry
def fail(*args, **kwargs):
    raise RuntimeError("bundles unreadable")
ModelRegistry.from_dir = fail  # in every forked worker's start-up
runpy.run_module("service", run_name="__main__", alter_sys=True)
"""


@linux_only
def test_a_failed_start_stops_the_service_instead_of_restarting_workers(
    root: Path, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUSCULT_")}
    env.update(AUSCULT_WORKERS="2", AUSCULT_ARTIFACTS_DIR=str(root))
    r = subprocess.run(
        [sys.executable, "-c", FAIL_AT_START, "--port", "0"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0
    assert "before it served; stopping" in r.stderr
    assert "starting another" not in r.stderr


@linux_only
def test_the_default_worker_count_respects_a_cgroup_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) == 1.5
    assert available_cpus(str(tmp_path)) == min(2, len(os.sched_getaffinity(0)))
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("50000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(str(tmp_path)) == 0.5
    assert available_cpus(str(tmp_path)) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(str(tmp_path)) is None
    assert cgroup_cpu_quota(str(tmp_path / "missing")) is None


def test_an_empty_worker_count_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUSCULT_WORKERS", " ")  # as compose passes an unset variable
    assert Settings(artifacts_dir=ARTIFACTS).workers is None
    monkeypatch.setenv("AUSCULT_WORKERS", "0")
    with pytest.raises(ValidationError):
        Settings(artifacts_dir=ARTIFACTS)


@linux_only
@pytest.mark.parametrize("route", ["/v1/models/{name}/reload", "/v1/models/reload"])
def test_an_api_reload_answers_once_every_worker_serves_the_model(
    two: RunningService, root: Path, route: str
) -> None:
    """A new bundle reloaded through one worker is served by all of them as soon as the
    answer is in (it used to answer before the other worker had re-scanned: 404 there)."""
    _all_ready(two)
    # connections opened beforehand (the kernel spreads them over both workers), so the
    # requests after the answer go out at once
    clients = [httpx.Client(base_url=two.url, timeout=60) for _ in range(8)]
    try:
        for round_ in range(5):
            for c in clients:
                assert c.get("/healthz").status_code == 200
            name = f"fresh-{route.count('{')}-{round_}"
            shutil.copytree(ARTIFACTS / "gearbox", root / name)
            r = httpx.post(two.url + route.format(name=name), timeout=120)
            assert r.status_code == 200, r.text
            path = f"/v1/models/{name}"
            with ThreadPoolExecutor(len(clients)) as pool:
                statuses = list(pool.map(lambda c, p=path: c.get(p).status_code, clients))
            assert statuses == [200] * len(clients), (round_, statuses)
            score = clients[0].post(SCORE.format(name=name), files={"file": ("a.wav", GOOD_WAV)})
            assert score.status_code == 200, score.text
    finally:
        for c in clients:
            c.close()
