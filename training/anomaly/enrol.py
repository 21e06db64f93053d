"""`python -m training enrol`: add an operating condition to an anomaly bundle from a folder
of healthy clips (service.models.conditions does the work, as the service's API does)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from service.features import load_file
from service.models.bundle import Manifest
from service.models.conditions import measure, write_enrolled
from service.models.runtimes import AnomalyRuntime, open_runtime
from service.models.verdict import ConditionCalibration
from training.datasets import AUDIO_EXTS, DatasetError


def enrol_folder(
    model: Path, data: Path, condition: str
) -> tuple[Manifest, ConditionCalibration, float]:
    """Every audio file directly in `data` (healthy clips of the new condition) → the
    bundle at `model` rewritten as a new version with that condition, its calibration,
    and the seconds it took. Raises DatasetError (unreadable or too few clips, not an
    anomaly bundle) or service InvalidRequest; the bundle is untouched then."""
    start = time.perf_counter()
    runtime = open_runtime(Path(model))
    if not isinstance(runtime, AnomalyRuntime) or not runtime.ready:
        raise DatasetError(
            f"{model} is not a loadable anomaly bundle: {runtime.reason or runtime.kind}"
        )
    if not Path(data).is_dir():
        raise DatasetError(f"{data} is not a folder")
    files = sorted(p for p in Path(data).iterdir() if p.suffix.lower() in AUDIO_EXTS)
    assert runtime.manifest is not None
    latents: list[np.ndarray] = []
    bad = []
    for path in files:
        try:
            latents.append(runtime.latents(load_file(str(path), runtime.manifest.features).images))
        except Exception as e:
            bad.append(f"{path.name} ({e})")
    if bad:
        raise DatasetError(f"{len(bad)} unreadable file(s): " + "; ".join(bad[:10]))
    measured, offset = measure(runtime, condition, latents)
    manifest = write_enrolled(runtime, measured, offset)
    return manifest, measured, time.perf_counter() - start
