"""Connection-level limits for `python -m service`: what uvicorn offers, and the rest.

uvicorn gives a keep-alive timeout, a request cap (`limit_concurrency`: 503 beyond)
and, for its h11 parser only, a header size limit. Its httptools protocol (the faster
parser, used here) has no header size limit and no timeout while headers or a body
arrive: one connection could send a 64 MB header, and 200 slow ones stay open for
ever. `protocol_class(settings)` subclasses it with:

- a cap on open connections, overall and per client address: a connection beyond
  `max_connections` (or its client's `max_connections_per_client`) takes the place of
  the oldest idle one (of that client), and is closed at once when none is idle. Beyond
  the per-client cap only, a connection that has sent nothing in its first
  NEW_CONNECTION_GRACE_S is not yet idle: the event loop may simply not have read its
  request (a burst of WebSocket handshakes from one client arrives before any is read;
  shedding them dropped streams without a close frame). A newcomer that finds no idle one
  waits the grace out, and then sheds the oldest idle one or is closed itself if it still
  sent nothing; an upgraded WebSocket leaves the count (streams have their own bound,
  AUSCULT_LISTEN_MAX_STREAMS, refused with 1013);
- a header size limit (request line + headers): 431 and close;
- a header deadline from the first byte of a request (or from the connection's
  opening) to the end of its headers: 408 and close;
- malformed HTTP answered with the API's JSON error body (400 `bad_request`);
- a hard deadline for the whole request body (the app answers 408 first, at
  `body_timeout_s`, where it reads an upload; this closes what nobody reads).

`DrainBeforeError` (ASGI middleware) reads what remains of a small request body before
an error response goes out, so a `Connection: close` client gets the answer instead of
a connection reset (closing a socket with unread input sends RST).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.settings import Settings

log = logging.getLogger("auscult.server")

BODY_DEADLINE_MARGIN_S = 5.0  # past the app's body timeout, so the app answers first
DRAIN_SECONDS = 1.0
NEW_CONNECTION_GRACE_S = 1.0  # for a new connection to get its request read (see above)
_CLOSE = (b"connection", b"close")


def _error_bytes(status: int, code: str, message: str) -> bytes:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE

    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


def protocol_class(settings: Settings) -> type[Any]:
    """uvicorn's httptools protocol with the limits of `settings` (pass as `http=`)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    max_connections = settings.max_connections
    max_per_client = settings.max_connections_per_client
    per_client: Counter[str] = Counter()  # open connections by client address (this worker)
    max_header_bytes = settings.max_header_bytes
    header_timeout = settings.header_timeout_s
    body_deadline = settings.body_timeout_s + BODY_DEADLINE_MARGIN_S

    class LimitedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.header_bytes = 0  # parsed: request line and headers of this request
            self.raw_header_bytes = 0  # received while headers were incomplete
            self.reading_headers = True
            self.rejection: tuple[int, str, str] | None = None
            self.header_timer: asyncio.TimerHandle | None = None
            self.body_timer: asyncio.TimerHandle | None = None
            self.grace_timer: asyncio.TimerHandle | None = None
            self.opened = 0.0
            self.peer = ""
            self.counted = False  # in per_client
            self.served = False  # a request of it was read to the end

        def _uncount(self) -> None:
            if self.counted:
                self.counted = False
                per_client[self.peer] -= 1
                if per_client[self.peer] <= 0:
                    del per_client[self.peer]

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.opened = self.loop.time()
            self.peer = self.client[0] if self.client else ""
            per_client[self.peer] += 1
            self.counted = True
            over = len(self.connections) > max_connections
            crowded = per_client[self.peer] > max_per_client
            if over or crowded:
                # shed an idle connection (the oldest, of this client when it has too many)
                # rather than refuse a client that is about to send a request
                victim = self._victim(self.peer if crowded else None, spare_new=not over)
                if victim is not None:
                    self._shed(victim)
                elif over:
                    log.warning("connection_refused", extra={"open": len(self.connections) - 1})
                    transport.close()
                    return
                else:  # only new ones of this client: give them (and this one) the grace
                    self.grace_timer = self.loop.call_later(
                        NEW_CONNECTION_GRACE_S, self._still_crowded
                    )
            self._arm_header_timer()  # a new connection must send a request in time

        def _shed(self, victim: LimitedHttpToolsProtocol) -> None:
            log.info("connection_shed", extra={"client": victim.peer})
            victim.transport.close()
            # out of the counts now, not when its close completes: uvicorn answers 503 to
            # a request that arrives while the count is over its limit
            self.connections.discard(victim)
            victim._uncount()

        def _still_crowded(self) -> None:
            """A newcomer's grace is over: if its client still has too many connections and
            it sent nothing, the oldest idle one (itself, failing any other) is closed."""
            self.grace_timer = None
            if self.transport.is_closing() or not self._silent():
                return
            if per_client[self.peer] > max_per_client:
                self._shed(self._victim(self.peer, spare_new=True) or self)

        def _silent(self) -> bool:
            """Nothing of a request received: new, or idle between keep-alive requests."""
            return self.reading_headers and self.raw_header_bytes == 0

        def _victim(self, peer: str | None, spare_new: bool) -> LimitedHttpToolsProtocol | None:
            """The connection to close for a new one: the oldest that sent nothing of a
            request yet (new, or idle between keep-alive requests), else the oldest still
            sending headers; never one whose request is being read or answered, nor (with
            `spare_new`) one that is in its first NEW_CONNECTION_GRACE_S and sent nothing."""
            best: tuple[int, float] | None = None
            victim = None
            young = self.loop.time() - NEW_CONNECTION_GRACE_S
            for c in self.connections:
                if not isinstance(c, LimitedHttpToolsProtocol) or c is self:
                    continue
                if peer is not None and c.peer != peer:
                    continue
                if c.transport.is_closing() or not c.reading_headers:
                    continue
                if c.cycle is not None and not c.cycle.response_complete:
                    continue
                if spare_new and c.opened > young and not c.served and c._silent():
                    continue
                rank = (0 if c.raw_header_bytes == 0 else 1, c.opened)
                if best is None or rank < best:
                    best, victim = rank, c
            return victim

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_timers()
            self._uncount()
            super().connection_lost(exc)

        def _cancel_timers(self) -> None:
            for timer in (self.header_timer, self.body_timer, self.grace_timer):
                if timer is not None:
                    timer.cancel()
            self.header_timer = self.body_timer = self.grace_timer = None

        def _arm_header_timer(self) -> None:
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _reject(self, status: int, code: str, message: str) -> None:
            self._cancel_timers()
            if not self.transport.is_closing():
                self.transport.write(_error_bytes(status, code, message))
                self.transport.close()

        def _headers_late(self) -> None:
            self.header_timer = None
            log.info("header_timeout", extra={"client": self.client and self.client[0]})
            self._reject(
                408, "request_timeout", f"request headers took longer than {header_timeout:g} s"
            )

        def _body_late(self) -> None:
            self.body_timer = None
            log.info("body_timeout", extra={"client": self.client and self.client[0]})
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False  # a response under way closes the connection after
            if cycle is None or cycle.response_complete or not cycle.response_started:
                self.transport.close()  # the app sees a disconnect if it still waits

        def data_received(self, data: bytes) -> None:
            # httptools keeps a header value to itself until it ends: count what arrives,
            # or one endless header would fill memory before on_header ever runs
            if self.reading_headers:
                self.raw_header_bytes += len(data)
            super().data_received(data)
            if (
                self.reading_headers
                and self.raw_header_bytes > max_header_bytes
                and not self.transport.is_closing()
            ):
                self._reject(*self._too_large())

        def _too_large(self) -> tuple[int, str, str]:
            return (
                431,
                "headers_too_large",
                f"request line and headers exceed {max_header_bytes} bytes",
            )

        def send_400_response(self, msg: str) -> None:
            # the parser stops on an exception from a callback and uvicorn answers 400;
            # when the exception was ours, answer what it was
            if self.rejection is not None:
                self._reject(*self.rejection)
            else:  # the API's JSON error body, not uvicorn's plain text
                self._reject(400, "bad_request", f"not a valid HTTP/1.1 request: {msg}")

        def _count_header(self, n: int) -> None:
            self.header_bytes += n
            if self.header_bytes > max_header_bytes:
                self.rejection = self._too_large()
                raise OverflowError("headers too large")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self.header_bytes = 0
            self._arm_header_timer()

        def on_url(self, url: bytes) -> None:
            self._count_header(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count_header(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self.reading_headers = False
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None
            super().on_headers_complete()
            if self.body_timer is not None:
                self.body_timer.cancel()
            self.body_timer = self.loop.call_later(body_deadline, self._body_late)

        def handle_websocket_upgrade(self) -> None:
            # the connection becomes the WebSocket protocol's: no header or body deadline
            # applies to it, and it leaves this client's count (streams have their own
            # bound, AUSCULT_LISTEN_MAX_STREAMS); connection_lost is the new protocol's
            self._cancel_timers()
            self._uncount()
            super().handle_websocket_upgrade()

        def on_message_complete(self) -> None:
            if self.body_timer is not None:
                self.body_timer.cancel()
                self.body_timer = None
            self.reading_headers, self.raw_header_bytes = True, 0  # the next request's
            self.served = True
            super().on_message_complete()

    return LimitedHttpToolsProtocol


GOING_AWAY_S = 3.0  # at shutdown, what a stream has to send its summary and close 1001


def websocket_protocol_class() -> type[Any] | None:
    """uvicorn's WebSocket protocol (the `websockets` library's) that, at shutdown, lets
    the application end each stream itself: it sets the event the app finds in the scope's
    extensions under `auscult.going_away` (service/api/listen.py sends the summary and
    closes with 1001 going away) and closes what is still open GOING_AWAY_S later with
    uvicorn's own 1012. None when the library is missing (uvicorn then has no WebSockets
    unless wsproto is installed)."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import (
            WebSocketsSansIOProtocol,
        )
    except ImportError:
        return None

    class GoingAwayWebSocketProtocol(WebSocketsSansIOProtocol):
        going_away: asyncio.Event | None = None

        def handle_connect(self, event: Any) -> None:
            super().handle_connect(event)
            if getattr(self, "scope", None) is not None:
                self.going_away = asyncio.Event()
                extensions: dict[str, Any] = self.scope.setdefault("extensions", {})
                extensions["auscult.going_away"] = self.going_away

        def shutdown(self) -> None:
            ready = self.handshake_complete and self.initial_response is None
            if self.going_away is None or self.going_away.is_set() or not ready:
                super().shutdown()
                return
            if self.close_sent or self.transport.is_closing():
                super().shutdown()
                return
            self.going_away.set()
            self.loop.call_later(GOING_AWAY_S, self._shutdown_now)

        def _shutdown_now(self) -> None:
            if not self.transport.is_closing():
                super().shutdown()

    return GoingAwayWebSocketProtocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run` that apply the connection limits."""
    options: dict[str, Any] = {
        # the protocol closes connections beyond max_connections; uvicorn's cap then
        # bounds the requests still running (a disconnected client's among them)
        "limit_concurrency": settings.max_connections + 1,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        # a stream's frames: the app answers payload_too_large up to twice its limit, the
        # protocol refuses more unread (1009); no compression (audio hardly compresses,
        # and it would cost CPU per frame and a decompression bound)
        "ws_max_size": 2 * settings.listen_max_frame_bytes,
        "ws_per_message_deflate": False,
    }
    ws = websocket_protocol_class()
    if ws is not None:
        options["ws"] = ws
    try:
        import httptools  # noqa: F401
    except ImportError:  # h11: header limit only (uvicorn's own)
        options["http"] = "h11"
    else:
        options["http"] = protocol_class(settings)
    return options


class DrainBeforeError:
    """Before an error response (4xx/5xx) starts while the request body is still coming,
    read and drop the rest of it: at most `max_bytes`, for at most a second."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        length = headers.get(b"content-length", b"")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if not chunked and not (length.isdigit() and int(length) > 0):
            await self.app(scope, receive, send)
            return
        remaining = int(length) if length.isdigit() else None
        done = False

        async def tracked_receive() -> Message:
            nonlocal done, remaining
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            elif remaining is not None:
                remaining -= len(message.get("body", b""))
            return message

        async def drain() -> None:
            nonlocal done
            budget = self.max_bytes
            while not done and budget > 0:
                message = await receive()
                budget -= len(message.get("body", b""))
                if message["type"] != "http.request" or not message.get("more_body", False):
                    done = True

        async def send_after_drain(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                if not done and (remaining is None or remaining <= self.max_bytes):
                    try:
                        async with asyncio.timeout(DRAIN_SECONDS):
                            await drain()
                    except TimeoutError:
                        pass
                if not done:  # the rest of the body would be read and dropped: close
                    message = {**message, "headers": [*message.get("headers", []), _CLOSE]}
            await send(message)

        await self.app(scope, tracked_receive, send_after_drain)


class HeadAsGet:
    """HEAD is GET without the body (RFC 9110), for every GET route: FastAPI's routes
    answer only the methods they name, so `HEAD /healthz` would be 405."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)
