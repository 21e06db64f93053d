"""A lean HTTP/1.1 load generator for the serving benchmark (bench-only).

On a 2-core box the load generator shares the CPU with the server it measures.
A general-purpose Python client (httpx) spends about as much CPU per request as
the server's event loop does, which the server then lacks. This client does what
wrk does instead: request bytes are built once, written to a kept-alive socket,
and only the status line, `Content-Length` and the body are read back (about
0.2 ms of CPU per 320 kB request). It speaks just enough HTTP/1.1 for
uvicorn and Werkzeug: Content-Length bodies, keep-alive, `Connection: close`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

KEEPALIVE_S = 1.0  # below uvicorn's 5 s: never reuse a connection the server is closing
TIMEOUT_S = 120.0  # per request: a hung server fails the run instead of stalling it


class HTTPError(Exception):
    """The connection failed or the response was not understood."""


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def close(self) -> None:
        self.writer.close()


def build_request(url: str, method: str, body: bytes, headers: Mapping[str, str]) -> bytes:
    """The whole request as bytes, built once and sent many times."""
    parts = urlsplit(url)
    head = [f"{method} {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class LeanClient:
    """Kept-alive connections to one host; `send` returns (status, body)."""

    def __init__(self, base_url: str, timeout: float = TIMEOUT_S) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self.idle: list[_Conn] = []

    async def _connect(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return _Conn(reader, writer)

    async def _exchange(self, conn: _Conn, request: bytes) -> tuple[int, bytes, bool]:
        conn.writer.write(request)
        head = await conn.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        version, status = lines[0].split(" ", 2)[:2]
        length, keep = None, version == "HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection":
                keep = value.strip().lower() == "keep-alive" or (
                    keep and value.strip().lower() != "close"
                )
            elif name == "transfer-encoding":
                raise HTTPError(f"transfer-encoding {value.strip()} is not supported")
        if length is None:
            body, keep = await conn.reader.read(), False
        else:
            body = await conn.reader.readexactly(length)
        return int(status), body, keep

    async def send(self, request: bytes) -> tuple[int, bytes]:
        """One request (from build_request) on an idle connection or a new one."""
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()
            if now - conn.idle_since < KEEPALIVE_S:
                break
            conn.close()
        else:
            conn = await self._connect()
        try:
            status, body, keep = await asyncio.wait_for(self._exchange(conn, request), self.timeout)
        except (
            OSError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ) as e:
            conn.close()
            raise HTTPError(f"{type(e).__name__}: {e}") from e
        if keep:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
        else:
            conn.close()
        return status, body

    async def aclose(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()
