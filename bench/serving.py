"""Serving benchmark: in-process limit, the service over HTTP, the seed-style stack.

    .venv/bin/python bench/serving.py                 # full mode (a few minutes)
    .venv/bin/python bench/serving.py --quick         # short mode for CI (~1 min)

Everything is measured in ONE run on the same generated clips (seeded, all
different, 16-bit WAV at 16 kHz) and printed as one table; ratios are computed
per repetition and the median is reported, next to the targets of issues 6 and 14.
The service runs `--workers` processes (default: its own default, the CPUs available);
its single endpoint at concurrency 16 is compared with the in-process core on as many
threads. See docs/archive/experiments.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# The process set-up of `python -m service` (service/serving/process.py: native thread
# pools, malloc), before numpy loads, so the in-process figures are the service core's as
# it runs in the service. Subprocesses get the environment as it was: the service sets its
# own up, the seed-style stack keeps its defaults.
ORIGINAL_ENV = dict(os.environ)
from service.serving.process import configure  # noqa: E402

configure()

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from bench.loadgen import HTTPError, LeanClient, build_request  # noqa: E402

SR = 16000
TARGETS = {
    "batch": 0.8,  # batch endpoint clips/s ÷ in-process clips/s  (≥)
    "single16": 0.8,  # single endpoint @ concurrency 16 ÷ in-process on `workers` threads (≥)
    "p50_ms": 1.5,  # single-clip p50 @ concurrency 1 minus in-process ms per clip  (≤)
    "seed": 5.0,  # auscult ÷ seed-style stack at equal concurrency  (≥)
    "rss_mb": 400.0,  # service memory after the load, all processes (PSS)  (≤)
    "ready_s": 3.0,  # process start → /readyz 200  (≤)
}


# --------------------------------------------------------------------------- clips


def make_clip(seconds: float, rng: np.random.Generator) -> bytes:
    """A machine-like clip: random harmonic series, slow AM, broadband noise → WAV bytes."""
    import soundfile as sf

    n = round(seconds * SR)
    t = np.arange(n, dtype=np.float64) / SR
    f0 = rng.uniform(40.0, 180.0)
    x = np.zeros(n)
    for k in range(1, 9):
        x += rng.uniform(0.05, 0.3) / k * np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 2 * np.pi))
    x *= 1.0 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.3, 4.0) * t)
    x += rng.uniform(0.005, 0.05) * rng.standard_normal(n)
    x *= rng.uniform(0.2, 0.8) / np.max(np.abs(x))
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), SR, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def make_clips(n: int, seconds: float, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [make_clip(seconds, rng) for _ in range(n)]


BOUNDARY = "auscultbenchboundary7d1f"


def multipart(field_name: str, files: Sequence[bytes]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with one part per file; built once, sent many times."""
    parts = []
    for i, data in enumerate(files):
        parts.append(
            (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field_name}"; '
                f'filename="clip{i}.wav"\r\nContent-Type: audio/wav\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()
    return body, {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


# --------------------------------------------------------------------------- helpers


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pss_mb(pid: int) -> float:
    """Proportional set size: shared pages split among the processes sharing them, so the
    workers' and supervisor's add up to what the service holds."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def server_pids(pid: int) -> list[int]:
    """The processes that serve: the workers (children) of a supervisor, or `pid` itself."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                children.append(int(entry))
    return sorted(children) or [pid]


def memory(pid: int) -> dict[str, Any]:
    """RSS of every serving process, the supervisor's (if any), and the PSS of all."""
    workers = server_pids(pid)
    everyone = sorted({pid, *workers})
    return {
        "workers": [rss_mb(p) for p in workers],
        "supervisor": rss_mb(pid) if workers != [pid] else float("nan"),
        "pss": sum(pss_mb(p) for p in everyone),
    }


def service_cpu(pid: int) -> tuple[float, float]:
    """`cpu_seconds` summed over the serving processes (the workers of a supervisor)."""
    parts = [cpu_seconds(p) for p in server_pids(pid)]
    return sum(m for m, _ in parts), sum(o for _, o in parts)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(main thread, all other threads) CPU seconds of a process, from /proc.

    The process total (/proc/PID/stat) keeps the time of threads that have ended;
    the main thread's is /proc/PID/task/PID/stat."""
    tick = os.sysconf("SC_CLK_TCK")

    def used(path: str) -> float:
        with open(path) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

    total, main = used(f"/proc/{pid}/stat"), used(f"/proc/{pid}/task/{pid}/stat")
    return main, total - main


def own_cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def loop_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process's main thread (its event loop): nanoseconds from
    /proc/PID/task/PID/schedstat where the kernel keeps them, else clock ticks."""
    try:
        with open(f"/proc/{pid}/task/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    ready_s: float
    log_path: Path


def start_server(
    name: str,
    cmd: list[str],
    env: dict[str, str],
    port: int,
    timeout: float,
    cwd: Path = REPO,
) -> Server:
    """Start a server subprocess in `cwd`; time from Popen to the first /readyz 200."""
    log_path = Path(tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")[1])
    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    with httpx.Client(timeout=2.0) as client:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {log_path}")
            try:
                if client.get(url + "/readyz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                raise RuntimeError(f"{name} not ready after {timeout:.0f} s; see {log_path}")
            time.sleep(0.01)
    return Server(name, proc, url, time.perf_counter() - t0, log_path)


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait()


@dataclass
class Load:
    n: int
    elapsed: float
    latencies: list[float]
    errors: int
    error_samples: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.n / self.elapsed


async def run_load(
    client: LeanClient,
    requests_: Sequence[bytes],
    requests: int,
    concurrency: int,
    clips_per_request: int = 1,
) -> Load:
    """`requests` POSTs (prebuilt, cycled) with `concurrency` in flight; throughput counts
    clips, not requests."""
    latencies: list[float] = []
    errors: list[str] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < requests:
            i = next_i
            next_i += 1
            t = time.perf_counter()
            try:
                status, body = await client.send(requests_[i % len(requests_)])
                if status != 200:
                    errors.append(f"{status} {body[:200]!r}")
                elif clips_per_request > 1:
                    bad = [x for x in json.loads(body)["results"] if "error" in x]
                    errors.extend(str(b) for b in bad)
            except HTTPError as e:
                errors.append(str(e))
            latencies.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    return Load(requests * clips_per_request, elapsed, latencies, len(errors), errors[:3])


async def encoder_batches(client: httpx.AsyncClient, url: str) -> tuple[float, float]:
    """(sum, count) of auscult_batch_size{source="encoder"} from /metrics."""
    text = (await client.get(url + "/metrics")).text
    out = {}
    for kind in ("sum", "count"):
        m = re.search(
            rf'^auscult_batch_size_{kind}\{{[^}}]*source="encoder"[^}}]*\}} (\S+)', text, re.M
        )
        out[kind] = float(m.group(1)) if m else 0.0
    return out["sum"], out["count"]


# --------------------------------------------------------------------------- in-process


class InProcess:
    """The service's own scoring core, called directly: prepare (decode → features) → score."""

    def __init__(self, bundle_dir: Path) -> None:
        from service import features
        from service.models.bundle import window_scores
        from service.models.runtimes import AnomalyRuntime, open_runtime
        from service.settings import Settings

        self.settings = Settings(artifacts_dir=bundle_dir.parent)
        self.rt = open_runtime(bundle_dir, self.settings.ort_threads)
        if not isinstance(self.rt, AnomalyRuntime) or not self.rt.ready:
            raise SystemExit(f"{bundle_dir} is not a ready anomaly bundle: {self.rt.reason}")
        assert self.rt.manifest is not None
        self.params = self.rt.manifest.features
        self.F = features
        self.window_scores = window_scores
        features.warm_up(self.params)

    def prepare(self, data: bytes) -> np.ndarray:
        """Bytes → the clip's windows (n_windows, h, w)."""
        return self.F.prepare(data, self.params, self.settings.max_audio_seconds).images

    def score_one(self, data: bytes) -> float:
        """One clip's score as the service computes it: every window, then the aggregation."""
        return self.rt.clip_score(self.rt.score(self.prepare(data)))

    def score_batch(self, datas: Sequence[bytes]) -> np.ndarray:
        """Clips scored together: all their windows in one model run, one score per clip."""
        blocks = [self.prepare(d) for d in datas]
        windows = np.split(
            self.rt.score(np.concatenate(blocks)), np.cumsum(list(map(len, blocks)))[:-1]
        )
        return np.array([self.rt.clip_score(w) for w in windows])

    def _images(self, mel: np.ndarray) -> np.ndarray:
        """A clip's log-mel → its model inputs (windows, or the one stretched image)."""
        if self.params.window_seconds is None:
            return self.F.to_image(mel, self.params)[None]
        return self.F.to_windows(mel, self.params)[0]

    def sequential(self, clips: Sequence[bytes], n: int) -> tuple[float, float]:
        """One clip at a time on this thread → (clips/s over the wall time, median ms per clip).

        The median is what a request's p50 is compared with; the wall-time rate also
        counts the moments other processes held the CPU, as HTTP throughput does."""
        times = []
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            self.score_one(clips[i % len(clips)])
            times.append(time.perf_counter() - t)
        return n / (time.perf_counter() - t0), median(times) * 1e3

    def threaded(self, clips: Sequence[bytes], n: int, threads: int) -> float:
        with ThreadPoolExecutor(threads) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda i: self.score_one(clips[i % len(clips)]), range(n)))
            return n / (time.perf_counter() - t0)

    def batched(self, clips: Sequence[bytes], n: int, batch: int) -> float:
        """clips/s when clips are prepared one by one and scored `batch` at a time."""
        t0 = time.perf_counter()
        done = 0
        while done < n:
            k = min(batch, n - done)
            self.score_batch([clips[(done + j) % len(clips)] for j in range(k)])
            done += k
        return n / (time.perf_counter() - t0)

    def stages(self, clips: Sequence[bytes]) -> dict[str, float]:
        """Median ms per clip of each step, timed separately."""
        F, p = self.F, self.params
        times: dict[str, list[float]] = {
            k: []
            for k in (
                "decode",
                "resample",
                "spectrogram",
                "windows/normalise",
                "encoder",
                "PCA+Mahalanobis",
            )
        }

        def timed(key: str, fn: Callable[[], Any]) -> Any:
            t = time.perf_counter()
            out = fn()
            times[key].append((time.perf_counter() - t) * 1e3)
            return out

        for data in clips:
            audio = timed(
                "decode", lambda d=data: F.decode_audio(d, self.settings.max_audio_seconds)
            )
            samples = timed(
                "resample", lambda a=audio: F.resample(a.samples, a.sample_rate, p.sample_rate)
            )
            mel = timed("spectrogram", lambda s=samples: F.log_mel(s, p))
            images = timed("windows/normalise", lambda m=mel: self._images(m))
            latent = timed("encoder", lambda i=images: self.rt.latents(i))
            timed(
                "PCA+Mahalanobis",
                lambda z=latent: self.window_scores(z, self.rt.arrays, self.rt.parts),
            )
        return {k: median(v) for k, v in times.items()}


# --------------------------------------------------------------------------- the run


@dataclass
class Config:
    clips: int
    reps: int
    latency_requests: int
    single_requests: int
    batch_clips: int
    seed_requests: int
    long_clips: int
    concurrencies: tuple[int, ...] = (1, 4, 16)
    batch_sizes: tuple[int, ...] = (8, 32)
    scaling_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    protocol_reps: int = 9  # blocks per protocol, alternating (limited, plain / plain, limited)
    protocol_small: int = 2000  # GET /healthz per block
    protocol_score: int = 64  # single-clip scores per block


FULL = Config(
    clips=64,
    reps=5,
    latency_requests=200,
    single_requests=192,
    batch_clips=192,
    seed_requests=48,
    long_clips=6,
)
QUICK = Config(
    clips=16,
    reps=2,
    latency_requests=32,
    single_requests=48,
    batch_clips=64,
    seed_requests=12,
    long_clips=2,
    scaling_batches=(1, 8, 32),
    protocol_reps=3,
    protocol_small=400,
    protocol_score=16,
)


def fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:,.{digits}f}"


def check(value: float, target: float, higher_is_better: bool) -> str:
    if value != value:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "yes" if ok else "NO"


async def bench_http(
    args: argparse.Namespace, cfg: Config, clips: list[bytes], ip: InProcess
) -> dict:
    env = dict(
        ORIGINAL_ENV, AUSCULT_ARTIFACTS_DIR=str(args.artifacts), AUSCULT_WORKERS=str(args.workers)
    )
    env.setdefault("PYTHONUNBUFFERED", "1")
    res: dict[str, Any] = {"errors": 0, "error_samples": []}
    single_bodies = [multipart("file", [c]) for c in clips]
    batch_bodies = {
        b: [
            multipart("files", [clips[(i * b + j) % len(clips)] for j in range(b)])
            for i in range(max(1, len(clips) // b))
        ]
        for b in sorted(set(cfg.batch_sizes) | set(cfg.scaling_batches))
    }

    def requests_for(url: str, bodies: list[tuple[bytes, dict[str, str]]]) -> list[bytes]:
        return [build_request(url, "POST", body, headers) for body, headers in bodies]

    svc = start_server(
        "auscult",
        [sys.executable, "-m", "service", "--port", str(port := free_port())],
        env,
        port,
        timeout=60,
    )
    res["ready_s"] = svc.ready_s
    res["mem_rest"] = memory(svc.proc.pid)
    seed: Server | None = None
    floor = start_server(
        "floor",
        [sys.executable, str(REPO / "bench" / "floor_app.py"), "--port", str(fp := free_port())],
        env,
        fp,
        timeout=60,
    )
    try:
        if not args.no_seed:
            seed_env = dict(env, CUDA_VISIBLE_DEVICES="")
            seed = start_server(
                "seed",
                [
                    sys.executable,
                    str(REPO / "bench" / "seed_stack.py"),
                    "--bundle",
                    str(args.artifacts / args.model),
                    "--port",
                    str(sp := free_port()),
                ],
                seed_env,
                sp,
                timeout=180,
            )
            res["seed_ready_s"] = seed.ready_s
            res["seed_rss_rest"] = rss_mb(seed.proc.pid)
        client, seed_client = LeanClient(svc.url), LeanClient(seed.url if seed else svc.url)
        floor_client = LeanClient(floor.url)
        async with httpx.AsyncClient(timeout=60) as control:  # /metrics only, not load
            score_url = f"{svc.url}/v1/models/{args.model}/score"
            singles = requests_for(score_url, single_bodies)
            batches = {b: requests_for(score_url + "/batch", v) for b, v in batch_bodies.items()}
            seed_singles = requests_for(f"{seed.url}/analyze", single_bodies) if seed else []
            floor_singles = requests_for(f"{floor.url}/score", single_bodies)

            def account(load: Load) -> Load:
                res["errors"] += load.errors
                res["error_samples"].extend(load.error_samples)
                return load

            # warm-up (not measured): first requests pay lazy paths and connection set-up
            t0 = time.perf_counter()
            account(await run_load(client, singles[:1], 1, 1))
            res["first_response_s"] = svc.ready_s + time.perf_counter() - t0
            account(await run_load(client, singles, 16, 4))
            account(await run_load(client, batches[8], 2, 1, 8))
            if seed:
                await run_load(seed_client, seed_singles, 4, 2)
            account(await run_load(floor_client, floor_singles, 16, 1))

            rows: dict[str, list[float]] = {}

            def put(key: str, value: float) -> None:
                rows.setdefault(key, []).append(value)

            latencies: list[float] = []
            inproc_times: list[float] = []
            for rep in range(cfg.reps):
                print(f"  repetition {rep + 1}/{cfg.reps}", file=sys.stderr, flush=True)
                # Paired: each clip scored in-process, then the same clip over HTTP, so the
                # two see the same machine load (others' jobs come and go on shared boxes).
                lat, mine, floor_lat, core_cpu, floor_cpu = [], [], [], 0.0, 0.0
                cpu0, own0 = service_cpu(svc.proc.pid), own_cpu_seconds()
                for i in range(cfg.latency_requests):
                    c0, t0 = own_cpu_seconds(), time.perf_counter()  # all threads (BLAS too)
                    ip.score_one(clips[i % len(clips)])
                    mine.append(time.perf_counter() - t0)
                    core_cpu += own_cpu_seconds() - c0
                    one = account(await run_load(client, [singles[i % len(singles)]], 1, 1))
                    lat.extend(one.latencies)
                    f0 = cpu_seconds(floor.proc.pid)[0]
                    one = account(
                        await run_load(floor_client, [floor_singles[i % len(singles)]], 1, 1)
                    )
                    floor_lat.extend(one.latencies)
                    floor_cpu += cpu_seconds(floor.proc.pid)[0] - f0
                cpu1, own1 = service_cpu(svc.proc.pid), own_cpu_seconds()
                n = cfg.latency_requests
                put("floor_p50", median(floor_lat) * 1e3)
                put("floor_cpu_loop", floor_cpu / n * 1e3)
                put("floor_p50_ratio", (median(mine) + median(floor_lat)) / median(mine))
                put("cpu_loop", (cpu1[0] - cpu0[0]) / n * 1e3)
                put("cpu_workers", (cpu1[1] - cpu0[1]) / n * 1e3)
                # the client sent 2n requests of the same size (service and floor)
                put("cpu_client", (own1 - own0 - core_cpu) / (2 * n) * 1e3)
                latencies.extend(lat)
                inproc_times.extend(mine)
                put("inproc_ms", median(mine) * 1e3)
                put("p50_ratio", median(lat) / median(mine))
                put("p50_over", (median(lat) - median(mine)) * 1e3)

                # Throughput: the in-process rate is measured right before and after each
                # HTTP phase; the ratio uses their mean.
                ref = ip.sequential(clips, len(clips))[0]
                put("inproc", ref)

                async def phase(
                    key: str, reqs: Sequence[bytes], n_req: int, conc: int, per_req: int = 1
                ) -> Load:
                    nonlocal ref
                    before = ref
                    load = account(await run_load(client, reqs, n_req, conc, per_req))
                    ref = ip.sequential(clips, len(clips))[0]
                    put("inproc", ref)
                    put(key, load.rate)
                    put(f"{key}_ratio", load.rate / ((before + ref) / 2))
                    return load

                for c in cfg.concurrencies:
                    s0 = await encoder_batches(control, svc.url)
                    if c == 16:  # against the core on as many threads as serving processes
                        par0 = ip.threaded(clips, 2 * len(clips), args.workers)
                    load = await phase(f"single{c}", singles, cfg.single_requests, c)
                    if c == 16:
                        par1 = ip.threaded(clips, 2 * len(clips), args.workers)
                        put("inproc_par", (par0 + par1) / 2)
                        put("single16_par_ratio", load.rate / ((par0 + par1) / 2))
                    s1 = await encoder_batches(control, svc.url)
                    runs = s1[1] - s0[1]
                    put(f"single{c}_encbatch", (s1[0] - s0[0]) / runs if runs else float("nan"))
                    put(f"single{c}_p50", float(np.percentile(load.latencies, 50)) * 1e3)
                for b in cfg.batch_sizes:
                    n_req = max(1, cfg.batch_clips // b)
                    await phase(f"batch{b}", batches[b], n_req, args.batch_concurrency, b)
                if seed:
                    for c in cfg.concurrencies:
                        sl = await run_load(seed_client, seed_singles, cfg.seed_requests, c)
                        put(f"seed{c}", sl.rate)
                        put(f"seed{c}_errors", sl.errors)
                        put(f"seed{c}_p50", float(np.percentile(sl.latencies, 50)) * 1e3)
                        put(f"vs_seed{c}", rows[f"single{c}"][-1] / sl.rate)

            res["rows"] = {k: median(v) for k, v in rows.items()}
            res["rows"]["inproc_ms"] = median(inproc_times) * 1e3
            res["lat"] = {q: float(np.percentile(latencies, q)) * 1e3 for q in (50, 95, 99)}
            res["lat_n"] = len(latencies)

            # scaling over HTTP: batch endpoint, batch sizes 1…64 (one repetition each)
            res["http_batches"] = {}
            for b in cfg.scaling_batches:
                n_req = max(2, cfg.batch_clips // b)
                load = account(await run_load(client, batches[b], n_req, args.batch_concurrency, b))
                res["http_batches"][b] = load.rate
        await client.aclose()
        await seed_client.aclose()
        await floor_client.aclose()
        res["mem_load"] = memory(svc.proc.pid)
        if seed:
            res["seed_rss_load"] = rss_mb(seed.proc.pid)
    finally:
        stop_server(svc)
        stop_server(floor)
        if seed:
            stop_server(seed)
    return res


async def bench_workers(
    args: argparse.Namespace, cfg: Config, clips: list[bytes], ip: InProcess
) -> dict:
    """One service with one worker and one with `--workers`, both up at once; per
    repetition, in ABBA order, the single endpoint at concurrency 16 on each, with the
    in-process core on `--workers` threads right before and after each phase, and the
    p50 at concurrency 1 on each paired clip by clip with the in-process time."""
    counts = (1, args.workers)
    servers: dict[int, Server] = {}
    out: dict[str, Any] = {"errors": []}
    try:
        for n in counts:
            env = dict(ORIGINAL_ENV, AUSCULT_ARTIFACTS_DIR=str(args.artifacts))
            env.update(AUSCULT_WORKERS=str(n), PYTHONUNBUFFERED="1")
            port = free_port()
            cmd = [sys.executable, "-m", "service", "--port", str(port)]
            servers[n] = start_server(f"auscult-{n}w", cmd, env, port, timeout=60)
            out[f"ready{n}"] = servers[n].ready_s
        clients = {n: LeanClient(svc.url) for n, svc in servers.items()}
        bodies = [multipart("file", [c]) for c in clips]
        singles = {
            n: [
                build_request(f"{svc.url}/v1/models/{args.model}/score", "POST", *b) for b in bodies
            ]
            for n, svc in servers.items()
        }
        for n in counts:  # warm-up: every connection of the phase, lazy paths
            load = await run_load(clients[n], singles[n], 64, 16)
            out["errors"] += load.error_samples
        rows: dict[str, list[float]] = {}
        for rep in range(cfg.reps):
            print(f"  workers: repetition {rep + 1}/{cfg.reps}", file=sys.stderr, flush=True)
            for n in counts if rep % 2 == 0 else counts[::-1]:
                before = ip.threaded(clips, 2 * len(clips), args.workers)
                load = await run_load(clients[n], singles[n], cfg.single_requests, 16)
                after = ip.threaded(clips, 2 * len(clips), args.workers)
                out["errors"] += load.error_samples
                rows.setdefault(f"rate{n}", []).append(load.rate)
                rows.setdefault(f"ratio{n}", []).append(load.rate / ((before + after) / 2))
                rows.setdefault("inproc_par", []).extend([before, after])
                lat, mine = [], []
                for i in range(cfg.latency_requests // 4):
                    t0 = time.perf_counter()
                    ip.score_one(clips[i % len(clips)])
                    mine.append(time.perf_counter() - t0)
                    one = await run_load(clients[n], [singles[n][i % len(clips)]], 1, 1)
                    lat.extend(one.latencies)
                    out["errors"] += one.error_samples
                rows.setdefault(f"p50_{n}", []).append(median(lat) * 1e3)
                rows.setdefault(f"p50_over{n}", []).append((median(lat) - median(mine)) * 1e3)
            rows.setdefault("gain", []).append(rows[f"rate{counts[1]}"][-1] / rows["rate1"][-1])
        for c in clients.values():
            await c.aclose()
        for n, svc in servers.items():
            out[f"mem{n}"] = memory(svc.proc.pid)
    finally:
        for svc in servers.values():
            stop_server(svc)
    out.update({k: median(v) for k, v in rows.items()})
    return out


def workers_table(res: dict, cfg: Config, workers: int) -> list[str]:
    def mem(m: dict[str, Any]) -> str:
        each = " / ".join(fmt(x, 0) for x in m["workers"])
        return f"{each} MB RSS per worker, {fmt(m['pss'], 0)} MB PSS in all"

    out = [
        f"## Worker processes: 1 vs {workers} (single endpoint, both services up, ABBA order)",
        "",
        f"{cfg.reps} repetitions of {cfg.single_requests} single-clip requests at concurrency 16 "
        f"and {cfg.latency_requests // 4} at concurrency 1 on each; in-process on {workers} "
        "threads measured right before and after each phase; medians",
        "",
        f"| | 1 worker | {workers} workers |",
        "|---|---:|---:|",
        f"| single endpoint @16, clips/s | {fmt(res['rate1'])} | {fmt(res[f'rate{workers}'])} |",
        f"| ÷ in-process on {workers} threads ({fmt(res['inproc_par'])} clips/s) | "
        f"{fmt(res['ratio1'], 2)} | {fmt(res[f'ratio{workers}'], 2)} |",
        f"| single p50 @1 / minus in-process ms | {fmt(res['p50_1'], 2)} / "
        f"{fmt(res['p50_over1'], 2)} ms | {fmt(res[f'p50_{workers}'], 2)} / "
        f"{fmt(res[f'p50_over{workers}'], 2)} ms |",
        f"| memory after the load | {mem(res['mem1'])} | {mem(res[f'mem{workers}'])} |",
        f"| start → /readyz 200 | {fmt(res['ready1'], 2)} s | {fmt(res[f'ready{workers}'], 2)} s |",
        f"| errors | {len(res['errors'])} | |",
        "",
        f"{workers} workers ÷ 1 worker at concurrency 16 (per repetition, median): "
        f"{fmt(res['gain'], 2)}",
    ]
    return out


PROTOCOLS = ("limited", "plain")


async def bench_protocol(args: argparse.Namespace, cfg: Config, clips: list[bytes]) -> dict:
    """Event-loop CPU per request of the service with service/serving/server.py's protocol (header
    limit, deadlines, connection cap) and with uvicorn's plain httptools protocol: one
    process serving the same app on two ports (bench/protocol_server.py), one request at a
    time, blocks alternated in ABBA order; medians over `protocol_reps` blocks of each."""
    env = dict(ORIGINAL_ENV, AUSCULT_ARTIFACTS_DIR=str(args.artifacts), PYTHONUNBUFFERED="1")
    ports = {"limited": free_port(), "plain": free_port()}
    server = start_server(
        "protocols",
        [
            sys.executable,
            str(REPO / "bench" / "protocol_server.py"),
            "--port",
            str(ports["limited"]),
            "--plain-port",
            str(ports["plain"]),
        ],
        env,
        ports["limited"],
        timeout=60,
    )
    pid = server.proc.pid
    try:
        urls = {p: f"http://127.0.0.1:{port}" for p, port in ports.items()}
        clients = {p: LeanClient(url) for p, url in urls.items()}
        kinds: dict[str, tuple[int, dict[str, list[bytes]]]] = {
            "healthz": (
                cfg.protocol_small,
                {p: [build_request(url + "/healthz", "GET", b"", {})] for p, url in urls.items()},
            ),
            "score": (
                cfg.protocol_score,
                {
                    p: [
                        build_request(
                            f"{url}/v1/models/{args.model}/score", "POST", *multipart("file", [c])
                        )
                        for c in clips
                    ]
                    for p, url in urls.items()
                },
            ),
        }
        errors: list[str] = []
        for n, reqs in kinds.values():  # warm-up
            for proto in PROTOCOLS:
                load = await run_load(clients[proto], reqs[proto], max(4, n // 10), 1)
                errors += load.error_samples
        per: dict[tuple[str, str], list[float]] = {}
        for rep in range(cfg.protocol_reps):
            order = PROTOCOLS if rep % 2 == 0 else PROTOCOLS[::-1]
            for kind, (n, reqs) in kinds.items():
                for proto in order:
                    c0 = loop_cpu_seconds(pid)
                    load = await run_load(clients[proto], reqs[proto], n, 1)
                    per.setdefault((kind, proto), []).append((loop_cpu_seconds(pid) - c0) / n * 1e6)
                    errors += load.error_samples
        for c in clients.values():
            await c.aclose()
    finally:
        stop_server(server)
    out: dict[str, Any] = {"errors": errors}
    for kind in kinds:
        limited, plain = per[kind, "limited"], per[kind, "plain"]
        out[kind] = {
            "limited": median(limited),
            "plain": median(plain),
            "diff": median([a - b for a, b in zip(limited, plain, strict=True)]),
        }
    return out


def protocol_table(res: dict, cfg: Config) -> list[str]:
    out = [
        "## Connection limits: event-loop CPU per request "
        "(service/serving/server.py vs plain httptools)",
        "",
        "one service process on two ports (bench/protocol_server.py); "
        f"{cfg.protocol_reps} blocks per protocol, one request at a time; GET /healthz "
        f"{cfg.protocol_small} and single-clip score {cfg.protocol_score} requests per block; "
        "medians (the difference: of the per-block differences)",
        "",
        "| request | limited protocol | plain httptools | difference |",
        "|---|---:|---:|---:|",
    ]
    for kind, label in (("healthz", "GET /healthz"), ("score", "POST score, 10-s clip")):
        r = res[kind]
        share = 100 * r["diff"] / r["plain"] if r["plain"] else float("nan")
        out.append(
            f"| {label} | {fmt(r['limited'], 1)} µs | {fmt(r['plain'], 1)} µs | "
            f"{r['diff']:+.1f} µs ({share:+.1f}%) |"
        )
    out.append(f"| errors | {len(res['errors'])} | | |")
    return out


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (as the service uses): the client's own CPU stays small."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=REPO / "artifacts",
        help="artifacts folder the service is started on (default ./artifacts)",
    )
    parser.add_argument("--model", default="gearbox", help="anomaly bundle to score with")
    parser.add_argument("--quick", action="store_true", help="small counts (CI)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (medians)")
    parser.add_argument(
        "--batch-concurrency",
        type=int,
        default=2,
        help="batch requests in flight when measuring the batch endpoint",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="AUSCULT_WORKERS for the service (default: its default, the CPUs available)",
    )
    parser.add_argument("--no-seed", action="store_true", help="skip the seed-style stack")
    parser.add_argument(
        "--workers-only",
        action="store_true",
        help="only the 1-worker vs --workers comparison of the single endpoint",
    )
    parser.add_argument("--seed", type=int, default=0, help="clip generator seed")
    parser.add_argument(
        "--protocol-only",
        action="store_true",
        help="only the connection-limits CPU section (limited vs plain httptools protocol)",
    )
    args = parser.parse_args(argv)
    args.artifacts = args.artifacts.resolve()
    if args.workers is None:
        from service.serving.process import available_cpus

        args.workers = available_cpus()
    cfg = QUICK if args.quick else FULL
    if args.reps:
        cfg = replace(cfg, reps=args.reps)
    bundle = args.artifacts / args.model
    if not (bundle / "manifest.json").is_file():
        print(f"no bundle at {bundle}; pass --artifacts DIR --model NAME", file=sys.stderr)
        return 2

    started = time.perf_counter()
    load_before = os.getloadavg()
    print(f"generating {cfg.clips} clips of 10 s …", file=sys.stderr, flush=True)
    clips = make_clips(cfg.clips, 10.0, args.seed)
    if args.protocol_only:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            protocol = runner.run(bench_protocol(args, cfg, clips))
        load_after = os.getloadavg()
        print(
            f"load average {load_before[0]:.2f} → {load_after[0]:.2f} · {os.cpu_count()} CPUs · "
            f"{time.perf_counter() - started:.0f} s\n"
        )
        print("\n".join(protocol_table(protocol, cfg)), flush=True)
        if protocol["errors"]:
            print(f"\nERROR: failed requests, e.g. {protocol['errors'][:3]}", file=sys.stderr)
            return 1
        return 0
    ip = InProcess(bundle)
    if args.workers_only:
        ip.sequential(clips, min(8, len(clips)))  # warm
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            res = runner.run(bench_workers(args, cfg, clips, ip))
        load_after = os.getloadavg()
        print(
            f"load average {load_before[0]:.2f} → {load_after[0]:.2f} · {os.cpu_count()} CPUs · "
            f"{time.perf_counter() - started:.0f} s\n"
        )
        print("\n".join(workers_table(res, cfg, args.workers)), flush=True)
        if res["errors"]:
            print(f"\nERROR: failed requests, e.g. {res['errors'][:3]}", file=sys.stderr)
            return 1
        return 0

    print("in-process: stages, threads, durations, batch sizes …", file=sys.stderr, flush=True)
    ip.sequential(clips, min(8, len(clips)))  # warm
    stages = ip.stages(clips)
    threaded = median(
        [ip.threaded(clips, len(clips), ip.settings.cpu_workers) for _ in range(cfg.reps)]
    )
    durations: dict[float, float] = {}
    for secs, n in ((1.0, cfg.clips), (10.0, cfg.clips), (60.0, cfg.long_clips)):
        dclips = clips if secs == 10.0 else make_clips(n, secs, args.seed + int(secs))
        durations[secs] = median([ip.sequential(dclips, len(dclips))[0] for _ in range(cfg.reps)])
    inproc_batches = {
        b: median([ip.batched(clips, max(len(clips), b), b) for _ in range(cfg.reps)])
        for b in cfg.scaling_batches
    }

    print("HTTP: auscult and seed-style stack …", file=sys.stderr, flush=True)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        http = runner.run(bench_http(args, cfg, clips, ip))
        print("HTTP: limited vs plain protocol …", file=sys.stderr, flush=True)
        protocol = runner.run(bench_protocol(args, cfg, clips))
    http["errors"] += len(protocol["errors"])
    http["error_samples"].extend(protocol["errors"])
    rows = http["rows"]
    load_after = os.getloadavg()

    # ------------------------------------------------------------------ table
    out: list[str] = []
    w = out.append
    inproc, inproc_ms = rows["inproc"], rows["inproc_ms"]
    w(f"# auscult serving benchmark ({'quick' if args.quick else 'full'} mode)")
    w("")
    w(
        f"bundle {bundle} · {cfg.clips} different 10-s 16-kHz clips (seed {args.seed}) · "
        f"{cfg.reps} repetitions, medians · {os.cpu_count()} CPUs · load average "
        f"{load_before[0]:.2f} → {load_after[0]:.2f} · {time.perf_counter() - started:.0f} s"
    )
    w("")
    w("## In-process limit (the service's core called directly, batch 1, one thread)")
    w("")
    w("| stage | ms per clip |")
    w("|---|---:|")
    for k, v in stages.items():
        w(f"| {k} | {fmt(v, 2)} |")
    w(f"| sum of stages | {fmt(sum(stages.values()), 2)} |")
    w(
        f"| **end to end, one thread** | **{fmt(inproc_ms, 2)} ms per clip (median) · "
        f"{fmt(inproc)} clips/s** |"
    )
    w(
        f"| end to end, {ip.settings.cpu_workers} threads (cpu_workers; informational) | "
        f"{fmt(threaded)} clips/s |"
    )
    w("")
    w(
        f"## Service over HTTP (`python -m service`, {args.workers} worker process"
        f"{'es' if args.workers > 1 else ''}; load: bench/loadgen.py, lean keep-alive client)"
    )
    w("")
    lat = http["lat"]
    w("| measure | value |")
    w("|---|---:|")
    w(
        f"| single clip, concurrency 1: latency p50 / p95 / p99 ({http['lat_n']} requests) | "
        f"{fmt(lat[50], 2)} / {fmt(lat[95], 2)} / {fmt(lat[99], 2)} ms |"
    )
    w(
        "| CPU per single-clip request at concurrency 1: server event loop / server worker "
        f"threads (all processes) / bench client | {fmt(rows['cpu_loop'], 2)} / "
        f"{fmt(rows['cpu_workers'], 2)} / {fmt(rows['cpu_client'], 2)} ms |"
    )
    w(
        "| HTTP floor (bench/floor_app.py: bare ASGI app on uvicorn, same requests, parses the "
        "upload, fixed reply): p50 / event-loop CPU per request | "
        f"{fmt(rows['floor_p50'], 2)} / {fmt(rows['floor_cpu_loop'], 2)} ms |"
    )
    for c in cfg.concurrencies:
        w(
            f"| single endpoint, concurrency {c} | {fmt(rows[f'single{c}'])} clips/s "
            f"(p50 {fmt(rows[f'single{c}_p50'])} ms, mean encoder batch "
            f"{fmt(rows[f'single{c}_encbatch'], 2)}) |"
        )
    for b in cfg.batch_sizes:
        w(
            f"| batch endpoint, {b} clips/request, {args.batch_concurrency} requests in flight | "
            f"{fmt(rows[f'batch{b}'])} clips/s |"
        )
    w(f"| errors (all auscult requests, incl. per-file errors) | {http['errors']} |")
    w("")
    if not args.no_seed:
        w("## Seed-style stack (Flask threaded, save to temp file, librosa, Keras `predict`)")
        w("")
        w("| concurrency | clips/s | p50 ms | errors | auscult ÷ seed |")
        w("|---|---:|---:|---:|---:|")
        for c in cfg.concurrencies:
            w(
                f"| {c} | {fmt(rows[f'seed{c}'])} | {fmt(rows[f'seed{c}_p50'])} | "
                f"{fmt(rows[f'seed{c}_errors'], 0)} | {fmt(rows[f'vs_seed{c}'])}x |"
            )
        w("")
    w("## Resources")
    w("")
    w("| | auscult | seed-style |")
    w("|---|---:|---:|")

    def sd(key: str, digits: int = 0) -> str:
        return fmt(http.get(key, float("nan")), digits)

    def per_worker(mem: dict[str, Any]) -> str:
        each = " / ".join(fmt(x, 0) for x in mem["workers"])
        sup = (
            f" + supervisor {fmt(mem['supervisor'], 0)}"
            if mem["supervisor"] == mem["supervisor"]
            else ""
        )
        return f"{each}{sup} MB RSS; all {fmt(mem['pss'], 0)} MB PSS"

    rest, after = http["mem_rest"], http["mem_load"]
    w(f"| memory at rest (after ready) | {per_worker(rest)} | {sd('seed_rss_rest')} MB |")
    w(f"| memory after the load | {per_worker(after)} | {sd('seed_rss_load')} MB |")
    w(f"| process start → /readyz 200 | {fmt(http['ready_s'], 2)} s | {sd('seed_ready_s', 2)} s |")
    w(f"| process start → first score | {fmt(http['first_response_s'], 2)} s | |")
    w("")
    w("## Scaling")
    w("")
    w("| clip length (in-process, one thread) | clips/s | ms per clip | ms per audio second |")
    w("|---|---:|---:|---:|")
    for secs, rate in durations.items():
        w(f"| {secs:g} s | {fmt(rate)} | {fmt(1e3 / rate, 2)} | {fmt(1e3 / rate / secs, 3)} |")
    w("")
    w("| batch size | in-process clips/s (one thread) | batch endpoint clips/s |")
    w("|---|---:|---:|")
    for b in cfg.scaling_batches:
        w(f"| {b} | {fmt(inproc_batches[b])} | {fmt(http['http_batches'].get(b, float('nan')))} |")
    w("")
    out.extend(protocol_table(protocol, cfg))
    w("")
    w("## Ratios (within this run; median of per-repetition ratios) vs targets")
    w("")
    w("| ratio | measured | target | met |")
    w("|---|---:|---:|:---:|")

    def target_row(
        label: str, value: float, digits: int, key: str, higher: bool, unit: str = ""
    ) -> None:
        target = TARGETS[key]
        bound = f"{'≥' if higher else '≤'} {target:g}{unit}"
        w(f"| {label} | {fmt(value, digits)}{unit} | {bound} | {check(value, target, higher)} |")

    for b in cfg.batch_sizes:
        target_row(
            f"batch endpoint ({b}) ÷ in-process clips/s", rows[f"batch{b}_ratio"], 2, "batch", True
        )
    target_row(
        f"single endpoint @16 ({args.workers} workers) ÷ in-process on {args.workers} threads",
        rows["single16_par_ratio"],
        2,
        "single16",
        True,
    )
    target_row(
        "single p50 @1 minus in-process ms per clip", rows["p50_over"], 2, "p50_ms", False, " ms"
    )
    if not args.no_seed:
        for c in cfg.concurrencies:
            target_row(f"auscult ÷ seed-style @{c}", rows[f"vs_seed{c}"], 1, "seed", True)
    target_row(
        "service memory after the load (PSS, all processes)",
        after["pss"],
        0,
        "rss_mb",
        False,
        " MB",
    )
    target_row("start → ready", http["ready_s"], 2, "ready_s", False, " s")
    w("")
    w(
        f"Against the in-process core on {ip.settings.cpu_workers} threads "
        f"({fmt(threaded)} clips/s, "
        "informational, no target): batch endpoint "
        + " / ".join(f"({b}) {fmt(rows[f'batch{b}'] / threaded, 2)}" for b in cfg.batch_sizes)
        + f", single endpoint @16 {fmt(rows['single16'] / threaded, 2)}. Single endpoint @16 "
        f"÷ in-process on one thread: {fmt(rows['single16_ratio'], 2)}; in-process on "
        f"{args.workers} threads: {fmt(rows['inproc_par'])} clips/s. Single p50 @1 ÷ "
        f"in-process ms: {fmt(rows['p50_ratio'], 2)}."
    )
    w(
        f"The HTTP floor alone would make the p50 ratio {fmt(rows['floor_p50_ratio'], 2)} "
        "(in-process ms + floor p50, ÷ in-process ms): the least any service on uvicorn "
        "pays for receiving this upload here; the rest of the service's ratio is FastAPI, "
        "middleware and auscult's own request handling."
    )
    print("\n".join(out), flush=True)
    if http["errors"]:
        print(
            f"\nERROR: {http['errors']} failed auscult requests, e.g. {http['error_samples'][:3]}",
            file=sys.stderr,
        )
        return 1
    seed_errors = sum(v for k, v in rows.items() if k.startswith("seed") and k.endswith("_errors"))
    if seed_errors:
        # a failing seed stack answers fast, so its throughput (and the ratio) would be meaningless
        print(f"\nERROR: {seed_errors:.0f} failed seed-style requests", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
