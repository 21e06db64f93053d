"""Choose the two thresholds (needs_maintenance, severe) and the clip statistic.

The default (`fit_level_calibration`): the level is a stated false-alarm rate on recordings
the detector never saw. Training clips are split into folds by recording group (a file, or
what `--group-by` takes from its name); the detector is fitted without each fold and scores
it. Those out-of-group window scores give every operating condition its median, spread and
gamma tails for the clips' worst stretches (service.models.verdict), from which the
thresholds follow. KMeans boundaries of labelled test scores (the seed's method) are only
used on request (`fit --kmeans-thresholds`) and are reported as such.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.models.bundle import Thresholds, window_scores
from service.models.verdict import (
    ConditionCalibration,
    LevelCalibration,
    RateTails,
    fit_tails,
    fit_worst_tail,
    reference_limits,
    spread,
    verdict,
)
from training.datasets import Clip

FALSE_ALARM_RATE = 0.01
SEVERE_RATE = 0.001
STRETCH_SECONDS = 2.0
MAX_FOLDS = 10


def kmeans_boundaries(scores: np.ndarray, seed: int = 0) -> tuple[list[float], list[float]]:
    """KMeans with 3 clusters on 1-D test scores (the seed's method) →
    (sorted centres, the two boundaries between neighbouring clusters)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=3, n_init=10, random_state=seed).fit(np.asarray(scores)[:, None])
    centres = sorted(float(c) for c in km.cluster_centers_[:, 0])
    return centres, [(centres[0] + centres[1]) / 2, (centres[1] + centres[2]) / 2]


def refine_with_kmeans(
    base: Thresholds, test_scores: np.ndarray, test_labels: np.ndarray, seed: int = 0
) -> Thresholds:
    """Move the thresholds to the KMeans cluster boundaries of labelled test scores when
    that is consistent with the normal distribution: the maintenance boundary must sit
    above the median held-out normal score and below the severe boundary."""
    if test_scores.size < 6 or len(np.unique(test_labels)) < 2:
        return base
    centres, (b1, b2) = kmeans_boundaries(test_scores, seed)
    normal_median = base.details["heldout_normal_percentiles"]["p50"]
    details = {**base.details, "kmeans_centres": centres, "kmeans_boundaries": [b1, b2]}
    details["normal_based"] = {"needs_maintenance": base.needs_maintenance, "severe": base.severe}
    if not (normal_median < b1 < b2):
        return base.model_copy(update={"details": {**details, "kmeans_used": False}})
    return Thresholds(
        needs_maintenance=b1,
        severe=b2,
        method=f"{base.method}+kmeans_test_scores",
        details={**details, "kmeans_used": True},
    )


def condition_of(clip: Clip, named: bool) -> str:
    """A clip's operating condition: its DCASE section and domain when the dataset's names
    carry them (`named`), else the one condition "default"."""
    return clip.group if named else "default"


def names_carry_conditions(clips: list[Clip]) -> bool:
    tokens = re.compile(r"(?:^|_)(?:section|id|source|target)(?:_|$)")
    return any(tokens.search(c.path.stem.lower()) for c in clips)


def group_of(clip: Clip, pattern: re.Pattern[str] | None) -> str:
    """The recording group a clip belongs to: the first group (or the whole match) of
    `pattern` in its file name, else the file itself."""
    if pattern is not None:
        m = pattern.search(clip.path.name)
        if m:
            return m.group(1) if m.groups() else m.group(0)
    return clip.path.name


def assign_folds(groups: list[str], conditions: list[str], seed: int) -> np.ndarray:
    """(n_clips,) fold index per clip: whole groups go to one fold; each condition's groups
    are dealt round-robin in a seeded order, so a condition with few recordings keeps some
    of them in every fit. At most MAX_FOLDS folds."""
    names = sorted(set(groups))
    k = min(MAX_FOLDS, len(names))
    rng = np.random.default_rng(seed)
    cond_of = {g: c for g, c in zip(groups, conditions, strict=True)}
    fold_of: dict[str, int] = {}
    nxt = 0
    for cond in sorted(set(conditions)):
        gs = [g for g in names if cond_of[g] == cond]
        for g in rng.permutation(gs):
            fold_of[str(g)] = nxt % k
            nxt += 1
    return np.array([fold_of[g] for g in groups])


Detector = tuple[dict[str, np.ndarray], list[Any]]


def condition_offsets(
    latents: np.ndarray, conditions: np.ndarray, n_conditions: int, arrays: dict[str, np.ndarray]
) -> np.ndarray:
    """(n, d) healthy latents and their condition index → (n_conditions, d): each
    condition's mean latent minus the detector's (zero for a condition with no rows)."""
    out = np.zeros((n_conditions, latents.shape[1]), np.float32)
    for c in range(n_conditions):
        if (conditions == c).any():
            out[c] = latents[conditions == c].mean(axis=0) - arrays["pca_mean"]
    return out


def crossfit_scores(
    fit_latents: np.ndarray,
    fit_clip: np.ndarray,
    cal_latents: np.ndarray,
    cal_clip: np.ndarray,
    clip_condition: np.ndarray,
    clip_fold: np.ndarray,
    n_conditions: int,
    fit_detector: Callable[[np.ndarray], Detector],
) -> np.ndarray:
    """Out-of-group raw window scores: for every fold, the detector (and each condition's
    mean) fitted on the other folds' windows (`fit_latents`, clip index `fit_clip`) scores
    this fold's windows (`cal_latents`, clip index `cal_clip`, as the service windows them)
    → (n_cal, n_conditions)."""
    out = np.empty((len(cal_latents), n_conditions), np.float64)
    for k in np.unique(clip_fold):
        held = clip_fold[fit_clip] == k
        arrays, parts = fit_detector(~held)
        offsets = condition_offsets(
            fit_latents[~held], clip_condition[fit_clip[~held]], n_conditions, arrays
        )
        rows = clip_fold[cal_clip] == k
        out[rows] = window_scores(cal_latents[rows], arrays, parts, offsets=offsets)
    return out


@dataclass
class LevelFit:
    calibration: LevelCalibration
    thresholds: Thresholds


def _median_rate(rates: list[int | None]) -> int | None:
    known = [r for r in rates if r]
    return int(np.median(known)) if known else None


def fit_level_calibration(
    raw: np.ndarray,
    cal_clip: np.ndarray,
    n_clips: int,
    clip_condition: np.ndarray,
    condition_names: list[str],
    clip_groups: list[str],
    n_folds: int,
    stretch_seconds: float,
    hop_seconds: float,
    false_alarm_rate: float = FALSE_ALARM_RATE,
    severe_rate: float = SEVERE_RATE,
    codec_of: Callable[[int], str | None] = lambda o: None,
    copy_of: Callable[[int], tuple[str, float, str, int | None] | None] = lambda o: None,
) -> LevelFit:
    """Out-of-group raw window scores (n_cal, n_conditions) of the training clips (window →
    clip index `cal_clip`; indices ≥ n_clips are codec copies of clip i mod n_clips: those
    below 2 n_clips the detector was fitted on, those above only calibrate, scored by the
    served detector, which never saw them) →
    every condition's spread and stretch tails (`codec_tails` from the copies, by the lossy
    format `codec_of(index)` gives, and `rate_tails` by the (codec setting, kbit/s, stream
    codec) that `copy_of(index)` gives a copy), the thresholds (from the reference condition's
    full-stretch tail) and the out-of-group check."""

    source = cal_clip % n_clips
    own = raw[np.arange(len(raw)), clip_condition[source]]
    counts = np.bincount(clip_condition, minlength=len(condition_names))
    groups_of = [
        len({g for g, c in zip(clip_groups, clip_condition, strict=True) if c == i})
        for i in range(len(condition_names))
    ]
    windows_per_clip = np.bincount(cal_clip)
    L = max(
        1,
        min(
            round(stretch_seconds / hop_seconds),
            int(np.median(windows_per_clip[windows_per_clip > 0])),
        ),
    )
    owners = np.unique(cal_clip)
    own_of = {int(o): own[cal_clip == o] for o in owners}  # each clip's windows, once
    conds = []
    for i, name in enumerate(condition_names):
        loc, scale = spread(own[clip_condition[source] == i])
        ours = [o for o in owners if clip_condition[o % n_clips] == i]
        per_clip = [own_of[o] for o in ours if o < n_clips]
        copies = [o for o in ours if o >= n_clips]
        fitted = [o for o in copies if o < 2 * n_clips]  # pooled: the detector's copies
        formats = sorted({f for o in fitted if (f := codec_of(o)) is not None})
        codec_tails = {
            fmt: fit_tails([own_of[o] for o in fitted if codec_of(o) == fmt], L) for fmt in formats
        }
        settings: dict[str, list[int]] = {}
        for o in copies:
            if (made := copy_of(o)) is not None and codec_of(o) is not None:
                settings.setdefault(made[0], []).append(o)
        rate_tails = [
            RateTails(
                format=str(codec_of(made[0])),
                stream=copy_of(made[0])[2],  # type: ignore[index]
                kbps=round(float(np.median([copy_of(o)[1] for o in made])), 1),  # type: ignore[index]
                sample_rate=_median_rate([copy_of(o)[3] for o in made]),  # type: ignore[index]
                tails=fit_tails([own_of[o] for o in made], L),
                worst=fit_worst_tail([own_of[o] for o in made], L),
                fitted=all(o < 2 * n_clips for o in made),
            )
            for _, made in sorted(settings.items())
        ]
        conds.append(
            ConditionCalibration(
                name=name,
                clips=int(counts[i]),
                groups=groups_of[i],
                loc=loc,
                scale=scale,
                tails=fit_tails(per_clip, L),
                codec_tails=codec_tails,
                rate_tails=rate_tails,
            )
        )
    cal = LevelCalibration(
        stretch_windows=L,
        reference=condition_names[int(np.argmax(counts))],
        conditions=conds,
        false_alarm_rate=false_alarm_rate,
        severe_rate=severe_rate,
    )
    t_m, t_s = reference_limits(cal)

    # every out-of-group clip scored as the service scores it, its condition chosen as the
    # service chooses it when a request names none
    def clip_score(o: int) -> float:
        made = copy_of(o)
        kbps, stream, rate = made[1:] if made is not None else (None, None, None)
        return verdict(
            raw[cal_clip == o],
            cal,
            (t_m, t_s),
            codec=codec_of(o),
            kbps=kbps,
            stream=stream,
            sample_rate=rate,
        ).score

    scores = {int(o): clip_score(int(o)) for o in owners}
    originals = np.array([scores.get(i, np.nan) for i in range(n_clips)])
    copies = np.array([s for o, s in scores.items() if o >= n_clips])
    n = int(np.isfinite(originals).sum())
    need = int(np.ceil(1 / false_alarm_rate)) - 1
    conformal = None
    if n >= need:  # enough recordings for the split-conformal quantile itself: a check
        rank = int(np.ceil((n + 1) * (1 - false_alarm_rate)))
        conformal = float(np.sort(originals[np.isfinite(originals)])[rank - 1])

    warnings = []
    if n < need:
        warnings.append(
            f"{n} recordings cannot show a {false_alarm_rate:g} false-alarm rate directly "
            f"(that needs {need}): the thresholds extrapolate a gamma tail fitted to the "
            "stretches of recordings held out of the detector's fit"
        )
    if len(set(clip_groups)) < 5:
        warnings.append(f"only {len(set(clip_groups))} recording groups: the rate is uncertain")
    for c in conds:
        if c.clips < 10:
            warnings.append(
                f"condition {c.name!r} has {c.clips} clips (fewer than 10): its own "
                "normalisation is uncertain"
            )

    def rate(x: np.ndarray, t: float) -> float | None:
        x = x[np.isfinite(x)]
        return round(float((x >= t).mean()), 4) if x.size else None

    estimate = {
        "method": "cross-fit over recording groups, gamma tails of worst stretches per condition",
        "recordings": n_clips,
        "groups": len(set(clip_groups)),
        "folds": n_folds,
        "stretch_seconds": round(L * hop_seconds, 3),
        "heldout_false_alarms": {
            "recordings": rate(originals, t_m),
            "codec_copies": rate(copies, t_m),
            "severe_recordings": rate(originals, t_s),
        },
        "heldout_clip_score_percentiles": {
            f"p{q}": float(np.nanpercentile(originals, q)) for q in (50, 90, 99, 100)
        },
        "warnings": warnings,
    }
    cal = cal.model_copy(update={"estimate": estimate})
    thresholds = Thresholds(
        needs_maintenance=t_m,
        severe=t_s,
        method="crossfit_gamma_tail",
        details={
            "false_alarm_rate": false_alarm_rate,
            "severe_rate": severe_rate,
            "severe_factor": cal.severe_factor,
            "reference_condition": cal.reference,
            "conformal_needs_maintenance_check": conformal,
            "heldout_normal_percentiles": estimate["heldout_clip_score_percentiles"],
        },
    )
    return LevelFit(cal, thresholds)
