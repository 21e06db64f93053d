"""Hostile inputs through the ASGI app (issue 12): huge floats, absurd sample rates,
boundary and part bombs, batch budgets, leaks in messages, readiness, OpenAPI security.

The connection-level defects (stalled uploads, header floods, slow headers, resets)
need a real socket: tests/server/test_hostile_server.py.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.models.bundle import MANIFEST, Thresholds, level_for, read_manifest, sha256_file
from service.models.registry import ModelRegistry
from service.settings import Settings
from tests.conftest import tone, wav_bytes
from tests.helpers import (
    GOOD_WAV,
    FakeAnomalyRuntime,
    assert_error,
    assert_still_scores,
    post_scope,
    serve,
    with_flac_streaminfo,
)

pytestmark = pytest.mark.anyio

HEAP_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


def with_wav_rate(wav: bytes, rate: int) -> bytes:
    """A copy of a canonical PCM WAV whose fmt chunk claims another sample rate."""
    out = bytearray(wav)
    at = out.find(b"fmt ") + 8
    channels, bits = int.from_bytes(out[at + 2 : at + 4], "little"), 16
    out[at + 4 : at + 8] = rate.to_bytes(4, "little")
    out[at + 8 : at + 12] = (rate * channels * bits // 8).to_bytes(4, "little")
    return bytes(out)


def huge_float_wav(value: float = 1e17) -> bytes:
    return wav_bytes(tone(1.0) * np.float32(value), subtype="FLOAT")


def one(data: bytes, name: str = "x.wav") -> dict:
    return {"files": {"file": (name, data, "application/octet-stream")}}


def many(*datas: bytes) -> dict:
    return {"files": [("files", (f"{i}.wav", d)) for i, d in enumerate(datas)]}


# --- finite numbers ------------------------------------------------------------------


@pytest.mark.parametrize("value", [1e17, 3e38, -1e9])
async def test_huge_finite_samples_are_refused_not_scored_normal(
    client: httpx.AsyncClient, value: float
) -> None:
    r = await client.post("/v1/models/tiny/score", **one(huge_float_wav(value)))
    assert_error(r, 422, "non_finite_values")
    r = await client.post("/v1/models/tiny/score/batch", **many(GOOD_WAV, huge_float_wav(value)))
    assert r.status_code == 200, r.text
    ok, bad = r.json()["results"]
    assert ok["level"] in ("normal", "needs_maintenance", "severe") and np.isfinite(ok["score"])
    assert bad["error"]["code"] == "non_finite_values"
    await assert_still_scores(client)


async def test_unnormalised_but_sane_float_samples_still_score(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/models/tiny/score", **one(huge_float_wav(32768.0)))
    assert r.status_code == 200, r.text
    assert np.isfinite(r.json()["score"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
async def test_a_model_giving_non_finite_scores_is_a_422_never_normal(
    tiny_bundle: Path, bad: float
) -> None:
    manifest = read_manifest(tiny_bundle)
    registry = ModelRegistry(
        {"odd": FakeAnomalyRuntime("odd", manifest, lambda x: np.full(len(x), bad))}
    )
    async with serve(create_app(Settings(artifacts_dir=tiny_bundle.parent), registry)) as c:
        r = await c.post("/v1/models/odd/score", **one(GOOD_WAV))
        assert_error(r, 422, "non_finite_values")
        r = await c.post("/v1/models/odd/score/batch", **many(GOOD_WAV, GOOD_WAV))
        assert r.status_code == 200
        assert [e["error"]["code"] for e in r.json()["results"]] == ["non_finite_values"] * 2
        metrics = (await c.get("/metrics")).text
        assert 'auscult_clips_scored_total{model="odd",result="normal"}' not in metrics


def test_level_for_treats_nan_as_not_normal() -> None:
    thresholds = Thresholds(needs_maintenance=1.0, severe=2.0, method="test")
    assert level_for(float("nan"), thresholds) == "severe"
    assert level_for(0.5, thresholds) == "normal"


# --- sample rates and the per-request sample budget ------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: with_wav_rate(wav_bytes(tone(0.5)), 1), id="wav-1-hz"),
        pytest.param(lambda: with_wav_rate(wav_bytes(tone(0.5)), 500), id="wav-500-hz"),
        pytest.param(lambda: with_wav_rate(wav_bytes(tone(0.5)), 50_000_000), id="wav-50-mhz"),
        pytest.param(
            lambda: with_flac_streaminfo(wav_bytes(tone(0.5), fmt="FLAC"), sample_rate=655_350),
            id="flac-655-khz",
        ),
    ],
)
async def test_absurd_sample_rates_are_refused(client: httpx.AsyncClient, make) -> None:  # type: ignore[no-untyped-def]
    assert_error(
        await client.post("/v1/models/tiny/score", **one(make())), 422, "sample_rate_out_of_range"
    )


async def test_ordinary_sample_rates_still_score(client: httpx.AsyncClient) -> None:
    for sr in (8000, 44100, 96000):
        r = await client.post("/v1/models/tiny/score", **one(wav_bytes(tone(1.0, sr=sr), sr=sr)))
        assert r.status_code == 200, (sr, r.text)


async def test_a_batch_stops_decoding_at_the_request_sample_budget(settings_factory) -> None:  # type: ignore[no-untyped-def]
    # 1 s at 16 kHz costs 16000 samples; a budget of 40000 pays for two such files
    settings = settings_factory(max_request_samples=40_000, cpu_workers=1)
    async with serve(create_app(settings)) as c:
        r = await c.post("/v1/models/tiny/score/batch", **many(*[GOOD_WAV] * 4))
        assert r.status_code == 200, r.text
        codes = [e.get("error", {}).get("code") for e in r.json()["results"]]
        assert codes == [None, None, "audio_too_long", "audio_too_long"]
        # a 44.1-kHz second is decoded and resampled: 44100 + 16000 samples, over budget
        r = await c.post("/v1/models/tiny/score", **one(wav_bytes(tone(1.0, sr=44100), sr=44100)))
        assert_error(r, 422, "audio_too_long")
        await assert_still_scores(c)


# --- multipart bombs and batch size --------------------------------------------------


async def test_an_overlong_boundary_is_a_422_not_a_500(client: httpx.AsyncClient) -> None:
    boundary = "b" * 300
    body = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n\r\n'
    r = await client.post(
        "/v1/models/tiny/score",
        content=body.encode() + GOOD_WAV + f"\r\n--{boundary}--\r\n".encode(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(r, 422, "invalid_request")


async def test_many_tiny_parts_are_refused_at_the_part_cap(settings_factory) -> None:  # type: ignore[no-untyped-def]
    async with serve(create_app(settings_factory(max_form_parts=50))) as c:
        fields = [("x", (None, "1")) for _ in range(5000)]
        r = await c.post("/v1/models/tiny/score/batch", files=[*fields])
        assert_error(r, 413, "batch_too_large")
        assert "parts" in r.json()["error"]["message"]
        await assert_still_scores(c)


async def test_part_headers_are_bounded(client: httpx.AsyncClient) -> None:
    boundary = "xyz"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a"\r\n'
            f"X-Pad: {'p' * 20000}\r\n\r\n"
        ).encode()
        + GOOD_WAV
        + f"\r\n--{boundary}--\r\n".encode()
    )
    r = await client.post(
        "/v1/models/tiny/score",
        content=body,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(r, 422, "invalid_request")


async def test_a_batch_body_over_max_batch_bytes_is_refused(settings_factory) -> None:  # type: ignore[no-untyped-def]
    settings = settings_factory(max_batch_bytes=100_000, max_upload_bytes=60_000)
    async with serve(create_app(settings)) as c:
        files = many(*[GOOD_WAV] * 4)  # 4 x 32 kB
        assert_error(await c.post("/v1/models/tiny/score/batch", **files), 413, "payload_too_large")
        r = await c.post("/v1/models/tiny/score/batch", **many(*[GOOD_WAV] * 2))
        assert r.status_code == 200, r.text


def test_settings_refuse_limits_out_of_order(artifacts_dir: Path) -> None:
    with pytest.raises(ValueError, match="AUSCULT_MAX_UPLOAD_BYTES"):
        Settings(artifacts_dir=artifacts_dir, max_upload_bytes=10, max_batch_bytes=5)
    with pytest.raises(ValueError, match="AUSCULT_MIN_SAMPLE_RATE"):
        Settings(artifacts_dir=artifacts_dir, min_sample_rate=10, max_sample_rate=5)


# --- leaks ------------------------------------------------------------------------------


async def test_invalid_image_message_has_no_heap_address(client: httpx.AsyncClient) -> None:
    png_magic_then_garbage = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
    r = await client.post("/v1/models/tiny/score", **one(png_magic_then_garbage, "a.png"))
    body = assert_error(r, 422, "invalid_image")
    assert not HEAP_ADDRESS.search(body["error"]["message"]), body
    r = await client.post("/v1/models/tiny/score/batch", **many(png_magic_then_garbage))
    assert not HEAP_ADDRESS.search(r.text), r.text


async def test_bundle_failure_reasons_have_no_server_paths(artifacts_dir: Path) -> None:
    # an encoder that onnxruntime refuses, with a checksum that matches: its error names
    # the file by its absolute path
    broken = artifacts_dir / "broken"
    shutil.copytree(artifacts_dir / "tiny", broken)
    (broken / "encoder.onnx").write_bytes(b"not a model at all" * 10)
    manifest = (broken / MANIFEST).read_text()
    old = sha256_file(artifacts_dir / "tiny" / "encoder.onnx")
    new = sha256_file(broken / "encoder.onnx")
    (broken / MANIFEST).write_text(manifest.replace(old, new))
    async with serve(create_app(Settings(artifacts_dir=artifacts_dir))) as c:
        text = (await c.get("/v1/models")).text
        listed = (await c.get("/v1/models")).json()["models"]
        (failed,) = [m for m in listed if m["name"] == "broken"]
        assert failed["status"] == "failed" and "encoder.onnx" in failed["reason"], failed
        assert str(artifacts_dir) not in text and str(artifacts_dir.resolve()) not in text
        assert "/tmp" not in text and "/home" not in text, text
        assert str(artifacts_dir) not in (await c.get("/v1/models/broken")).text


async def test_registry_turns_onnxruntime_telemetry_off(
    artifacts_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    calls: list[int] = []
    monkeypatch.setattr(ort, "disable_telemetry_events", lambda: calls.append(1))
    ModelRegistry.from_dir(artifacts_dir)
    assert calls


# --- readiness and OpenAPI ----------------------------------------------------------


async def test_readyz_is_503_while_the_default_model_failed(artifacts_dir: Path) -> None:
    broken = artifacts_dir / "broken"
    shutil.copytree(artifacts_dir / "tiny", broken)
    (broken / "inv_cov.npy").unlink()
    settings = Settings(artifacts_dir=artifacts_dir, default_model="broken")
    async with serve(create_app(settings)) as c:
        assert_error(await c.get("/readyz"), 503, "not_ready")
        await assert_still_scores(c)  # the other bundle serves
    async with serve(create_app(Settings(artifacts_dir=artifacts_dir, default_model="tiny"))) as c:
        assert (await c.get("/readyz")).status_code == 200


async def test_openapi_declares_the_key_schemes_and_401s(settings_factory) -> None:  # type: ignore[no-untyped-def]
    async with serve(create_app(settings_factory(api_keys="k1"))) as c:
        doc = (await c.get("/openapi.json")).json()
        schemes = doc["components"]["securitySchemes"]
        assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}
        for path in ("/v1/models", "/v1/models/{name}/score", "/v1/models/{name}/score/batch"):
            op = next(iter(doc["paths"][path].values()))
            assert "401" in op["responses"] and op.get("security"), path
        assert "503" in doc["paths"]["/v1/models/{name}/score"]["post"]["responses"]
        r = await c.get("/v1/models")
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert (await c.get("/v1/models", headers={"x-api-key": "k1"})).status_code == 200


# --- bodies: drained before early errors, bounded in memory --------------------------


async def test_an_early_error_reads_the_rest_of_a_small_body_first(settings_factory) -> None:  # type: ignore[no-untyped-def]
    # a client that sends `Connection: close` gets a reset instead of the answer when the
    # server closes with its body unread; the app reads it (bounded) before answering
    app = create_app(settings_factory(drain_bytes=1_000_000))
    chunks = [b"x" * 10_000] * 20
    events: list[str] = []

    async def receive() -> dict:
        if chunks:
            events.append("body")
            return {"type": "http.request", "body": chunks.pop(), "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        events.append(message["type"])

    scope = post_scope(
        "/v1/models/nope/score",
        [
            (b"content-type", b"multipart/form-data; boundary=b"),
            (b"content-length", b"200000"),
            (b"connection", b"close"),
        ],
    )
    async with serve(app):  # lifespan run
        await app(scope, receive, send)
    assert events.count("body") == 20
    assert events.index("http.response.start") > max(i for i, e in enumerate(events) if e == "body")


async def test_uploads_beyond_the_buffer_budget_are_overloaded(settings_factory) -> None:  # type: ignore[no-untyped-def]
    import anyio

    settings = settings_factory(
        max_upload_bytes=200_000, max_batch_bytes=300_000, max_buffered_bytes=300_000
    )
    boundary = "held"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    ).encode()
    gate = anyio.Event()

    async def held_body():  # type: ignore[no-untyped-def]
        yield head + GOOD_WAV
        yield b"\0" * 150_000  # part of the file: 180 kB held in memory
        await gate.wait()
        yield f"\r\n--{boundary}--\r\n".encode()

    async with serve(create_app(settings)) as c:
        held: dict = {}

        async def first() -> None:
            held["r"] = await c.post(
                "/v1/models/tiny/score",
                content=held_body(),
                headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            )

        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await anyio.sleep(0.2)
            r = await c.post(
                "/v1/models/tiny/score/batch", **many(GOOD_WAV, GOOD_WAV, GOOD_WAV, GOOD_WAV)
            )
            assert_error(r, 503, "overloaded")
            assert r.headers["retry-after"] == "1"
            gate.set()
        # the held upload was a valid WAV followed by zero padding (more silent samples)
        assert held["r"].status_code == 200, held["r"].text
        await assert_still_scores(c)  # the budget was given back


def test_scrubbing_keeps_the_apis_own_routes() -> None:
    # server paths go, the routes a message points the client to stay
    from service.errors import public_message

    assert public_message("use POST /v1/models/digits/classify") == (
        "use POST /v1/models/digits/classify"
    )
    assert public_message("GET /v1/models lists them") == "GET /v1/models lists them"
    assert public_message("cannot read /srv/auscult/artifacts/x/manifest.json: bad") == (
        "cannot read manifest.json: bad"
    )


# --- issue 24: error codes and limits as documented -------------------------------------------


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
async def test_nan_and_infinite_samples_are_non_finite_values(
    client: httpx.AsyncClient, value: float, subtype: str
) -> None:
    samples = tone(1.0)
    samples[100] = value
    r = await client.post("/v1/models/tiny/score", **one(wav_bytes(samples, subtype=subtype)))
    assert_error(r, 422, "non_finite_values")


@pytest.mark.parametrize("length", [4300, 7900])
async def test_a_filename_within_the_8_kb_of_part_headers_is_accepted(
    client: httpx.AsyncClient, length: int
) -> None:
    name = "a" * length + ".wav"
    r = await client.post("/v1/models/tiny/score", **one(GOOD_WAV, name=name))
    assert r.status_code == 200, r.text[:300]
    r = await client.post("/v1/models/tiny/score", **one(GOOD_WAV, name="a" * 9000 + ".wav"))
    assert "8192 bytes" in assert_error(r, 422, "invalid_request")["error"]["message"]


async def test_a_multipart_preamble_is_ignored(client: httpx.AsyncClient) -> None:
    body = (
        b"This is the preamble; RFC 2046 says to ignore it.\r\n--XYZ\r\n"
        b'Content-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        + GOOD_WAV
        + b"\r\n--XYZ--\r\n"
    )
    headers = {"content-type": "multipart/form-data; boundary=XYZ"}
    r = await client.post("/v1/models/tiny/score", content=body, headers=headers)
    assert r.status_code == 200, r.text
    r = await client.post("/v1/models/tiny/score", content=b"x" * 9000, headers=headers)
    assert "no multipart boundary" in assert_error(r, 422, "invalid_request")["error"]["message"]


async def test_get_on_the_reload_route_is_405_naming_post(client: httpx.AsyncClient) -> None:
    r = await client.get("/v1/models/reload")
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/v1/models", "/v2/health/live", "/"])
async def test_head_answers_as_get_without_a_body(client: httpx.AsyncClient, path: str) -> None:
    get, head = await client.get(path), await client.head(path)
    assert head.status_code == get.status_code == 200
    assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]


@pytest.mark.parametrize(
    "data", [b"\x89PNG\r\n\x1a\n" + bytes(30), b"\xff\xd8\xff" + bytes(50)], ids=["png", "jpeg"]
)
@pytest.mark.parametrize("route", ["score", "spectrogram"])
async def test_image_errors_name_no_file_object(
    client: httpx.AsyncClient, data: bytes, route: str
) -> None:
    r = await client.post(f"/v1/models/tiny/{route}", **one(data, name="x.png"))
    message = assert_error(r, 422, "invalid_image")["error"]["message"]
    assert "BytesIO" not in message and "object" not in message, message
