"""Bulk scoring benchmark: `python -m bulk` on a local Ray with 1 and 2 CPUs against the
service's batch endpoint on the same machine, on the same 10-s clips, plus Ray's start-up.

    .venv/bin/python bench/bulk.py               # 2,000 clips (~8 min on 2 busy cores)
    .venv/bin/python bench/bulk.py --n 300       # a shorter run

Figures (see docs/archive/experiments.md, "bulk.py"):
- Ray start-up: `ray.init` of a local Ray (the `python -m bulk` default), seconds;
- 8-clip job: a job of 8 clips right after start-up (worker processes and model actors
  starting, the bundle loading: what every job costs beside `ray.init` and its clips);
- clips/s: N clips over the N-clip job's wall time (files read from disk, Parquet written);
- in-process core: bulk's two steps (bulk/rows.py) in this process on one thread, no Ray;
- HTTP clips/s: the same clips as POST /v1/models/NAME/score/batch requests of --batch
  files, --concurrency in flight, to `python -m service` started with its defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# bench.serving sets the process up as `python -m service` does (one BLAS thread); a local
# Ray's workers inherit that environment.
from bench.loadgen import LeanClient, build_request  # noqa: E402
from bench.serving import (  # noqa: E402
    ORIGINAL_ENV,
    free_port,
    make_clips,
    multipart,
    start_server,
    stop_server,
)

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def write_clips(n: int, seed: int, folder: Path) -> list[Path]:
    """n different 10-s 16-kHz WAV clips (bench/serving.py's generator) in folder."""
    paths = []
    for i, data in enumerate(make_clips(n, 10.0, seed)):
        path = folder / f"clip-{i:05d}.wav"
        path.write_bytes(data)
        paths.append(path)
    return paths


def bench_bulk(model: Path, files: list[Path], cpus: int, out: Path) -> dict[str, float]:
    """One local Ray of `cpus` CPUs: its start-up, a job of 8 clips (what any job costs
    beside its clips), then the job over all files."""
    from bulk.pipeline import score_files, start_ray, stop_ray

    names = [str(p) for p in files]
    ray_s, _ = start_ray(None, cpus)
    try:
        first = score_files(model, names[:8], out)
        job = score_files(model, names, out)
    finally:
        stop_ray()
    if job.errors or job.files != len(files):
        raise RuntimeError(f"bulk scored {job.files} files with errors {dict(job.errors)}")
    return {
        "ray_start_s": ray_s,
        "small_job_s": first.seconds,
        "job_s": job.seconds,
        "clips_per_s": job.clips_per_s,
    }


def bench_core(model: Path, files: list[Path]) -> float:
    """Clips/s of bulk's own two steps in this process, one thread, no Ray: the ceiling of
    one CPU (files read from disk as in a job)."""
    from bulk.limits import Limits
    from bulk.rows import prepare_table, score_table
    from service.models.runtimes import AnomalyRuntime, open_runtime

    runtime = open_runtime(model)
    assert isinstance(runtime, AnomalyRuntime) and runtime.manifest is not None
    params, limits = runtime.manifest.features, Limits.service_defaults()
    start = time.perf_counter()
    for i in range(0, len(files), 32):
        chunk = files[i : i + 32]
        table = prepare_table(
            [str(p) for p in chunk], [p.read_bytes() for p in chunk], params, limits
        )
        score_table(runtime, table)
    return len(files) / (time.perf_counter() - start)


async def _post_all(url: str, requests: list[bytes], concurrency: int) -> None:
    client = LeanClient(url)
    queue = list(reversed(requests))

    async def worker() -> None:
        while queue:
            status, body = await client.send(queue.pop())
            if status != 200 or b'"error"' in body:
                raise RuntimeError(f"batch request failed: {status} {body[:300]!r}")

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def bench_http(
    artifacts: Path, model: str, files: list[Path], batch: int, concurrency: int
) -> float:
    """Clips/s of the batch endpoint over the same files, request bodies built beforehand."""
    env = dict(ORIGINAL_ENV, AUSCULT_ARTIFACTS_DIR=str(artifacts), AUSCULT_LOG_LEVEL="warning")
    port = free_port()
    svc = start_server(
        "auscult", [sys.executable, "-m", "service", "--port", str(port)], env, port, 60
    )
    url = f"{svc.url}/v1/models/{model}/score/batch"
    datas = [p.read_bytes() for p in files]
    requests = [
        build_request(url, "POST", *multipart("files", datas[i : i + batch]))
        for i in range(0, len(datas), batch)
    ]
    try:
        asyncio.run(_post_all(url, requests[:2], concurrency))  # warm-up
        start = time.perf_counter()
        asyncio.run(_post_all(url, requests, concurrency))
        return len(files) / (time.perf_counter() - start)
    finally:
        stop_server(svc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="10-s clips (default: %(default)s)")
    p.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    p.add_argument("--model", default="gearbox")
    p.add_argument("--cpus", default="1,2", help="local Ray CPU counts (default: %(default)s)")
    p.add_argument("--batch", type=int, default=32, help="files per HTTP batch request")
    p.add_argument("--concurrency", type=int, default=2, help="HTTP batch requests in flight")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.n < 8:
        p.error("--n must be at least 8")

    tmp = Path(tempfile.mkdtemp(prefix="bench-bulk-"))
    try:
        t = time.perf_counter()
        files = write_clips(args.n, args.seed, tmp)
        print(f"{args.n} clips of 10 s written in {time.perf_counter() - t:.0f} s", flush=True)
        print(
            f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
            f"{os.cpu_count()} CPUs",
            flush=True,
        )
        rows: list[tuple[str, dict[str, float]]] = [
            (
                "in-process core, 1 thread, no Ray",
                {"clips_per_s": bench_core(args.artifacts / args.model, files)},
            )
        ]
        print(f"  {rows[-1][0]}: {rows[-1][1]}", flush=True)
        for cpus in [int(c) for c in args.cpus.split(",")]:
            r = bench_bulk(args.artifacts / args.model, files, cpus, tmp / "scores.parquet")
            rows.append((f"bulk, local Ray, {cpus} CPU", r))
            print(f"  {rows[-1][0]}: {r}", flush=True)
        rate = bench_http(args.artifacts, args.model, files, args.batch, args.concurrency)
        rows.append(
            (
                f"HTTP batch ({args.batch} files, {args.concurrency} in flight)",
                {"clips_per_s": rate},
            )
        )
        print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        print()
        cols = [
            ("clips/s", "clips_per_s"),
            ("job s", "job_s"),
            ("8-clip job s", "small_job_s"),
            ("Ray start-up s", "ray_start_s"),
        ]
        print(f"| path ({args.n} clips of 10 s) | " + " | ".join(c for c, _ in cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for name, r in rows:
            cells = [f"{r[k]:.1f}" if k in r else "-" for _, k in cols]
            print(f"| {name} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
