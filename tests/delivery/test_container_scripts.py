"""docker/setup-podman.sh and docker/compose.sh, run with stand-ins for podman and
podman-compose (the real build is docker/smoke.sh's, tests/delivery/test_container.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO


def _stub(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def _podman(folder: Path) -> None:
    # `podman image exists localhost/debian:bookworm` holds; `podman --version` answers
    _stub(
        folder,
        "podman",
        'case "$1 $2 $3" in\n'
        '  "image exists localhost/debian:bookworm") exit 0 ;;\n'
        '  "image exists "*) exit 1 ;;\n'
        "esac\n"
        'echo "podman version 4.3.1"',
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="setup-podman.sh runs as root")
def test_setup_podman_puts_podman_compose_on_path(tmp_path: Path) -> None:
    stubs, venv, link_dir = tmp_path / "stubs", tmp_path / "venv", tmp_path / "bin"
    _podman(stubs)
    for tool in ("runc", "debootstrap"):
        _stub(stubs, tool, "exit 0")
    _stub(venv / "bin", "podman-compose", 'echo "podman-compose version 1.0.6"')
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "PODMAN_COMPOSE_VENV": str(venv),
        "PODMAN_COMPOSE_LINK": str(link_dir / "podman-compose"),
        "CONTAINERS_CONF": str(tmp_path / "containers.conf"),
        "SKIP_BASE_IMAGE": "1",
    }
    for _ in range(2):  # idempotent
        r = subprocess.run(
            ["bash", str(REPO / "docker" / "setup-podman.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
    assert "docker/compose.sh up -d --build" in r.stdout  # what to run next
    found = subprocess.run(
        ["sh", "-c", "command -v podman-compose && podman-compose --version"],
        env={"PATH": f"{link_dir}:/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert found.returncode == 0 and "podman-compose version" in found.stdout


def test_compose_sh_builds_from_the_local_base_with_the_hosts_ca(tmp_path: Path) -> None:
    stubs = tmp_path / "stubs"
    _podman(stubs)
    _stub(
        stubs,
        "podman-compose",
        'echo "BASE_IMAGE=$BASE_IMAGE"; echo "BUILD_PIP_CERT=$BUILD_PIP_CERT"; '
        'echo "PWD=$PWD"; for a in "$@"; do echo "ARG=$a"; done',
    )
    ca = tmp_path / "ca.crt"
    ca.write_text("certificates")
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "AUSCULT_BUILD_CA": str(ca)}
    r = subprocess.run(
        [str(REPO / "docker" / "compose.sh"), "--profile", "train", "run", "--rm", "train"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "BASE_IMAGE=localhost/debian:bookworm" in lines
    assert "BUILD_PIP_CERT=/run/host-ca.crt" in lines
    assert f"PWD={REPO}" in lines  # compose finds ./docker-compose.yml
    args = [line.removeprefix("ARG=") for line in lines if line.startswith("ARG=")]
    assert args == [
        "--podman-build-args",
        f"--format docker -v {ca}:/run/host-ca.crt:ro",
        "--profile",
        "train",
        "run",
        "--rm",
        "train",
    ]
    # an explicit choice wins
    r = subprocess.run(
        [str(REPO / "docker" / "compose.sh"), "build"],
        env={**env, "BASE_IMAGE": "python:3.11-slim"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "BASE_IMAGE=python:3.11-slim" in r.stdout.splitlines()
