"""The job on Ray Data: read files → prepare (tasks) → score (actor pool) → one Parquet file.

Local by default (`ray.init(num_cpus=N)` on this machine); with an address the same code
runs on an existing cluster. The bundle travels through Ray's object store, so workers
need the package installed but not the bundle folder; the input files must be readable
at the same path on every node (a shared mount), as with any Ray Data read.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bulk.limits import Limits
from bulk.rows import OUTPUT_SCHEMA, error_rows, prepare_table, score_table, unreadable
from service.errors import BundleError
from service.features import FeatureParams
from service.models.bundle import read_manifest
from service.models.runtimes import AnomalyRuntime
from service.serving.process import keep_freed_memory, limit_native_threads

# Ray must not phone home (usage statistics); set before ray is imported.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


class JobError(Exception):
    """The job cannot start (bad bundle, unreachable cluster); the message says why."""


@dataclass
class Summary:
    """What a job did; `seconds` is the pipeline's wall time, Ray's start-up apart."""

    files: int = 0
    levels: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    ray_start_s: float = 0.0

    @property
    def clips_per_s(self) -> float:
        return self.files / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        levels = ", ".join(f"{k} {v}" for k, v in sorted(self.levels.items())) or "none"
        errors = ", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"
        return [
            f"files: {self.files} in {self.seconds:.1f} s ({self.clips_per_s:.1f} clips/s; "
            f"Ray start-up {self.ray_start_s:.1f} s)",
            f"levels: {levels}",
            f"errors by code: {errors}",
        ]


def read_bundle_files(bundle_dir: Path) -> dict[str, bytes]:
    """The bundle's manifest and the files it lists, checked here once (JobError if not an
    anomaly bundle that loads), to be shipped to the workers as bytes."""
    try:
        manifest = read_manifest(bundle_dir)
    except BundleError as e:
        raise JobError(f"{bundle_dir}: {e}") from e
    if manifest.kind != "anomaly":
        raise JobError(f"{bundle_dir} is a {manifest.kind} bundle; bulk scores anomaly bundles")
    runtime = AnomalyRuntime(bundle_dir, manifest)
    runtime.load()
    if not runtime.ready:
        raise JobError(f"{bundle_dir}: {runtime.reason}")
    names = ["manifest.json", *manifest.files]
    return {n: (bundle_dir / n).read_bytes() for n in names if (bundle_dir / n).is_file()}


class ModelActor:
    """One onnxruntime session per actor: the bundle written to a private folder (named
    as the bundle, the model's name) and loaded with the service's AnomalyRuntime."""

    def __init__(self, name: str, files: dict[str, bytes], threads: int = 1) -> None:
        keep_freed_memory()  # as the service does: a clip's arrays reuse freed pages
        self.tmp = tempfile.TemporaryDirectory(prefix="auscult-bulk-")
        bundle_dir = Path(self.tmp.name) / name
        bundle_dir.mkdir()
        for fname, data in files.items():
            (bundle_dir / fname).write_bytes(data)
        self.runtime = AnomalyRuntime(bundle_dir, threads=threads)
        self.runtime.load()
        if not self.runtime.ready:
            raise RuntimeError(f"bundle {name} did not load on this worker: {self.runtime.reason}")

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_table(self.runtime, batch)


def _prepare(batch: pa.Table, params: dict[str, Any], limits: Limits) -> pa.Table:
    return prepare_table(
        batch["path"].to_pylist(), batch["bytes"].to_pylist(), FeatureParams(**params), limits
    )


def start_ray(address: str | None, num_cpus: int | None) -> tuple[float, bool]:
    """Connect to `address` (auto, HOST:PORT or ray://HOST:PORT) or start a local Ray with
    `num_cpus` (None: all); a Ray already started in this process is used as it is.
    Returns the seconds it took and whether this call started or connected it."""
    import ray

    start = time.perf_counter()
    if ray.is_initialized():
        return 0.0, False
    # one BLAS thread per worker process, as in the service (and so the same sums): a
    # local Ray's workers inherit this environment
    limit_native_threads()
    try:
        if address:  # a cluster's own settings stand (Ray Client refuses most others)
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise JobError(f"could not start or reach Ray at {address or 'local'}: {e}") from e
    return time.perf_counter() - start, True


def score_files(
    bundle_dir: Path,
    files: list[str],
    out: Path,
    *,
    limits: Limits | None = None,
    bundle: dict[str, bytes] | None = None,
    batch_size: int = 32,
    actors: int | None = None,
    ordered: bool = True,
    progress: Callable[[int], None] | None = None,
) -> Summary:
    """Score `files` with the bundle on the Ray this process is connected to (`start_ray`)
    and write one Parquet file `out` (OUTPUT_SCHEMA, rows in the order of `files` unless
    not `ordered`), atomically. `bundle`: the folder's files as `read_bundle_files` gives
    them (read here when None). `actors`: model actors, one per CPU by default (never more
    than batches)."""
    import ray
    import ray.data

    bundle_dir = Path(bundle_dir)
    bundle = bundle or read_bundle_files(bundle_dir)
    manifest = read_manifest(bundle_dir)
    limits = limits or Limits.service_defaults()
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = ordered  # rows in the order of `files`
    ctx.enable_progress_bars = False  # the caller's own bar counts files
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if actors is None:
        actors = max(1, int(ray.cluster_resources().get("CPU", 1)))

    start = time.perf_counter()
    # A file that cannot be read would fail Ray's read task, and with it the job: such
    # files become error rows here, in their place among the others.
    missing = unreadable(files)
    readable = [f for f in files if f not in missing]
    version = manifest.version
    summary = Summary()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        with pq.ParquetWriter(partial, OUTPUT_SCHEMA) as writer:
            ahead = iter(files)  # the unreadable files due before the next scored row

            def write(table: pa.Table) -> None:
                writer.write_table(table)
                summary.files += table.num_rows
                for level in table["level"].to_pylist():
                    if level is not None:
                        summary.levels[level] += 1
                for code in table["error_code"].to_pylist():
                    if code is not None:
                        summary.errors[code] += 1
                if progress is not None:
                    progress(table.num_rows)

            def due_before(path: str | None) -> dict[str, str]:
                due = {}
                for f in ahead:
                    if f == path:
                        break
                    if f in missing:
                        due[f] = missing[f]
                return due

            for table in _scored(
                bundle_dir, bundle, manifest, readable, limits, actors, batch_size
            ):
                table = table.cast(OUTPUT_SCHEMA)
                if not (missing and ordered):
                    write(table)
                    continue
                first = 0  # the first row of `table` not written yet
                for i, path in enumerate(table["file"].to_pylist()):
                    due = due_before(path)
                    if due:
                        if i > first:
                            write(table.slice(first, i - first))
                        write(error_rows(due, bundle_dir.name, version))
                        first = i
                write(table.slice(first))
            rest = due_before(None) if ordered else missing
            if rest:
                write(error_rows(rest, bundle_dir.name, version))
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _scored(
    bundle_dir: Path,
    bundle: dict[str, bytes],
    manifest: Any,
    files: list[str],
    limits: Limits,
    actors: int,
    batch_size: int,
) -> Iterator[pa.Table]:
    """OUTPUT_SCHEMA-like tables for `files`, from Ray Data (nothing for no files)."""
    import ray.data

    if not files:
        return
    # Reading takes no CPU slot (with one CPU the model actor holds it, and the reads that
    # feed it must still run; decoding is fused into the actors' batches), so the read
    # tasks in flight are bounded instead. One read task per model batch: Ray's default of
    # a few files per task costs more in scheduling than the reading does.
    blocks = max(1, -(-len(files) // batch_size))
    ds = ray.data.read_binary_files(
        files,
        include_paths=True,
        num_cpus=0,
        concurrency=min(actors, blocks),
        override_num_blocks=blocks,
    )
    ds = ds.map_batches(
        _prepare,
        fn_kwargs={"params": manifest.features.model_dump(), "limits": limits},
        batch_format="pyarrow",
        batch_size=batch_size,
    )
    ds = ds.map_batches(
        ModelActor,
        fn_constructor_args=(bundle_dir.name, bundle),
        batch_format="pyarrow",
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=min(actors, blocks)),
    )
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def eprint(*lines: str) -> None:
    for line in lines:
        print(line, file=sys.stderr)
