"""Benchmark datasets, written in the DCASE 2021 layout so the real `training` code reads them.

- `fsdd_digit`: spoken digits one-class (real speech, 8 kHz); one digit is normal.
- `machine_faults`: a real machine's normal clips (16 kHz, 10 s) and copies of the held-out
  ones with injected fault signatures; a target domain with a gain change and background noise.
- `synth`: `training.synth.generate` (the `python -m training synth` dataset).

Every builder is seeded and writes `train/`, `source_test/`, `target_test/` under `out`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FSDD_SPEAKERS = ("george", "jackson", "lucas", "nicolas", "yweweler")
FAULT_KINDS = ("impacts", "whine", "rubbing", "clicks")
FAULT_LEVELS_DB = (-20.0, -13.0, -6.0)  # fault RMS relative to the clip's RMS; -20 is subtle
TARGET_GAIN_DB = 6.0
TARGET_SNR_DB = 12.0  # clip power over added background noise power


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(src, dst)
    except OSError:
        dst.write_bytes(src.read_bytes())


def _name(domain: str, split: str, label: str, i: int, attr: str) -> str:
    return f"section_00_{domain}_{split}_{label}_{i:04d}_{attr}.wav"


def fsdd_digit(out: Path, digit: int, seed: int = 0, root: Path | None = None) -> dict[str, int]:
    """One-class spoken digits: `digit` is normal, the other digits are anomalies.

    The target speaker (never heard in training) rotates with the digit. Train: takes
    5-49 of `digit` by the other 4 speakers. Source test: their takes 0-4 (normal) and
    3 random test takes of every other digit (anomalies). Target test: all 50 takes of
    `digit` by the target speaker and 5 random takes of every other digit by them.
    """
    root = root or SHARED_DATA / "fsdd"
    rng = np.random.default_rng(seed + digit)
    target = FSDD_SPEAKERS[digit % len(FSDD_SPEAKERS)]
    sources = [s for s in FSDD_SPEAKERS if s != target]
    counts = {"train": 0, "source_test": 0, "target_test": 0}

    def add(folder: str, domain: str, split: str, label: str, d: int, spk: str, take: int) -> None:
        i = counts[folder]
        _link(
            root / f"{d}_{spk}_{take}.wav",
            out / folder / _name(domain, split, label, i, f"digit_{d}_{spk}_{take}"),
        )
        counts[folder] += 1

    for spk in sources:
        for take in range(5, 50):
            add("train", "source", "train", "normal", digit, spk, take)
        for take in range(5):
            add("source_test", "source", "test", "normal", digit, spk, take)
    others = [d for d in range(10) if d != digit]
    for d in others:
        for k in rng.choice(len(sources) * 5, size=3, replace=False):
            add("source_test", "source", "test", "anomaly", d, sources[k // 5], int(k % 5))
    for take in range(50):
        add("target_test", "target", "test", "normal", digit, target, take)
    for d in others:
        for take in rng.choice(50, size=5, replace=False):
            add("target_test", "target", "test", "anomaly", d, target, int(take))
    return counts


# --- machine with injected faults ------------------------------------------------------------


def _band_noise(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.fft.rfftfreq(n, 1 / sr)
    spec *= (f >= lo) & (f <= hi)
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    spec /= np.sqrt(np.maximum(np.arange(spec.size), 1.0))
    x = np.fft.irfft(spec, n)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def fault(rng: np.random.Generator, kind: str, n: int, sr: int) -> np.ndarray:
    """A unit-RMS fault signature of `kind`, (n,) float64."""
    t = np.arange(n) / sr
    if kind == "impacts":  # a loose part: decaying resonant rings at a jittered rate
        ring_f, decay = rng.uniform(1500, 5000), rng.uniform(0.002, 0.006)
        m = int(0.04 * sr)
        ring = np.exp(-np.arange(m) / (decay * sr)) * np.sin(2 * np.pi * ring_f * np.arange(m) / sr)
        period = sr / rng.uniform(4, 15)
        x = np.zeros(n)
        pos = rng.uniform(0, period)
        while pos < n - m:
            x[int(pos) : int(pos) + m] += ring * rng.uniform(0.6, 1.0)
            pos += period * rng.uniform(0.9, 1.1)
    elif kind == "whine":  # a worn bearing: a tone with slow frequency wobble
        f0 = rng.uniform(1000, 6000)
        phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.01 * np.sin(2 * np.pi * 0.5 * t))) / sr
        x = np.sin(phase)
    elif kind == "rubbing":  # band-limited noise modulated once per revolution
        lo = rng.uniform(2000, 5000)
        rev = rng.uniform(10, 30)
        x = _band_noise(rng, n, sr, lo, lo + 2000) * np.maximum(np.sin(2 * np.pi * rev * t), 0)
    elif kind == "clicks":  # sparse broadband clicks at random times
        x = np.zeros(n)
        for pos in rng.integers(0, n - 16, size=int(rng.uniform(2, 6) * n / sr)):
            x[pos : pos + 16] += rng.standard_normal(16) * np.hanning(16)
    else:
        raise ValueError(kind)
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _to_target(rng: np.random.Generator, x: np.ndarray, clean_rms: float) -> np.ndarray:
    noise = _pink_noise(rng, x.size) * clean_rms * 10 ** (-TARGET_SNR_DB / 20)
    return (x + noise) * 10 ** (TARGET_GAIN_DB / 20)


def machine_faults(
    out: Path,
    fold: int = 0,
    seed: int = 0,
    root: Path | None = None,
    n_test: int = 10,
    n_target_train: int = 3,
) -> dict[str, int]:
    """Hold out n_test of the 40 clips (fold k: the k-th block of a seeded permutation), train
    on the others (+ target-domain copies of n_target_train of them); test on the held-out
    clips as normals and on copies with each fault kind at one of FAULT_LEVELS_DB; the
    target test set is the same clips with a gain change and background noise."""
    import soundfile as sf

    root = root or SHARED_DATA / "machine-normal"
    files = sorted(root.glob("*.wav"))
    if len(files) < max((fold + 1) * n_test, n_test + 4):
        raise FileNotFoundError(f"{root} has {len(files)} clips, too few for fold {fold}")
    order = np.random.default_rng(seed).permutation(len(files))
    held = set(order[fold * n_test : (fold + 1) * n_test].tolist())
    train = [files[i] for i in order if i not in held]
    test = [files[i] for i in order if i in held]
    rng = np.random.default_rng(seed * 100 + fold + 1)
    counts = {"train": 0, "source_test": 0, "target_test": 0}

    def write(folder: str, name: str, x: np.ndarray, sr: int) -> None:
        (out / folder).mkdir(parents=True, exist_ok=True)
        sf.write(out / folder / name, np.clip(x, -1, 1).astype(np.float32), sr, subtype="PCM_16")
        counts[folder] += 1

    for i, f in enumerate(train):
        _link(f, out / "train" / _name("source", "train", "normal", i, f.stem))
        counts["train"] += 1
    for i, f in enumerate(train[:n_target_train]):
        x, sr = sf.read(f, dtype="float64")
        rms = float(np.sqrt(np.mean(x**2)))
        write("train", _name("target", "train", "normal", i, f.stem), _to_target(rng, x, rms), sr)
    j = {"normal": 0, "anomaly": 0}
    for ci, f in enumerate(test):
        x, sr = sf.read(f, dtype="float64")
        rms = float(np.sqrt(np.mean(x**2)))
        versions = [("normal", x, "normal")]
        for k, kind in enumerate(FAULT_KINDS):
            level = FAULT_LEVELS_DB[(ci + k) % len(FAULT_LEVELS_DB)]
            y = x + fault(rng, kind, x.size, sr) * rms * 10 ** (level / 20)
            versions.append(("anomaly", y, f"{kind}_{level:+.0f}dB"))
        for label, y, attr in versions:
            i = j[label]
            write("source_test", _name("source", "test", label, i, attr), y, sr)
            write(
                "target_test", _name("target", "test", label, i, attr), _to_target(rng, y, rms), sr
            )
            j[label] += 1
    return counts


def synth(out: Path, seed: int = 0, n_test: int = 20) -> dict[str, int]:
    """`python -m training synth` (defaults: gearbox, 2 s, 40+4 training clips)."""
    from training.synth import generate

    return generate(out, "gearbox", seed, n_test=n_test)
