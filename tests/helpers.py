"""Test helpers for the HTTP tests: fake runtimes, a client on any app, error-body checks,
the real service in a subprocess."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from service.models.bundle import Manifest
from service.models.runtimes import AnomalyRuntime
from tests.conftest import REPO, tone, wav_bytes


class FakeAnomalyRuntime(AnomalyRuntime):
    """A loaded anomaly runtime without onnxruntime (after MLServer's SumModel/ErrorModel).

    `score_fn` maps a `(batch, height, width)` batch to `(batch,)` scores; the
    default is the mean pixel value. It runs in the service's worker threads. For a bundle
    with operating conditions every condition gets the same scores.
    """

    def __init__(
        self,
        name: str,
        manifest: Manifest,
        score_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    ) -> None:
        super().__init__(Path(name), manifest)
        self.status = "ready"
        self.score_fn = score_fn or (lambda images: images.mean(axis=(1, 2)).astype(np.float64))

    def score(self, images: np.ndarray) -> np.ndarray:
        out = self.score_fn(images)
        if out.ndim == 1 and self.conditions:
            out = np.repeat(out[:, None], len(self.conditions), axis=1)
        return out


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An async client on `app` with its lifespan run; an exception escaping the app fails
    the test (the service must answer every request itself)."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def post_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of an HTTP/1.1 `POST path` with these headers, for tests that drive
    an app with their own `receive` and `send`."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The response is exactly `{"error": {"code": code, "message": <non-empty text>}}`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body  # type: ignore[no-any-return]


GOOD_WAV = wav_bytes(tone(1.0))


async def assert_still_scores(client: httpx.AsyncClient, model: str = "tiny") -> float:
    """The service answers a good score request after whatever came before."""
    r = await client.post(
        f"/v1/models/{model}/score", files={"file": ("ok.wav", GOOD_WAV, "audio/wav")}
    )
    assert r.status_code == 200, r.text
    return float(r.json()["score"])


def png_bytes(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (width, height), 128).save(buf, format="PNG")
    return buf.getvalue()


def with_wav_sizes(wav: bytes, data_bytes: int) -> bytes:
    """A copy of a canonical 44-byte-header WAV whose RIFF and data sizes claim `data_bytes`."""
    out = bytearray(wav)
    data_at = out.find(b"data")
    assert data_at > 0
    out[4:8] = min(data_bytes + data_at, 0xFFFFFFFF).to_bytes(4, "little")
    out[data_at + 4 : data_at + 8] = min(data_bytes, 0xFFFFFFFF).to_bytes(4, "little")
    return bytes(out)


def with_flac_streaminfo(
    flac: bytes,
    sample_rate: int | None = None,
    channels: int | None = None,
    frames: int | None = None,
) -> bytes:
    """A copy of a FLAC file whose STREAMINFO header claims another rate, channel count or
    length; the encoded frames are left as they are."""
    out = bytearray(flac)
    assert out[:4] == b"fLaC" and out[4] & 0x7F == 0  # first metadata block is STREAMINFO
    at = 8 + 10  # 20 bits rate, 3 bits channels-1, 5 bits bits-per-sample-1, 36 bits frames
    bits = int.from_bytes(out[at : at + 8], "big")
    rate = sample_rate if sample_rate is not None else bits >> 44
    ch = channels if channels is not None else ((bits >> 41) & 0x7) + 1
    n = frames if frames is not None else bits & ((1 << 36) - 1)
    bits = (rate << 44) | ((ch - 1) << 41) | (((bits >> 36) & 0x1F) << 36) | n
    out[at : at + 8] = bits.to_bytes(8, "big")
    return bytes(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningService:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path


def start_service(log_dir: Path, ready_path: str = "/readyz", **settings: str) -> RunningService:
    """`python -m service` on a free loopback port with exactly these AUSCULT_* `settings`
    (the caller's others cleared; one worker process unless AUSCULT_WORKERS is given), its
    output in log_dir/service-PORT.log; returns once GET `ready_path` answers 200
    (RuntimeError with the log's tail if it exits or 90 s pass)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUSCULT_")}
    env.update({"AUSCULT_WORKERS": "1", **settings})
    log = log_dir / f"service-{port}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited: {log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}{ready_path}", timeout=2).status_code == 200:
                return RunningService(url, port, proc, log)
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(
                f"the service never answered {ready_path}: {log.read_text()[-3000:]}"
            )
        time.sleep(0.1)


def stop_service(service: RunningService) -> None:
    service.proc.terminate()
    try:
        service.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        service.proc.kill()
        service.proc.wait()
