"""The two single-clip routes, dispatched without FastAPI's per-request machinery.

`POST /v1/models/{name}/score` and `POST /v1/models/{name}/classify` carry almost all of a
scoring service's requests. This middleware matches them and calls the very route
functions of `service.api.v1` (`score_clip`, `classify_clip`) with the key check of the
`models` router, and answers domain errors with the app's own handler, so answers, errors,
logs and metrics are the same as through FastAPI. What it skips is FastAPI's dispatch:
routing through the middleware stack of the router, dependency solving and the response
model's re-validation of a result that is already a validated model; measured, that was
~0.4 ms of event-loop CPU per request, a third of what the HTTP layer cost
(docs/archive/experiments.md, issue 14). Every other request, and any other method on these paths,
goes through FastAPI unchanged; the FastAPI routes also still describe these endpoints in
the OpenAPI document.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import v1
from service.api.deps import require_api_key
from service.errors import AuscultError

_PATH = re.compile(r"/v1/models/(?P<name>[^/]+)/(?P<action>score|classify)")


class DirectRoutes:
    """Pure ASGI: the single-clip routes of `app`, answered by their route functions."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.handlers = {"score": v1.score_clip, "classify": v1.classify_clip}
        # the routes themselves, so the access log and metrics name the same route template
        self.routes: dict[str, Any] = {
            action: route
            for route in v1.models.routes
            for action in self.handlers
            if isinstance(route, Route)
            and route.path == f"/v1/models/{{name}}/{action}"
            and "POST" in (route.methods or ())
        }
        if set(self.routes) != set(self.handlers):  # a renamed route must not go unnoticed
            raise RuntimeError(f"DirectRoutes: routes not found in service.api.v1: {self.routes}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = (
            _PATH.fullmatch(scope["path"])
            if scope["type"] == "http" and scope["method"] == "POST"
            else None
        )
        if match is None:
            await self.app(scope, receive, send)
            return
        action = match["action"]
        scope["route"] = self.routes[action]
        request = Request(scope, receive)
        state = self.fastapi_app.state
        response: Response
        try:
            await require_api_key(request, state.settings, None, None)
            result = await self.handlers[action](
                match["name"], request, state.registry, state.scorer, state.settings
            )
            response = Response(result.model_dump_json(), media_type="application/json")
        except AuscultError as exc:
            answer = self.fastapi_app.exception_handlers[AuscultError](request, exc)
            response = await answer if inspect.isawaitable(answer) else answer
        await response(scope, receive, send)
