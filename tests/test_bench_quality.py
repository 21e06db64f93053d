"""`bench/quality.py --quick` runs end to end and prints its table, so the benchmark cannot rot.

Without ../shared/data the fsdd and machine datasets are skipped with a message and the
synthetic dataset still runs.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED_DATA

METHODS = ("auscult (training fit)", "DCASE AE baseline", "Gaussian log-mel stats")


@pytest.mark.slow
def test_quality_bench_quick_runs_and_prints_the_table() -> None:
    r = subprocess.run(
        [sys.executable, "bench/quality.py", "--quick"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = r.stdout
    assert "src AUC" in out and "tgt pAUC" in out and "hmean" in out, out
    rows = [ln for ln in out.splitlines() if any(m in ln for m in METHODS)]
    expected = {"synth gearbox"}
    for folder, name in (("fsdd", "fsdd digits"), ("machine-normal", "machine faults")):
        if (SHARED_DATA / folder).is_dir():
            expected.add(name)
        else:
            assert f"{name}: skipped" in out
    assert len(rows) == 3 * len(expected), out
    for name in expected:
        assert any(ln.startswith(name) for ln in rows), f"{name} missing:\n{out}"
        assert f"{name}: auscult " in out  # the verdict line
    for row in rows:  # every metric cell is a number in [0, 1]
        cells = row.split()[-6:-1]
        assert all(0.0 <= float(c) <= 1.0 for c in cells), row
