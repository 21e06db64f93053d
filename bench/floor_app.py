"""Bench-only: the HTTP floor — what any service on uvicorn pays per upload, before scoring.

`python bench/floor_app.py --port 8200` serves a bare ASGI app (no framework, no
middleware) on uvicorn with the service's process set-up: `POST /score` reads the
multipart body with the service's own parser (service.api.uploads.read_files) and
answers a fixed JSON document of a ScoreResult's size; `GET /readyz` answers 200.
bench/serving.py measures its latency with the same requests as the service's, so
the table can show how much of the service's per-request cost is the server stack
itself and how much is FastAPI, middleware and auscult.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.serving.process import configure

configure()

import uvicorn  # noqa: E402

from service.api.uploads import read_files  # noqa: E402

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

RESULT = json.dumps(
    {
        "model": "gearbox",
        "model_version": "20261121-00000000",
        "score": 6.1234,
        "level": "normal",
        "thresholds": {"needs_maintenance": 28.98, "severe": 72.28},
        "input": {"kind": "audio", "format": "wav", "duration_s": 10.0, "sample_rate": 16000},
        "filename": "clip0.wav",
    }
).encode()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b'{"status": "ready"}'
    if scope["method"] == "POST":

        async def stream() -> AsyncIterator[bytes]:
            while True:
                message = await receive()
                yield message.get("body", b"")
                if not message.get("more_body"):
                    return

        headers = dict(scope["headers"])
        await read_files(
            headers.get(b"content-type", b"").decode("latin-1"),
            headers.get(b"content-length", b"").decode("latin-1"),
            stream(),
            "file",
            1,
            10 << 20,
        )
        body = RESULT
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8200)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
