"""The thin slice: a real tiny bundle served and scored over HTTP."""

from __future__ import annotations

import pytest

from tests.conftest import tone, wav_bytes

pytestmark = pytest.mark.anyio


async def test_health_and_readiness(client) -> None:  # type: ignore[no-untyped-def]
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["models_ready"] == 1


async def test_score_returns_a_typed_result(client) -> None:  # type: ignore[no-untyped-def]
    r = await client.post(
        "/v1/models/tiny/score", files={"file": ("a.wav", wav_bytes(tone(1.0)), "audio/wav")}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["filename"] == "a.wav"
    assert body["level"] in ("normal", "needs_maintenance", "severe")
    assert body["score"] >= 0
    assert body["input"] == {
        "kind": "audio",
        "format": "wav",
        "duration_s": 1.0,
        "sample_rate": 16000,
        "channels": 1,
        "bandwidth_hz": 8000.0,
        "bitrate_kbps": 256.4,  # 16-bit samples at 16 kHz and a 44-byte header, over 1 s
    }
    assert body["warnings"] == []
    assert "x-request-id" in r.headers
