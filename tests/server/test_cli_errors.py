"""Start-up mistakes end with one clear line on stderr, not a traceback: exit status 2 for a
bad argument or setting, 1 for a port another process holds."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import ARTIFACTS, REPO
from tests.helpers import start_service, stop_service


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AUSCULT_")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "env, says",
    [
        ({"AUSCULT_MAX_CONCURRENCY": "many"}, "AUSCULT_MAX_CONCURRENCY='many': Input should be"),
        ({"AUSCULT_ARTIFACTS_DIR": "no-such-folder"}, "AUSCULT_ARTIFACTS_DIR='no-such-folder'"),
        (
            {"AUSCULT_MAX_UPLOAD_BYTES": "999999999"},
            "AUSCULT_MAX_UPLOAD_BYTES must not exceed AUSCULT_MAX_BATCH_BYTES",
        ),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(env: dict[str, str], says: str) -> None:
    r = _run(["-m", "service", "--port", "1"], **env)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("auscult: bad setting: ") and says in line


def _one_line(r: subprocess.CompletedProcess[str], status: int) -> str:
    assert r.returncode == status, r.stderr
    assert "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    return line


def test_a_missing_default_model_is_one_line_and_exit_2() -> None:
    r = _run(
        ["-m", "service", "--port", "0"],
        AUSCULT_ARTIFACTS_DIR=str(ARTIFACTS),
        AUSCULT_DEFAULT_MODEL="nope",
        AUSCULT_WORKERS="2",
    )
    line = _one_line(r, 2)
    assert line.startswith("auscult: bad setting: AUSCULT_DEFAULT_MODEL='nope'")
    assert "gearbox" in line  # what there is instead


@pytest.mark.parametrize("port", ["80000", "-1", "http"])
def test_a_bad_port_is_a_usage_error(port: str) -> None:
    r = _run(["-m", "service", "--port", port], AUSCULT_ARTIFACTS_DIR=str(ARTIFACTS))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("python -m service: error: argument --port")


def test_service_help_explains_host_port_and_settings() -> None:
    r = _run(["-m", "service", "--help"])
    assert r.returncode == 0
    assert "address to listen on" in r.stdout and "(default: 127.0.0.1)" in r.stdout
    assert "TCP port" in r.stdout and "(default: 8000)" in r.stdout
    assert "AUSCULT_" in r.stdout and "AUSCULT_ARTIFACTS_DIR" in r.stdout


def _start_on(port: int, workers: str) -> subprocess.CompletedProcess[str]:
    return _run(
        ["-m", "service", "--host", "127.0.0.1", "--port", str(port)],
        AUSCULT_ARTIFACTS_DIR=str(ARTIFACTS),
        AUSCULT_WORKERS=workers,
    )


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
@pytest.mark.parametrize("reuse_port", [True, False])
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_another_process_listens_on_is_one_line_and_exit_1(
    reuse_port: bool, workers: str
) -> None:
    with socket.socket() as holder:
        if reuse_port:  # as another auscult's workers hold it
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        line = _one_line(_start_on(port, workers), 1)
    assert line == (
        f"auscult: port {port} on 127.0.0.1 is already in use by another process; "
        "stop it or choose another --port"
    )


def test_a_second_service_on_the_same_port_refuses_to_start(tmp_path) -> None:  # type: ignore[no-untyped-def]
    first = start_service(tmp_path, AUSCULT_ARTIFACTS_DIR=str(ARTIFACTS), AUSCULT_WORKERS="2")
    try:
        line = _one_line(_start_on(first.port, "2"), 1)
        assert f"port {first.port} on 127.0.0.1 is already in use" in line
        assert first.proc.poll() is None  # the first one still serves
    finally:
        stop_service(first)


BLOCK_TQDM = """
import importlib.abc, runpy, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "tqdm":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Missing())
runpy.run_module("training", run_name="__main__", alter_sys=True)
"""


def test_training_without_the_train_extra_says_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    r = _run(["-c", BLOCK_TQDM, "fit", "--data", str(tmp_path), "--out", str(tmp_path / "b")])
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "tqdm is not installed" in line and ".[train]" in line


def test_a_service_with_no_bundles_warns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    empty = tmp_path / "artifacts"
    empty.mkdir()
    svc = start_service(tmp_path, ready_path="/healthz", AUSCULT_ARTIFACTS_DIR=str(empty))
    try:
        events = []
        deadline = time.monotonic() + 30
        while not any(e.get("event") == "ready" for e in events):
            assert time.monotonic() < deadline, svc.log.read_text()
            time.sleep(0.1)
            lines = svc.log.read_text().splitlines()
            events = [json.loads(line) for line in lines if line.startswith("{")]
    finally:
        stop_service(svc)
    names = [e["event"] for e in events]
    warning = events[names.index("no_models_ready")]
    assert names.index("no_models_ready") < names.index("ready")
    assert warning["level"] == "warning" and warning["artifacts_dir"] == str(empty)
    assert "no bundle folder found" in warning["detail"]
