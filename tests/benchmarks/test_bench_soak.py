"""`bench/soak.py --seconds 20` (the short soak CI runs): the service under concurrency 16
answers every request as expected and the summary is printed."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_short_soak_has_no_errors_and_reports_rss_drift() -> None:
    r = subprocess.run(
        [sys.executable, "bench/soak.py", "--seconds", "20", "--concurrency", "16"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = r.stdout
    assert "| errors (unexpected status, per-file or transport) | 0 |" in out, out
    requests = re.search(r"\| requests \(bad (\d+), batch (\d+), single (\d+)\) \| (\d+) ", out)
    assert requests and all(int(n) > 0 for n in requests.groups()), out
    assert re.search(r"\| latency p50 / p99 / max \| [\d.]+ / [\d.]+ / [\d.]+ ms \|", out), out
    assert re.search(r"\| RSS drift \(end - after the first interval\) \| [+-]\d+ MB \|", out), out
