"""`bench/bitrates.py` runs end to end on the committed gearbox bundle with one clip per
domain and writes a row per codec and rate, so the low-bitrate table cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks import run_bench


def test_bitrates_bench_writes_a_row_per_codec_and_rate(tmp_path: Path) -> None:
    import soundfile as sf

    if "MPEG_LAYER_III" not in sf.available_subtypes("MP3") or "OPUS" not in (
        sf.available_subtypes("OGG")
    ):
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write mp3 and opus")
    out = tmp_path / "bitrates.json"
    printed = run_bench("bench/bitrates.py", "--clips", "1", "--json", str(out), timeout=600)
    rows = {r["codec"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {
        "wav",
        *(f"mp3 {k}" for k in (16, 24, 32, 48, 64)),
        *("mp3 24 @22.05k", "mp3 48 @22.05k", "mp3 32 @44.1k", "mp3 48 @44.1k", "mp3 64 @44.1k"),
        *(f"opus {k}" for k in (16, 24, 32)),
        "vorbis lowest",
    }
    for name, row in rows.items():
        assert row["healthy"] == 2 and row["faulty"] == 2, row
        assert row["normal"] + row["needs_maintenance"] + row["severe"] == 2, row
        assert 0.0 <= row["caught"] <= 1.0 and name in printed
    assert rows["wav"]["kbit_s"] == pytest.approx(256, abs=1)
    assert rows["mp3 24"]["kbit_s"] == pytest.approx(24, abs=1)
    # the mp3 encoder low-passes at 16 kbit/s: below the model's top band, so warned
    assert rows["mp3 16"]["bandwidth_hz"] < rows["wav"]["bandwidth_hz"]
    assert rows["mp3 16"]["low_bandwidth"] == 2 and rows["mp3 16"]["severe"] == 0
    assert rows["wav"]["low_bandwidth"] == rows["wav"]["low_bitrate"] == 0
