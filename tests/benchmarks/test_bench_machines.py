"""The solenoid-valve machine of bench/machines.py: the DCASE 2021 layout with the benchmark's
split counts, short clips of varying length, seeded; and faults that the Gaussian reference
tells from normal actuations at a clear severity while their level alone does not."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bench import machines

CLEAR = (0.6, 1.0)  # the top of machines.VALVE_SEVERITY


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.wav"))
    }


def test_valve_dataset_layout_counts_short_clips_and_seed(tmp_path: Path) -> None:
    import soundfile as sf

    from training.datasets import discover

    counts = machines.solenoid_valve(tmp_path / "a", 3)
    assert counts == {"train": 44, "source_test": 40, "target_test": 40}
    clips = discover(tmp_path / "a")
    assert Counter((c.split, c.domain, c.label) for c in clips) == {
        ("train", "source", "normal"): 40,
        ("train", "target", "normal"): 4,
        ("test", "source", "normal"): 20,
        ("test", "source", "anomaly"): 20,
        ("test", "target", "normal"): 20,
        ("test", "target", "anomaly"): 20,
    }
    for domain, attr in (("source", "bar_3"), ("target", "bar_6")):
        anomalies = [c.path.name for c in clips if c.domain == domain and c.label == "anomaly"]
        kinds = Counter(k for name in anomalies for k in machines.VALVE_FAULTS if f"_{k}_" in name)
        assert kinds == dict.fromkeys(machines.VALVE_FAULTS, 5)  # fault kinds in turn
        assert all(f"_{attr}_" in name for name in anomalies)

    seconds = []
    for c in clips:
        info = sf.info(c.path)
        assert info.samplerate == 16000 and info.channels == 1
        seconds.append(info.frames / info.samplerate)
    assert min(seconds) > 0.5 and max(seconds) < 1.4
    assert np.std(seconds) > 0.02  # each clip draws its own length
    x, _ = sf.read(clips[0].path)
    onset = np.argmax(np.abs(x) > 20 * np.median(np.abs(x)))
    assert onset > 0.015 * 16000  # the actuation does not start at the first sample

    machines.solenoid_valve(tmp_path / "b", 3)
    machines.solenoid_valve(tmp_path / "c", 4)
    first = _digests(tmp_path / "a")
    assert _digests(tmp_path / "b") == first  # seeded
    assert set(_digests(tmp_path / "c").values()).isdisjoint(first.values())


def test_valve_faults_are_found_by_the_gaussian_reference_but_not_by_level(
    tmp_path: Path,
) -> None:
    import soundfile as sf
    from sklearn.metrics import roc_auc_score

    from bench.baselines import GaussianStats

    rng = np.random.default_rng(0)
    source = machines.VALVE["source"]

    def write(name: str, x: np.ndarray) -> Path:
        gain = 10 ** (rng.uniform(-3, 3) / 20)  # as the dataset writes its clips
        sf.write(tmp_path / name, np.clip(x * gain, -1, 1), 16000, subtype="PCM_16")
        return tmp_path / name

    def rms(paths: list[Path]) -> np.ndarray:
        return np.array([np.sqrt(np.mean(sf.read(p)[0] ** 2)) for p in paths])

    train = [write(f"train{i}.wav", machines.valve_clip(rng, source)) for i in range(40)]
    normal = [write(f"normal{i}.wav", machines.valve_clip(rng, source)) for i in range(20)]
    model = GaussianStats(16000).fit(train)
    normal_scores, normal_rms = model.score(normal), rms(normal)
    labels = [0] * len(normal) + [1] * 12
    for kind in machines.VALVE_FAULTS:
        faulty = [
            write(f"{kind}{i}.wav", machines.valve_clip(rng, source, kind, rng.uniform(*CLEAR)))
            for i in range(12)
        ]
        auc = roc_auc_score(labels, np.r_[normal_scores, model.score(faulty)])
        level = roc_auc_score(labels, np.r_[normal_rms, rms(faulty)])
        assert auc > 0.8, (kind, auc)
        assert max(level, 1 - level) < 0.9, (kind, level)  # louder or quieter: not by level


def test_valve_clip_refuses_an_unknown_fault() -> None:
    with pytest.raises(ValueError, match="unknown valve fault"):
        machines.valve_clip(np.random.default_rng(0), machines.VALVE["source"], "rust", 0.5)
