"""Hostile clients against the real service: what issue 24's audit attacked, as figures.

    .venv/bin/python bench/hostile.py                    # the full run (~2 min)
    .venv/bin/python bench/hostile.py --quick            # the short run CI executes

`python -m service` (two workers by default) on `--artifacts`, then:

1. **battery** — malformed HTTP, v2 shapes, dtypes and numbers at the edges, huge JSON,
   NaN samples, long filenames, preambles, HEAD, wrong methods, image garbage, a refused
   declared size: each answer's status, and whether its body has its protocol's shape
   (v1 `{"error": {"code", "message"}}`, v2 `{"error": "..."}`). Any 5xx fails the run.
2. **memory** — four 64-MiB v2 JSON bodies of numbers and four batches of eight silent
   300-s FLACs at once: each worker's peak RSS against README's bound, and its RSS 30 s
   after (`--settle`) against its idle figure + 50 MB.
3. **idle flood** — `--idle` idle connections from this process, then requests on fresh
   connections: how many succeed, and their p50.
4. **kill -9** — `--rate` req/s of 10-s clips on keep-alive connections; one worker is
   killed with SIGKILL a third of the way in: requests that failed, and how long until the
   supervisor's replacement answered.

Exit status 1 if a target is missed: a 5xx, an error body off its shape, a worker over
its bound or not back within 50 MB, or a request of the other client refused in the flood.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import signal
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402

from bench.serving import (  # noqa: E402
    ORIGINAL_ENV,
    free_port,
    make_clips,
    rss_mb,
    server_pids,
    start_server,
    stop_server,
)

MiB = 1024 * 1024


def wav(samples: np.ndarray, subtype: str = "PCM_16", rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def flac_silence(seconds: float) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * 16000), np.float32), 16000, format="FLAC")
    return buf.getvalue()


def multipart(parts: list[tuple[str, str, bytes]], boundary: str = "b0undary") -> bytes:
    out = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{name}"\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for field, name, data in parts
    )
    return out + f"--{boundary}--\r\n".encode()


def raw(port: int, request: bytes, timeout: float = 15) -> bytes:
    """Send `request` on a fresh connection; what came back until close or `timeout`."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        out = bytearray()
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return bytes(out)


def http(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    if body or method in ("POST", "PUT"):
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


@dataclass
class Answer:
    case: str
    status: int
    shape_ok: bool
    note: str


def judge(case: str, path: str, method: str, answer: bytes) -> Answer:
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return Answer(case, 0, False, f"no HTTP answer: {answer[:60]!r}")
    if status < 400 or method == "HEAD":
        return Answer(case, status, True, "")
    if b"transfer-encoding: chunked" in head.lower():
        body = b"".join(body.split(b"\r\n")[1::2])
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return Answer(case, status, False, f"body {body[:60]!r}")
    if path.startswith("/v2/"):
        ok = isinstance(error, str) and bool(error)
    else:
        ok = isinstance(error, dict) and set(error) == {"code", "message"}
    note = error if isinstance(error, str) else error.get("code", "")
    return Answer(case, status, ok, str(note)[:60])


def v2_body(shape: list, data: object, name: str = "spectrogram", dtype: str = "FP32") -> bytes:
    tensor = {"name": name, "shape": shape, "datatype": dtype, "data": data}
    return json.dumps({"inputs": [tensor]}).encode()


def numbers_json(mib: int) -> bytes:
    """A v2 JSON request of about `mib` MiB of numbers ("1,1,1,…")."""
    n = mib * MiB // 2
    return b'{"inputs":[{"name":"spectrogram","shape":[%d],"datatype":"FP32","data":[' % n + (
        b"1," * (n - 1) + b"1]}]}"
    )


def battery(port: int, model: str, h: int, w: int) -> list[Answer]:
    clip = make_clips(1, 2.0, 0)[0]
    nan = np.sin(np.arange(16000, dtype=np.float32) / 5)
    nan[100] = np.nan
    preamble = b"a preamble\r\n" + multipart([("file", "a.wav", clip)])
    cases: list[tuple[str, str, str, bytes]] = [
        ("malformed request line", "/", "", b"FOO /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
        ("not HTTP at all", "/", "", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"),
        ("HEAD /healthz", "/healthz", "HEAD", http("HEAD", "/healthz")),
        ("GET /v1/models/reload", "/v1/models/reload", "GET", http("GET", "/v1/models/reload")),
    ]
    v2 = f"/v2/models/{model}/infer"
    json_h = {"Content-Type": "application/json"}
    for label, shape, data in [
        ("v2 shape [0, 1e22]", [0, 10**22], []),
        ("v2 shape [0, 3037000500²]", [0, 3037000500, 3037000500], []),
        ("v2 65 dimensions", [1] * 65, [0.5]),
        ("v2 4000-digit integer", [1], [int("9" * 4000)]),
        ("v2 window of 1e30", [1, h, w], [1e30] + [0.0] * (h * w - 1)),
        ("v2 NaN", [1, h, w], [float("nan")] + [0.0] * (h * w - 1)),
        ("v2 negative dimension", [-1, h, w], []),
    ]:
        cases.append((label, v2, "POST", http("POST", v2, v2_body(shape, data), json_h)))
    cases += [
        ("v2 not JSON", v2, "POST", http("POST", v2, b"{nope", json_h)),
        ("v2 INT64", v2, "POST", http("POST", v2, v2_body([1], [1], dtype="INT64"), json_h)),
        ("v2 16 MiB of numbers", v2, "POST", http("POST", v2, numbers_json(16), json_h)),
    ]
    score = f"/v1/models/{model}/score"
    mp = {"Content-Type": "multipart/form-data; boundary=b0undary"}
    for label, body in [
        ("NaN samples", multipart([("file", "n.wav", wav(nan, "FLOAT"))])),
        ("8 kB filename", multipart([("file", "a" * 7900 + ".wav", clip)])),
        ("12 kB filename", multipart([("file", "a" * 12000 + ".wav", clip)])),
        ("multipart preamble", preamble),
        ("PNG garbage", multipart([("file", "x.png", b"\x89PNG\r\n\x1a\n" + bytes(30))])),
        ("JPEG garbage", multipart([("file", "x.jpg", b"\xff\xd8\xff" + bytes(50))])),
    ]:
        cases.append((label, score, "POST", http("POST", score, body, mp)))
    big = (
        f"POST {score} HTTP/1.1\r\nHost: b\r\nContent-Length: {1 << 30}\r\n"
        "Content-Type: multipart/form-data; boundary=b0undary\r\n\r\n"
    ).encode() + b"--b0undary\r\n"
    cases.append(("declared 1 GiB body", score, "POST", big))
    spec = f"/v1/models/{model}/spectrogram"
    png = multipart([("file", "x.png", b"\x89PNG\r\n\x1a\n" + bytes(30))])
    cases.append(("spectrogram of PNG garbage", spec, "POST", http("POST", spec, png, mp)))
    out = []
    for label, path, method, request in cases:
        t0 = time.perf_counter()
        answer = judge(label, path, method, raw(port, request))
        if label == "declared 1 GiB body":
            answer.note += f" (closed after {time.perf_counter() - t0:.2f} s)"
        out.append(answer)
    return out


def workers_rss(supervisor: int) -> dict[int, float]:
    """RSS (MB) of each live worker; one that exits while this reads is left out."""
    out = {}
    for p in server_pids(supervisor):
        if p != supervisor:
            try:
                out[p] = rss_mb(p)
            except OSError:
                continue
    return out


def memory(url: str, supervisor: int, model: str, settle_s: float, mib: int) -> dict:
    idle = workers_rss(supervisor)
    peak = dict(idle)
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            for p, r in workers_rss(supervisor).items():
                peak[p] = max(peak.get(p, 0.0), r)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    numbers = numbers_json(mib)
    silent = flac_silence(300.0)

    def big_json(_: int) -> int:
        r = httpx.post(
            f"{url}/v2/models/{model}/infer",
            content=numbers,
            headers={"content-type": "application/json"},
            timeout=120,
        )
        return r.status_code

    def flac_batch(_: int) -> int:
        files = [("files", (f"{i}.flac", silent)) for i in range(8)]
        r = httpx.post(f"{url}/v1/models/{model}/score/batch", files=files, timeout=120)
        return r.status_code

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(big_json, range(4))) + list(pool.map(flac_batch, range(4)))
    load_s = time.perf_counter() - t0
    stop.set()
    sampler.join()
    time.sleep(settle_s)
    after = workers_rss(supervisor)
    return {"idle": idle, "peak": peak, "after": after, "statuses": statuses, "load_s": load_s}


def idle_flood(port: int, url: str, model: str, n: int) -> dict:
    clip = make_clips(1, 10.0, 1)[0]
    idle = []
    for _ in range(n):
        try:
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        except OSError:
            break
    time.sleep(0.3)
    ok, latencies, failures = 0, [], []
    for _ in range(20):
        t0 = time.perf_counter()
        try:
            with httpx.Client(timeout=15) as c:  # a fresh connection each time
                r = c.post(f"{url}/v1/models/{model}/score", files={"file": ("a.wav", clip)})
            if r.status_code == 200:
                ok += 1
                latencies.append(time.perf_counter() - t0)
            else:
                failures.append(str(r.status_code))
        except httpx.HTTPError as e:
            failures.append(type(e).__name__)
    for s in idle:
        s.close()
    p50 = statistics.median(latencies) * 1000 if latencies else float("nan")
    return {"opened": len(idle), "ok": ok, "p50_ms": p50, "failures": failures}


def kill_one(url: str, supervisor: int, model: str, rate: float, seconds: float) -> dict:
    clip = make_clips(1, 10.0, 2)[0]
    results: list[tuple[float, str]] = []  # (time, "ok" or the failure)
    lock = threading.Lock()
    start = time.monotonic()
    threads = 8

    def client(k: int) -> None:
        period = threads / rate
        nxt = start + k * period / threads
        with httpx.Client(timeout=30) as c:
            while (now := time.monotonic()) < start + seconds:
                if now < nxt:
                    time.sleep(nxt - now)
                nxt += period
                try:
                    r = c.post(f"{url}/v1/models/{model}/score", files={"file": ("a.wav", clip)})
                    what = "ok" if r.status_code == 200 else str(r.status_code)
                except httpx.HTTPError as e:
                    what = type(e).__name__
                with lock:
                    results.append((time.monotonic() - start, what))

    pool = [threading.Thread(target=client, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    time.sleep(seconds / 3)
    victim = sorted(workers_rss(supervisor))[0]
    killed_at = time.monotonic() - start
    os.kill(victim, signal.SIGKILL)
    replaced_s = float("nan")
    while time.monotonic() - start < seconds:
        pids = set(workers_rss(supervisor))
        if len(pids) >= 2 and victim not in pids:  # the replacement is forked
            replaced_s = time.monotonic() - start - killed_at
            break
        time.sleep(0.01)
    for t in pool:
        t.join()
    failed = [(t, w) for t, w in results if w != "ok"]
    kinds: dict[str, int] = {}
    for _, w in failed:
        kinds[w] = kinds.get(w, 0) + 1
    last = max((t for t, _ in failed), default=killed_at) - killed_at
    return {
        "requests": len(results),
        "failed": len(failed),
        "kinds": kinds,
        "respawned_s": replaced_s,
        "last_failure_after_kill_s": last,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--artifacts", type=Path, default=REPO / "artifacts")
    ap.add_argument("--model", default="gearbox")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--idle", type=int, default=600, help="idle connections in the flood")
    ap.add_argument("--settle", type=float, default=30.0, help="seconds before RSS 'after'")
    ap.add_argument("--json-mib", type=int, default=64, help="size of each huge JSON body")
    ap.add_argument("--rate", type=float, default=50.0, help="req/s during the kill")
    ap.add_argument("--kill-seconds", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true", help="small figures for CI")
    args = ap.parse_args(argv)
    if args.quick:
        args.idle, args.settle, args.json_mib, args.kill_seconds = 120, 3.0, 8, 6.0
    port = free_port()
    env = {**ORIGINAL_ENV, "AUSCULT_ARTIFACTS_DIR": str(args.artifacts)}
    env["AUSCULT_WORKERS"] = str(args.workers)
    env["AUSCULT_LOG_LEVEL"] = "warning"
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    server = start_server("hostile", cmd, env, port, timeout=120)
    sup = server.proc.pid
    failures: list[str] = []
    try:
        meta = httpx.get(f"{server.url}/v2/models/{args.model}").json()
        h, w = meta["inputs"][1]["shape"][1:3]
        print(f"# bench/hostile.py: {args.workers} workers, model {args.model}\n")
        print("## battery\n\n| case | status | body shape | note |\n|---|---|---|---|")
        for a in battery(port, args.model, h, w):
            print(f"| {a.case} | {a.status} | {'ok' if a.shape_ok else 'WRONG'} | {a.note} |")
            if a.status >= 500 or a.status == 0 or not a.shape_ok:
                failures.append(f"battery: {a.case} → {a.status} {a.note}")
        m = memory(server.url, sup, args.model, args.settle, args.json_mib)
        bound = readme_bound_mb(min(m["idle"].values()))
        print(
            f"\n## memory: 4 x {args.json_mib}-MiB v2 JSON + 4 batches of 8 silent 300-s "
            f"FLACs at once ({m['load_s']:.1f} s; statuses {sorted(set(m['statuses']))})\n"
        )
        print(f"| worker | idle MB | peak MB | bound MB | after {args.settle:g} s | within 50 MB |")
        print("|---|---|---|---|---|---|")
        for p in sorted(m["idle"]):
            idle, peak, after = m["idle"][p], m["peak"].get(p, 0.0), m["after"].get(p, 0.0)
            back = after - idle <= 50
            print(f"| {p} | {idle:.0f} | {peak:.0f} | {bound:.0f} | {after:.0f} | {back} |")
            if peak > bound:
                failures.append(f"memory: worker {p} peaked at {peak:.0f} MB > {bound:.0f}")
            if not back and args.settle >= 30:
                failures.append(f"memory: worker {p} at {after:.0f} MB, idle {idle:.0f}")
        if any(s >= 500 and s != 503 for s in m["statuses"]):
            failures.append(f"memory: statuses {m['statuses']}")
        f = idle_flood(port, server.url, args.model, args.idle)
        print(
            f"\n## idle flood: {f['opened']} idle connections, then 20 requests on fresh "
            f"connections: {f['ok']}/20 answered 200, p50 {f['p50_ms']:.0f} ms "
            f"{'; failures ' + ', '.join(f['failures']) if f['failures'] else ''}"
        )
        if f["ok"] < 20:
            failures.append(f"idle flood: {f['ok']}/20")
        k = kill_one(server.url, sup, args.model, args.rate, args.kill_seconds)
        print(
            f"\n## kill -9 of one worker at {args.rate:g} req/s: {k['failed']} of "
            f"{k['requests']} requests failed {k['kinds'] or ''}; the supervisor's "
            f"replacement forked after {k['respawned_s'] * 1000:.0f} ms; the last failure "
            f"came {k['last_failure_after_kill_s'] * 1000:.0f} ms after the kill"
        )
    finally:
        stop_server(server)
    print("\n" + ("all targets met" if not failures else "MISSED:\n- " + "\n- ".join(failures)))
    return 1 if failures else 0


def readme_bound_mb(rest_mb: float) -> float:
    """README's worst case per worker with the default settings: RSS at rest + twice the
    buffered bytes + the per-file working set + the model inputs of every request."""
    from service.settings import Settings

    s = Settings(artifacts_dir=REPO)  # type: ignore[arg-type]
    per_file = s.cpu_workers * 40 * s.max_audio_seconds * 16000
    inputs = s.max_concurrency * 17 * MiB
    return rest_mb + (2 * s.max_buffered_bytes + per_file + inputs) / MiB


if __name__ == "__main__":
    raise SystemExit(main())
