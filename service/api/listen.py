"""`WS /v1/models/{name}/listen`: live listening (docs/api.md, "Live listening").

The client sends a JSON start message, binary PCM frames of any size, and `{"type":
"stop"}` (or closes); the server answers one `window` message per window as it completes,
then a `summary`, or an `error` (the API's codes) followed by a close code of RFC 6455.

One task receives into a queue bounded in bytes (AUSCULT_LISTEN_MAX_QUEUED_BYTES): when
it is full the task stops reading, so the socket's buffers fill and TCP slows the client;
the handler computes and sends. A send that the client does not take within the idle
timeout ends the stream. The API key comes as for uploads (X-API-Key, Bearer), or, for
browsers, which cannot set headers here, in the start message (`api_key`) or as a
subprotocol `auscult.key.KEY` (never echoed, never logged, never in the URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, MutableMapping
from functools import partial
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from service.api.deps import key_matches
from service.errors import (
    AudioTooShort,
    AuscultError,
    InvalidRequest,
    NonFiniteValues,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    SampleRateOutOfRange,
    Unauthorized,
    public_message,
)
from service.models.listening import ListenSession
from service.models.runtimes import AnomalyRuntime
from service.observability import Metrics
from service.schemas import ListenStart
from service.settings import Settings

log = logging.getLogger("auscult.listen")
T = TypeVar("T")

router = APIRouter()

SUBPROTOCOL = "auscult"
KEY_PROTOCOL = "auscult.key."
INLINE_BYTES = 32 * 1024  # a frame this small is turned into features on the event loop
GOING_AWAY = "auscult.going_away"  # scope extension: an asyncio.Event set at shutdown

# RFC 6455 close codes by error code; other 4xx input errors: 1007 (invalid payload)
CLOSE_CODES = {
    "overloaded": 1013,
    "not_ready": 1013,
    "unauthorized": 1008,
    "model_not_found": 1008,
    "wrong_model_kind": 1008,
    "request_timeout": 1008,
    "payload_too_large": 1009,
    "internal_error": 1011,
}
NORMAL, GOING_AWAY_CODE, POLICY = 1000, 1001, 1008


class StreamError(Exception):
    """An AuscultError with the close code to end the stream with."""

    def __init__(self, error: AuscultError, close_code: int | None = None) -> None:
        super().__init__(error.message)
        self.error = error
        default = 1007 if 400 <= error.status_code < 500 else 1011
        self.close_code = close_code or CLOSE_CODES.get(error.code, default)


class ClientGone(Exception):
    """The client closed, or stopped taking our messages: nothing more can be sent."""


class Streams:
    """The streams of one app (worker): how many are open, bounded by the settings."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.active = 0

    @contextlib.contextmanager
    def slot(self) -> Any:
        if self.active >= self.settings.listen_max_streams:
            raise Overloaded(
                f"{self.settings.listen_max_streams} streams are open on this worker "
                "(AUSCULT_LISTEN_MAX_STREAMS); try again later"
            )
        self.active += 1
        self.metrics.streams.set(self.active)
        try:
            yield
        finally:
            self.active -= 1
            self.metrics.streams.set(self.active)


def _header_key(ws: WebSocket) -> str | None:
    """The key from X-API-Key, Authorization: Bearer, or a subprotocol auscult.key.KEY."""
    key = ws.headers.get("x-api-key")
    if key:
        return key
    scheme, _, token = ws.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for proto in ws.scope.get("subprotocols", []):
        if proto.startswith(KEY_PROTOCOL) and len(proto) > len(KEY_PROTOCOL):
            return proto[len(KEY_PROTOCOL) :]
    return None


def _check_key(settings: Settings, key: str | None) -> None:
    if key is None:
        raise Unauthorized(
            "an API key is required: send X-API-Key or Authorization: Bearer, or "
            '"api_key" in the start message'
        )
    if not key_matches(key, settings.api_keys):
        raise Unauthorized("the API key is not valid")


def _parse_start(text: str, runtime: AnomalyRuntime, settings: Settings) -> ListenStart:
    """The start message → ListenStart; InvalidRequest / SampleRateOutOfRange otherwise."""
    try:
        data = json.loads(text)
    except ValueError:
        raise InvalidRequest("the first message must be the JSON start message") from None
    if not isinstance(data, dict) or data.get("type") != "start":
        raise InvalidRequest('the first message must be {"type": "start", "sample_rate": …}')
    try:
        start = ListenStart.model_validate(data)
    except ValidationError as e:
        msg = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'start'}: {err['msg']}" for err in e.errors()
        )
        raise InvalidRequest(f"start message: {msg}") from None
    lo, hi = settings.min_sample_rate, settings.max_sample_rate
    if not lo <= start.sample_rate <= hi:
        raise SampleRateOutOfRange(f"sample_rate {start.sample_rate} is outside {lo}..{hi} Hz")
    if start.condition is not None and start.condition not in runtime.conditions:
        known = ", ".join(runtime.conditions) or "none (this model predates conditions)"
        raise InvalidRequest(f"unknown condition {start.condition!r}; the model knows: {known}")
    return start


async def _receive(ws: WebSocket, timeout: float) -> MutableMapping[str, Any]:
    """The next message, or RequestTimeout after `timeout` seconds of silence."""
    try:
        async with asyncio.timeout(timeout):
            return await ws.receive()
    except TimeoutError:
        raise RequestTimeout(
            f"no message for {timeout:g} s (AUSCULT_LISTEN_IDLE_TIMEOUT_S)"
        ) from None


_STOP, _CLOSED, _SHUTDOWN = "stop", "closed", "shutdown"


class Listener:
    """One stream, from accept to close."""

    def __init__(self, ws: WebSocket, name: str) -> None:
        state = ws.app.state
        self.ws, self.name = ws, name
        self.settings: Settings = state.settings
        self.metrics: Metrics = state.metrics
        self.scorer = state.scorer
        self.registry = state.registry
        self.streams: Streams = state.streams
        self.queue: asyncio.Queue[bytes | str | StreamError] = asyncio.Queue()
        self.queued = 0  # bytes in the queue
        self.space = asyncio.Event()
        self.session: ListenSession | None = None

    async def run(self) -> None:
        offered = self.ws.scope.get("subprotocols", [])
        await self.ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        try:
            with self.streams.slot():
                await self._serve()
        except Overloaded as e:
            await self._fail(StreamError(e))
        except ClientGone:
            pass

    async def _serve(self) -> None:
        try:
            header_key = _header_key(self.ws)
            if self.settings.api_keys and header_key is not None:
                _check_key(self.settings, header_key)
            runtime = self.registry.anomaly(self.name)
            m = runtime.manifest
            assert m is not None
            if m.features.window_seconds is None:
                raise InvalidRequest(
                    f"model {self.name!r} scores whole clips, not windows: it cannot listen live"
                )
            first = await _receive(self.ws, self.settings.listen_idle_timeout_s)
            if first["type"] == "websocket.disconnect":
                return
            if first.get("text") is None:
                raise StreamError(
                    InvalidRequest("binary data before the start message"), close_code=1003
                )
            start = _parse_start(first["text"], runtime, self.settings)
            if self.settings.api_keys and header_key is None:
                _check_key(self.settings, start.api_key)
            self.session = ListenSession(runtime, start)
            await self._listen(runtime)
        except AuscultError as e:
            await self._fail(StreamError(e))
        except StreamError as e:
            await self._fail(e)
        except (WebSocketDisconnect, ClientGone):
            pass
        except Exception:
            log.exception("listen_failed", extra={"model": self.name})
            await self._fail(StreamError(AuscultError("internal error; see the service log")))

    async def _listen(self, runtime: AnomalyRuntime) -> None:
        session = self.session
        assert session is not None
        going_away: asyncio.Event | None = self.ws.scope.get("extensions", {}).get(GOING_AWAY)
        receiver = asyncio.create_task(self._receiver())
        watcher = asyncio.create_task(self._watch(going_away)) if going_away else None
        ended = _CLOSED
        try:
            while True:
                item = await self.queue.get()
                if isinstance(item, StreamError):
                    raise item
                if isinstance(item, str):
                    ended = item
                    break
                self.queued -= len(item)
                self.space.set()
                if len(item) <= INLINE_BYTES:
                    images, spans = session.features(item)
                else:
                    images, spans = await self.scorer.in_thread(partial(session.features, item))
                await self._score(runtime, images, spans)
                if session.mel.duration_s >= self.settings.listen_max_seconds:
                    ended = "max_seconds"
                    break
        except AuscultError as e:
            raise StreamError(e) from None
        finally:
            receiver.cancel()
            if watcher is not None:
                watcher.cancel()
        if ended == _CLOSED:  # nobody to send the rest to
            return
        try:
            images, spans = await self.scorer.in_thread(session.finish)
            await self._score(runtime, images, spans)
        except AudioTooShort:
            pass  # the summary says no window was scored
        except AuscultError as e:
            raise StreamError(e) from None
        await self._send(session.summary(ended))
        code = {_SHUTDOWN: GOING_AWAY_CODE, "max_seconds": POLICY}.get(ended, NORMAL)
        reason = {
            _SHUTDOWN: "the server is shutting down",
            "max_seconds": "the stream reached AUSCULT_LISTEN_MAX_SECONDS",
        }.get(ended, "")
        await self._close(code, reason)

    async def _score(
        self, runtime: AnomalyRuntime, images: np.ndarray, spans: list[tuple[float, float]]
    ) -> None:
        session = self.session
        assert session is not None
        if not spans:
            return
        raw = await self.scorer.run_model(runtime, runtime.score, images)
        if not np.isfinite(raw).all():
            raise NonFiniteValues("the model's score for this audio is not a finite number")
        self.metrics.stream_windows.labels(runtime.name).inc(len(spans))
        for message in session.windows(raw, spans):
            await self._send(message)

    async def _receiver(self) -> None:
        """Reads messages into the queue while it has room; any error goes in as well."""
        s = self.settings
        try:
            while True:
                while self.queued >= s.listen_max_queued_bytes:
                    self.space.clear()
                    await self.space.wait()  # not reading: TCP slows the client
                msg = await _receive(self.ws, s.listen_idle_timeout_s)
                if msg["type"] == "websocket.disconnect":
                    self.queue.put_nowait(_CLOSED)
                    return
                data = msg.get("bytes")
                if data is not None:
                    if len(data) > s.listen_max_frame_bytes:
                        raise PayloadTooLarge(
                            f"a frame of {len(data)} bytes is over the limit of "
                            f"{s.listen_max_frame_bytes} (AUSCULT_LISTEN_MAX_FRAME_BYTES)"
                        )
                    if data:
                        self.queued += len(data)
                        self.queue.put_nowait(data)
                    continue
                text = msg.get("text") or ""
                if len(text) > s.listen_max_frame_bytes:
                    raise PayloadTooLarge("a text message over AUSCULT_LISTEN_MAX_FRAME_BYTES")
                try:
                    kind = json.loads(text).get("type")
                except (ValueError, AttributeError):
                    kind = None
                if kind != "stop":
                    raise InvalidRequest(
                        'after the start message: binary audio frames, or {"type": "stop"}'
                    )
                self.queue.put_nowait(_STOP)
                return
        except AuscultError as e:
            self.queue.put_nowait(StreamError(e))
        except WebSocketDisconnect:
            self.queue.put_nowait(_CLOSED)
        except Exception:  # the handler must not wait for a reader that is gone
            log.exception("listen_receive_failed", extra={"model": self.name})
            self.queue.put_nowait(StreamError(AuscultError("internal error; see the service log")))

    async def _watch(self, going_away: asyncio.Event) -> None:
        await going_away.wait()
        self.queue.put_nowait(_SHUTDOWN)

    async def _send(self, message: dict[str, Any]) -> None:
        """Send a JSON message, or ClientGone when the client does not take it in time."""
        if self.ws.application_state != WebSocketState.CONNECTED:
            raise ClientGone
        try:
            await _within(
                self.settings.listen_idle_timeout_s, self.ws.send_text(json.dumps(message))
            )
        except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError) as e:
            raise ClientGone from e

    async def _close(self, code: int, reason: str = "") -> None:
        with contextlib.suppress(Exception):
            if self.ws.application_state == WebSocketState.CONNECTED:
                await _within(self.settings.listen_idle_timeout_s, self.ws.close(code, reason))

    async def _fail(self, e: StreamError) -> None:
        """The error message, then the close code; counted by code."""
        err = e.error
        self.metrics.stream_errors.labels(err.code).inc()
        if err.code == "internal_error" or (err.status_code >= 500 and err.code != "overloaded"):
            log.warning("listen_error", extra={"model": self.name, "code": err.code})
        body = {
            "type": "error",
            "error": {"code": err.code, "message": public_message(err.message)},
        }
        with contextlib.suppress(ClientGone):
            await self._send(body)
        await self._close(e.close_code, err.code)


async def _within(seconds: float, step: Awaitable[T]) -> T:
    async with asyncio.timeout(seconds):
        return await step


@router.websocket("/v1/models/{name}/listen")
async def listen(websocket: WebSocket, name: str) -> None:
    """Live listening (docs/api.md): a start message, binary PCM frames, `stop`; a
    message per window, a summary at the end."""
    await Listener(websocket, name).run()
