"""A synthetic machine-sound dataset in the DCASE 2021 layout, for tests and demos.

A "gearbox": a shaft turning at `rpm`, gear-mesh harmonics, a resonance and
broadband noise. The source domain runs at one speed and load, the target
domain at another. Anomalies: tooth impacts, a bearing whine, rubbing noise
bursts and imbalance (a strong once-per-turn modulation), each at a random
severity, some subtle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

ANOMALY_KINDS = ("impacts", "whine", "rubbing", "imbalance")


@dataclass(frozen=True)
class Condition:
    rpm: float
    load: float  # 0..1, raises mesh amplitude and noise


MACHINES = {
    "gearbox": {"source": Condition(rpm=1500, load=0.4), "target": Condition(rpm=2100, load=0.8)},
    "fan": {"source": Condition(rpm=900, load=0.3), "target": Condition(rpm=1200, load=0.6)},
}


def _normal(rng: np.random.Generator, cond: Condition, sr: int, n: int) -> np.ndarray:
    t = np.arange(n) / sr
    shaft = cond.rpm / 60.0 * rng.uniform(0.97, 1.03)
    mesh = shaft * 23  # 23 teeth
    x = np.zeros(n)
    for k, amp in enumerate((1.0, 0.5, 0.25, 0.12), start=1):
        x += amp * (0.4 + cond.load) * np.sin(2 * np.pi * k * mesh * t + rng.uniform(0, 6.28))
    x += 0.3 * np.sin(2 * np.pi * shaft * t + rng.uniform(0, 6.28))
    # a structural resonance excited by noise
    noise = rng.standard_normal(n)
    spec = np.fft.rfft(noise)
    f = np.fft.rfftfreq(n, 1 / sr)
    spec *= 1.0 + 4.0 * np.exp(-(((f - 2500) / 300) ** 2))
    x += (0.15 + 0.2 * cond.load) * np.fft.irfft(spec, n)
    return x


def _anomaly(
    rng: np.random.Generator, kind: str, cond: Condition, sr: int, n: int, x: np.ndarray
) -> np.ndarray:
    t = np.arange(n) / sr
    level = rng.uniform(0.3, 1.5)  # severity: some subtle
    shaft = cond.rpm / 60.0
    rms = float(np.sqrt(np.mean(x**2)))
    if kind == "impacts":
        period = int(sr / shaft)
        decay = np.exp(-np.arange(int(0.01 * sr)) / (0.002 * sr))
        ring = decay * np.sin(2 * np.pi * 4200 * np.arange(decay.size) / sr)
        for start in range(int(rng.integers(0, period)), n - ring.size, period):
            x[start : start + ring.size] += level * 3 * rms * ring
    elif kind == "whine":
        f0 = rng.uniform(3000, 6000)
        x = x + level * 0.4 * rms * np.sin(2 * np.pi * f0 * t)
    elif kind == "rubbing":
        burst = rng.standard_normal(n) * (np.sin(2 * np.pi * shaft * t) > 0.3)
        spec = np.fft.rfft(burst)
        f = np.fft.rfftfreq(n, 1 / sr)
        spec *= (f > 5000) & (f < 7500)
        x = x + level * 1.5 * rms * np.fft.irfft(spec, n)
    elif kind == "imbalance":
        x = x * (1 + level * 0.6 * np.sin(2 * np.pi * shaft * t))
    else:
        raise ValueError(kind)
    return x


def recording(
    machine: str = "gearbox",
    domain: str = "source",
    seconds: float = 10.0,
    seed: int = 0,
    sample_rate: int = 16000,
    fault: str | None = None,
    fault_span: tuple[float, float] | None = None,
    condition: Condition | None = None,
) -> np.ndarray:
    """One healthy recording of `machine` (n,) float32 scaled as the dataset's files, or one
    with `fault` (an ANOMALY_KINDS entry, strong) over fault_span seconds (default: all).
    `condition`: another speed and load than the domain's (an operating point the dataset
    never had)."""
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    cond = condition or MACHINES[machine][domain]
    x = _normal(rng, cond, sample_rate, n)
    if fault is not None:
        a, b = fault_span or (0.0, seconds)
        i, j = round(a * sample_rate), round(b * sample_rate)
        faulty = _anomaly(rng, fault, cond, sample_rate, j - i, x[i:j])
        x = np.concatenate([x[:i], faulty, x[j:]])
    return (0.25 * x / (np.max(np.abs(x)) + 1e-9)).astype(np.float32)


def _write(path: Path, x: np.ndarray, sr: int) -> None:
    import soundfile as sf

    x = 0.25 * x / (np.max(np.abs(x)) + 1e-9)
    sf.write(path, x.astype(np.float32), sr, subtype="PCM_16")


def generate(
    out_dir: Path,
    machine: str = "gearbox",
    seed: int = 0,
    seconds: float = 2.0,
    sample_rate: int = 16000,
    n_train: int = 40,
    n_train_target: int = 4,
    n_test: int = 8,
) -> dict[str, int]:
    """Write train/, source_test/, target_test/ under out_dir; returns file counts per folder.

    Gain varies per clip (±6 dB) so level alone does not reveal an anomaly.
    """
    if machine not in MACHINES:
        raise ValueError(f"unknown machine {machine!r}; choose from {sorted(MACHINES)}")
    rng = np.random.default_rng(seed)
    n = round(seconds * sample_rate)
    out_dir = Path(out_dir)
    counts: dict[str, int] = {}
    conds = MACHINES[machine]
    attrs = {"source": f"rpm_{conds['source'].rpm:.0f}", "target": f"rpm_{conds['target'].rpm:.0f}"}

    def clip(domain: str, anomalous: bool) -> np.ndarray:
        x = _normal(rng, conds[domain], sample_rate, n)
        if anomalous:
            x = _anomaly(rng, str(rng.choice(ANOMALY_KINDS)), conds[domain], sample_rate, n, x)
        return x * 10 ** (rng.uniform(-6, 6) / 20)

    folder = out_dir / "train"
    folder.mkdir(parents=True, exist_ok=True)
    for domain, count in (("source", n_train), ("target", n_train_target)):
        for i in range(count):
            name = f"section_00_{domain}_train_normal_{i:04d}_{attrs[domain]}.wav"
            _write(folder / name, clip(domain, False), sample_rate)
    counts["train"] = n_train + n_train_target
    for domain in ("source", "target"):
        folder = out_dir / f"{domain}_test"
        folder.mkdir(parents=True, exist_ok=True)
        for label in ("normal", "anomaly"):
            for i in range(n_test):
                name = f"section_00_{domain}_test_{label}_{i:04d}_{attrs[domain]}.wav"
                _write(folder / name, clip(domain, label == "anomaly"), sample_rate)
        counts[f"{domain}_test"] = 2 * n_test
    return counts
