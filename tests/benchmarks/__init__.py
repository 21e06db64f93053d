"""Tests that run the benchmark scripts in their short modes, so they cannot rot."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def run_bench(*args: str, timeout: float) -> str:
    """`python bench/SCRIPT ARGS…` from the repository root → its stdout; fails the test
    with the tail of both streams when it exits non-zero."""
    r = subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r.stdout
