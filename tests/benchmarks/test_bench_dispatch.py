"""`bench/dispatch.py --quick` (this checkout against itself): both services answer every
request and the table of event-loop CPU and p50 is printed."""

from __future__ import annotations

import re

from tests.benchmarks import run_bench


def test_dispatch_bench_compares_two_checkouts() -> None:
    out = run_bench("bench/dispatch.py", "--baseline-tree", ".", "--quick", timeout=300)
    for row in ("event-loop CPU per request", "p50 latency"):
        assert re.search(rf"\| {row} \| [\d.]+ ms \| [\d.]+ ms \| [+-][\d.]+ ms \|", out), out
    assert re.search(r"\| clips/s \| [\d.]+ \| [\d.]+ \| [\d.]+x ", out), out
