"""`bench/hostile.py --quick` (issue 24's audit as a benchmark): no 5xx and every error body
in its protocol's shape over the battery, the idle flood answered, the kill survived."""

from __future__ import annotations

import re

import pytest

from tests.benchmarks import run_bench


@pytest.mark.slow
def test_quick_hostile_run_meets_its_targets() -> None:
    out = run_bench("bench/hostile.py", "--quick", timeout=600)
    assert "all targets met" in out, out
    rows = re.findall(r"^\| [^|]+ \| (\d+) \| (ok|WRONG) \|", out, re.MULTILINE)
    assert len(rows) >= 20 and all(int(s) < 500 and shape == "ok" for s, shape in rows), out
    assert re.search(r"20/20 answered 200", out), out
    assert re.search(r"## kill -9 of one worker .*: \d+ of \d+ requests failed", out), out
