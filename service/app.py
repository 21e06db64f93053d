"""The FastAPI application factory.

`create_app(settings, registry)` takes everything as arguments so tests can pass
their own; `app = create_app()` below exists only for `uvicorn service.app:app`
and builds nothing heavy at import time: bundles load in the lifespan handler.
"""

from __future__ import annotations

from service.serving.process import configure

# `uvicorn service.app:app` imports this module first: tune the process before numpy loads
# (a no-op for what `python -m service` has already done)
configure()

import logging  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402

import anyio  # noqa: E402
from fastapi import FastAPI, Request  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from starlette.exceptions import HTTPException as StarletteHTTPException  # noqa: E402

from service import features  # noqa: E402
from service.api.deps import describe_open_access  # noqa: E402
from service.api.direct import DirectRoutes  # noqa: E402
from service.api.fits import fits, fits_methods  # noqa: E402
from service.api.listen import Streams  # noqa: E402
from service.api.listen import router as listen_router  # noqa: E402
from service.api.v1 import admin, error_response, health, models  # noqa: E402
from service.api.v2 import v2, v2_health  # noqa: E402
from service.api.v2.routes import is_v2  # noqa: E402
from service.errors import AuscultError, public_message  # noqa: E402
from service.jobs.spool import Spool  # noqa: E402
from service.jobs.watch import FitWatcher  # noqa: E402
from service.models.registry import ModelRegistry  # noqa: E402
from service.models.reload import Reloader  # noqa: E402
from service.models.scoring import Scorer  # noqa: E402
from service.observability import (  # noqa: E402
    Metrics,
    RequestContextMiddleware,
    configure_logging,
)
from service.serving.server import DrainBeforeError, HeadAsGet  # noqa: E402
from service.settings import Settings, load_settings  # noqa: E402
from service.web import install as install_web  # noqa: E402
from service.web import package_version  # noqa: E402

log = logging.getLogger("auscult.app")

DESCRIPTION = """
auscult listens to machines. Anomaly models learned what a healthy machine sounds
like from normal recordings; `POST /v1/models/{name}/score` says how far a clip is
from normal (`score`) and what that means (`level`: normal, needs_maintenance,
severe). Classifier models name what they hear (`/classify`).

Live listening is a WebSocket, which OpenAPI does not describe: `WS
/v1/models/{name}/listen` takes a JSON start message (`{"type": "start", "sample_rate":
16000, "channels": 1, "format": "pcm_s16le"}`), binary PCM frames and `{"type": "stop"}`,
and answers one `window` message per window as it completes (the score the file endpoint
gives it, the level so far, the worst stretch), then a `summary`; errors come as
`{"type": "error", "error": {...}}` and a close code. `python -m service.listen` streams a
file or standard input; the protocol is in the API guide (docs/api.md, "Live listening").

Upload audio (wav, flac, ogg, mp3; any sample rate; mono or multi-channel) or a
png/jpeg spectrogram made with `python -m training spectrograms`. Errors always
have the body `{"error": {"code": ..., "message": ...}}`.
"""


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        reg = registry
        if reg is None:
            reg = await anyio.to_thread.run_sync(
                ModelRegistry.from_dir, settings.artifacts_dir, settings.ort_threads
            )
        if settings.default_model and settings.default_model not in reg.runtimes:
            raise RuntimeError(
                f"AUSCULT_DEFAULT_MODEL={settings.default_model!r} is not a bundle in "
                f"{settings.artifacts_dir}"
            )
        for params in {
            rt.manifest.features.model_dump_json(): rt.manifest.features
            for rt in reg.runtimes.values()
            if rt.ready and rt.manifest
        }.values():
            await anyio.to_thread.run_sync(features.warm_up, params)
        app.state.registry = reg
        metrics.models_ready.set(reg.ready_count)
        if reg.ready_count == 0:  # serving, but nothing to score with: /readyz stays 503
            log.warning(
                "no_models_ready",
                extra={
                    "artifacts_dir": str(settings.artifacts_dir),
                    "models": len(reg.runtimes),
                    "detail": "no bundle folder found" if not reg.runtimes else "none loaded",
                    "hint": "put a bundle folder there (python -m training fit --out DIR/NAME) "
                    "and reload, or set AUSCULT_ARTIFACTS_DIR",
                },
            )
        log.info("ready", extra={"models_ready": reg.ready_count, "models": len(reg.runtimes)})
        reloader.start()  # SIGHUP, and the watcher with AUSCULT_WATCH=1
        if watcher is not None:
            await watcher.start()  # models that fit jobs publish are loaded here
        try:
            yield
        finally:
            if watcher is not None:
                await watcher.stop()
            await reloader.stop()
            app.state.scorer.close()

    app = FastAPI(
        title="auscult",
        version=package_version(),
        summary="Anomaly scores and classes for machine sounds",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc: service.web serves them with local assets
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.scorer = Scorer(settings, metrics)
    app.state.streams = Streams(settings, metrics)
    app.state.registry = ModelRegistry()  # replaced in lifespan; /readyz is 503 until then
    reloader = app.state.reloader = Reloader(lambda: app.state.registry, settings, metrics)
    app.state.spool = Spool(settings.jobs_dir) if settings.jobs_dir is not None else None
    watcher = app.state.fit_watcher = (
        FitWatcher(app.state.spool, lambda: app.state.registry, reloader)
        if app.state.spool is not None
        else None
    )
    app.include_router(health)
    # before `models`: a 405 on /v1/models/reload must name POST, not GET /v1/models/{name}
    app.include_router(admin)
    app.include_router(fits)
    app.include_router(fits_methods)  # after: only the methods `fits` does not answer
    app.include_router(models)
    app.include_router(listen_router)  # WS /v1/models/{name}/listen
    app.include_router(v2_health)  # the Open Inference Protocol (v2), beside v1
    app.include_router(v2)
    install_web(app)  # the page at /, /docs, /redoc, the spectrogram endpoint
    if not settings.api_keys:
        # the document says no key is needed (the admin routes keep theirs when one is set)
        describe_open_access(app, frozenset({"AdminKey"} if settings.admin_keys else ()))
    app.add_middleware(DirectRoutes, fastapi_app=app)  # innermost: after drain, log, metrics
    app.add_middleware(HeadAsGet)
    app.add_middleware(DrainBeforeError, max_bytes=settings.drain_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)

    @app.exception_handler(AuscultError)
    async def on_domain_error(request: Request, exc: AuscultError) -> JSONResponse:
        metrics.errors.labels(exc.code).inc()
        if exc.code == "client_disconnected":
            log.info("client_disconnected", extra={"path": request.url.path})
        elif exc.status_code >= 500 and exc.code not in ("overloaded", "not_ready"):
            log.error("error", extra={"code": exc.code, "detail": exc.message})
        message = public_message(exc.message)
        return _error(request, exc.status_code, exc.code, message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.errors.labels("invalid_request").inc()
        msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        if is_v2(request.url.path):  # the protocol's malformed request
            return _error(request, 400, "invalid_request", msg, None)
        return error_response(422, "invalid_request", msg)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        metrics.errors.labels(code).inc()
        headers = getattr(exc, "headers", None)
        return _error(request, exc.status_code, code, str(exc.detail), headers)

    # Unexpected exceptions become a 500 internal_error in RequestContextMiddleware, where
    # the request id is still known.
    return app


def _error(
    request: Request, status: int, code: str, message: str, headers: dict[str, str] | None
) -> JSONResponse:
    """The v1 error body, or under /v2 the protocol's `{"error": message}`."""
    if is_v2(request.url.path):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    return error_response(status, code, message, headers)


def __getattr__(name: str) -> FastAPI:
    # `uvicorn service.app:app` — built on first access, not at import.
    if name == "app":
        application = create_app(load_settings())  # a bad setting: one line, exit 2
        globals()["app"] = application
        return application
    raise AttributeError(name)
