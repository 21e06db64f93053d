"""`bench/serving.py --quick` runs end to end and prints its table, so the benchmark cannot rot."""

from __future__ import annotations

import pytest

from tests.benchmarks import run_bench
from tests.conftest import ARTIFACTS

SECTIONS = (
    "## In-process limit",
    "## Service over HTTP",
    "## Seed-style stack",
    "## Resources",
    "## Scaling",
    "## Connection limits",
    "## Ratios",
)


@pytest.mark.slow
def test_serving_bench_quick_runs_and_prints_the_table() -> None:
    assert (ARTIFACTS / "gearbox" / "manifest.json").is_file(), "the default bundle is committed"
    out = run_bench("bench/serving.py", "--quick", timeout=600)
    for heading in SECTIONS:
        assert heading in out, f"{heading!r} missing from:\n{out}"
    assert "| errors (all auscult requests, incl. per-file errors) | 0 |" in out
    table = [ln for ln in out.split("## Ratios", 1)[1].splitlines() if ln.startswith("|")]
    ratios = table[2:]  # after the header and its rule
    assert len(ratios) >= 8, ratios
    for row in ratios:  # every ratio was measured: | name | value | target | met |
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] != "n/a" and cells[3] in ("yes", "NO"), row


@pytest.mark.slow
def test_windowing_bench_quick_compares_two_bundles(tiny_bundle) -> None:  # type: ignore[no-untyped-def]
    out = run_bench("bench/windowing.py", "--quick", "--baseline", str(tiny_bundle), timeout=600)
    lines = out.splitlines()
    assert lines[0].startswith("windowed") and "11 windows of 1 s" in lines[0]
    assert lines[1].startswith("baseline") and "audio s/s" in lines[1]
    assert lines[2].startswith("windowed ÷ baseline audio s/s: ")
