"""Labelled audio for classifiers: find the clips, their label, split and groups.

Two layouts:
- one folder per class: `DIR/train/<class>/*.wav`, optional `DIR/test/<class>/*.wav`
- labels from file names (`--label-pattern`): every audio file under DIR; the
  regex, searched in the file name (extension included), must have a named
  group `label`. Other named groups (e.g. `speaker`) become evaluation groups.

A clip is in the test split if it lies under `DIR/test/` or its file name
matches `--test-pattern` (searched, e.g. `_[0-4]\\.wav$` for the fsdd takes
0-4). `--group-pattern` adds evaluation groups to either layout.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from service.features import FeatureParams, load_file
from training.datasets import AUDIO_EXTS, DatasetError

Split = Literal["train", "test"]


@dataclass(frozen=True)
class LabelledClip:
    path: Path
    label: str
    split: Split
    groups: dict[str, str] = field(default_factory=dict)  # e.g. {"speaker": "george"}


def compile_pattern(
    pattern: str | None, option: str, need_label: bool = False
) -> re.Pattern | None:
    """Compile a user regex; a bad one is a DatasetError naming the option."""
    if pattern is None:
        return None
    try:
        rx = re.compile(pattern)
    except re.error as e:
        raise DatasetError(f"invalid {option} {pattern!r}: {e}") from e
    if need_label and "label" not in rx.groupindex:
        raise DatasetError(f"{option} {pattern!r} needs a named group (?P<label>...)")
    return rx


def label_key(label: str) -> tuple[int, int, str]:
    """Sort key: numeric labels by value ("2" before "10"), then the rest alphabetically."""
    return (0, int(label), label) if label.isdigit() else (1, 0, label)


def _audio_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in AUDIO_EXTS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _groups(name: str, rxs: list[re.Pattern]) -> dict[str, str]:
    out: dict[str, str] = {}
    for rx in rxs:
        m = rx.search(name)
        if m:
            out.update({k: v for k, v in m.groupdict().items() if k != "label" and v is not None})
    return out


def _by_folder(data_dir: Path) -> list[tuple[Path, str]]:
    """DIR/{train,test}/<class>/* → (path, class) pairs."""
    train_dir = data_dir / "train"
    if not train_dir.is_dir():
        raise DatasetError(
            f"no audio files under {data_dir}: expected {data_dir}/train/<class>/*.wav, "
            "or pass --label-pattern to read labels from file names"
        )
    pairs: list[tuple[Path, str]] = []
    for split_dir in (train_dir, data_dir / "test"):
        if not split_dir.is_dir():
            continue
        loose = [
            p.name for p in split_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_EXTS
        ]
        if loose:
            raise DatasetError(
                f"{len(loose)} audio file(s) directly in {split_dir} (e.g. {loose[0]}): put each "
                f"class in its own folder {split_dir}/<class>/, or pass --label-pattern"
            )
        for class_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
            if class_dir.name.startswith("."):
                continue
            files = _audio_files(class_dir)
            if not files and split_dir == train_dir:
                raise DatasetError(f"class folder {class_dir} has no audio files")
            pairs += [(p, class_dir.name) for p in files]
    return pairs


def _by_name(data_dir: Path, label_rx: re.Pattern) -> list[tuple[Path, str]]:
    """Every audio file under DIR → (path, label from the name)."""
    pairs, unmatched = [], []
    for p in _audio_files(data_dir):
        m = label_rx.search(p.name)
        if m and m.group("label"):
            pairs.append((p, m.group("label")))
        else:
            unmatched.append(p.name)
    if unmatched:
        raise DatasetError(
            f"{len(unmatched)} file(s) do not match --label-pattern {label_rx.pattern!r} "
            f"(e.g. {unmatched[0]})"
        )
    return pairs


def discover_labelled(
    data_dir: Path,
    label_pattern: str | None = None,
    test_pattern: str | None = None,
    group_pattern: str | None = None,
) -> list[LabelledClip]:
    """All labelled clips of data_dir (train and test). Raises DatasetError in one line."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir} is not a folder")
    label_rx = compile_pattern(label_pattern, "--label-pattern", need_label=True)
    test_rx = compile_pattern(test_pattern, "--test-pattern")
    group_rx = compile_pattern(group_pattern, "--group-pattern")
    if label_rx is not None:
        pairs = _by_name(data_dir, label_rx)
        if not pairs:
            raise DatasetError(f"no audio files under {data_dir}")
    else:
        pairs = _by_folder(data_dir)
    group_rxs = [rx for rx in (label_rx, group_rx) if rx is not None]
    clips = []
    for path, label in pairs:
        in_test_dir = path.relative_to(data_dir).parts[0] == "test"
        split: Split = "test" if in_test_dir or (test_rx and test_rx.search(path.name)) else "train"
        clips.append(LabelledClip(path, label, split, _groups(path.name, group_rxs)))
    check_classes(clips)
    return clips


def discover_extra(extra_dir: Path | None, label_pattern: str | None) -> list[LabelledClip]:
    """Fit-only clips (`--extra-train`): every audio file under extra_dir, labelled as the
    main data is (by label_pattern, or by class folder), all in the train split; [] for None."""
    if extra_dir is None:
        return []
    extra_dir = Path(extra_dir)
    if not extra_dir.is_dir():
        raise DatasetError(f"--extra-train: {extra_dir} is not a folder")
    label_rx = compile_pattern(label_pattern, "--label-pattern", need_label=True)
    pairs = _by_name(extra_dir, label_rx) if label_rx is not None else _by_folder(extra_dir)
    if not pairs:
        raise DatasetError(f"--extra-train: no labelled audio under {extra_dir}")
    return [LabelledClip(path, label, "train") for path, label in pairs]


def check_classes(clips: list[LabelledClip]) -> None:
    """At least two classes with two training clips each; test labels must be known."""
    counts = Counter(c.label for c in clips if c.split == "train")
    if not counts:
        raise DatasetError("no training clips: every file fell into the test split")
    if len(counts) < 2:
        raise DatasetError(f"a classifier needs at least 2 classes, found {sorted(counts)}")
    few = sorted((lab for lab, n in counts.items() if n < 2), key=label_key)
    if few:
        raise DatasetError(f"class(es) with fewer than 2 training clips: {', '.join(few)}")
    unknown = sorted({c.label for c in clips if c.split == "test"} - set(counts), key=label_key)
    if unknown:
        raise DatasetError(f"test class(es) with no training clips: {', '.join(unknown)}")


def ordered_labels(clips: list[LabelledClip]) -> list[str]:
    """The class labels in model-output order."""
    return sorted({c.label for c in clips}, key=label_key)


def split_validation(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of class indices y (n,) → (fit indices, validation indices).

    Every class keeps at least one clip for fitting and gives at least one to validation.
    """
    rng = np.random.default_rng(seed)
    fit_idx, val_idx = [], []
    for k in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == k))
        n_val = min(max(1, round(len(members) * fraction)), len(members) - 1)
        val_idx.append(members[:n_val])
        fit_idx.append(members[n_val:])
    return np.sort(np.concatenate(fit_idx)), np.sort(np.concatenate(val_idx))


def group_folds(clips: list[LabelledClip], key: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Leave-one-group-out folds over the group `key` (e.g. "speaker"): for every value, in
    label_key order, (value, indices of the clips of all other values, indices of the clips
    of this one). Every clip must have the group, there must be two values or more, and every
    fold must train on every class. Raises DatasetError in one line."""
    missing = [c.path.name for c in clips if key not in c.groups]
    if missing:
        raise DatasetError(
            f"{len(missing)} clip(s) have no group {key!r} (e.g. {missing[0]}): add a named "
            f"group (?P<{key}>...) to --label-pattern or --group-pattern"
        )
    values = np.array([c.groups[key] for c in clips])
    distinct = sorted(set(values.tolist()), key=label_key)
    if len(distinct) < 2:
        raise DatasetError(f"leave-one-{key}-out needs two {key}s or more, found {distinct}")
    labels = np.array([c.label for c in clips])
    folds = []
    for value in distinct:
        held = values == value
        unseen = sorted(set(labels.tolist()) - set(labels[~held].tolist()), key=label_key)
        if unseen:
            raise DatasetError(
                f"without {key} {value!r} no clip is left of class(es) {', '.join(unseen)}"
            )
        folds.append((str(value), np.flatnonzero(~held), np.flatnonzero(held)))
    return folds


def load_images(clips: list[LabelledClip], params: FeatureParams, desc: str) -> np.ndarray:
    """Model inputs for every clip via service.features → (n, height, width) float32.

    Raises DatasetError listing the unreadable files.
    """
    images, bad = [], []
    for clip in tqdm(clips, desc=desc, unit="clip", leave=False):
        try:
            images.append(load_file(str(clip.path), params).image)
        except Exception as e:
            bad.append(f"{clip.path.name} ({e})")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; … {len(bad) - 5} more" if len(bad) > 5 else "")
        raise DatasetError(f"{len(bad)} unreadable file(s): {shown}")
    return np.stack(images).astype(np.float32)
