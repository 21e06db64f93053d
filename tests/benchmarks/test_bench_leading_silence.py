"""`bench/leading_silence.py` on the committed digits bundle and fsdd's held-out takes: with
the bundle's onset alignment a word seconds into a recording is recognised as well as one at
its start; without it, one second or more of silence leaves only noise to classify."""

from __future__ import annotations

import re

import pytest

from tests.benchmarks import run_bench
from tests.conftest import shared_data


@pytest.mark.realdata
def test_words_late_in_a_recording_are_recognised_with_the_onset() -> None:
    fsdd = shared_data("fsdd")
    out = run_bench("bench/leading_silence.py", "--data", str(fsdd), timeout=300)
    rows = dict(re.findall(r"^\| ([\d.]+) s \| ([\d.]+ \| [\d.]+) \|$", out, re.M))
    aligned = {lead: float(v.split(" | ")[0]) for lead, v in rows.items()}
    off = {lead: float(v.split(" | ")[1]) for lead, v in rows.items()}
    assert set(aligned) == {"0.0", "0.3", "0.6", "1.0", "2.0", "4.0"}, out
    assert min(aligned.values()) >= aligned["0.0"] - 0.05, out
    assert off["2.0"] <= 0.2 < aligned["2.0"] - 0.6, out  # chance is 0.1
