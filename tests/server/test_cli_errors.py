"""Start-up mistakes end with one clear line on stderr and exit status 2, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


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
