"""Process tuning applies however the service is started (python -m service or uvicorn)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO


def test_importing_the_app_limits_native_threads_before_numpy_loads() -> None:
    # what `uvicorn service.app:app` does first: import the module
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    code = (
        "import sys, os, service.app\n"
        "assert 'numpy' in sys.modules\n"
        "print(os.environ['OPENBLAS_NUM_THREADS'], os.environ['OMP_NUM_THREADS'])"
    )
    r = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["1", "1"]
