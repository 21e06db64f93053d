"""Live listening under load: concurrent real-time streams against the running service.

    .venv/bin/python bench/listen.py                  # step up to 400 streams (~4 min)
    .venv/bin/python bench/listen.py --quick          # two small levels (CI, ~30 s)

`python -m service` is started on `--artifacts` (the committed gearbox bundle: 1-s windows
at 16 kHz) with `--workers` processes. Each stream sends 16-kHz 16-bit audio in 100-ms
frames at real time (each stream from its own random phase, so frames do not arrive in
lock-step) through `WS /v1/models/{name}/listen`. Streams are stepped up level by level
(`--levels`), each held `--seconds`; per level:

- window latency: from the moment the frame holding a window's last needed sample was
  sent to the moment that window's score arrived (p50 / p99), leaving out each stream's
  first two windows (connection set-up);
- CPU per stream-second: the service processes' CPU time over the level (from
  /proc/PID/stat) divided by streams x seconds of audio;
- the client's own lag (how late frames went out): a figure that is large says the load
  generator, not the service, fell behind (the machine is shared: the load is printed).

The most streams held at real time is the largest level with p99 ≤ `--p99-ms` and no
stream ended early. Memory per idle stream: the service's PSS grows by how much for
`--idle` streams that only sent their start message, and for as many that also sent half a
window of audio (their unfinished window). Exit status 1 if a stream failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from bench.serving import (  # noqa: E402
    ORIGINAL_ENV,
    free_port,
    loop_factory,
    pss_mb,
    server_pids,
    start_server,
    stop_server,
)
from service.models.bundle import read_manifest  # noqa: E402

RATE = 16000
FRAME_S = 0.1
FRAME = round(RATE * FRAME_S)  # samples per frame
SKIP_WINDOWS = 2  # each stream's first windows include its connection set-up


@dataclass
class Level:
    streams: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0

    def pct(self, values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) * 1000 if values else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the service: the supervisor and its workers."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in {pid, *server_pids(pid)}:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, ValueError, IndexError):
            pass
    return total


def service_kb(pid: int) -> float:
    """The service's memory: PSS of the supervisor and its workers, in KB."""
    return sum(pss_mb(p) for p in {pid, *server_pids(pid)}) * 1024


def load_average() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


class Geometry:
    """Where each window's last needed sample lies (the server sends a window once the
    log-mel frame after it is complete: service/features.py, MelStream)."""

    def __init__(self, artifacts: Path, model: str) -> None:
        f = read_manifest(artifacts / model).features
        if f.sample_rate != RATE or f.window_seconds is None:
            raise SystemExit(f"bench/listen.py needs a {RATE}-Hz model with windows")
        self.hop, self.size, self.step = f.hop_length, f.window_frames, f.window_hop_frames
        self.half = f.n_fft // 2

    def frame_of(self, index: int) -> int:
        """The 100-ms frame that completes window `index`."""
        last_sample = (index * self.step + self.size) * self.hop + self.half - 1
        return last_sample // FRAME


async def one_stream(
    url: str, audio: bytes, level: Level, geometry: Geometry, phase: float, began: float
) -> None:
    from websockets.asyncio.client import connect

    frames = int(level.seconds / FRAME_S)
    sent_at: list[float] = []
    loop = asyncio.get_running_loop()
    try:
        async with connect(url, open_timeout=60, close_timeout=10, max_size=None) as ws:
            await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))

            async def receive() -> dict[str, Any] | None:
                async for raw in ws:
                    m = json.loads(raw)
                    if m["type"] == "window":
                        k = geometry.frame_of(m["index"])
                        if m["index"] >= SKIP_WINDOWS and k < len(sent_at):
                            level.latencies.append(loop.time() - sent_at[k])
                    elif m["type"] in ("summary", "error"):
                        return m
                return None

            reader = asyncio.create_task(receive())
            start = began + phase
            for k in range(frames):
                due = start + k * FRAME_S
                await asyncio.sleep(max(0.0, due - loop.time()))
                now = loop.time()
                level.lags.append(max(0.0, now - due))
                sent_at.append(now)
                offset = (k * FRAME * 2) % (len(audio) - FRAME * 2)
                await ws.send(audio[offset : offset + FRAME * 2])
            await ws.send('{"type": "stop"}')
            last = await asyncio.wait_for(reader, 60)
            if last is None or last["type"] != "summary":
                level.failures.append(f"ended with {last}")
    except Exception as e:  # a failed stream is reported, not raised
        level.failures.append(f"{type(e).__name__}: {e}")


async def run_level(url: str, pid: int, level: Level, geometry: Geometry) -> None:
    rng = np.random.default_rng(level.streams)
    audio = (np.sin(np.linspace(0, 3000, RATE * 20)) * 3000).astype("<i2")
    audio = (audio + rng.integers(-300, 300, audio.size)).astype("<i2").tobytes()
    loop = asyncio.get_running_loop()
    began = loop.time() + 1.0  # every stream connects first
    cpu0, t0 = cpu_seconds(pid), time.perf_counter()
    await asyncio.gather(
        *(
            one_stream(url, audio, level, geometry, float(rng.uniform(0, FRAME_S)), began)
            for _ in range(level.streams)
        )
    )
    level.cpu_s, level.wall_s = cpu_seconds(pid) - cpu0, time.perf_counter() - t0


async def stream_memory(url: str, pid: int, n: int) -> tuple[float, float]:
    """KB of service PSS per stream: (idle: start sent, and with half a window of audio
    unscored). Streams are opened in three batches of n // 3 and held, the growth over
    them is divided by their number (nothing is freed in between for new streams to
    reuse); then each sends half a window of audio and the growth is measured again."""
    from websockets.asyncio.client import connect

    conns = []
    await asyncio.sleep(1.0)
    first = service_kb(pid)
    for _ in range(3):
        for _ in range(max(1, n // 3)):
            ws = await connect(url, open_timeout=60)
            await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))
            conns.append(ws)
        await asyncio.sleep(1.0)
    held = service_kb(pid)
    for ws in conns:
        await ws.send(np.zeros(RATE // 2, "<i2").tobytes())
    await asyncio.sleep(1.5)
    partial = service_kb(pid)
    for ws in conns:
        await ws.close()
    idle = (held - first) / len(conns)
    return idle, idle + (partial - held) / len(conns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    parser.add_argument("--model", default="gearbox")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--levels", default="50,100,150,200,250,300,400", help="streams per level, rising"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per stream per level")
    parser.add_argument("--idle", type=int, default=200, help="streams for the memory figure")
    parser.add_argument("--p99-ms", type=float, default=250.0)
    parser.add_argument("--quick", action="store_true", help="levels 4,8 of 5 s; 10 idle")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.seconds, args.idle = "4,8", 5.0, 10
    levels = [int(n) for n in args.levels.split(",")]
    geometry = Geometry(args.artifacts, args.model)
    env = dict(
        ORIGINAL_ENV,
        AUSCULT_ARTIFACTS_DIR=str(args.artifacts),
        AUSCULT_WORKERS=str(args.workers),
        AUSCULT_LISTEN_MAX_STREAMS=str(max(levels) + args.idle),
        AUSCULT_MAX_CONNECTIONS=str(2 * (max(levels) + args.idle)),
        AUSCULT_LOG_LEVEL="warning",
        PYTHONUNBUFFERED="1",
    )
    port = free_port()
    svc = start_server(
        "auscult", [sys.executable, "-m", "service", "--port", str(port)], env, port, timeout=90
    )
    url = f"ws://127.0.0.1:{port}/v1/models/{args.model}/listen"
    failed = False
    try:
        print(
            f"# listen: python -m service, {args.workers} workers, {os.cpu_count()} CPUs, "
            f"model {args.model}; 16-kHz streams in 100-ms frames at real time, "
            f"{args.seconds:g} s per level; load average before: {load_average()}",
            flush=True,
        )
        print(
            "| streams | windows | p50 ms | p99 ms | CPU ms per stream-second | "
            "client lag p99 ms | failed | load avg |"
        )
        print("|---|---|---|---|---|---|---|---|")
        held = 0
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            # warm-up, not reported: each worker's first verdict imports scipy.stats (~1 s)
            runner.run(run_level(url, svc.proc.pid, Level(4 * args.workers, 3.0), geometry))
            # memory first, on a server that has not yet held hundreds of streams (after
            # that, freed heap absorbs new ones and the growth reads as nothing)
            idle, partial = runner.run(stream_memory(url, svc.proc.pid, args.idle))
            for n in levels:
                level = Level(n, args.seconds)
                runner.run(run_level(url, svc.proc.pid, level, geometry))
                p50, p99 = level.pct(level.latencies, 50), level.pct(level.latencies, 99)
                cpu_ms = level.cpu_s / (n * args.seconds) * 1000
                print(
                    f"| {n} | {len(level.latencies)} | {p50:.0f} | {p99:.0f} | {cpu_ms:.2f} | "
                    f"{level.pct(level.lags, 99):.0f} | {len(level.failures)} | "
                    f"{load_average()} |",
                    flush=True,
                )
                for f in level.failures[:3]:
                    print(f"#   failure: {f}")
                failed |= bool(level.failures)
                if level.failures or not level.latencies or p99 > args.p99_ms:
                    break
                held = n
        print()
        print("| figure | value |")
        print("|---|---|")
        print(f"| most streams at real time with p99 <= {args.p99_ms:g} ms | {held} |")
        print(f"| memory per idle stream (start sent) | {idle:.0f} KB |")
        print(f"| memory per stream with half a window unscored | {partial:.0f} KB |")
    finally:
        stop_server(svc)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
