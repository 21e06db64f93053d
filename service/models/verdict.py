"""What a level means: a clip's window scores → its calibrated score, level, worst stretch
and operating condition (manifest `calibration`, fitted by training.anomaly.calibration).

The contract (README "What a level means"): a healthy clip from a recording the detector
never saw reaches `needs_maintenance` with probability `false_alarm_rate` and `severe` with
`severe_rate`, whatever its length and whichever known condition it was recorded under.

- Every condition c (an operating point: a DCASE section and domain, or an enrolled one)
  has its own mean latent (`condition_offsets.npy`: the window's raw score under c is its
  distance to that mean) and its own tails: gamma fits to the mean scores of healthy
  stretches of 1..`stretch_windows` windows, measured on recordings held out of the
  detector's fit (or, for an enrolled condition, of the condition's mean).
- A clip's statistic is its worst stretch: the largest mean of `stretch_windows`
  consecutive raw window scores (all windows when the clip is shorter).
- Its tail probability p under the condition's healthy stretches of that length becomes the
  clip's 1-(1-p)^m, m = the clip's windows / stretch_windows (at least 1): longer clips
  have more stretches to be unlucky in. The score is the reference condition's full-stretch
  score of the same tail probability. So for the reference condition a clip of one stretch
  scores its raw worst stretch, every condition's healthy clips reach a threshold equally
  often, and the thresholds hold for a 1-s clip and a 60-s one alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from service.errors import BundleError

ConditionSource = Literal["request", "nearest", "only"]


class TailFit(BaseModel):
    """A gamma (location 0) fitted to healthy stretch scores of `windows` windows."""

    windows: int = Field(ge=1)
    shape: float = Field(gt=0)
    scale: float = Field(gt=0)


class ConditionCalibration(BaseModel):
    """One operating condition: its healthy raw window scores' median (loc) and spread
    (scale: q90 - q50), and its stretch tails, measured on recordings held out."""

    name: str
    clips: int = Field(ge=0)
    groups: int = Field(0, ge=0, description="recording groups the clips came in")
    loc: float
    scale: float = Field(gt=0)
    tails: list[TailFit] = Field(description="one per stretch length 1..stretch_windows")
    source: Literal["fit", "enrolled"] = "fit"


class LevelCalibration(BaseModel):
    """Manifest `calibration`: how window scores become a clip's score and level."""

    statistic: Literal["worst_stretch"] = "worst_stretch"
    stretch_windows: int = Field(ge=1)
    reference: str = Field(description="the condition whose units scores are given in")
    conditions: list[ConditionCalibration] = Field(min_length=1)
    false_alarm_rate: float = Field(gt=0, lt=1)
    severe_rate: float = Field(gt=0, lt=1)
    estimate: dict[str, Any] = Field(
        default_factory=dict, description="how the rates were estimated, from how much data"
    )

    def condition_names(self) -> list[str]:
        return [c.name for c in self.conditions]

    @property
    def ref(self) -> ConditionCalibration:
        return next(c for c in self.conditions if c.name == self.reference)

    def check(self, n_offsets: int | None) -> None:
        """Raise BundleError when the calibration is inconsistent with itself or the arrays."""
        names = self.condition_names()
        if len(set(names)) != len(names):
            raise BundleError("calibration.conditions repeats a name")
        if self.reference not in names:
            raise BundleError(f"calibration.reference {self.reference!r} is not a condition")
        lengths = list(range(1, self.stretch_windows + 1))
        if any([t.windows for t in c.tails] != lengths for c in self.conditions):
            raise BundleError("every condition's tails must cover stretches of 1..stretch_windows")
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


def _gamma() -> Any:
    from scipy import stats

    return stats.gamma


def moving_means(v: np.ndarray, length: int) -> np.ndarray:
    """(n,) → (n - length + 1,) means of every run of `length` consecutive values."""
    c = np.concatenate([[0.0], np.cumsum(v, dtype=np.float64)])
    return (c[length:] - c[:-length]) / length


def fit_tails(per_clip: list[np.ndarray], stretch_windows: int) -> list[TailFit]:
    """Healthy raw window scores of each clip (held out of what they are scored against)
    → a gamma fit to the means of every stretch of 1..stretch_windows windows. A length no
    clip reaches takes the longest fitted one's tail."""
    gamma = _gamma()
    tails: list[TailFit] = []
    for w in range(1, stretch_windows + 1):
        runs = [moving_means(x, w) for x in per_clip if len(x) >= w]
        if not runs:
            tails.append(tails[-1].model_copy(update={"windows": w}))
            continue
        values = np.maximum(np.concatenate(runs), 1e-6)
        shape, _, scale = gamma.fit(values, floc=0.0)
        tails.append(TailFit(windows=w, shape=float(shape), scale=float(scale)))
    return tails


def worst_stretch(v: np.ndarray, stretch_windows: int) -> tuple[float, int, int]:
    """(n,) window scores → (mean, first, last window) of the worst stretch of
    min(n, stretch_windows) consecutive windows."""
    length = min(len(v), stretch_windows)
    means = moving_means(v, length)
    i = int(np.argmax(means))
    return float(means[i]), i, i + length - 1


def _to_reference(
    logp: float, s: float, c: ConditionCalibration, to: TailFit, ref: ConditionCalibration
) -> float:
    """A tail log-probability → the score with that tail probability under `to`; beyond
    doubles, the affine map of the conditions' medians and spreads."""
    if math.isfinite(logp) and logp > -700:
        if logp >= 0:
            return 0.0
        return float(_gamma().isf(math.exp(logp), to.shape, scale=to.scale))
    return ref.loc + (s - c.loc) * ref.scale / c.scale


def calibrated_score(
    s: float, n_windows: int, c: ConditionCalibration, cal: LevelCalibration
) -> float:
    """The worst stretch's raw mean s of a clip of n windows under condition c → the
    reference condition's full-stretch score that is exactly as unlikely for a healthy
    clip (see the module docstring)."""
    gamma = _gamma()
    L = cal.stretch_windows
    own = c.tails[min(n_windows, L) - 1]
    ref = cal.ref
    full = ref.tails[L - 1]
    m = max(1.0, n_windows / L)
    if c is ref and own is full and m == 1.0:
        return s
    logp = float(gamma.logsf(s, own.shape, scale=own.scale))
    if math.isfinite(logp) and -700 < logp < 0:
        p = math.exp(logp)
        if p >= 1.0:
            logp = 0.0
        elif p > 1e-12:
            logp = min(0.0, math.log(-math.expm1(m * math.log1p(-p))))
        else:
            logp = math.log(m) + logp
    return _to_reference(logp, s, c, full, ref)


def window_scores_in_reference(
    raw: np.ndarray, c: ConditionCalibration, cal: LevelCalibration
) -> np.ndarray:
    """(n,) raw window scores under c → the reference condition's units (one-window tails)."""
    ref = cal.ref
    if c is ref:
        return raw.astype(np.float64)
    gamma = _gamma()
    own, to = c.tails[0], ref.tails[0]
    logp = gamma.logsf(raw, own.shape, scale=own.scale)
    return np.array(
        [_to_reference(float(lp), float(x), c, to, ref) for lp, x in zip(logp, raw, strict=True)]
    )


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
    c = cal.conditions[index]
    s, first, last = worst_stretch(raw[:, index], cal.stretch_windows)
    score = calibrated_score(s, len(raw), c, cal)
    v = window_scores_in_reference(raw[:, index], c, cal)
    return Verdict(
        score=score,
        level=level_of(score, *thresholds),
        condition=cal.conditions[index].name,
        condition_source=how,
        window_scores=v,
        worst=(first, last),
    )
