"""What the HTTP layer costs per single-clip request: this checkout's service against an
older checkout's, side by side, one run.

    git worktree add /tmp/before REV                        # the revision to compare with
    .venv/bin/python bench/dispatch.py --baseline-tree /tmp/before
    .venv/bin/python bench/dispatch.py --baseline-tree /tmp/before --quick   # CI-sized

Both services are started as users start them (`python -m service`, each from its own
checkout, on this checkout's `--artifacts`, one worker each so one process's event loop
carries every request) and receive the same single-clip requests (`POST
/v1/models/MODEL/score`, 10-s clips from bench/serving.py's generator) from
bench/loadgen.py, at `--concurrency`, in blocks that alternate between the two (ABBA), so
both see the same machine. Per block: CPU of the server's main thread (its event loop:
HTTP, multipart, routing, JSON) per request, the p50 latency and the rate. Printed: medians over the
blocks, and the median of the per-pair differences. The event loop's CPU is what limits a
worker at high concurrency and what adds to every request's latency at concurrency 1
(docs/archive/experiments.md, "Reading the ratios").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.loadgen import LeanClient, build_request  # noqa: E402
from bench.serving import (  # noqa: E402  (sets up the process)
    ORIGINAL_ENV,
    Server,
    free_port,
    loop_cpu_seconds,
    make_clips,
    median,
    multipart,
    run_load,
    start_server,
    stop_server,
)


def start(name: str, tree: Path, artifacts: Path) -> Server:
    """`python -m service` run from `tree` (its own code), one worker, on `artifacts`."""
    port = free_port()
    env = dict(
        ORIGINAL_ENV,
        AUSCULT_ARTIFACTS_DIR=str(artifacts),
        AUSCULT_WORKERS="1",
        PYTHONPATH=str(tree),
    )
    cmd = [sys.executable, "-m", "service", "--port", str(port)]
    return start_server(name, cmd, env, port, 120, cwd=tree)


async def measure(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    trees = {"this checkout": REPO, "baseline": args.baseline_tree.resolve()}
    servers = {name: start(name, tree, args.artifacts.resolve()) for name, tree in trees.items()}
    try:
        clips = make_clips(16, 10.0, args.seed)
        result: dict[str, dict[str, list[float]]] = {
            n: {"cpu": [], "p50": [], "rate": []} for n in trees
        }
        clients, requests = {}, {}
        for name, server in servers.items():
            clients[name] = LeanClient(server.url)
            url = f"{server.url}/v1/models/{args.model}/score"
            requests[name] = [build_request(url, "POST", *multipart("file", [c])) for c in clips]
            await run_load(clients[name], requests[name], 32, args.concurrency)  # warm-up
        names = list(trees)
        for block in range(args.blocks):
            order = names if block % 4 in (0, 3) else names[::-1]  # ABBA
            for name in order:
                pid = servers[name].proc.pid
                before = loop_cpu_seconds(pid)
                load = await run_load(
                    clients[name], requests[name], args.requests, args.concurrency
                )
                cpu = loop_cpu_seconds(pid) - before
                if load.errors:
                    raise RuntimeError(f"{name}: {load.errors} errors, e.g. {load.error_samples}")
                result[name]["cpu"].append(cpu / args.requests * 1e3)
                result[name]["p50"].append(median(load.latencies) * 1e3)
                result[name]["rate"].append(load.rate)
        for client in clients.values():
            await client.aclose()
        return result
    finally:
        for server in servers.values():
            stop_server(server)


def report(result: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    this, base = result["this checkout"], result["baseline"]
    lines = [
        f"# HTTP layer per single-clip request: this checkout vs {args.baseline_tree}",
        "",
        f"model {args.model}, 10-s clips, concurrency {args.concurrency}, {args.blocks} blocks"
        f" of {args.requests} requests each (ABBA), one worker per service; "
        f"load average {os.getloadavg()[0]:.1f}",
        "",
        "| | this checkout | baseline | difference (median of pairs) |",
        "|---|---:|---:|---:|",
    ]
    for key, label in (("cpu", "event-loop CPU per request"), ("p50", "p50 latency")):
        diffs = [a - b for a, b in zip(this[key], base[key], strict=True)]
        lines.append(
            f"| {label} | {median(this[key]):.3f} ms | {median(base[key]):.3f} ms "
            f"| {median(diffs):+.3f} ms |"
        )
    ratios = [a / b for a, b in zip(this["rate"], base["rate"], strict=True)]
    lines.append(
        f"| clips/s | {median(this['rate']):.1f} | {median(base['rate']):.1f} "
        f"| {median(ratios):.2f}x (median of pair ratios) |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--baseline-tree", type=Path, required=True, help="an older checkout (git worktree add)"
    )
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    parser.add_argument("--model", default="gearbox")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=8, help="per service")
    parser.add_argument("--requests", type=int, default=200, help="per block")
    parser.add_argument("--seed", type=int, default=0, help="clip generator")
    parser.add_argument("--quick", action="store_true", help="2 blocks of 20 requests")
    args = parser.parse_args(argv)
    if args.quick:
        args.blocks, args.requests = 2, 20
    if not (args.baseline_tree / "service" / "__main__.py").is_file():
        parser.error(f"{args.baseline_tree} is not a checkout of this project")
    print(report(asyncio.run(measure(args)), args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
