"""Soak: the real service under steady load for minutes; errors, latency and RSS drift.

    .venv/bin/python bench/soak.py --minutes 10        # the issue-12 soak
    .venv/bin/python bench/soak.py --seconds 20        # the short run CI executes

`python -m service` is started as a subprocess (as `bench/serving.py` starts it, on
`--artifacts`) and driven by `bench/loadgen.py` with `--concurrency` requests in flight
(16 by default: the default AUSCULT_MAX_CONCURRENCY) for the whole run. The requests
cycle through generated clips of 1, 10 and 30 s, single-clip and batch requests, and a
few that must fail (an unsupported file: 415), so the error paths run too. Every
`--interval` a line reports that interval's requests, errors, p50/p99 and the service's
RSS; the summary gives RSS at start (ready), after the first interval (warm), at the end
and the drift (end - warm). Exit status 1 on any error: a status other than the expected
one, a per-file error in a batch of good clips, or a transport failure (reset, timeout).
`--max-drift-mb` also fails the run when RSS grows more than that after the warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.loadgen import HTTPError, LeanClient, build_request  # noqa: E402
from bench.serving import (  # noqa: E402
    ORIGINAL_ENV,
    free_port,
    loop_factory,
    make_clips,
    multipart,
    rss_mb,
    start_server,
    stop_server,
)


@dataclass(frozen=True)
class Request:
    kind: str  # "single", "batch" or "bad"
    data: bytes  # the whole HTTP request, built once
    status: int  # the status it must get


@dataclass
class Interval:
    """What happened between two reports."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    by_kind: dict[str, int] = field(default_factory=dict)


def build_mix(url: str, model: str, seed: int, batch_size: int) -> list[Request]:
    """The cycle of requests: 24 single clips (sixteen of 10 s, six of 1 s, two of 30 s), 2 batches,
    1 unsupported file; every body built once."""
    tens, ones, thirties = (
        make_clips(16, 10.0, seed),
        make_clips(6, 1.0, seed + 1),
        make_clips(2, 30.0, seed + 2),
    )
    score = f"{url}/v1/models/{model}/score"

    def post(path: str, field_name: str, files: Sequence[bytes]) -> bytes:
        body, headers = multipart(field_name, files)
        return build_request(path, "POST", body, headers)

    singles = [Request("single", post(score, "file", [c]), 200) for c in tens + ones + thirties]
    batches = [
        Request("batch", post(score + "/batch", "files", tens[i : i + batch_size]), 200)
        for i in (0, batch_size)
    ]
    bad = Request("bad", post(score, "file", [b"not audio at all\n" * 64]), 415)
    mix: list[Request] = []
    for i, single in enumerate(singles):  # batches and the bad file spread through the cycle
        mix.append(single)
        if i % 12 == 11:
            mix.append(batches[(i // 12) % len(batches)])
        if i == 17:
            mix.append(bad)
    return mix


def check(req: Request, status: int, body: bytes) -> str | None:
    """None when the answer is the expected one, else what was wrong."""
    if status != req.status:
        return f"{req.kind}: {status} {body[:200]!r}"
    if req.kind == "batch":
        bad = [r for r in json.loads(body)["results"] if "error" in r]
        if bad:
            return f"batch: {len(bad)} per-file errors, e.g. {bad[0]}"
    return None


async def soak(
    url: str, pid: int, mix: list[Request], seconds: float, concurrency: int, interval: float
) -> tuple[list[Interval], list[float]]:
    """Run the load for `seconds`; one Interval and one RSS sample per `interval`."""
    client = LeanClient(url)
    intervals = [Interval()]
    rss: list[float] = []
    end = time.perf_counter() + seconds
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while time.perf_counter() < end:
            req = mix[next_i % len(mix)]
            next_i += 1
            t = time.perf_counter()
            try:
                status, body = await client.send(req.data)
                problem = check(req, status, body)
            except HTTPError as e:
                problem = f"{req.kind}: transport: {e}"
            current = intervals[-1]
            current.latencies.append(time.perf_counter() - t)
            current.by_kind[req.kind] = current.by_kind.get(req.kind, 0) + 1
            if problem:
                current.errors.append(problem)

    async def reporter() -> None:
        started = time.perf_counter()
        while time.perf_counter() < end:
            await asyncio.sleep(min(interval, max(0.0, end - time.perf_counter())))
            rss.append(rss_mb(pid))
            done = intervals[-1]
            if time.perf_counter() < end:
                intervals.append(Interval())
            print(line(time.perf_counter() - started, done, rss[-1]), flush=True)

    await asyncio.gather(reporter(), *(worker() for _ in range(concurrency)))
    await client.aclose()
    if len(rss) < len(intervals):  # the last workers finished after the last report
        rss.append(rss_mb(pid))
    return intervals, rss


def pct(latencies: Sequence[float], q: float) -> float:
    return float(np.percentile(latencies, q)) * 1e3 if latencies else float("nan")


def line(at: float, iv: Interval, rss: float) -> str:
    return (
        f"{at:7.0f} s  {len(iv.latencies):6d} requests  {len(iv.errors):3d} errors  "
        f"p50 {pct(iv.latencies, 50):7.1f} ms  p99 {pct(iv.latencies, 99):7.1f} ms  "
        f"RSS {rss:6.0f} MB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="length of the soak (default 10)")
    length.add_argument("--seconds", type=float, help="length of the soak in seconds")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--interval", type=float, default=None, help="seconds between reports")
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    parser.add_argument("--model", default="gearbox", help="anomaly bundle to score with")
    parser.add_argument("--batch-size", type=int, default=4, help="clips per batch request")
    parser.add_argument("--max-drift-mb", type=float, default=None, help="fail above this drift")
    parser.add_argument("--seed", type=int, default=0, help="clip generator seed")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60.0 * (args.minutes or 10.0)
    interval = args.interval or (60.0 if seconds >= 300 else max(1.0, seconds / 4))
    artifacts = args.artifacts.resolve()
    if not (artifacts / args.model / "manifest.json").is_file():
        print(f"no bundle {args.model} in {artifacts}", file=sys.stderr)
        return 2

    env = dict(ORIGINAL_ENV, AUSCULT_ARTIFACTS_DIR=str(artifacts), PYTHONUNBUFFERED="1")
    env.setdefault("AUSCULT_WORKERS", "1")  # the RSS drift of one server process
    port = free_port()
    svc = start_server(
        "auscult", [sys.executable, "-m", "service", "--port", str(port)], env, port, timeout=60
    )
    try:
        mix = build_mix(svc.url, args.model, args.seed, args.batch_size)
        rss_start = rss_mb(svc.proc.pid)
        print(
            f"# soak: python -m service, {args.concurrency} in flight, {seconds:g} s, "
            f"{len(mix)} requests per cycle (single clips of 1/10/30 s, batches of "
            f"{args.batch_size}, one 415), ready in {svc.ready_s:.2f} s, RSS {rss_start:.0f} MB",
            flush=True,
        )
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            intervals, rss = runner.run(
                soak(svc.url, svc.proc.pid, mix, seconds, args.concurrency, interval)
            )
        alive = svc.proc.poll() is None
    finally:
        stop_server(svc)

    latencies = [x for iv in intervals for x in iv.latencies]
    errors = [e for iv in intervals for e in iv.errors]
    kinds: dict[str, int] = {}
    for iv in intervals:
        for k, n in iv.by_kind.items():
            kinds[k] = kinds.get(k, 0) + n
    warm, end = rss[0], rss[-1]
    drift = end - warm
    print()
    print("| measure | value |")
    print("|---|---:|")
    print(
        f"| requests ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}) | "
        f"{len(latencies)} ({len(latencies) / seconds:.1f}/s) |"
    )
    print(f"| errors (unexpected status, per-file or transport) | {len(errors)} |")
    print(
        f"| latency p50 / p99 / max | {pct(latencies, 50):.1f} / {pct(latencies, 99):.1f} / "
        f"{max(latencies, default=float('nan')) * 1e3:.1f} ms |"
    )
    print(
        f"| RSS at start / after the first interval / at the end / max | {rss_start:.0f} / "
        f"{warm:.0f} / {end:.0f} / {max(rss):.0f} MB |"
    )
    print(f"| RSS drift (end - after the first interval) | {drift:+.0f} MB |")
    failed = False
    if errors:
        print(f"\nERROR: {len(errors)} failed requests, e.g. {errors[:3]}", file=sys.stderr)
        failed = True
    if not alive:
        print("\nERROR: the service exited during the soak", file=sys.stderr)
        failed = True
    if args.max_drift_mb is not None and drift > args.max_drift_mb:
        print(f"\nERROR: RSS drift {drift:+.0f} MB > {args.max_drift_mb:g} MB", file=sys.stderr)
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
