"""`bench/listen.py --quick`: real-time streams through the real service report their
window latency, CPU per stream-second, the streams held and the memory per idle stream."""

from __future__ import annotations

import re

import pytest

from tests.benchmarks import run_bench


@pytest.mark.slow
def test_quick_listen_bench_reports_every_figure() -> None:
    out = run_bench("bench/listen.py", "--quick", timeout=300)
    rows = re.findall(r"^\| (\d+) \| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \| \d+ \| 0 \|", out, re.M)
    assert [int(r[0]) for r in rows][:1] == [4], out
    assert all(int(r[1]) > 0 for r in rows), out  # windows were timed at every level run
    assert re.search(r"\| most streams at real time with p99 <= 250 ms \| \d+ \|", out), out
    assert re.search(r"\| memory per idle stream \(start sent\) \| -?\d+ KB \|", out), out
    assert re.search(r"\| memory per stream with half a window unscored \| -?\d+ KB \|", out), out
