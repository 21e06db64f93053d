"""API keys: /v1/* need one when AUSCULT_API_KEYS is set; health and metrics stay open."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.helpers import GOOD_WAV, assert_error, serve

pytestmark = pytest.mark.anyio

KEY = "k3y-Sup3r-s3cret-7f1c"
OTHER_KEY = "second-key-for-rotation"


@pytest.fixture
async def client(settings_factory, monkeypatch) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    # Through the environment, as an operator sets it: comma-separated, spaces ignored.
    monkeypatch.setenv("AUSCULT_API_KEYS", f" {KEY} , {OTHER_KEY} ")
    settings = settings_factory()
    assert settings.api_keys == [KEY, OTHER_KEY]
    async with serve(create_app(settings)) as c:
        yield c


def clip() -> dict:
    return {"files": {"file": ("a.wav", GOOD_WAV, "audio/wav")}}


def batch() -> dict:
    return {"files": [("files", ("a.wav", GOOD_WAV))]}


PROTECTED = [
    pytest.param("GET", "/v1/models", dict, id="list-models"),
    pytest.param("GET", "/v1/models/tiny", dict, id="read-model"),
    pytest.param("POST", "/v1/models/tiny/score", clip, id="score"),
    pytest.param("POST", "/v1/models/tiny/score/batch", batch, id="score-batch"),
    pytest.param("POST", "/v1/models/tiny/classify", clip, id="classify"),
    pytest.param("POST", "/v1/models/nope/score", clip, id="unknown-model"),
]

BAD_CREDENTIALS = [
    pytest.param({}, id="no-key"),
    pytest.param({"x-api-key": "wrong"}, id="wrong-x-api-key"),
    pytest.param({"authorization": "Bearer wrong"}, id="wrong-bearer"),
    pytest.param({"authorization": f"Basic {KEY}"}, id="key-with-basic-scheme"),
    pytest.param({"authorization": "Bearer "}, id="empty-bearer"),
    pytest.param({"x-api-key": KEY[:-1]}, id="key-prefix"),
]


@pytest.mark.parametrize("headers", BAD_CREDENTIALS)
@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
async def test_v1_routes_need_a_valid_key(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    body,
    headers: dict,  # type: ignore[no-untyped-def]
) -> None:
    r = await client.request(method, path, headers=headers, **body())
    assert_error(r, 401, "unauthorized")


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"x-api-key": KEY}, id="x-api-key"),
        pytest.param({"authorization": f"Bearer {KEY}"}, id="bearer"),
        pytest.param({"authorization": f"bearer {OTHER_KEY}"}, id="second-key-lowercase-scheme"),
    ],
)
async def test_score_accepts_either_key_header(client: httpx.AsyncClient, headers: dict) -> None:
    r = await client.post("/v1/models/tiny/score", headers=headers, **clip())
    assert r.status_code == 200, r.text
    r = await client.post("/v1/models/tiny/score/batch", headers=headers, **batch())
    assert r.status_code == 200, r.text


async def test_auth_is_checked_before_the_model_and_the_body(client: httpx.AsyncClient) -> None:
    # No information leaks to a caller without a key: not even whether a model exists.
    r = await client.post("/v1/models/nope/score", content=b"junk")
    assert_error(r, 401, "unauthorized")
    r = await client.post("/v1/models/nope/score", content=b"junk", headers={"x-api-key": KEY})
    assert_error(r, 404, "model_not_found")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_health_and_metrics_stay_open(client: httpx.AsyncClient, path: str) -> None:
    assert (await client.get(path)).status_code == 200


async def test_api_is_open_without_configured_keys(settings_factory) -> None:  # type: ignore[no-untyped-def]
    async with serve(create_app(settings_factory())) as c:
        assert (await c.get("/v1/models")).status_code == 200


async def test_key_never_appears_in_the_logs(settings_factory, monkeypatch, log_lines) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("AUSCULT_API_KEYS", KEY)
    async with serve(create_app(settings_factory(log_level="debug"))) as c:
        for headers in ({"x-api-key": KEY}, {"authorization": f"Bearer {KEY}"}):
            assert (
                await c.post("/v1/models/tiny/score", headers=headers, **clip())
            ).status_code == 200
        await c.post("/v1/models/tiny/score", headers={"x-api-key": KEY + "x"}, **clip())
        await c.post("/v1/models/tiny/score", headers={"x-api-key": KEY}, content=b"junk")
        await c.get("/metrics")
    lines = log_lines()
    assert any(line["event"] == "request" for line in lines)
    text = "\n".join(map(str, lines))
    assert KEY not in text and KEY[:8] not in text


def test_settings_refuse_a_missing_artifacts_dir(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not a folder"):
        Settings(artifacts_dir=tmp_path / "nowhere")
