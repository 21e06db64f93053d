"""What a level means: a clip's window scores → its calibrated score, level, worst stretch
and operating condition (manifest `calibration`, fitted by training.anomaly.calibration).

The contract (docs/levels.md, "What a level means"): a healthy clip from a recording the detector
never saw reaches `needs_maintenance` with probability `false_alarm_rate` and `severe` with
`severe_rate`, whatever its length and whichever known condition it was recorded under.

- Every condition c (an operating point: a DCASE section and domain, or an enrolled one)
  has its own mean latent (`condition_offsets.npy`: the window's raw score under c is its
  distance to that mean) and its own tails: gamma fits to the mean scores of healthy
  stretches of 1..`stretch_windows` windows, measured on recordings held out of the
  detector's fit (or, for an enrolled condition, of the condition's mean), and the same
  per lossy codec (`codec_tails`) from round trips of those recordings.
- A clip's statistic is its worst stretch: the largest mean of `stretch_windows`
  consecutive raw window scores (all windows when the clip is shorter).
- `limits`: the raw values a healthy clip of n windows under c reaches with probability
  `false_alarm_rate` and `severe_rate`. Each of its m = n / stretch_windows stretches (at
  least 1) gets 1 - (1 - rate)^(1/m), because longer clips have more stretches to be unlucky
  in. Severe is at least `severe_factor` times needs_maintenance.
- The score maps the worst stretch piecewise linearly so that c's limits for the clip's
  length land on the bundle's thresholds (the reference condition's limits for one
  stretch). For the reference condition, a clip of one stretch scores its raw worst
  stretch; every condition's healthy clips reach a threshold at the stated rate, and the
  thresholds hold for a 1-s clip and a 60-s one alike.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from service.errors import BundleError
from service.features import FeatureParams, band_centres

ConditionSource = Literal["request", "nearest", "only"]
LOSSY_FORMATS = ("ogg", "mp3")  # uploads judged by a condition's `codec_tails` of their format
LOSSY_DEFAULT = "ogg"  # a lossless file that went through a lossy codec first (e.g. opus)


class TailFit(BaseModel):
    """A gamma (location 0) fitted to healthy stretch scores of `windows` windows."""

    windows: int = Field(ge=1)
    shape: float = Field(gt=0)
    scale: float = Field(gt=0)


class RateTails(BaseModel):
    """Tails of one lossy format at one bitrate: round trips of the held-out recordings
    through it, at `kbps` (the copies' median size over duration, as an upload's is
    measured)."""

    format: str
    stream: str | None = Field(None, description="the codec inside the format: mp3, opus, vorbis")
    kbps: float = Field(gt=0)
    sample_rate: int | None = Field(
        None, gt=0, description="the rate the copies were encoded at (None: not recorded)"
    )
    fitted: bool = Field(
        True,
        description="whether the detector was fitted on copies through this codec and "
        "bitrate; false: only these tails were measured on them (an upload judged by them "
        "gets a `low_bitrate` warning: faults may read normal)",
    )
    tails: list[TailFit]
    worst: TailFit | None = Field(
        None,
        description="a gamma fitted to each copy's worst stretch (`windows`: the copies' "
        "median length in windows). A low bitrate's artifacts come in bursts, so a clip's "
        "worst stretch lies further out than `tails` (independent stretches) put it; the "
        "limits are the higher of the two (fit_worst_tail)",
    )


class ConditionCalibration(BaseModel):
    """One operating condition: its healthy raw window scores' median (loc) and spread
    (scale: q90 - q50), and its stretch tails, measured on recordings held out."""

    name: str
    clips: int = Field(ge=0)
    groups: int = Field(0, ge=0, description="recording groups the clips came in")
    loc: float
    scale: float = Field(gt=0)
    tails: list[TailFit] = Field(description="one per stretch length 1..stretch_windows")
    codec_tails: dict[str, list[TailFit]] = Field(
        default_factory=dict,
        description="the same per lossy format (ogg, mp3), measured on round trips of the "
        "clips through it (a codec's masking moves a healthy score); a format without its "
        "own: `tails`",
    )
    rate_tails: list[RateTails] = Field(
        default_factory=list,
        description="the same per lossy format and bitrate (mp3 at 128, 64, 32 and 24 kbit/s, "
        "Vorbis, Opus at 16 kbit/s): an upload of that format is judged by the tails of the "
        "bitrate nearest its own (in ratio), since a low bitrate moves a healthy score far "
        "more than a high one; without them: `codec_tails`",
    )
    source: Literal["fit", "enrolled"] = "fit"


class LevelCalibration(BaseModel):
    """Manifest `calibration`: how window scores become a clip's score and level."""

    statistic: Literal["worst_stretch"] = "worst_stretch"
    stretch_windows: int = Field(ge=1)
    reference: str = Field(description="the condition whose units scores are given in")
    conditions: list[ConditionCalibration] = Field(min_length=1)
    false_alarm_rate: float = Field(gt=0, lt=1)
    severe_rate: float = Field(gt=0, lt=1)
    severe_factor: float = Field(
        2.0, ge=1, description="severe lies at least this many times as far as needs_maintenance"
    )
    estimate: dict[str, Any] = Field(
        default_factory=dict, description="how the rates were estimated, from how much data"
    )
    min_bandwidth_hz: float | None = Field(
        None,
        gt=0,
        description="the narrowest input bandwidth (features.input_bandwidth) among the "
        "recordings and lossy-codec copies the detector and levels were fitted on: an input "
        "that leaves more of the top mel bands empty than they did gets `low_bandwidth`",
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
        for c in self.conditions:
            rated = [r.tails for r in c.rate_tails]
            for tails in (c.tails, *c.codec_tails.values(), *rated):
                if [t.windows for t in tails] != lengths:
                    raise BundleError(
                        "every condition's tails must cover stretches of 1..stretch_windows"
                    )
        if n_offsets is not None and n_offsets != len(names):
            raise BundleError(
                f"condition_offsets.npy has {n_offsets} rows for {len(names)} conditions"
            )


@dataclass(frozen=True)
class InputWarning:
    """Something about the input that limits what its verdict can say."""

    code: str
    message: str


@dataclass(frozen=True)
class Verdict:
    score: float
    level: str
    condition: str
    condition_source: ConditionSource
    window_scores: np.ndarray  # (n_windows,) in the reference condition's units
    worst: tuple[int, int]  # window indices [first, last] of the worst stretch
    warnings: tuple[InputWarning, ...] = ()


def bands_carried(bandwidth_hz: float, features: FeatureParams) -> int:
    """How many of the model's mel bands, from the lowest, have their centre at or below
    `bandwidth_hz`: the bands an input of that bandwidth fills."""
    return int(np.searchsorted(band_centres(features), bandwidth_hz, side="right"))


def bandwidth_warning(
    bandwidth_hz: float | None, features: FeatureParams, fitted_hz: float | None = None
) -> InputWarning | None:
    """A `low_bandwidth` warning when the input's effective bandwidth (features.
    input_bandwidth) fills fewer mel bands than every band the model reads (a lossy
    codec's low-pass at a low bitrate, or a recording at a low sample rate), and fewer than
    the narrowest input the bundle was fitted on (`fitted_hz`, calibration.min_bandwidth_hz,
    when it knows): the empty bands make the score measure what is missing as much as the
    machine."""
    if bandwidth_hz is None:
        return None
    needed = features.n_mels
    if fitted_hz is not None:
        needed = min(needed, bands_carried(fitted_hz, features))
    if bands_carried(bandwidth_hz, features) >= needed:
        return None
    fmax = float(features.fmax if features.fmax is not None else features.sample_rate / 2)
    fitted = f"{fmax / 1000:.1f} kHz"
    if fitted_hz is not None and fitted_hz < fmax:
        fitted = f"{fmax / 1000:.1f} kHz (and calibrated on inputs down to {fitted_hz / 1000:.1f})"
    return InputWarning(
        "low_bandwidth",
        f"the input carries sound up to ~{bandwidth_hz / 1000:.1f} kHz; the model was fitted "
        f"on sound up to {fitted}, so its top bands are empty here: the level is at most "
        "needs_maintenance (send a higher bitrate or sample rate to judge it)",
    )


def limited_by_input(
    v: Verdict,
    bandwidth_hz: float | None,
    features: FeatureParams,
    fitted_hz: float | None = None,
) -> Verdict:
    """The verdict of an input with a `low_bandwidth` warning: never `severe` (the missing
    bands alone can put a healthy clip there); the score is kept as it is."""
    warning = bandwidth_warning(bandwidth_hz, features, fitted_hz)
    if warning is None:
        return v
    level = "needs_maintenance" if v.level == "severe" else v.level
    return dataclasses.replace(v, level=level, warnings=(*v.warnings, warning))


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
    clip reaches takes the longest fitted one's tail; too few or identical values are fitted
    by their moments (a spread of at least 10 % of the mean)."""
    tails: list[TailFit] = []
    for w in range(1, stretch_windows + 1):
        runs = [moving_means(x, w) for x in per_clip if len(x) >= w]
        if not runs:
            if not tails:
                raise ValueError("no healthy scores to fit a tail to")
            tails.append(tails[-1].model_copy(update={"windows": w}))
            continue
        shape, scale = _gamma_fit(np.maximum(np.concatenate(runs), 1e-6))
        tails.append(TailFit(windows=w, shape=shape, scale=scale))
    return tails


def fit_worst_tail(per_clip: list[np.ndarray], stretch_windows: int) -> TailFit | None:
    """Healthy raw window scores of each copy → a gamma fitted to every copy's worst stretch
    (`worst_stretch`), `windows` the copies' median length; None with fewer than 3 copies."""
    clips = [x for x in per_clip if len(x)]
    if len(clips) < 3:
        return None
    worst = np.array([worst_stretch(x, stretch_windows)[0] for x in clips])
    shape, scale = _gamma_fit(np.maximum(worst, 1e-6))
    windows = max(1, int(np.median([len(x) for x in clips])))
    return TailFit(windows=windows, shape=shape, scale=scale)


def _gamma_fit(values: np.ndarray) -> tuple[float, float]:
    """(shape, scale) of a gamma with location 0: maximum likelihood, or the moments."""
    if len(values) >= 5 and np.ptp(values) > 0:
        try:
            shape, _, scale = _gamma().fit(values, floc=0.0)
            if np.isfinite([shape, scale]).all() and shape > 0 and scale > 0:
                return float(shape), float(scale)
        except (ValueError, RuntimeError, FloatingPointError):
            pass
    mean = float(values.mean())
    var = max(float(values.var()), (0.1 * mean) ** 2)
    return mean * mean / var, var / mean


def worst_stretch(v: np.ndarray, stretch_windows: int) -> tuple[float, int, int]:
    """(n,) window scores → (mean, first, last window) of the worst stretch of
    min(n, stretch_windows) consecutive windows."""
    length = min(len(v), stretch_windows)
    means = moving_means(v, length)
    i = int(np.argmax(means))
    return float(means[i]), i, i + length - 1


def nearest_rate(
    c: ConditionCalibration,
    codec: str,
    kbps: float | None,
    stream: str | None,
    sample_rate: int | None = None,
) -> RateTails | None:
    """Condition c's rate tails of format `codec` (and of `stream` when it has its own)
    nearest in ratio to kbps; None without rate tails of that format or without kbps. With
    the upload's `sample_rate`, the low-bitrate tails (those the detector was not fitted on)
    are only those of the calibrated rate nearest its own: LAME spends a bitrate quite
    differently at 16, 22.05 and 44.1 kHz (issue 23: a 44.1-kHz mp3 at 48 kbit/s is
    burstier than a 16-kHz one at 64)."""
    rated = [r for r in c.rate_tails if r.format == codec]
    if stream is not None and any(r.stream == stream for r in rated):
        rated = [r for r in rated if r.stream == stream]
    if not rated or kbps is None or kbps <= 0:
        return None
    rates = {r.sample_rate for r in rated if not r.fitted and r.sample_rate}
    if sample_rate and rates:
        near = min(rates, key=lambda sr: abs(math.log(sample_rate / sr)))
        rated = [r for r in rated if r.fitted or r.sample_rate in (near, None)]
    return min(rated, key=lambda r: abs(math.log(kbps / r.kbps)))


def limits(
    c: ConditionCalibration,
    cal: LevelCalibration,
    n_windows: int,
    codec: str | None = None,
    kbps: float | None = None,
    stream: str | None = None,
    sample_rate: int | None = None,
) -> tuple[float, float]:
    """Condition c's own (needs_maintenance, severe) limits, in its raw units, for the worst
    stretch of a clip of n windows: the values a healthy clip's worst stretch reaches with
    probability false_alarm_rate and severe_rate (each of its m = n / stretch_windows
    stretches with 1 - (1 - rate)^(1/m)); severe at least `severe_factor` x needs_maintenance.
    `codec`: the lossy format the sound went through (its tails when the condition has
    them), None for lossless audio; `kbps`: its bitrate (nearest_rate). A codec's limits are
    never below the lossless ones: a round trip adds to a healthy score's spread, and a
    tail fitted to the few copies of one codec and bitrate comes out tighter than the truth
    (issue 23: mp3 at 64 kbit/s read needs_maintenance on half of the healthy clips); nor
    below what the copies' worst stretches reach (RateTails.worst), when they were fitted."""
    m = max(1.0, n_windows / cal.stretch_windows)
    window = min(n_windows, cal.stretch_windows) - 1
    rates = (cal.false_alarm_rate, cal.severe_rate, cal.severe_factor)
    base = c.tails[window]
    lossless = _tail_limits(base.shape, base.scale, m, *rates)
    # the rate tails nearest the upload's setting, else the format's pooled tails
    rated = nearest_rate(c, codec, kbps, stream, sample_rate) if codec else None
    if rated is not None:
        tails = rated.tails
    else:
        tails = c.codec_tails.get(codec, c.tails) if codec else c.tails
    if tails is c.tails:
        return lossless
    tail = tails[window]
    t_m, t_s = _tail_limits(tail.shape, tail.scale, m, *rates)
    if rated is not None and rated.worst is not None:
        # the copies' own worst stretches, the clip counted in copy lengths (a fraction
        # for a shorter clip: a lower quantile of the copies' worst)
        w = rated.worst
        w_m, w_s = _tail_limits(w.shape, w.scale, n_windows / w.windows, *rates)
        t_m, t_s = max(t_m, w_m), max(t_s, w_s)
    return max(t_m, lossless[0]), max(t_s, lossless[1])


@functools.lru_cache(maxsize=4096)
def _tail_limits(
    shape: float, scale: float, m: float, false_alarm_rate: float, severe_rate: float, factor: float
) -> tuple[float, float]:
    """`limits` of one gamma tail for m stretches; cached, because every clip scored needs
    a few and a gamma quantile costs more than the rest of its verdict."""
    gamma = _gamma()
    per_stretch = [-math.expm1(math.log1p(-r) / m) for r in (false_alarm_rate, severe_rate)]
    t_m, t_s = (float(gamma.isf(a, shape, scale=scale)) for a in per_stretch)
    return t_m, max(t_s, factor * t_m)


def on_reference_scale(
    s: np.ndarray | float, own: tuple[float, float], ref: tuple[float, float]
) -> np.ndarray:
    """Raw scores → the reference's scale, piecewise linear through (0, 0) and the two
    limits' pairs (`own` → `ref`), and on with the last piece's slope."""
    (a, b), (A, B) = own, ref
    s = np.asarray(s, np.float64)
    below = s * (A / a)
    between = A + (s - a) * ((B - A) / (b - a))
    return np.where(s <= a, below, between)


def calibrated_score(
    s: float,
    n_windows: int,
    c: ConditionCalibration,
    cal: LevelCalibration,
    codec: str | None = None,
    kbps: float | None = None,
    stream: str | None = None,
    sample_rate: int | None = None,
) -> float:
    """The worst stretch's raw mean s of a clip of n windows under condition c → its score:
    c's own limits for a clip of that length land on the bundle's thresholds (the
    reference condition's limits for a clip of one stretch)."""
    ref = reference_limits(cal)
    own = limits(c, cal, n_windows, codec, kbps, stream, sample_rate)
    return float(on_reference_scale(s, own, ref))


def reference_limits(cal: LevelCalibration) -> tuple[float, float]:
    """The bundle's thresholds: the reference condition's limits for one full stretch."""
    return limits(cal.ref, cal, cal.stretch_windows)


def window_scores_in_reference(
    raw: np.ndarray,
    c: ConditionCalibration,
    cal: LevelCalibration,
    codec: str | None = None,
    kbps: float | None = None,
    stream: str | None = None,
    sample_rate: int | None = None,
) -> np.ndarray:
    """(n,) raw window scores under c → the scores' scale, each window as if it were a clip
    of its own: at the needs_maintenance threshold when it alone reaches c's limit."""
    own = limits(c, cal, 1, codec, kbps, stream, sample_rate)
    return on_reference_scale(raw, own, reference_limits(cal))


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
    codec: str | None = None,
    kbps: float | None = None,
    stream: str | None = None,
    sample_rate: int | None = None,
) -> Verdict:
    """(n_windows, n_conditions) raw window scores of one clip → its Verdict. `condition`
    must be one of the calibration's (callers check; ValueError otherwise); `codec`: the
    lossy format the sound went through (ogg, mp3), None for lossless audio; `kbps` and
    `stream`: the bitrate and codec it went through, when known (nearest_rate); `sample_rate`:
    the rate it was encoded at (nearest_rate)."""
    index, how = choose_condition(raw, cal, condition)
    c = cal.conditions[index]
    s, first, last = worst_stretch(raw[:, index], cal.stretch_windows)
    score = calibrated_score(s, len(raw), c, cal, codec, kbps, stream, sample_rate)
    v = window_scores_in_reference(raw[:, index], c, cal, codec, kbps, stream, sample_rate)
    warnings: tuple[InputWarning, ...] = ()
    rated = nearest_rate(c, codec, kbps, stream, sample_rate) if codec else None
    if rated is not None and not rated.fitted:
        warnings = (
            InputWarning(
                "low_bitrate",
                f"judged as {rated.stream or rated.format} at {rated.kbps:g} kbit/s: the "
                "detector was not fitted on that codec and bitrate, only its thresholds were "
                "measured there, so a healthy clip reads normal but a fault may too (send a "
                "higher bitrate to be sure)",
            ),
        )
    return Verdict(
        score=score,
        level=level_of(score, *thresholds),
        condition=cal.conditions[index].name,
        condition_source=how,
        window_scores=v,
        worst=(first, last),
        warnings=warnings,
    )
