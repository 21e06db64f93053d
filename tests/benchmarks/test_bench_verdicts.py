"""`bench/verdicts.py --quick` runs end to end on the committed gearbox bundle and writes its
figures, so the benchmark behind docs/levels.md ("What a level means") cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

from tests.benchmarks import run_bench


def _rates(row: dict) -> list[float]:
    return [v for k, v in row.items() if k not in ("healthy", "faulty") and v is not None]


def test_verdicts_bench_quick_writes_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "verdicts.json"
    run_bench("bench/verdicts.py", "--quick", "--json", str(out), timeout=600)
    figures = json.loads(out.read_text())
    assert figures["model"].startswith("gearbox ")
    assert set(figures["unseen"]) == {
        *(f"seed {s} {d}" for s in (7, 11, 13) for d in ("source", "target")),
        "all",
    }
    assert set(figures["codecs"]) == {
        f"{c} {d}" for c in ("mp3-128", "mp3-64", "ogg") for d in ("source", "target")
    }
    assert set(figures["short faults"]) == {"10 s", "60 s"}
    enrol = figures["enrol"]
    assert 0 < enrol["enrol seconds (10 clips of 10 s)"] < 60
    rows = [
        *figures["unseen"].values(),
        *figures["codecs"].values(),
        *figures["short faults"].values(),
        *(v for v in enrol.values() if isinstance(v, dict)),
    ]
    for row in rows:
        assert row["healthy"] > 0 and row["faulty"] > 0, row
        assert all(0.0 <= v <= 1.0 for v in _rates(row)), row
