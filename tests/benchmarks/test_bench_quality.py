"""`bench/quality.py --quick` runs end to end and prints its table, so the benchmark cannot rot.

Without ../shared/data the fsdd and machine datasets are skipped with a message and the
generated datasets (synth gearbox, and in --quick the bearing pump) still run.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.benchmarks import run_bench
from tests.conftest import SHARED_DATA

METHODS = (
    "auscult (training fit)",
    "DCASE AE baseline",
    "seed conv AE + PCA",
    "Gaussian log-mel stats",
)
SPLIT = {
    "synth gearbox": "tuning",
    "fsdd digits": "tuning",
    "machine faults": "held-out",
    "bearing pump": "held-out",
    "gear drive": "held-out",
}


@pytest.mark.slow
def test_quality_bench_quick_runs_and_prints_the_table() -> None:
    out = run_bench("bench/quality.py", "--quick", timeout=900)
    assert "src AUC" in out and "tgt pAUC" in out and "hmean" in out, out
    assert "Tuning datasets (results chose the defaults): synth gearbox, fsdd digits" in out
    assert (
        "Held-out datasets (only reported): machine faults, bearing pump, gear drive, "
        "solenoid valve" in out
    )
    assert "Training seeds: 0 " in out
    rows = [
        ln
        for ln in out.splitlines()
        if any(m in ln for m in METHODS)
        and not ln.startswith("Training seeds")
        and ": auscult " not in ln  # the verdict lines name the best reference
    ]
    expected = {"synth gearbox", "bearing pump"}  # --quick: one generated machine
    for folder, name in (("fsdd", "fsdd digits"), ("machine-normal", "machine faults")):
        if (SHARED_DATA / folder).is_dir():
            expected.add(name)
        else:
            assert f"{name}: skipped" in out
    assert len(rows) == len(METHODS) * len(expected), out
    for name in expected:
        first = next((ln for ln in rows if ln.startswith(name)), None)
        assert first is not None, f"{name} missing:\n{out}"
        assert first.split()[len(name.split())] == SPLIT[name], first  # the declared split
        assert f"{name}: auscult " in out  # the verdict line
    for row in rows:  # every metric cell is a number in [0, 1]; one seed: no spread
        tokens = row.split()
        assert all(0.0 <= float(c) <= 1.0 for c in tokens[-10:-5]), row
        assert tokens[-5:-2] == ["-", "-", "-"] and tokens[-2] == "1", row
    # the levels at the shipped thresholds: a row per dataset, every cell a rate
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if "FA src" in ln and "caught tgt" in ln)
    table = []
    for line in lines[head + 2 :]:
        if not line.strip() or ":" in line:  # a blank line or the verdict lines end it
            break
        table.append(line)
    assert {ln.split("  ")[0].strip() for ln in table} == expected, out
    for line in table:
        cells = [c for c in line.split()[-8:] if c != "nan"]
        assert cells and all(0.0 <= float(c) <= 1.0 for c in cells), line


@pytest.mark.parametrize("machine", ["bearing_pump", "gear_drive"])
def test_generated_machines_are_in_the_dcase_2021_layout(machine: str, tmp_path: Path) -> None:
    import soundfile as sf

    from bench import machines
    from training.datasets import discover

    counts = getattr(machines, machine)(tmp_path, seed=3, n_train=3, n_target_train=1, n_test=3)
    assert counts == {"train": 4, "source_test": 6, "target_test": 6}
    clips = discover(tmp_path)
    seen = {(c.split, c.domain, c.label) for c in clips}
    assert seen == {
        ("train", "source", "normal"),
        ("train", "target", "normal"),
        *(("test", d, lab) for d in ("source", "target") for lab in ("normal", "anomaly")),
    }
    x, sr = sf.read(clips[0].path)
    assert sr == 16000 and x.shape == (160000,) and 0.005 < np.sqrt(np.mean(x**2)) < 0.5
    again = tmp_path / "again"
    getattr(machines, machine)(again, seed=3, n_train=3, n_target_train=1, n_test=3)
    assert (again / "train").is_dir()
    y, _ = sf.read(sorted((again / "train").iterdir())[0])
    assert np.array_equal(sf.read(sorted((tmp_path / "train").iterdir())[0])[0], y)  # seeded


def test_bearing_defect_frequencies_follow_the_geometry() -> None:
    from bench.machines import Bearing

    b = Bearing(n_balls=9, ball_d=7.94, pitch_d=39.04, contact_deg=0.0)
    assert b.bpfo(30.0) + b.bpfi(30.0) == pytest.approx(9 * 30.0)
    assert b.bpfo(30.0) == pytest.approx(3.585 * 30.0, rel=1e-3)
    assert b.ftf(30.0) == pytest.approx(b.bpfo(30.0) / 9)


@pytest.mark.slow
def test_quality_bench_runs_auscult_alone_with_the_aux_labels_row() -> None:
    out = run_bench(
        "bench/quality.py",
        "--quick",
        "--datasets",
        "synth",
        "--methods",
        "auscult",
        "--ablation",
        "--ablation-rows",
        "aux labels",
        timeout=900,
    )
    lines = [ln for ln in out.splitlines() if not ln.startswith("Training seeds")]
    rows = [ln for ln in lines if any(m in ln for m in METHODS)]
    assert len(rows) == 1 and rows[0].startswith("synth gearbox"), out  # no reference row
    assert "auscult (training fit)" in rows[0], out
    # the ablation table: the default and the row, each with the dataset's harmonic mean
    found = re.findall(r"^(default|aux labels) +(\d\.\d{3})  ", out, re.MULTILINE)
    assert [name for name, _ in found] == ["default", "aux labels"], out
    assert all(0.0 <= float(h) <= 1.0 for _, h in found), found
