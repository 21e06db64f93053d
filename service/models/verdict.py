"""What a level means: a clip's window scores → its calibrated score, level, worst stretch
and operating condition (manifest `calibration`, fitted by training.anomaly.calibration).

The contract (README "What a level means"): a healthy clip from a recording the detector
never saw reaches `needs_maintenance` with probability `false_alarm_rate` and `severe` with
`severe_rate`, whatever its length and whichever known condition it was recorded under.

- Every condition c (an operating point: a DCASE section and domain, or an enrolled one)
  has its own mean in the detector's PCA space (`condition_offsets.npy`) and its own
  spread of healthy window scores (loc, scale, measured on recordings held out of the
  detector's fit). A window's score under c is mapped onto the reference condition's
  units: v = ref.loc + (w_c - c.loc) * ref.scale / c.scale.
- A clip's statistic is its worst stretch: the largest mean of `stretch_windows`
  consecutive window scores (all windows when the clip is shorter).
- Longer clips have more stretches to be unlucky in. The worst stretch's tail probability
  p under healthy stretches of its length (a gamma fit) becomes the clip's 1-(1-p)^m, m the
  clip's windows / stretch_windows (at least 1), which is mapped back to a score through the
  tail of one full stretch. So the score is "as unusual as one healthy stretch this high"
  and the two thresholds hold for a 1-s clip and a 60-s one alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from service.errors import BundleError

ConditionSource = Literal["request", "nearest", "only"]
PRIOR_CLIPS = 10  # a condition's spread leans on the reference's as if it had this many clips


class ConditionCalibration(BaseModel):
    """One operating condition: its healthy window scores' median (loc) and spread (scale:
    q90 - q50), measured on recordings the detector was not fitted on."""

    name: str
    clips: int = Field(ge=0)
    groups: int = Field(0, ge=0, description="recording groups the clips came in")
    loc: float
    scale: float = Field(gt=0)
    source: Literal["fit", "enrolled"] = "fit"


class TailFit(BaseModel):
    """A gamma (location 0) fitted to healthy stretch scores of `windows` windows."""

    windows: int = Field(ge=1)
    shape: float = Field(gt=0)
    scale: float = Field(gt=0)


class LevelCalibration(BaseModel):
    """Manifest `calibration`: how window scores become a clip's score and level."""

    statistic: Literal["worst_stretch"] = "worst_stretch"
    stretch_windows: int = Field(ge=1)
    reference: str = Field(description="the condition whose units scores are given in")
    conditions: list[ConditionCalibration] = Field(min_length=1)
    tails: list[TailFit] = Field(description="one per stretch length 1..stretch_windows")
    false_alarm_rate: float = Field(gt=0, lt=1)
    severe_rate: float = Field(gt=0, lt=1)
    estimate: dict[str, Any] = Field(
        default_factory=dict, description="how the rates were estimated, from how much data"
    )

    def condition_names(self) -> list[str]:
        return [c.name for c in self.conditions]

    def check(self, n_offsets: int | None) -> None:
        """Raise BundleError when the calibration is inconsistent with itself or the arrays."""
        names = self.condition_names()
        if len(set(names)) != len(names):
            raise BundleError("calibration.conditions repeats a name")
        if self.reference not in names:
            raise BundleError(f"calibration.reference {self.reference!r} is not a condition")
        if [t.windows for t in self.tails] != list(range(1, self.stretch_windows + 1)):
            raise BundleError("calibration.tails must cover stretches of 1..stretch_windows")
        if n_offsets is not None and n_offsets != len(names):
            raise BundleError(
                f"condition_offsets.npy has {n_offsets} rows for {len(names)} conditions"
            )


@dataclass(frozen=True)
class Verdict:
    score: float
    level: str
    condition: str
    condition_source: ConditionSource
    window_scores: np.ndarray  # (n_windows,) in the reference condition's units
    worst: tuple[int, int]  # window indices [first, last] of the worst stretch


def spread(raw: np.ndarray) -> tuple[float, float]:
    """Healthy window scores → (median, q90 - median): a condition's loc and scale."""
    loc = float(np.median(raw))
    return loc, max(float(np.quantile(raw, 0.9)) - loc, 1e-6 * max(abs(loc), 1e-6))


def shrunk_scale(scale: float, clips: int, reference: float) -> float:
    """A condition's spread of healthy scores measured on few clips is noisy (and, held out
    of a fit that keeps only the rest of them, pessimistic): its geometric mean with the
    reference condition's, weighted clips : PRIOR_CLIPS."""
    w = clips / (clips + PRIOR_CLIPS)
    return float(np.exp(w * np.log(scale) + (1 - w) * np.log(reference)))


def _gamma() -> Any:
    from scipy import stats

    return stats.gamma


def moving_means(v: np.ndarray, length: int) -> np.ndarray:
    """(n,) → (n - length + 1,) means of every run of `length` consecutive values."""
    c = np.concatenate([[0.0], np.cumsum(v, dtype=np.float64)])
    return (c[length:] - c[:-length]) / length


def worst_stretch(v: np.ndarray, stretch_windows: int) -> tuple[float, int, int]:
    """(n,) window scores → (mean, first, last window) of the worst stretch of
    min(n, stretch_windows) consecutive windows."""
    length = min(len(v), stretch_windows)
    means = moving_means(v, length)
    i = int(np.argmax(means))
    return float(means[i]), i, i + length - 1


def length_calibrated(s: float, n_windows: int, cal: LevelCalibration) -> float:
    """The worst stretch's mean s of a clip of n windows → the score of one full healthy
    stretch that is exactly as unlikely (see the module docstring)."""
    gamma = _gamma()
    L = cal.stretch_windows
    short = cal.tails[min(n_windows, L) - 1]
    full = cal.tails[L - 1]
    m = max(1.0, n_windows / L)
    if short is full and m == 1.0:
        return s
    logp = float(gamma.logsf(s, short.shape, scale=short.scale))
    if not math.isfinite(logp) or logp < -700:  # beyond doubles: the correction is negligible
        return s
    p = math.exp(logp)
    logq = math.log(-math.expm1(m * math.log1p(-p))) if p > 1e-12 else math.log(m) + logp
    if logq < -700:
        return s
    if logq >= 0:
        return 0.0
    return float(gamma.isf(math.exp(logq), full.shape, scale=full.scale))


def normalised(raw: np.ndarray, cal: LevelCalibration, index: int) -> np.ndarray:
    """(n,) raw window scores under condition `index` → the reference condition's units."""
    c = cal.conditions[index]
    ref = next(x for x in cal.conditions if x.name == cal.reference)
    return np.maximum(ref.loc + (raw - c.loc) * (ref.scale / c.scale), 0.0)


def choose_condition(
    raw: np.ndarray, cal: LevelCalibration, condition: str | None
) -> tuple[int, ConditionSource]:
    """(n, n_conditions) raw window scores → (index, how it was chosen): the named one, or
    the one whose healthy mean the clip's windows are nearest to (median distance)."""
    names = cal.condition_names()
    if condition is not None:
        return names.index(condition), "request"
    if len(names) == 1:
        return 0, "only"
    return int(np.argmin(np.median(raw, axis=0))), "nearest"


def level_of(score: float, needs_maintenance: float, severe: float) -> str:
    """normal < needs_maintenance ≤ score < severe ≤ severe; NaN is severe, never normal."""
    if score >= severe or score != score:
        return "severe"
    if score >= needs_maintenance:
        return "needs_maintenance"
    return "normal"


def verdict(
    raw: np.ndarray,
    cal: LevelCalibration,
    thresholds: tuple[float, float],
    condition: str | None = None,
) -> Verdict:
    """(n_windows, n_conditions) raw window scores of one clip → its Verdict. `condition`
    must be one of the calibration's (callers check; ValueError otherwise)."""
    index, how = choose_condition(raw, cal, condition)
    v = normalised(raw[:, index], cal, index)
    s, first, last = worst_stretch(v, cal.stretch_windows)
    score = length_calibrated(s, len(v), cal)
    return Verdict(
        score=score,
        level=level_of(score, *thresholds),
        condition=cal.conditions[index].name,
        condition_source=how,
        window_scores=v,
        worst=(first, last),
    )
