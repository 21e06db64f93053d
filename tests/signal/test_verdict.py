"""The level's arithmetic (service.models.verdict) on known distributions: the worst stretch,
the length calibration that makes a 60-s clip false-alarm as often as a 10-s one, and the
mapping of every condition onto the reference's scale."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from service.models.verdict import (
    ConditionCalibration,
    LevelCalibration,
    RateTails,
    calibrated_score,
    fit_tails,
    fit_worst_tail,
    moving_means,
    nearest_rate,
    reference_limits,
    verdict,
    worst_stretch,
)


def _calibration(conditions: dict[str, tuple[float, float]], stretch: int = 2) -> LevelCalibration:
    """Conditions whose healthy raw window scores are iid normal (mean, sd): tails fitted
    on 4000 healthy windows each, as the fit measures them on held-out recordings."""
    rng = np.random.default_rng(0)
    conds = []
    for name, (mu, sd) in conditions.items():
        clips = [np.abs(rng.normal(mu, sd, 20)) for _ in range(200)]
        conds.append(
            ConditionCalibration(
                name=name, clips=200, loc=mu, scale=1.28 * sd, tails=fit_tails(clips, stretch)
            )
        )
    return LevelCalibration(
        stretch_windows=stretch,
        reference=next(iter(conditions)),
        conditions=conds,
        false_alarm_rate=0.01,
        severe_rate=0.001,
    )


def _threshold(cal: LevelCalibration) -> float:
    full = cal.ref.tails[-1]
    t = float(stats.gamma.isf(cal.false_alarm_rate, full.shape, scale=full.scale))
    assert reference_limits(cal)[0] == pytest.approx(t)
    return t


def test_the_worst_stretch_is_the_highest_mean_of_consecutive_windows() -> None:
    v = np.array([1.0, 1.0, 3.0, 1.0, 2.5, 2.5, 1.0])
    assert moving_means(v, 2) == pytest.approx([1.0, 2.0, 2.0, 1.75, 2.5, 1.75])
    assert worst_stretch(v, 2) == (pytest.approx(2.5), 4, 5)
    assert worst_stretch(v[:1], 2) == (pytest.approx(1.0), 0, 0)  # shorter than a stretch


def test_a_clip_of_one_stretch_under_the_reference_keeps_its_raw_score() -> None:
    cal = _calibration({"a": (1.0, 0.1)})
    assert calibrated_score(1.23, 2, cal.conditions[0], cal) == 1.23


def test_more_windows_lower_the_score_of_the_same_worst_stretch() -> None:
    cal = _calibration({"a": (1.0, 0.1)})
    c = cal.conditions[0]
    scores = [calibrated_score(1.3, n, c, cal) for n in (2, 10, 60, 600)]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]


@pytest.mark.parametrize("windows", [10, 60])
def test_healthy_clips_false_alarm_at_the_stated_rate_whatever_their_length(windows: int) -> None:
    """iid healthy windows: the share of clips at or over the threshold is the stated 1 %
    within Monte-Carlo noise for 10 and 60 windows alike (the raw worst stretch would
    false-alarm far more often in a long clip)."""
    cal = _calibration({"a": (1.0, 0.1)})
    t = _threshold(cal)
    rng = np.random.default_rng(windows)
    raw = np.abs(rng.normal(1.0, 0.1, (4000, windows, 1)))
    alarms = np.mean([verdict(x, cal, (t, 2 * t)).level != "normal" for x in raw])
    assert 0.003 <= alarms <= 0.025, alarms
    uncorrected = np.mean([moving_means(x[:, 0], 2).max() >= t for x in raw])
    if windows == 60:
        assert uncorrected > 3 * alarms


def test_every_condition_false_alarms_equally_on_the_reference_scale() -> None:
    """A condition whose healthy windows sit higher and spread wider (a speed the detector
    knows less well) is mapped onto the reference's scale by its own tails."""
    cal = _calibration({"source": (1.0, 0.1), "target": (2.0, 0.5)})
    t = _threshold(cal)
    rng = np.random.default_rng(1)
    rates = {}
    for name, (mu, sd) in {"source": (1.0, 0.1), "target": (2.0, 0.5)}.items():
        clips = np.abs(rng.normal(mu, sd, (3000, 10)))
        raw = np.stack([clips, clips], axis=2)  # the same windows under either condition
        rates[name] = np.mean([verdict(x, cal, (t, 2 * t), name).level != "normal" for x in raw])
    assert all(0.003 <= r <= 0.03 for r in rates.values()), rates


def test_a_named_condition_is_used_and_otherwise_the_nearest() -> None:
    cal = _calibration({"source": (1.0, 0.1), "target": (2.0, 0.5)})
    raw = np.column_stack([np.full(5, 3.0), np.full(5, 1.2)])  # near target's mean
    assert verdict(raw, cal, (9, 9)).condition == "target"
    assert verdict(raw, cal, (9, 9)).condition_source == "nearest"
    named = verdict(raw, cal, (9, 9), "source")
    assert (named.condition, named.condition_source) == ("source", "request")


def test_a_fault_far_beyond_the_tails_still_scores_high_and_finite() -> None:
    cal = _calibration({"source": (1.0, 0.1), "target": (2.0, 0.5)})
    raw = np.full((30, 2), 500.0)
    for name in ("source", "target"):
        v = verdict(raw, cal, (1.5, 3.0), name)
        assert np.isfinite(v.score) and v.score > 3.0 and v.level == "severe"


def _bursty(rng: np.random.Generator, clips: int, windows: int) -> np.ndarray:
    """Healthy windows through a codec whose artifacts come in bursts (LAME at 24 kbit/s):
    iid around 1.0, and in every clip a run of 2 windows somewhere raised by 0.4."""
    x = np.abs(rng.normal(1.0, 0.1, (clips, windows)))
    start = rng.integers(0, windows - 1, clips)
    for i, s in enumerate(start):
        x[i, s : s + 2] += 0.4
    return x


@pytest.mark.parametrize("with_worst", [False, True])
def test_bursty_codec_copies_are_judged_by_their_worst_stretches(with_worst: bool) -> None:
    """Tails of all stretches dilute a burst among the quiet stretches, so a bursty codec's
    healthy clips false-alarm far beyond the stated 1 %; the gamma of the copies' worst
    stretches (RateTails.worst) brings them back to it, for clips of the copies' length."""
    cal = _calibration({"a": (1.0, 0.1)})
    rng = np.random.default_rng(3)
    copies = list(_bursty(rng, 200, 20))
    rated = RateTails(
        format="mp3",
        stream="mp3",
        kbps=24.0,
        fitted=False,
        tails=fit_tails(copies, cal.stretch_windows),
        worst=fit_worst_tail(copies, cal.stretch_windows) if with_worst else None,
    )
    c = cal.conditions[0].model_copy(update={"rate_tails": [rated]})
    cal = cal.model_copy(update={"conditions": [c]})
    t = _threshold(cal)
    unseen = _bursty(np.random.default_rng(4), 2000, 20)[..., None]
    levels = [verdict(x, cal, (t, 2 * t), codec="mp3", kbps=23.0).level for x in unseen]
    alarms = np.mean([level != "normal" for level in levels])
    if with_worst:
        assert alarms <= 0.03, alarms
        assert rated.worst is not None and rated.worst.windows == 20
        faulty = unseen[0].copy()
        faulty[5:9] += 2.0
        assert verdict(faulty, cal, (t, 2 * t), codec="mp3", kbps=23.0).level != "normal"
    else:
        assert alarms > 0.2, alarms  # the defect the worst tail mends


def test_a_worst_tail_needs_three_copies() -> None:
    x = [np.array([1.0, 1.2, 0.9])] * 2
    assert fit_worst_tail(x, 2) is None
    tail = fit_worst_tail([*x, np.array([1.0, 1.1])], 2)
    assert tail is not None and tail.windows == 3


def _rated(kbps: float, rate: int | None, fitted: bool) -> RateTails:
    tails = fit_tails([np.full(4, kbps)], 2)  # the tails tell the settings apart in the test
    return RateTails(
        format="mp3", stream="mp3", kbps=kbps, sample_rate=rate, fitted=fitted, tails=tails
    )


def test_low_bitrate_tails_are_those_of_the_calibrated_rate_nearest_the_uploads() -> None:
    """A 44.1-kHz mp3 at 48 kbit/s is judged by the 44.1-kHz copies at 48, not by the
    16-kHz ones at 64; at 64 kbit/s and more by the tails the detector was fitted on,
    whatever the rate; a 48-kHz upload by the 44.1-kHz copies; without its rate (or with
    tails that do not record theirs) by the bitrate alone."""
    settings = [
        _rated(128, 16000, True),
        _rated(64, 16000, True),
        _rated(24, 16000, False),
        _rated(32, 16000, False),
        _rated(24, 22050, False),
        _rated(48, 22050, False),
        _rated(32, 44100, False),
        _rated(48, 44100, False),
    ]
    cal = _calibration({"a": (1.0, 0.1)})
    c = cal.conditions[0].model_copy(update={"rate_tails": settings})

    def chosen(kbps: float, rate: int | None) -> tuple[float, int | None]:
        r = nearest_rate(c, "mp3", kbps, "mp3", rate)
        assert r is not None
        return r.kbps, r.sample_rate

    assert chosen(48, 44100) == (48, 44100)
    assert chosen(48, 48000) == (48, 44100)
    assert chosen(32, 44100) == (32, 44100)
    assert chosen(64, 44100) == (64, 16000)
    assert chosen(128, 48000) == (128, 16000)
    assert chosen(48, 16000) == (64, 16000)
    assert chosen(24, 16000) == (24, 16000)
    assert chosen(24, 22050) == (24, 22050)
    assert chosen(32, 24000) == (24, 22050)
    assert chosen(24, 8000) == (24, 16000)
    assert chosen(48, None) == (48, 22050)  # the bitrate alone: the first of the nearest
    old = c.model_copy(
        update={"rate_tails": [r.model_copy(update={"sample_rate": None}) for r in settings]}
    )
    assert nearest_rate(old, "mp3", 48, "mp3", 44100) is not None
