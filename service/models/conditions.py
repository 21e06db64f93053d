"""Enrol an operating condition into an anomaly bundle without refitting anything learned:
the condition's mean latent and its healthy spread, from ≥ MIN_ENROL_CLIPS healthy clips,
written as a new bundle version (`python -m training enrol` and
`POST /v1/models/{name}/conditions/{condition}` both call `enrol`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import InvalidRequest
from service.models.bundle import (
    ANOMALY_ARRAYS,
    CONDITION_OFFSETS,
    MANIFEST,
    Manifest,
    window_scores,
    write_bundle,
)
from service.models.runtimes import AnomalyRuntime
from service.models.verdict import ConditionCalibration, fit_tails, spread

MIN_ENROL_CLIPS = 10
CONDITION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_name(name: str) -> None:
    if not CONDITION_NAME.match(name):
        raise InvalidRequest(
            f"condition name {name[:80]!r} must be 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )


def measure(
    runtime: AnomalyRuntime, name: str, clip_latents: list[np.ndarray]
) -> tuple[ConditionCalibration, np.ndarray]:
    """Each healthy clip's window latents (n_i, d) → the condition's calibration and its
    offset (d,) from the detector's mean. Its spread is measured leave-one-clip-out (each
    clip scored against the mean of the others), as the fit measures its conditions on
    recordings held out of the detector. Raises InvalidRequest with too few clips."""
    cal = runtime.manifest.calibration if runtime.manifest else None
    if cal is None:
        raise InvalidRequest(
            f"model {runtime.name!r} predates operating conditions; refit it to enrol one"
        )
    check_name(name)
    if len(clip_latents) < MIN_ENROL_CLIPS:
        raise InvalidRequest(
            f"enrolling a condition needs at least {MIN_ENROL_CLIPS} healthy clips, "
            f"got {len(clip_latents)}"
        )
    pca_mean = runtime.arrays["pca_mean"].astype(np.float64)
    sums = np.stack([z.sum(axis=0, dtype=np.float64) for z in clip_latents])
    counts = np.array([len(z) for z in clip_latents])
    total, n_total = sums.sum(axis=0), counts.sum()
    raw = []
    for i, z in enumerate(clip_latents):
        others = (total - sums[i]) / (n_total - counts[i])
        offset = (others - pca_mean)[None].astype(np.float32)
        raw.append(
            window_scores(z, runtime.arrays, runtime.parts, runtime.blocks, offsets=offset)[:, 0]
        )
    loc, scale = spread(np.concatenate(raw))
    condition = ConditionCalibration(
        name=name,
        clips=len(clip_latents),
        groups=len(clip_latents),
        loc=loc,
        scale=scale,
        tails=fit_tails(raw, cal.stretch_windows),
        source="enrolled",
    )
    offset = (total / n_total - pca_mean).astype(np.float32)
    return condition, offset


def write_enrolled(
    runtime: AnomalyRuntime, condition: ConditionCalibration, offset: np.ndarray
) -> Manifest:
    """Write the runtime's bundle again, as a new version, with `condition` added (or
    replacing the one of that name). Atomic: the served folder is swapped whole, and on
    any failure it is left as it was."""
    m = runtime.manifest
    assert m is not None and m.calibration is not None and runtime.offsets is not None
    names = m.calibration.condition_names()
    conditions = list(m.calibration.conditions)
    offsets = runtime.offsets.copy()
    if condition.name in names:
        i = names.index(condition.name)
        conditions[i], offsets[i] = condition, offset
    else:
        conditions.append(condition)
        offsets = np.vstack([offsets, offset[None]])
    calibration = m.calibration.model_copy(update={"conditions": conditions})
    bundle = runtime.bundle_dir
    arrays = {k: np.load(bundle / f"{k}.npy", allow_pickle=False) for k in ANOMALY_ARRAYS}
    arrays[CONDITION_OFFSETS] = offsets
    array_files = {f"{k}.npy" for k in arrays}
    files = {
        f: (bundle / f).read_bytes() for f in m.files if f not in array_files and f != MANIFEST
    }
    history: list[Any] = list(m.training.get("enrolled", []))
    history.append({"condition": condition.name, "clips": condition.clips, "from": m.version})
    fields = m.model_dump(exclude={"schema_version", "version", "created_at", "files"})
    fields.update(
        calibration=calibration,
        training={**m.training, "enrolled": history},
        thresholds=m.thresholds,
        features=m.features,
    )
    return write_bundle(Path(bundle), fields, arrays=arrays, files=files)
