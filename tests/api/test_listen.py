"""WS /v1/models/{name}/listen through the app (Starlette's test client), on the committed
gearbox bundle: the file endpoint's window scores in any chunking and rate, each bad input's
documented error and close code, the limits, keys and metrics."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from service.app import create_app
from service.settings import Settings
from tests.conftest import ARTIFACTS

URL = "/v1/models/gearbox/listen"
KEY = "listen-k3y-7f1c-secret"

ClientFactory = Callable[..., TestClient]


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """TestClient(app) on the committed bundles with these settings, lifespan run."""
    opened: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(Settings(artifacts_dir=ARTIFACTS, **overrides)))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    return make_client()


def recording(seconds: float, rate: int, channels: int, seed: int) -> np.ndarray:
    """(n, channels) float32 in [-1, 1]: a gear-like hum with noise, a louder second half."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    hum = 0.2 * np.sin(2 * np.pi * 180 * t) * (1 + (t > seconds / 2))
    x = hum[:, None] + 0.05 * rng.standard_normal((t.size, channels))
    return np.clip(x, -1, 1).astype(np.float32)


def encode(x: np.ndarray, fmt: str) -> bytes:
    """(n, channels) float32 → the interleaved little-endian PCM bytes of `fmt`."""
    if fmt == "pcm_s16le":
        return np.round(x * 32767).astype("<i2").tobytes()
    return x.astype("<f4").tobytes()


def as_wav(pcm: bytes, rate: int, channels: int, fmt: str) -> bytes:
    """The same samples as a WAV file (PCM_16 or FLOAT), for the file endpoint."""
    dtype, subtype = ("<i2", "PCM_16") if fmt == "pcm_s16le" else ("<f4", "FLOAT")
    samples = np.frombuffer(pcm, dtype=dtype).reshape(-1, channels)
    buf = io.BytesIO()
    sf.write(buf, samples, rate, subtype=subtype, format="WAV")
    return buf.getvalue()


def until_closed(ws: Any) -> tuple[list[dict[str, Any]], int]:
    """Every JSON message the server sends until it closes, and its close code."""
    messages = []
    while True:
        try:
            messages.append(ws.receive_json())
        except WebSocketDisconnect as e:
            return messages, e.code


def stream(
    client: TestClient,
    pcm: bytes,
    start: dict[str, Any],
    chunks: list[int] | None = None,
    url: str = URL,
    **connect: Any,
) -> tuple[list[dict[str, Any]], int]:
    """Send the start message, `pcm` cut at byte sizes `chunks` (whole), stop; → the
    messages and the close code."""
    with client.websocket_connect(url, **connect) as ws:
        ws.send_text(json.dumps({"type": "start", **start}))
        pos = 0
        for size in chunks or [len(pcm)]:
            ws.send_bytes(pcm[pos : pos + size])
            pos += size
        assert pos >= len(pcm)
        ws.send_text(json.dumps({"type": "stop"}))
        return until_closed(ws)


def random_chunks(total: int, frame: int, seed: int) -> list[int]:
    """Byte sizes of whole sample frames, 1 to ~6000 samples each, covering `total`."""
    rng = np.random.default_rng(seed)
    sizes, left = [], total
    while left > 0:
        size = min(left, frame * int(rng.integers(1, 6000)))
        sizes.append(size)
        left -= size
    return sizes


EQUAL_CASES = [
    pytest.param(16000, 1, "pcm_s16le", "section_00_source", id="16k-s16-mono-named"),
    pytest.param(16000, 1, "f32le", None, id="16k-f32-mono-nearest"),
    pytest.param(22050, 1, "pcm_s16le", None, id="22k-s16-mono-nearest"),
    pytest.param(44100, 2, "f32le", "section_00_target", id="44k-f32-stereo-named"),
    pytest.param(8000, 2, "pcm_s16le", "section_00_source", id="8k-s16-stereo-named"),
    pytest.param(48000, 1, "f32le", None, id="48k-f32-mono-nearest"),
]


@pytest.mark.parametrize(("rate", "channels", "fmt", "condition"), EQUAL_CASES)
def test_streamed_windows_equal_the_file_endpoints(
    client: TestClient, rate: int, channels: int, fmt: str, condition: str | None
) -> None:
    pcm = encode(recording(6.4, rate, channels, seed=rate + channels), fmt)
    fields = {"condition": condition} if condition else {}
    posted = client.post(
        "/v1/models/gearbox/score",
        files={"file": ("a.wav", as_wav(pcm, rate, channels, fmt))},
        data=fields,
    ).json()
    start = {"sample_rate": rate, "channels": channels, "format": fmt, **fields}
    frame = channels * (2 if fmt == "pcm_s16le" else 4)
    messages, code = stream(client, pcm, start, random_chunks(len(pcm), frame, seed=rate))
    assert code == 1000
    windows = [m for m in messages if m["type"] == "window"]
    summary = messages[-1]
    assert [m["type"] for m in messages] == ["window"] * len(windows) + ["summary"]
    expected = posted["windows"]
    assert len(windows) == len(expected) == 7
    same_condition = 0
    for got, want in zip(windows, expected, strict=True):
        assert (got["start_s"], got["end_s"]) == (want["start_s"], want["end_s"])
        if got["condition"] == posted["condition"]["name"]:  # always, once it is named
            assert got["score"] == pytest.approx(want["score"], abs=1e-6)
            same_condition += 1
    assert windows[-1]["condition"] == posted["condition"]["name"]
    assert same_condition >= len(windows) - 2  # the nearest one settles within two windows
    if condition:
        assert {w["condition"] for w in windows} == {condition}
    # the summary is the file endpoint's result for the recording: every window, the verdict
    for key in ("level", "condition", "thresholds", "warnings", "model", "model_version"):
        assert summary[key] == posted[key], key
    assert summary["score"] == pytest.approx(posted["score"], abs=1e-6)
    assert summary["worst"]["score"] == pytest.approx(posted["worst"]["score"], abs=1e-6)
    for got, want in zip(summary["windows"], expected, strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)
    assert summary["ended"] == "stop"
    assert summary["input"]["duration_s"] == posted["input"]["duration_s"]
    assert summary["input"]["sample_rate"] == rate and summary["input"]["channels"] == channels


def test_each_window_reports_the_level_so_far_and_its_worst_stretch(client: TestClient) -> None:
    rate = 16000
    quiet = recording(3.0, rate, 1, seed=3) * 0.05
    loud = np.clip(np.random.default_rng(4).standard_normal((3 * rate, 1)), -1, 1)
    pcm = encode(np.concatenate([quiet, loud.astype(np.float32)]), "pcm_s16le")
    messages, _ = stream(client, pcm, {"sample_rate": rate}, [3200] * (len(pcm) // 3200 + 1))
    windows = [m for m in messages if m["type"] == "window"]
    last = windows[-1]
    assert last["level"] == messages[-1]["level"]
    assert last["worst"] == messages[-1]["worst"]
    assert last["clip_score"] == pytest.approx(messages[-1]["score"], abs=1e-9)
    # the worst stretch only moves to later, louder windows
    assert windows[-1]["worst"]["start_s"] >= windows[0]["worst"]["start_s"]
    assert all(w["index"] == i for i, w in enumerate(windows))


def test_a_stream_shorter_than_a_window_gets_the_file_endpoints_single_window(
    client: TestClient,
) -> None:
    pcm = encode(recording(0.6, 16000, 1, seed=5), "pcm_s16le")
    posted = client.post(
        "/v1/models/gearbox/score", files={"file": ("a.wav", as_wav(pcm, 16000, 1, "pcm_s16le"))}
    ).json()
    messages, code = stream(client, pcm, {"sample_rate": 16000}, [1000] * 20)
    assert code == 1000
    assert [m["type"] for m in messages] == ["window", "summary"]
    assert messages[0]["score"] == pytest.approx(posted["windows"][0]["score"], abs=1e-6)
    assert (messages[0]["start_s"], messages[0]["end_s"]) == (0.0, 0.6)
    summary = messages[1]
    assert summary["input"]["bandwidth_hz"] == posted["input"]["bandwidth_hz"]
    assert summary["level"] == posted["level"] and summary["warnings"] == posted["warnings"]


def test_a_stream_without_enough_audio_ends_with_a_summary_without_a_verdict(
    client: TestClient,
) -> None:
    messages, code = stream(client, b"\x00\x00" * 100, {"sample_rate": 16000})
    assert code == 1000
    (summary,) = messages
    assert summary["type"] == "summary" and summary["score"] is None and summary["windows"] == []


def _error(messages: list[dict[str, Any]], code: str) -> dict[str, Any]:
    assert messages, "no message before the close"
    last = messages[-1]
    assert last["type"] == "error", last
    assert last["error"]["code"] == code, last
    assert isinstance(last["error"]["message"], str) and last["error"]["message"]
    return last


START = json.dumps({"type": "start", "sample_rate": 16000})
NAN = np.array([0.1, np.nan, 0.2], "<f4").tobytes()

BAD_INPUTS = [
    pytest.param([b"\x00\x01" * 100], "invalid_request", 1003, id="binary-before-start"),
    pytest.param(["hello"], "invalid_request", 1007, id="text-garbage"),
    pytest.param(["[1, 2]"], "invalid_request", 1007, id="json-not-an-object"),
    pytest.param(['{"type": "stop"}'], "invalid_request", 1007, id="stop-before-start"),
    pytest.param(['{"type": "start"}'], "invalid_request", 1007, id="start-without-rate"),
    pytest.param(
        ['{"type": "start", "sample_rate": "16000"}'], "invalid_request", 1007, id="rate-as-text"
    ),
    pytest.param(
        ['{"type": "start", "sample_rate": 16000, "format": "mp3"}'],
        "invalid_request",
        1007,
        id="unknown-format",
    ),
    pytest.param(
        ['{"type": "start", "sample_rate": 16000, "channels": 0}'],
        "invalid_request",
        1007,
        id="no-channels",
    ),
    pytest.param(
        ['{"type": "start", "sample_rate": 16000, "rate": 8000}'],
        "invalid_request",
        1007,
        id="unknown-field",
    ),
    pytest.param(
        ['{"type": "start", "sample_rate": 10}'],
        "sample_rate_out_of_range",
        1007,
        id="rate-too-low",
    ),
    pytest.param(
        ['{"type": "start", "sample_rate": 16000, "condition": "section_09_nowhere"}'],
        "invalid_request",
        1007,
        id="unknown-condition",
    ),
    pytest.param([START, b"\x00\x01\x02"], "invalid_audio", 1007, id="odd-frame-size"),
    pytest.param(
        ['{"type": "start", "sample_rate": 16000, "channels": 2}', b"\x00\x01" * 3],
        "invalid_audio",
        1007,
        id="frame-splits-a-stereo-sample",
    ),
    pytest.param(
        ['{"type": "start", "sample_rate": 16000, "format": "f32le"}', NAN],
        "non_finite_values",
        1007,
        id="nan-samples",
    ),
    pytest.param(
        [
            '{"type": "start", "sample_rate": 16000, "format": "f32le"}',
            np.array([np.inf] * 4, "<f4").tobytes(),
        ],
        "non_finite_values",
        1007,
        id="inf-samples",
    ),
    pytest.param([START, "garbage after start"], "invalid_request", 1007, id="text-after-start"),
    pytest.param([START, '{"type": "start"}'], "invalid_request", 1007, id="second-start"),
]


@pytest.mark.parametrize(("sent", "code", "close_code"), BAD_INPUTS)
def test_bad_input_gets_its_error_then_a_close_code(
    client: TestClient, sent: list[str | bytes], code: str, close_code: int
) -> None:
    with client.websocket_connect(URL) as ws:
        for item in sent:
            if isinstance(item, bytes):
                ws.send_bytes(item)
            else:
                ws.send_text(item)
        messages, closed = until_closed(ws)
    _error(messages, code)
    assert closed == close_code
    # the worker is fine: the next stream is scored
    pcm = encode(recording(1.5, 16000, 1, seed=0), "pcm_s16le")
    after, _ = stream(client, pcm, {"sample_rate": 16000})
    assert after[-1]["type"] == "summary" and len(after[-1]["windows"]) == 2


@pytest.mark.parametrize(
    ("url", "code"),
    [
        pytest.param("/v1/models/nope/listen", "model_not_found", id="unknown-model"),
        pytest.param("/v1/models/digits/listen", "wrong_model_kind", id="classifier"),
        pytest.param("/v1/models/digits-gan/listen", "wrong_model_kind", id="generator"),
    ],
)
def test_a_stream_to_a_model_that_cannot_listen_is_refused(
    client: TestClient, url: str, code: str
) -> None:
    with client.websocket_connect(url) as ws:
        messages, closed = until_closed(ws)
    _error(messages, code)
    assert closed == 1008


def test_streams_over_the_limit_get_overloaded_and_1013(make_client: ClientFactory) -> None:
    client = make_client(listen_max_streams=1)
    with client.websocket_connect(URL) as first:
        first.send_text(START)
        with client.websocket_connect(URL) as second:
            messages, closed = until_closed(second)
        _error(messages, "overloaded")
        assert closed == 1013
        first.send_bytes(encode(recording(1.2, 16000, 1, seed=1), "pcm_s16le"))
        first.send_text('{"type": "stop"}')
        messages, closed = until_closed(first)
        assert messages[-1]["type"] == "summary" and closed == 1000
    # the slot is free again
    pcm = encode(recording(1.2, 16000, 1, seed=1), "pcm_s16le")
    assert stream(client, pcm, {"sample_rate": 16000})[0][-1]["type"] == "summary"


def test_a_frame_over_the_limit_gets_payload_too_large_and_1009(
    make_client: ClientFactory,
) -> None:
    client = make_client(listen_max_frame_bytes=4096)
    with client.websocket_connect(URL) as ws:
        ws.send_text(START)
        ws.send_bytes(b"\x00" * 4096)  # at the limit: fine
        ws.send_bytes(b"\x00" * 4098)
        messages, closed = until_closed(ws)
    _error(messages, "payload_too_large")
    assert closed == 1009


@pytest.mark.parametrize("started", [False, True], ids=["before-start", "after-start"])
def test_a_silent_client_is_timed_out(make_client: ClientFactory, started: bool) -> None:
    client = make_client(listen_idle_timeout_s=0.3)
    with client.websocket_connect(URL) as ws:
        if started:
            ws.send_text(START)
            ws.send_bytes(b"\x00\x00" * 800)
        messages, closed = until_closed(ws)
    _error(messages, "request_timeout")
    assert closed == 1008


def test_the_longest_stream_ends_with_its_summary(make_client: ClientFactory) -> None:
    client = make_client(listen_max_seconds=2.0)
    pcm = encode(recording(5.0, 16000, 1, seed=2), "pcm_s16le")
    with client.websocket_connect(URL) as ws:
        ws.send_text(START)
        for i in range(0, len(pcm), 3200):
            ws.send_bytes(pcm[i : i + 3200])
        messages, closed = until_closed(ws)
    summary = messages[-1]
    assert summary["type"] == "summary" and summary["ended"] == "max_seconds"
    assert 2.0 <= summary["input"]["duration_s"] < 2.5
    assert closed == 1008


KEY_WAYS = [
    pytest.param({"headers": {"x-api-key": KEY}}, {}, id="x-api-key"),
    pytest.param({"headers": {"authorization": f"Bearer {KEY}"}}, {}, id="bearer"),
    pytest.param({}, {"api_key": KEY}, id="start-message"),
    pytest.param({"subprotocols": ["auscult", f"auscult.key.{KEY}"]}, {}, id="subprotocol"),
]


@pytest.mark.parametrize(("connect", "start"), KEY_WAYS)
def test_a_key_opens_the_stream_every_way_a_client_can_send_it(
    make_client: ClientFactory, log_lines, connect: dict[str, Any], start: dict[str, Any]
) -> None:  # type: ignore[no-untyped-def]
    client = make_client(api_keys=[KEY])
    pcm = encode(recording(1.2, 16000, 1, seed=1), "pcm_s16le")
    with client.websocket_connect(URL, **connect) as ws:
        if "subprotocols" in connect:
            assert ws.accepted_subprotocol == "auscult"  # never the key
        ws.send_text(json.dumps({"type": "start", "sample_rate": 16000, **start}))
        ws.send_bytes(pcm)
        ws.send_text('{"type": "stop"}')
        messages, closed = until_closed(ws)
    assert messages[-1]["type"] == "summary" and closed == 1000
    assert KEY not in json.dumps(log_lines())


@pytest.mark.parametrize(
    ("connect", "start"),
    [
        pytest.param({}, {}, id="no-key"),
        pytest.param({"headers": {"x-api-key": "wrong"}}, {"api_key": KEY}, id="wrong-header"),
        pytest.param({}, {"api_key": "wrong"}, id="wrong-in-start"),
        pytest.param({"subprotocols": ["auscult.key.wrong"]}, {}, id="wrong-subprotocol"),
    ],
)
def test_a_stream_without_a_valid_key_is_refused(
    make_client: ClientFactory, connect: dict[str, Any], start: dict[str, Any]
) -> None:
    client = make_client(api_keys=[KEY])
    with client.websocket_connect(URL, **connect) as ws:
        ws.send_text(json.dumps({"type": "start", "sample_rate": 16000, **start}))
        messages, closed = until_closed(ws)
    _error(messages, "unauthorized")
    assert closed == 1008


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def test_metrics_count_streams_windows_and_errors(client: TestClient) -> None:
    pcm = encode(recording(3.2, 16000, 1, seed=1), "pcm_s16le")
    with client.websocket_connect(URL) as ws:
        ws.send_text(START)
        text = client.get("/metrics").text
        assert _metric(text, "auscult_listen_streams") == 1
        ws.send_bytes(pcm)
        ws.send_text('{"type": "stop"}')
        until_closed(ws)
    with client.websocket_connect(URL) as ws:
        ws.send_text("nonsense")
        until_closed(ws)
    text = client.get("/metrics").text
    assert _metric(text, "auscult_listen_streams") == 0
    assert _metric(text, 'auscult_listen_windows_total{model="gearbox"}') == 4
    assert _metric(text, 'auscult_listen_errors_total{code="invalid_request"}') == 1


def test_a_backlog_stops_the_reading_at_the_queued_audio_bound(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scoring slower than the audio arrives: the server stops reading at
    AUSCULT_LISTEN_MAX_QUEUED_BYTES (plus the frame in hand), never holds the backlog."""
    import asyncio

    from service.api.listen import Listener
    from service.models.scoring import Scorer

    real_run, real_score = Scorer.run_model, Listener._score
    most = []

    async def slow_run(self, *args):  # type: ignore[no-untyped-def]
        await asyncio.sleep(0.05)
        return await real_run(self, *args)

    async def watched(self, *args):  # type: ignore[no-untyped-def]
        most.append(self.queued)
        return await real_score(self, *args)

    monkeypatch.setattr(Scorer, "run_model", slow_run)
    monkeypatch.setattr(Listener, "_score", watched)
    client = make_client(listen_max_queued_bytes=65536, listen_max_frame_bytes=32768)
    pcm = encode(recording(30.0, 16000, 1, seed=6), "pcm_s16le")
    messages, closed = stream(client, pcm, START_FIELDS, [32000] * 30)
    assert messages[-1]["type"] == "summary" and closed == 1000
    assert len(messages[-1]["windows"]) == 31
    assert 32000 <= max(most) <= 65536 + 32768


START_FIELDS = {"sample_rate": 16000}
