"""Bad input over HTTP: the exact status and error body, and the service still answers.

Content errors (what is inside a file) fail a single-clip request with the
file's error; in a batch the same file gets its own error entry and its
neighbours are scored. Request errors (the request itself is wrong) fail both
routes the same way.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable

import httpx
import numpy as np
import pytest

from service.app import create_app
from tests.conftest import tone, wav_bytes
from tests.helpers import (
    GOOD_WAV,
    assert_error,
    assert_still_scores,
    png_bytes,
    serve,
    with_flac_streaminfo,
)

pytestmark = pytest.mark.anyio

MAX_AUDIO_SECONDS = 2.0
MAX_UPLOAD_BYTES = 100_000
MAX_BATCH_FILES = 3


@pytest.fixture
async def client(settings_factory) -> AsyncIterator[httpx.AsyncClient]:  # type: ignore[no-untyped-def]
    settings = settings_factory(
        max_audio_seconds=MAX_AUDIO_SECONDS,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_batch_files=MAX_BATCH_FILES,
    )
    async with serve(create_app(settings)) as c:
        yield c


def _with_sample(value: float) -> bytes:
    samples = tone(1.0)
    samples[100] = value
    return wav_bytes(samples, subtype="FLOAT")


BAD_FILES: list = [
    # (make the file bytes, status, code)
    pytest.param(lambda: b"", 422, "invalid_audio", id="empty-upload"),
    pytest.param(
        lambda: np.random.default_rng(7).bytes(4000),
        415,
        "unsupported_media_type",
        id="random-bytes-named-wav",
    ),
    pytest.param(
        lambda: GOOD_WAV[:12] + np.random.default_rng(7).bytes(4000),
        422,
        "invalid_audio",
        id="wav-magic-then-garbage",
    ),
    pytest.param(lambda: GOOD_WAV[:30], 422, "invalid_audio", id="wav-cut-inside-header"),
    pytest.param(
        lambda: wav_bytes(np.zeros(0, np.float32)), 422, "audio_too_short", id="zero-samples"
    ),
    pytest.param(lambda: GOOD_WAV[:44], 422, "audio_too_short", id="wav-header-only"),
    pytest.param(lambda: _with_sample(np.nan), 422, "non_finite_values", id="nan-float-wav"),
    pytest.param(lambda: _with_sample(np.inf), 422, "non_finite_values", id="inf-float-wav"),
    pytest.param(lambda: wav_bytes(tone(0.05)), 422, "audio_too_short", id="shorter-than-min"),
    pytest.param(
        lambda: wav_bytes(tone(MAX_AUDIO_SECONDS + 1)),
        422,
        "audio_too_long",
        id="longer-than-max-audio-seconds",
    ),
    pytest.param(
        lambda: with_flac_streaminfo(wav_bytes(tone(0.5), fmt="FLAC"), frames=16000 * 3600),
        422,
        "audio_too_long",
        id="flac-header-claims-an-hour",
    ),
    pytest.param(
        lambda: b"timestamp,rpm\n0,1500\n1,1510\n", 415, "unsupported_media_type", id="text-file"
    ),
    pytest.param(lambda: png_bytes(64, 48), 422, "invalid_image", id="image-of-wrong-size"),
    pytest.param(lambda: png_bytes(32, 32)[:40], 422, "invalid_image", id="truncated-png"),
]


@pytest.mark.parametrize(("make", "status", "code"), BAD_FILES)
async def test_score_rejects_bad_file(
    client: httpx.AsyncClient, make: Callable[[], bytes], status: int, code: str
) -> None:
    r = await client.post(
        "/v1/models/tiny/score", files={"file": ("clip.wav", make(), "audio/wav")}
    )
    assert_error(r, status, code)
    await assert_still_scores(client)


@pytest.mark.parametrize(("make", "status", "code"), BAD_FILES)
async def test_batch_gives_a_bad_file_its_own_error_entry(
    client: httpx.AsyncClient, make: Callable[[], bytes], status: int, code: str
) -> None:
    files = [
        ("files", ("first.wav", GOOD_WAV, "audio/wav")),
        ("files", ("bad.wav", make(), "audio/wav")),
        ("files", ("last.wav", wav_bytes(tone(1.0, freq=1000)), "audio/wav")),
    ]
    r = await client.post("/v1/models/tiny/score/batch", files=files)
    assert r.status_code == 200, r.text
    first, bad, last = r.json()["results"]
    assert first["filename"] == "first.wav" and isinstance(first["score"], float)
    assert last["filename"] == "last.wav" and isinstance(last["score"], float)
    assert bad == {
        "filename": "bad.wav",
        "error": {"code": code, "message": bad["error"]["message"]},
    }
    assert bad["error"]["message"]
    await assert_still_scores(client)


def _multipart(field: str, n_files: int = 1, size: int | None = None) -> dict:
    data = GOOD_WAV if size is None else GOOD_WAV + bytes(size - len(GOOD_WAV))
    return {"files": [(field, (f"f{i}.wav", data, "audio/wav")) for i in range(n_files)]}


def _chunked(field: str, size: int) -> dict:
    """The same multipart body streamed without a Content-Length (chunked)."""
    request = httpx.Request("POST", "http://test", **_multipart(field, size=size))
    body = request.read()

    async def stream() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 16384):
            yield body[i : i + 16384]

    return {"content": stream(), "headers": {"content-type": request.headers["content-type"]}}


def _cut_short(field: str) -> dict:
    """A multipart body that ends inside the file, before its closing boundary."""
    request = httpx.Request("POST", "http://test", **_multipart(field))
    body = request.read()
    cut = body[: len(body) // 2]
    return {"content": cut, "headers": {"content-type": request.headers["content-type"]}}


ROUTES = {
    "score": ("/v1/models/{m}/score", "file"),
    "batch": ("/v1/models/{m}/score/batch", "files"),
}

BAD_REQUESTS: list = [
    # (route, model, request kwargs (or a function of the route's field), status, code)
    *[
        pytest.param(route, "tiny", kwargs, status, code, id=f"{route}-{name}")
        for route in ROUTES
        for name, kwargs, status, code in [
            (
                "json-body",
                {
                    "content": json.dumps({"file": "x"}),
                    "headers": {"content-type": "application/json"},
                },
                415,
                "unsupported_media_type",
            ),
            (
                "raw-wav-body",
                {"content": GOOD_WAV, "headers": {"content-type": "audio/wav"}},
                415,
                "unsupported_media_type",
            ),
            ("no-body", {}, 415, "unsupported_media_type"),
            (
                "multipart-without-boundary",
                {"content": b"x", "headers": {"content-type": "multipart/form-data"}},
                422,
                "invalid_request",
            ),
            ("multipart-cut-short", lambda field: _cut_short(field), 422, "invalid_request"),
            ("missing-file-field", lambda field: _multipart("clip"), 422, "invalid_request"),
            (
                "file-over-max-upload-bytes",
                lambda field: _multipart(field, size=MAX_UPLOAD_BYTES + 1),
                413,
                "payload_too_large",
            ),
            (
                "body-far-over-the-limit",
                lambda field: _multipart(field, size=MAX_UPLOAD_BYTES * 5),
                413,
                "payload_too_large",
            ),
            (
                "chunked-file-over-max-upload-bytes",
                lambda field: _chunked(field, size=MAX_UPLOAD_BYTES + 1),
                413,
                "payload_too_large",
            ),
        ]
    ],
    pytest.param(
        "score", "nope", lambda f: _multipart(f), 404, "model_not_found", id="score-unknown-model"
    ),
    pytest.param(
        "batch", "nope", lambda f: _multipart(f), 404, "model_not_found", id="batch-unknown-model"
    ),
    pytest.param(
        "score",
        "tiny",
        lambda f: _multipart(f, n_files=2),
        422,
        "invalid_request",
        id="score-two-files",
    ),
    pytest.param(
        "batch",
        "tiny",
        lambda f: _multipart(f, n_files=MAX_BATCH_FILES + 1),
        413,
        "batch_too_large",
        id="batch-over-max-batch-files",
    ),
]


@pytest.mark.parametrize(("route", "model", "kwargs", "status", "code"), BAD_REQUESTS)
async def test_scoring_routes_reject_bad_request(
    client: httpx.AsyncClient, route: str, model: str, kwargs: object, status: int, code: str
) -> None:
    path, field = ROUTES[route]
    request = kwargs(field) if callable(kwargs) else kwargs
    r = await client.post(path.format(m=model), **request)  # type: ignore[arg-type]
    assert_error(r, status, code)
    await assert_still_scores(client)


async def test_batch_accepts_exactly_max_batch_files(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/tiny/score/batch", **_multipart("files", MAX_BATCH_FILES))
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == MAX_BATCH_FILES


@pytest.mark.parametrize("path", ["/v1/models/tiny/classify", "/v1/models/tiny/classify/batch"])
async def test_classify_on_an_anomaly_model_is_wrong_model_kind(
    client: httpx.AsyncClient, path: str
) -> None:
    field = "files" if path.endswith("batch") else "file"
    assert_error(await client.post(path, **_multipart(field)), 409, "wrong_model_kind")
    await assert_still_scores(client)


async def test_unknown_model_detail_is_model_not_found(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v1/models/nope"), 404, "model_not_found")


async def test_unknown_route_and_wrong_method_use_the_error_body(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v3/nothing"), 404, "not_found")
    r = await client.get("/v2/nothing")  # under /v2, the Open Inference Protocol's body
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    assert_error(await client.get("/v1/models/tiny/score"), 405, "method_not_allowed")
