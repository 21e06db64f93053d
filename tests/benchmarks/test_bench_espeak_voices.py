"""`bench/espeak_voices.py`: eSpeak NG digit words become 8-kHz clips named as fsdd's, which
fit-classifier reads with the fsdd pattern. Skips where espeak-ng is not installed (it is
not a project dependency)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import soundfile as sf

from bench.espeak_voices import main
from training.classifier.data import discover_extra

FSDD_PATTERN = r"^(?P<label>\d)_(?P<speaker>[a-z]+)_"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_synthetic_digits_are_short_8k_clips_labelled_like_fsdd(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path), "--per-digit", "2"]) == 0
    clips = discover_extra(tmp_path, FSDD_PATTERN)
    assert sorted(c.label for c in clips) == sorted([str(d) for d in range(10)] * 2)
    for clip in clips:
        info = sf.info(clip.path)
        assert info.samplerate == 8000 and info.channels == 1
        assert 0.1 < info.duration < 1.5  # one word, trimmed


def test_without_espeak_it_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert main(["--out", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())
