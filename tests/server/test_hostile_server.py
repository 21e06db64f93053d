"""Hostile clients against the real server process over real sockets (issue 12):
stalled and abandoned uploads, header floods, slow headers, connection floods, early
errors to `Connection: close` clients, and memory over rounds of worst-case batches.

One `python -m service` process per module, with small limits so every case takes
seconds. Timing bounds are generous: the machine is shared.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import socket
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.models.bundle import read_manifest
from service.serving.server import NEW_CONNECTION_GRACE_S
from tests.conftest import tone, wav_bytes
from tests.helpers import GOOD_WAV, start_service, stop_service

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 3.0
MAX_CONCURRENCY = 4
MAX_CONNECTIONS = 40
MAX_HEADER_BYTES = 16 * 1024
MAX_BATCH_BYTES = 4 * 1024 * 1024
MAX_BUFFERED_BYTES = 16 * 1024 * 1024
MAX_REQUEST_SAMPLES = 1 << 22
CPU_WORKERS = 2


@dataclass
class Server:
    url: str
    port: int
    pid: int
    log: Path

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def metric(self, text: str) -> float:
        """The value of the first Prometheus sample line starting with `text` (0 if none)."""
        body = httpx.get(f"{self.url}/metrics", timeout=10).text
        for line in body.splitlines():
            if line.startswith(text):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


@pytest.fixture(scope="module")
def server(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads the server's RSS from /proc")
    svc = start_service(
        tmp_path_factory.mktemp("server"),
        AUSCULT_ARTIFACTS_DIR=str(tiny_bundle.parent),
        AUSCULT_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
        AUSCULT_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S),
        AUSCULT_MAX_CONCURRENCY=str(MAX_CONCURRENCY),
        AUSCULT_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        AUSCULT_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
        AUSCULT_MAX_UPLOAD_BYTES=str(2 * 1024 * 1024),
        AUSCULT_MAX_BATCH_BYTES=str(MAX_BATCH_BYTES),
        AUSCULT_MAX_BUFFERED_BYTES=str(MAX_BUFFERED_BYTES),
        AUSCULT_MAX_REQUEST_SAMPLES=str(MAX_REQUEST_SAMPLES),
        AUSCULT_CPU_WORKERS=str(CPU_WORKERS),
        AUSCULT_MAX_BATCH_FILES="8",
    )
    try:
        yield Server(svc.url, svc.port, svc.proc.pid, svc.log)
    finally:
        stop_service(svc)
    text = svc.log.read_text()
    assert '"level": "error"' not in text, text[-3000:]  # no traceback from any of it


def _connect(server: Server, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    return sock


def _read_all(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends until it closes (or `timeout` passes); a reset ends it too."""
    sock.settimeout(timeout)
    out = bytearray()
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return bytes(out)


def _still_open(socks: list[socket.socket], timeout: float) -> int:
    """How many of `socks` the server has not closed: a read that waits `timeout` (an idle
    connection waiting for its request) or brings data. EOF or a reset is a closed one."""
    count = 0
    for sock in socks:
        sock.settimeout(timeout)
        try:
            count += sock.recv(1024) != b""
        except TimeoutError:
            count += 1
        except ConnectionResetError:
            pass
    return count


def _multipart(field: str, files: list[bytes], boundary: str = "hostile") -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{i}.wav"'
        f"\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(files)
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def _post_head(path: str, length: int, close: bool = False) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: {length}\r\n"
        "Content-Type: multipart/form-data; boundary=hostile\r\n"
        + ("Connection: close\r\n" if close else "")
        + "\r\n"
    ).encode()


def _score_latencies(server: Server, n: int) -> list[float]:
    out = []
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for _ in range(n):
            start = time.perf_counter()
            r = c.post("/v1/models/tiny/score", files={"file": ("a.wav", GOOD_WAV)})
            out.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text
    return out


def test_stalled_uploads_hold_no_scoring_slot_and_end_in_408(server: Server) -> None:
    idle = statistics.median(_score_latencies(server, 7))
    body = _multipart("file", [GOOD_WAV])
    stalled = []
    for _ in range(4 * MAX_CONCURRENCY):  # 16 stalled uploads, 4x the scoring slots
        sock = _connect(server)
        sock.sendall(_post_head("/v1/models/tiny/score", len(body)) + body[:100])
        stalled.append(sock)
    time.sleep(0.3)  # they are all inside the app, reading their bodies
    try:
        loaded = statistics.median(_score_latencies(server, 7))
        assert loaded <= 2 * idle + 0.5, (idle, loaded)  # generous: a shared machine
        for sock in stalled:  # each gets its answer once the body deadline passes
            answer = _read_all(sock, BODY_TIMEOUT_S + 10)
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b'"code":"request_timeout"' in answer.replace(b" ", b""), answer
    finally:
        for sock in stalled:
            sock.close()
    assert server.metric('auscult_errors_total{code="internal_error"}') == 0
    assert server.metric('auscult_errors_total{code="overloaded"}') == 0


def test_a_client_that_leaves_mid_upload_is_counted_not_a_500(server: Server) -> None:
    before = server.metric('auscult_errors_total{code="client_disconnected"}')
    body = _multipart("file", [GOOD_WAV])
    for _ in range(3):
        with _connect(server) as sock:
            sock.sendall(_post_head("/v1/models/tiny/score", len(body)) + body[:1000])
            time.sleep(0.1)
    deadline = time.monotonic() + 10
    while server.metric('auscult_errors_total{code="client_disconnected"}') < before + 3:
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.1)
    assert server.metric('auscult_errors_total{code="internal_error"}') == 0
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_oversized_headers_get_431_before_authentication(server: Server) -> None:
    with _connect(server) as sock:
        pad = "p" * (MAX_HEADER_BYTES + 1000)
        sock.sendall(f"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\n\r\n".encode())
        answer = _read_all(sock, 10)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"headers_too_large" in answer


def test_a_header_flood_does_not_grow_memory(server: Server) -> None:
    rss = server.rss_mb()
    for _ in range(4):  # each would be 16 MB of header; the server stops at 16 kB
        with _connect(server) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: ")
            try:
                for _ in range(256):
                    sock.sendall(b"p" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed by the server: what should happen
            _read_all(sock, 5)
    assert server.rss_mb() < rss + 40, (rss, server.rss_mb())
    assert httpx.get(f"{server.url}/healthz").status_code == 200


def test_slow_and_silent_connections_are_closed_at_the_header_deadline(server: Server) -> None:
    start = time.monotonic()
    with _connect(server) as slow, _connect(server) as silent:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        slow_answer = _read_all(slow, HEADER_TIMEOUT_S + 10)
        silent_answer = _read_all(silent, HEADER_TIMEOUT_S + 10)
    assert time.monotonic() - start < HEADER_TIMEOUT_S + 8
    assert slow_answer.startswith(b"HTTP/1.1 408"), slow_answer[:200]
    assert silent_answer.startswith(b"HTTP/1.1 408"), silent_answer[:200]


def test_the_connection_cap_holds_by_closing_idle_connections(server: Server) -> None:
    socks = [_connect(server) for _ in range(MAX_CONNECTIONS + 10)]
    try:
        time.sleep(0.2)
        closed_at_once = len(socks) - _still_open(socks, 0.05)
        assert closed_at_once >= 10, closed_at_once
    finally:
        for sock in socks:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(f"{server.url}/healthz").status_code == 200


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/v1/models/nope/score", 404, id="unknown-model"),
        pytest.param("/v1/models/tiny/score", 415, id="not-multipart"),
    ],
)
def test_an_early_error_reaches_a_connection_close_client(
    server: Server, path: str, status: int
) -> None:
    body = _multipart("file", [np.random.default_rng(0).bytes(600_000)])
    head = _post_head(path, len(body), close=True)
    if status == 415:
        head = head.replace(b"multipart/form-data; boundary=hostile", b"text/plain")
    for _ in range(3):
        with _connect(server) as sock:
            sock.sendall(head)
            time.sleep(0.05)  # the app answers before the body arrives
            sock.sendall(body)
            answer = _read_all(sock, 10)
        assert answer.startswith(f"HTTP/1.1 {status}".encode()), answer[:200]


def test_memory_after_four_rounds_of_worst_case_batches(server: Server, tiny_bundle: Path) -> None:
    garbage = GOOD_WAV[:12] + np.random.default_rng(1).bytes(1_000_000)
    long_float = wav_bytes(tone(15.0), subtype="FLOAT")  # ~1 MB, 15 s: decoded and scored
    files = [garbage, long_float, garbage, long_float]  # just under MAX_BATCH_BYTES
    body = _multipart("files", files)
    assert len(body) < MAX_BATCH_BYTES

    def one_batch() -> int:
        r = httpx.post(
            f"{server.url}/v1/models/tiny/score/batch",
            content=body,
            headers={"content-type": "multipart/form-data; boundary=hostile"},
            timeout=60,
        )
        if r.status_code == 200:
            codes = [e.get("error", {}).get("code") for e in r.json()["results"]]
            assert codes == ["invalid_audio", None, "invalid_audio", None], codes
        return r.status_code

    def round_() -> None:
        with concurrent.futures.ThreadPoolExecutor(MAX_CONCURRENCY) as pool:
            statuses = list(pool.map(lambda _: one_batch(), range(MAX_CONCURRENCY)))
        assert set(statuses) <= {200, 503}, statuses  # 503 overloaded is allowed, not 5xx
        assert 200 in statuses

    baseline = server.rss_mb()
    round_()
    time.sleep(0.5)  # the trim after the last request runs in a thread
    after_one = server.rss_mb()
    for _ in range(3):
        round_()
    time.sleep(0.5)
    after_four = server.rss_mb()
    assert after_four <= 2 * after_one, (baseline, after_one, after_four)
    # the bound of docs/operations.md: uploads in memory + the per-file working set of the
    # worker threads
    # + the model inputs of every scoring request
    f = read_manifest(tiny_bundle).features
    assert f.window_seconds is not None
    windows = MAX_REQUEST_SAMPLES / f.sample_rate / (f.window_hop_seconds or f.window_seconds / 2)
    images = MAX_CONCURRENCY * windows * f.height * f.width * 4
    per_file = CPU_WORKERS * 40 * MAX_REQUEST_SAMPLES
    bound = baseline + (2 * MAX_BUFFERED_BYTES + per_file + images) / 2**20
    assert after_four <= bound, (baseline, after_one, after_four, bound)
    assert server.metric('auscult_errors_total{code="internal_error"}') == 0


def test_idle_connections_from_one_client_do_not_stop_another_clients_requests(
    server: Server,
) -> None:
    # issue 24: 600 idle connections filled the 256-per-worker cap and every new one was
    # closed for up to the header deadline; now the oldest idle ones make room
    idle = [_connect(server) for _ in range(4 * MAX_CONNECTIONS)]
    try:
        time.sleep(0.2)
        for _ in range(10):
            with httpx.Client(base_url=server.url, timeout=10) as c:  # a new connection each
                r = c.post("/v1/models/tiny/score", files={"file": ("a.wav", GOOD_WAV)})
                assert r.status_code == 200, r.text
        open_idle = _still_open(idle, 0.01)
        assert open_idle <= MAX_CONNECTIONS, open_idle
    finally:
        for sock in idle:
            sock.close()


def test_malformed_http_gets_the_json_error_body(server: Server) -> None:
    for request in (b"FOO /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/9.9 junk\r\n\r\n"):
        with _connect(server) as sock:
            sock.sendall(request)
            answer = _read_all(sock, 10)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"application/json" in head, answer[:300]
        error = json.loads(body)["error"]
        assert error["code"] == "bad_request" and error["message"], error


def test_a_413_before_the_body_closes_the_connection_at_once(server: Server) -> None:
    # issue 24: the connection kept reading the refused body until a timeout
    with _connect(server) as sock:
        sock.sendall(_post_head("/v1/models/tiny/score/batch", 10 * MAX_BATCH_BYTES))
        sock.sendall(b"--hostile\r\n" + bytes(100_000))
        start = time.monotonic()
        answer = _read_all(sock, 6)
        took = time.monotonic() - start
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"connection: close" in answer.lower() and took < 4, (took, answer[:300])


def test_one_client_holds_at_most_its_share_of_connections(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    svc = start_service(
        tmp_path,
        AUSCULT_ARTIFACTS_DIR=str(tiny_bundle.parent),
        AUSCULT_MAX_CONNECTIONS_PER_CLIENT="5",
        AUSCULT_HEADER_TIMEOUT_S="30",
    )
    try:
        idle = [socket.create_connection(("127.0.0.1", svc.port), timeout=10) for _ in range(12)]
        # the newcomers beyond the cap are given the grace to send a request first
        time.sleep(NEW_CONNECTION_GRACE_S + 0.3)
        still_open = _still_open(idle, 0.05)
        assert still_open <= 5, still_open
        r = httpx.post(f"{svc.url}/v1/models/tiny/score", files={"file": ("a.wav", GOOD_WAV)})
        assert r.status_code == 200, r.text
        for sock in idle:
            sock.close()
    finally:
        stop_service(svc)


def test_a_small_upload_of_long_silence_gives_its_memory_back(server: Server) -> None:
    # issue 24: eight silent 300-s FLACs (112 kB) left a worker 166 MB larger for good: the
    # trim ran only after 8 MB of upload, and not in the worker threads' malloc arenas
    silence = wav_bytes(np.zeros(60 * 16000, np.float32), subtype="PCM_16")
    flac = _to_flac(silence)
    body = _multipart("files", [flac] * 4)  # 3.8 M samples: within MAX_REQUEST_SAMPLES

    def batch() -> None:
        r = httpx.post(
            f"{server.url}/v1/models/tiny/score/batch",
            content=body,
            headers={"content-type": "multipart/form-data; boundary=hostile"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert all("score" in e for e in r.json()["results"]), r.text[:300]

    before = server.rss_mb()
    for _ in range(3):
        batch()
    time.sleep(1.0)  # the trim runs in a thread after the request
    # measured on a fresh worker: +47 MB (first-use allocations included), and +115 MB
    # with the trim after 8 MB of upload only and one malloc arena per thread
    assert server.rss_mb() - before <= 75, (before, server.rss_mb())


def _to_flac(wav: bytes) -> bytes:
    import io

    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(wav), dtype="float32")
    out = io.BytesIO()
    sf.write(out, samples, rate, format="FLAC")
    return out.getvalue()
