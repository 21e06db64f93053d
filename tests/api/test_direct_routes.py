"""The single-clip routes' direct dispatch (service/api/direct.py) answers exactly as
FastAPI's dispatch of the same route functions: bodies, statuses, headers, metrics."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request

from service.api.deps import get_scorer
from service.api.direct import DirectRoutes
from service.app import create_app
from service.models.scoring import Scorer
from service.settings import Settings
from tests.conftest import ARTIFACTS, tone, wav_bytes
from tests.helpers import post_scope, serve

pytestmark = pytest.mark.anyio

KEY = "k-direct-test"


def _without_direct_routes(app: FastAPI) -> FastAPI:
    app.user_middleware = [m for m in app.user_middleware if m.cls is not DirectRoutes]
    app.middleware_stack = None  # rebuilt on the first request
    return app


def _counting_scorer(app: FastAPI, calls: list[str]) -> None:
    """Counts FastAPI's resolutions of the scorer dependency (the direct path has none)."""

    async def scorer(request: Request) -> Scorer:
        calls.append(request.url.path)
        return await get_scorer(request)

    app.dependency_overrides[get_scorer] = scorer


CASES: list[tuple[str, dict[str, str], dict[str, Any]]] = [
    ("/v1/models/tiny/score", {"X-API-Key": KEY}, {"file": ("a.wav", wav_bytes(tone(1.5)))}),
    ("/v1/models/digits/classify", {"X-API-Key": KEY}, {"file": ("d.wav", b"")}),
    ("/v1/models/tiny/score", {"X-API-Key": KEY}, {"file": ("x.wav", b"not audio at all")}),
    ("/v1/models/nope/score", {"X-API-Key": KEY}, {"file": ("a.wav", wav_bytes(tone(1.0)))}),
    ("/v1/models/digits/score", {"X-API-Key": KEY}, {"file": ("a.wav", wav_bytes(tone(1.0)))}),
    ("/v1/models/tiny/classify", {"X-API-Key": KEY}, {"file": ("a.wav", wav_bytes(tone(1.0)))}),
    ("/v1/models/tiny/score", {}, {"file": ("a.wav", wav_bytes(tone(1.0)))}),
    ("/v1/models/tiny/score", {"X-API-Key": "wrong"}, {"file": ("a.wav", wav_bytes(tone(1.0)))}),
    ("/v1/models/tiny/score", {"X-API-Key": KEY}, {"other": ("a.wav", wav_bytes(tone(1.0)))}),
]


async def _answers(app: FastAPI, cases: list[Any]) -> list[tuple[int, Any, str | None, str]]:
    out = []
    async with serve(app) as client:
        for path, headers, files in cases:
            r = await client.post(path, headers=headers, files=files)
            out.append(
                (
                    r.status_code,
                    r.json(),
                    r.headers.get("www-authenticate"),
                    r.headers["content-type"],
                )
            )
        metrics = (await client.get("/metrics")).text
    return [*out, (0, _request_lines(metrics), None, "")]


def _request_lines(metrics: str) -> list[str]:
    return sorted(
        line for line in metrics.splitlines() if line.startswith("auscult_requests_total{")
    )


async def test_direct_dispatch_answers_as_fastapi_does(artifacts_dir: Path) -> None:
    shutil.copytree(ARTIFACTS / "digits", artifacts_dir / "digits")
    cases = [
        *CASES,
        (
            "/v1/models/digits/classify",
            {"X-API-Key": KEY},
            {"file": ("t.wav", wav_bytes(tone(0.8, 300.0, sr=8000), sr=8000))},
        ),
    ]

    direct_calls: list[str] = []
    direct = create_app(Settings(artifacts_dir=artifacts_dir, api_keys=[KEY]))
    _counting_scorer(direct, direct_calls)
    via_direct = await _answers(direct, cases)

    fastapi_calls: list[str] = []
    plain = _without_direct_routes(
        create_app(Settings(artifacts_dir=artifacts_dir, api_keys=[KEY]))
    )
    _counting_scorer(plain, fastapi_calls)
    via_fastapi = await _answers(plain, cases)

    assert via_direct == via_fastapi
    statuses = [status for status, *_ in via_direct[:-1]]
    assert statuses == [200, 422, 415, 404, 409, 409, 401, 401, 422, 200]
    # the direct path took every single-clip request; FastAPI resolved the scorer for those
    # that passed the key check
    assert direct_calls == []
    assert len(fastapi_calls) == 8


async def test_other_methods_and_routes_still_go_through_fastapi(artifacts_dir: Path) -> None:
    app = create_app(Settings(artifacts_dir=artifacts_dir))
    calls: list[str] = []
    _counting_scorer(app, calls)
    clip = {"files": ("a.wav", wav_bytes(tone(1.5)))}
    async with serve(app) as client:
        r = await client.get("/v1/models/tiny/score")
        assert r.status_code == 405
        assert r.json()["error"]["code"] == "method_not_allowed"
        r = await client.post("/v1/models/tiny/score/batch", files=clip)
        assert r.status_code == 200, r.text
        r = await client.post("/v1/models/tiny/score/", files=clip)
        assert r.status_code in (307, 404)  # FastAPI's own answer to a trailing slash
    assert calls == ["/v1/models/tiny/score/batch"]


def test_direct_routes_find_their_route_functions() -> None:
    app = create_app(Settings())
    mw = DirectRoutes(app=lambda *a: None, fastapi_app=app)  # type: ignore[arg-type]
    assert {a: r.path for a, r in mw.routes.items()} == {
        "score": "/v1/models/{name}/score",
        "classify": "/v1/models/{name}/classify",
    }


def _upload_then_gone(body: bytes) -> Any:
    messages = [{"type": "http.request", "body": body, "more_body": True}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    return receive


def sent_to(sent: list[dict[str, Any]]) -> Any:
    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    return send


async def test_a_client_gone_mid_upload_gets_the_same_answer(artifacts_dir: Path) -> None:
    body = b"--b\r\nContent-Disposition: form-data; name=file; filename=a.wav\r\n\r\nRIFF"
    scope = post_scope(
        "/v1/models/tiny/score", [(b"content-type", b"multipart/form-data; boundary=b")]
    )
    answers = []
    for app in (
        create_app(Settings(artifacts_dir=artifacts_dir)),
        _without_direct_routes(create_app(Settings(artifacts_dir=artifacts_dir))),
    ):
        sent: list[dict[str, Any]] = []
        receive = _upload_then_gone(body)

        async with serve(app):  # lifespan run
            await app(scope, receive, sent_to(sent))
        answers.append((sent[0]["status"], sent[1]["body"]))
    assert answers[0] == answers[1]
    assert answers[0][0] == 499
