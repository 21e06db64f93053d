"""`bench/fits.py --quick` runs end to end (the real service and trainer, a tiny fit) and
writes its figures, so the fit-job benchmark cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks import run_bench

pytestmark = pytest.mark.slow


def test_fits_bench_quick_serves_the_model_and_reports_scoring_during_the_fit(
    tmp_path: Path,
) -> None:
    out = tmp_path / "fits.json"
    run_bench("bench/fits.py", "--quick", "--json", str(out), timeout=600)
    figures = json.loads(out.read_text())
    assert figures["preset"] == "quick" and figures["clips"] == 4
    assert 0 < figures["fit_s"] <= figures["upload_to_served_s"]
    assert figures["scoring_errors"] == 0
    assert figures["scoring_during"]["n"] > 0 and figures["scoring_during"]["p99_ms"] > 0
    assert figures["epochs"] == 2
