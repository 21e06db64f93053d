"""Files → rows, without Ray: the two steps a job runs on each batch, as Arrow tables.

`prepare_table` decodes and computes features (`service.inputs.prepare_bounded`, the
service's own checks and error codes); `score_table` runs the bundle on every prepared
file's windows at once and writes one output row per file (`OUTPUT_SCHEMA`). A bad file
becomes a row with `error_code`/`error_message` and no score; it never raises.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa

from bulk.limits import Limits
from service.errors import AuscultError, NonFiniteValues, public_message
from service.features import FeatureParams
from service.inputs import InputLimits, SampleBudget, prepare_bounded
from service.models.runtimes import AnomalyRuntime

WINDOW = pa.struct([("start_s", pa.float64()), ("end_s", pa.float64()), ("score", pa.float64())])

# One row per file between the two steps: the windows' model inputs as float32 bytes
# (n_windows, height, width), their (start_s, end_s) spans flattened.
PREPARED_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("duration_s", pa.float64()),
        ("n_windows", pa.int32()),
        ("images", pa.large_binary()),
        ("spans", pa.list_(pa.float64())),
        ("format", pa.string()),
        ("bandwidth_hz", pa.float64()),
        ("bitrate_kbps", pa.float64()),
        ("stream", pa.string()),
        ("sample_rate", pa.int64()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
    ]
)

OUTPUT_SCHEMA = pa.schema(
    [
        ("file", pa.string()),
        ("duration_s", pa.float64()),
        ("score", pa.float64()),
        ("level", pa.string()),
        ("windows", pa.list_(WINDOW)),
        ("worst_start_s", pa.float64()),
        ("worst_end_s", pa.float64()),
        ("condition", pa.string()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("error_code", pa.string()),
        ("error_message", pa.string()),
        ("warnings", pa.list_(pa.string())),  # codes, as ScoreResult.warnings (low_bandwidth)
    ]
)


def _error(e: Exception) -> tuple[str, str]:
    if isinstance(e, AuscultError):
        return e.code, public_message(e.message)
    # the service would answer 500 here; a job keeps going and says what happened
    return "internal_error", public_message(f"{type(e).__name__}: {e}")


def prepare_table(
    files: list[str], datas: list[bytes], params: FeatureParams, limits: Limits
) -> pa.Table:
    """Each file's bytes → its windows' model inputs, or its error (PREPARED_SCHEMA)."""
    input_limits = InputLimits(limits.max_seconds, limits.min_sample_rate, limits.max_sample_rate)
    cols: dict[str, list] = {name: [] for name in PREPARED_SCHEMA.names}
    for file, data in zip(files, datas, strict=True):
        code = message = None
        duration = images = spans = fmt = bandwidth = kbps = stream = rate = None
        try:
            p = prepare_bounded(data, params, input_limits, SampleBudget(limits.max_samples))
            duration = round(p.duration_s, 4) if p.duration_s is not None else None
            images = np.ascontiguousarray(p.images, np.float32)
            spans = None if p.spans is None else [t for span in p.spans for t in span]
            fmt, bandwidth, kbps, stream = p.format, p.bandwidth_hz, p.bitrate_kbps, p.stream
            rate = p.sample_rate
        except Exception as e:
            code, message = _error(e)
        cols["file"].append(file)
        cols["duration_s"].append(duration)
        cols["n_windows"].append(0 if images is None else len(images))
        cols["images"].append(None if images is None else images.tobytes())
        cols["spans"].append(spans)
        cols["format"].append(fmt)
        cols["bandwidth_hz"].append(bandwidth)
        cols["bitrate_kbps"].append(kbps)
        cols["stream"].append(stream)
        cols["sample_rate"].append(rate)
        cols["error_code"].append(code)
        cols["error_message"].append(message)
    return pa.Table.from_pydict(cols, schema=PREPARED_SCHEMA)


def score_table(runtime: AnomalyRuntime, prepared: pa.Table) -> pa.Table:
    """PREPARED_SCHEMA rows → OUTPUT_SCHEMA rows, in order. Every prepared file's windows
    go through the model in one run (as the service's batch endpoint does with a request's
    files); a non-finite score is the file's `non_finite_values` error, never a score."""
    m = runtime.manifest
    assert m is not None and m.thresholds is not None
    h, w = m.features.height, m.features.width
    rows = prepared.to_pylist()
    good = [r for r in rows if r["error_code"] is None]
    blocks = [np.frombuffer(r["images"], np.float32).reshape(r["n_windows"], h, w) for r in good]
    scores: list[np.ndarray] = []
    if blocks:
        out = runtime.score(np.concatenate(blocks))
        scores = np.split(out, np.cumsum([len(b) for b in blocks])[:-1])
    score_of = {id(r): s for r, s in zip(good, scores, strict=True)}
    cols: dict[str, list] = {name: [] for name in OUTPUT_SCHEMA.names}
    for r in rows:
        score = level = windows = worst_start = worst_end = condition = warnings = None
        code, message = r["error_code"], r["error_message"]
        if code is None:
            raw = score_of[id(r)]
            v = runtime.verdict(
                raw,
                fmt=r["format"],
                bandwidth_hz=r["bandwidth_hz"],
                bitrate_kbps=r["bitrate_kbps"],
                stream=r["stream"],
                sample_rate=r["sample_rate"],
            )
            if math.isfinite(v.score) and np.isfinite(raw).all():
                score, level = v.score, v.level
                warnings = [w.code for w in v.warnings]
                condition = v.condition if runtime.conditions else None
                spans = r["spans"]
                windows = None
                if spans is not None:
                    starts, ends = spans[::2], spans[1::2]
                    windows = [
                        {"start_s": round(a, 3), "end_s": round(b, 3), "score": float(w)}
                        for a, b, w in zip(starts, ends, v.window_scores, strict=True)
                    ]
                    worst_start, worst_end = (
                        round(starts[v.worst[0]], 3),
                        round(ends[v.worst[1]], 3),
                    )
            else:
                e = NonFiniteValues("the model's score for this input is not a finite number")
                code, message = e.code, e.message
        cols["file"].append(r["file"])
        cols["duration_s"].append(r["duration_s"] if code is None else None)
        cols["score"].append(score)
        cols["level"].append(level)
        cols["windows"].append(windows)
        cols["worst_start_s"].append(worst_start)
        cols["worst_end_s"].append(worst_end)
        cols["condition"].append(condition)
        cols["model"].append(runtime.name)
        cols["model_version"].append(m.version)
        cols["error_code"].append(code)
        cols["error_message"].append(message)
        cols["warnings"].append(warnings)
    return pa.Table.from_pydict(cols, schema=OUTPUT_SCHEMA)


UNREADABLE = "unreadable_file"  # bulk only: the service never reads files


def unreadable(files: list[str]) -> dict[str, str]:
    """Those of `files` that cannot be read now (gone since they were listed, no
    permission, not a regular file): path → error message. A stat each, no reading."""
    out = {}
    for path in files:
        if not os.path.isfile(path):
            out[path] = "the file is gone or is not a regular file"
        elif not os.access(path, os.R_OK):
            out[path] = "no permission to read the file"
    return out


def error_rows(errors: dict[str, str], model: str, version: str) -> pa.Table:
    """OUTPUT_SCHEMA rows for files that never reached the pipeline, in `errors`' order."""
    n = len(errors)
    return pa.Table.from_pydict(
        {
            "file": list(errors),
            "duration_s": [None] * n,
            "score": [None] * n,
            "level": [None] * n,
            "windows": [None] * n,
            "worst_start_s": [None] * n,
            "worst_end_s": [None] * n,
            "condition": [None] * n,
            "model": [model] * n,
            "model_version": [version] * n,
            "error_code": [UNREADABLE] * n,
            "error_message": list(errors.values()),
            "warnings": [None] * n,
        },
        schema=OUTPUT_SCHEMA,
    )
