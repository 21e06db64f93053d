"""What file names carry, as an auxiliary training signal for the encoder (`fit --aux-labels`).

DCASE names read `section_XX_{source|target}_{train|test}_{normal|anomaly}_NNNN_{attributes}`.
A clip's label is its section, domain and attributes (`rpm_1500`, `bar_3`, `digit_0_george_12`)
with what varies from clip to clip taken away: while some label has fewer than
MIN_LABEL_CLIPS clips, the attribute token position whose removal puts the most clips into
labels of MIN_LABEL_CLIPS or more is dropped (on a tie the one with the most distinct values:
a take number, an index), as long as a drop adds any. So `digit_0_george_12` becomes
`digit_0_george` (the speaker) and `rpm_1500` stays. The autoencoder is then also trained
to tell these labels apart from its last conv block (training.anomaly.autoencoder.fit),
which shapes the latent the detector scores; the classifier head is not part of the
exported encoder.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from training.datasets import Clip

AuxMode = Literal["auto", "off"]
AUX_MODES: tuple[str, ...] = ("auto", "off")
MIN_LABEL_CLIPS = 4  # a label with fewer training clips is not classified
_STRUCTURE = re.compile(r"^(?:section|id)_\d+_(?:source|target)_(?:train|test)_")
_INDEX = re.compile(r"(?:^|_)(?:normal|anomaly)_\d+(?:_|$)")


@dataclass(frozen=True)
class AuxLabels:
    """Per training clip its class index (-1: not classified), and the class names."""

    names: tuple[str, ...]
    clip_class: tuple[int, ...]

    def summary(self) -> dict[str, int]:
        """{label: training clips} for the manifest."""
        return {n: self.clip_class.count(i) for i, n in enumerate(self.names)}


def attribute_tokens(clip: Clip) -> list[str]:
    """The attribute tokens of a DCASE-style name (after `normal|anomaly_NNNN`); none for a
    name without the DCASE structure."""
    stem = clip.path.stem.lower()
    if not _STRUCTURE.search(stem):
        return []
    m = _INDEX.search(stem)
    return [t for t in stem[m.end() :].split("_") if t] if m else []


def clip_labels(clips: list[Clip], min_clips: int = MIN_LABEL_CLIPS) -> list[str]:
    """Each clip's label: section, domain and the attribute tokens that stay (see the module
    docstring); clips whose names carry no DCASE structure all get the one label "default"."""
    tokens = [attribute_tokens(c) for c in clips]
    width = max((len(t) for t in tokens), default=0)
    rows = [t + [""] * (width - len(t)) for t in tokens]
    kept = list(range(width))
    structured = [bool(_STRUCTURE.search(c.path.stem.lower())) for c in clips]

    def labels(positions: list[int]) -> list[str]:
        return [
            "_".join([f"section_{c.section}_{c.domain}", *(r[p] for p in positions if r[p])])
            if s
            else "default"
            for c, r, s in zip(clips, rows, structured, strict=True)
        ]

    def covered(positions: list[int]) -> int:
        """Clips in labels of min_clips or more."""
        counts = Counter(labels(positions))
        return sum(n for n in counts.values() if n >= min_clips)

    while kept and covered(kept) < len(clips):
        # the drop that covers the most clips; on a tie the position with the most distinct
        # values (an index or a take), then the later one
        best = max(
            kept,
            key=lambda p: (covered([q for q in kept if q != p]), len({r[p] for r in rows}), p),
        )
        if covered([q for q in kept if q != best]) <= covered(kept):
            break
        kept.remove(best)
    return labels(kept)


def choose(mode: AuxMode, clips: list[Clip], min_clips: int = MIN_LABEL_CLIPS) -> AuxLabels | None:
    """The labels to train on, or None: off, or fewer than two labels with `min_clips`
    clips each ("auto")."""
    if mode == "off":
        return None
    if mode != "auto":
        raise ValueError(f"aux labels {mode!r}: use one of {', '.join(AUX_MODES)}")
    labels = clip_labels(clips, min_clips)
    names = tuple(sorted(x for x in set(labels) if labels.count(x) >= min_clips))
    if len(names) < 2:
        return None
    index = {n: i for i, n in enumerate(names)}
    return AuxLabels(names, tuple(index.get(x, -1) for x in labels))
