"""The service image and docker-compose.yml, end to end with podman (docker/smoke.sh).

Skipped where podman, podman-compose or a base image is missing; on a machine
set up with docker/setup-podman.sh it builds the image (layers are cached, so
later runs take seconds), starts the compose stack, scores a clip and tears down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.container

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "docker" / "smoke.sh"
SKIP_EXIT = 77
TIMEOUT_S = 900


def _podman_compose() -> str | None:
    found = os.environ.get("PODMAN_COMPOSE") or shutil.which("podman-compose")
    if found:
        return found
    venv = Path("/opt/podman-compose/bin/podman-compose")
    return str(venv) if venv.exists() else None


def _why_unusable() -> str | None:
    if shutil.which("podman") is None:
        return "podman is not installed (docker/setup-podman.sh)"
    if _podman_compose() is None:
        return "podman-compose is not installed (docker/setup-podman.sh)"
    try:
        info = subprocess.run(["podman", "info"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"podman info failed: {exc}"
    if info.returncode != 0:
        lines = (info.stderr or info.stdout).strip().splitlines()
        return f"podman is not usable: {lines[-1] if lines else info.returncode}"
    return None


def test_smoke_compose_stack_scores_a_clip() -> None:
    reason = _why_unusable()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ)
    env.setdefault("PODMAN_COMPOSE", _podman_compose() or "podman-compose")
    try:
        proc = subprocess.run(
            ["bash", str(SMOKE)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        pytest.fail(f"docker/smoke.sh did not finish in {TIMEOUT_S} s:\n{out[-6000:]}")
    output = f"{proc.stdout}\n{proc.stderr}"
    if proc.returncode == SKIP_EXIT:
        skip_lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SKIP:")]
        pytest.skip(skip_lines[-1] if skip_lines else "docker/smoke.sh skipped")
    assert proc.returncode == 0, f"docker/smoke.sh exited {proc.returncode}:\n{output[-6000:]}"
    assert '"score"' in proc.stdout
