"""JSON-lines logging with request ids, Prometheus metrics and the ASGI middleware.

With several worker processes (service/serving/workers.py) the metrics live in prometheus_client's
multiprocess mode: PROMETHEUS_MULTIPROC_DIR is set before prometheus_client is imported,
every worker writes its values there, and `Metrics.exposition` adds them up.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import queue
import random
import re
import sys
import time
from contextvars import ContextVar
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
REQUEST_ID_HEADER = "x-request-id"
_SAFE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
INTERNAL_ERROR_MESSAGE = "internal error; see the service log"
_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}
_static_fields: dict[str, Any] = {}  # on every line (a worker's number and pid)


def tag_log_lines(**fields: Any) -> None:
    """Add these fields to every JSON log line of this process from now on."""
    _static_fields.update(fields)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, event, request_id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_static_fields,
        }
        rid = getattr(record, "request_id", None) or request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key != "request_id":
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str)


class _EnqueueHandler(logging.handlers.QueueHandler):
    """Hands records to the writer thread, with what only the calling thread knows: the
    request id (a context variable) and the formatted traceback."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record.request_id = request_id_var.get()
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


_listener: logging.handlers.QueueListener | None = None
_queue: queue.Queue[logging.LogRecord] | None = None


def configure_logging(level: str) -> None:
    """JSON lines on stdout, written by a background thread: formatting and the write
    cost the event loop ~0.1-0.3 ms per line, enqueueing a record a few microseconds."""
    global _listener, _queue
    stop_logging()
    writer = logging.StreamHandler(sys.stdout)
    writer.setFormatter(JsonFormatter())
    _queue = queue.Queue()
    _listener = logging.handlers.QueueListener(_queue, writer)
    _listener.start()
    root = logging.getLogger("auscult")
    root.handlers[:] = [_EnqueueHandler(_queue)]
    root.setLevel(level.upper())
    root.propagate = False


def flush_logs() -> None:
    """Block until every record logged so far is written."""
    if _queue is not None:
        _queue.join()


def stop_logging() -> None:
    """Write what is queued and stop the writer thread (also run at exit)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(stop_logging)


class Metrics:
    """The service's Prometheus metrics, on a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "auscult_requests_total", "HTTP requests", ["method", "route", "status"], registry=r
        )
        self.latency = Histogram(
            "auscult_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.clips = Counter(
            "auscult_clips_scored_total",
            "clips scored or classified",
            ["model", "result"],
            registry=r,
        )
        self.errors = Counter(
            "auscult_errors_total", "error responses and per-file errors", ["code"], registry=r
        )
        self.batch_size = Histogram(
            "auscult_batch_size",
            "clips per batch request (source=request) and per model run (source=encoder)",
            ["source"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=r,
        )
        # with several workers: in flight adds up; ready is the least-ready live worker's
        self.inflight = Gauge(
            "auscult_inflight_requests",
            "scoring requests in flight",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.models_ready = Gauge(
            "auscult_models_ready",
            "bundles loaded and ready",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.reloads = Counter(
            "auscult_model_reloads_total",
            "bundle reloads by outcome (loaded, failed, removed)",
            ["model", "outcome"],
            registry=r,
        )

        self.streams = Gauge(
            "auscult_listen_streams",
            "live-listening streams open",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.stream_windows = Counter(
            "auscult_listen_windows_total",
            "windows scored on live-listening streams",
            ["model"],
            registry=r,
        )
        self.stream_errors = Counter(
            "auscult_listen_errors_total",
            "live-listening streams ended by an error, by its code",
            ["code"],
            registry=r,
        )

    def exposition(self) -> bytes:
        """The Prometheus text: this registry's, or with several workers all of theirs
        added up (counters and histograms summed, gauges by their multiprocess mode)."""
        path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not path:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged, path)
        return generate_latest(merged)


class RequestContextMiddleware:
    """Request id (from X-Request-ID or new), access log line and request metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.log = logging.getLogger("auscult.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        # not uuid4: an id needs to be unique, not secret, and os.urandom is a syscall per request
        rid = incoming if _SAFE_ID.fullmatch(incoming) else f"{random.getrandbits(128):032x}"
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (REQUEST_ID_HEADER.encode(), rid.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Answered here, not by Starlette's outermost handler: the request id is still
            # known, so the 500 carries X-Request-ID and the log line its request_id.
            self.metrics.errors.labels("internal_error").inc()
            self.log.exception("unhandled", extra={"path": scope["path"]})
            if started:
                raise
            body: dict[str, object] = {
                "error": {"code": "internal_error", "message": INTERNAL_ERROR_MESSAGE}
            }
            if scope["path"] == "/v2" or scope["path"].startswith("/v2/"):
                body = {"error": INTERNAL_ERROR_MESSAGE}  # the protocol's error body
            await JSONResponse(body, status_code=500)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(template).observe(elapsed)
            if template not in ("/healthz", "/readyz", "/metrics"):
                self.log.info(
                    "request",
                    extra={
                        "method": scope["method"],
                        "path": scope["path"],
                        "status": status,
                        "ms": round(elapsed * 1000, 2),
                    },
                )
            request_id_var.reset(token)
