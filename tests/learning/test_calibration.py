"""How `fit` splits recordings for the cross-fit and names conditions (no training here)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from training.anomaly.calibration import (
    assign_folds,
    condition_of,
    group_of,
    names_carry_conditions,
)
from training.datasets import parse_name


def _clip(name: str):  # type: ignore[no-untyped-def]
    return parse_name(Path(name), "train", "train")


def test_a_group_pattern_keeps_each_session_in_one_fold() -> None:
    names = [f"pump_u{u}_take{t}.wav" for u in range(6) for t in range(5)]
    rx = re.compile(r"_(u\d+)_")
    groups = [group_of(_clip(n), rx) for n in names]
    assert groups[:5] == ["u0"] * 5 and len(set(groups)) == 6
    folds = assign_folds(groups, ["default"] * len(groups), seed=0)
    for g in set(groups):
        assert len({f for f, h in zip(folds, groups, strict=True) if h == g}) == 1
    assert len(set(folds)) == 6  # fewer groups than MAX_FOLDS: one fold each
    # without a pattern every file is its own group
    assert group_of(_clip(names[0]), None) == names[0]


def test_every_condition_is_dealt_across_the_folds() -> None:
    names = [f"section_00_source_train_normal_{i:04d}_a.wav" for i in range(40)]
    names += [f"section_00_target_train_normal_{i:04d}_b.wav" for i in range(10)]
    clips = [_clip(n) for n in names]
    assert names_carry_conditions(clips)
    conds = [condition_of(c, True) for c in clips]
    assert set(conds) == {"section_00_source", "section_00_target"}
    folds = assign_folds([c.path.name for c in clips], conds, seed=0)
    target = np.array(conds) == "section_00_target"
    # 10 target recordings in 10 folds: each fit keeps 9 of them
    assert sorted(folds[target]) == list(range(10))
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 1


def test_a_flat_folder_without_dcase_names_is_one_condition() -> None:
    clips = [_clip(f"fan-{i}.wav") for i in range(4)]
    assert not names_carry_conditions(clips)
    assert {condition_of(c, False) for c in clips} == {"default"}
