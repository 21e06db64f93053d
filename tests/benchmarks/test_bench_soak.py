"""`bench/soak.py --seconds 20` (the short soak CI runs): the service under concurrency 16
answers every request as expected and the summary is printed."""

from __future__ import annotations

import re

import pytest

from tests.benchmarks import run_bench


@pytest.mark.slow
def test_short_soak_has_no_errors_and_reports_rss_drift() -> None:
    out = run_bench("bench/soak.py", "--seconds", "20", "--concurrency", "16", timeout=300)
    assert "| errors (unexpected status, per-file or transport) | 0 |" in out, out
    requests = re.search(r"\| requests \(bad (\d+), batch (\d+), single (\d+)\) \| (\d+) ", out)
    assert requests and all(int(n) > 0 for n in requests.groups()), out
    assert re.search(r"\| latency p50 / p99 / max \| [\d.]+ / [\d.]+ / [\d.]+ ms \|", out), out
    assert re.search(r"\| RSS drift \(end - after the first interval\) \| [+-]\d+ MB \|", out), out
