"""The Open Inference Protocol (v2): in-process for the JSON details and error bodies, and
through `tritonclient.http` (a real client of the protocol) against `python -m service`."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.models.bundle import read_manifest
from service.settings import Settings
from tests.conftest import ARTIFACTS, tone, wav_bytes
from tests.helpers import GOOD_WAV, serve, start_service, stop_service

GEARBOX = read_manifest(ARTIFACTS / "gearbox")
DIGITS = read_manifest(ARTIFACTS / "digits")
H, W = GEARBOX.features.height, GEARBOX.features.width
CLIPS = [GOOD_WAV, wav_bytes(tone(2.0, freq=1200.0, seed=3))]


def _app(**overrides: object):  # type: ignore[no-untyped-def]
    return create_app(Settings(artifacts_dir=ARTIFACTS, log_level="warning", **overrides))  # type: ignore[arg-type]


def _audio_request(clips: list[bytes]) -> dict:
    return {
        "id": "r1",
        "inputs": [
            {
                "name": "audio",
                "shape": [len(clips)],
                "datatype": "BYTES",
                "data": [base64.b64encode(c).decode() for c in clips],
            }
        ],
    }


def _v2_error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return str(body["error"])


@pytest.mark.anyio
async def test_json_audio_inference_matches_v1_scores() -> None:
    async with serve(_app()) as client:
        r = await client.post("/v2/models/gearbox/infer", json=_audio_request(CLIPS))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "gearbox" and body["model_version"] == GEARBOX.version
        assert body["id"] == "r1"
        out = {o["name"]: o for o in body["outputs"]}
        assert out["score"]["datatype"] == "FP64" and out["score"]["shape"] == [2]
        assert out["level"]["datatype"] == "BYTES" and out["level"]["shape"] == [2]
        for i, clip in enumerate(CLIPS):
            v1 = await client.post(
                "/v1/models/gearbox/score", files={"file": ("a.wav", clip, "audio/wav")}
            )
            # one model run for both clips: float32 sums in another order than v1's
            assert out["score"]["data"][i] == pytest.approx(v1.json()["score"], rel=1e-5)
            assert out["level"]["data"][i] == v1.json()["level"]


@pytest.mark.anyio
async def test_json_spectrogram_inference_and_requested_outputs() -> None:
    windows = np.random.default_rng(0).random((3, H, W, 1), dtype=np.float32)
    request = {
        "inputs": [
            {
                "name": GEARBOX.input.name,
                "shape": [3, H, W, 1],
                "datatype": "FP32",
                "data": windows.ravel().tolist(),
            }
        ],
        "outputs": [{"name": "level"}],
    }
    async with serve(_app()) as client:
        r = await client.post("/v2/models/gearbox/infer", json=request)
        assert r.status_code == 200, r.text
        (out,) = r.json()["outputs"]
        assert out["name"] == "level" and out["shape"] == [3]
        assert set(out["data"]) <= {"normal", "needs_maintenance", "severe"}


@pytest.mark.anyio
async def test_health_metadata_and_readiness() -> None:
    async with serve(_app()) as client:
        assert (await client.get("/v2/health/live")).json() == {"live": True}
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}
        assert (await client.get("/v2")).json()["extensions"] == ["binary_tensor_data"]
        meta = (await client.get("/v2/models/gearbox")).json()
        assert meta["versions"] == [GEARBOX.version]
        assert [(i["name"], i["datatype"], i["shape"]) for i in meta["inputs"]] == [
            ("audio", "BYTES", [-1]),
            (GEARBOX.input.name, "FP32", [-1, H, W, 1]),
        ]
        assert [o["name"] for o in meta["outputs"]] == ["score", "level", "warnings"]
        digits = (await client.get(f"/v2/models/digits/versions/{DIGITS.version}")).json()
        assert [o["name"] for o in digits["outputs"]] == ["label", "probabilities"]
        r = await client.get("/v2/models/gearbox/ready")
        assert r.json() == {"name": "gearbox", "ready": True}
        _v2_error(await client.get("/v2/models/nope/ready"), 404)
        _v2_error(await client.get("/v2/models/gearbox/versions/old/ready"), 404)


def _tensor(name: str, shape: list, datatype: str, data: list) -> dict:
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


B64 = base64.b64encode(GOOD_WAV).decode()
SHORT = wav_bytes(tone(0.01))


@pytest.mark.anyio
@pytest.mark.parametrize(
    "path, body, status, says",
    [
        ("nope/infer", _tensor("audio", [1], "BYTES", [B64]), 404, "no model named"),
        ("gearbox/versions/x/infer", _tensor("audio", [1], "BYTES", [B64]), 404, "version"),
        ("gearbox/infer", {"inputs": "x"}, 400, "not an inference request"),
        ("gearbox/infer", _tensor("audio", [2], "BYTES", [B64]), 400, "its shape [2] says 2"),
        ("gearbox/infer", _tensor("audio", [1], "BYTES", ["not base64!"]), 400, "base64"),
        ("gearbox/infer", _tensor("audio", [1], "FP32", [1.0]), 400, "is BYTES"),
        ("gearbox/infer", _tensor("pcm", [1], "BYTES", [B64]), 400, "unknown input 'pcm'"),
        ("gearbox/infer", _tensor("audio", [1], "INT8", [1]), 400, "datatype INT8"),
        ("gearbox/infer", _tensor("spectrogram", [1, 2, 2], "FP32", [0] * 4), 400, "shape"),
        ("gearbox/infer", _tensor("spectrogram", [1], "FP32", ["a"]), 400, "must be numbers"),
        ("gearbox/infer", _tensor("audio", [0], "BYTES", []), 400, "no elements"),
        (
            "gearbox/infer",
            _tensor("audio", [1], "BYTES", [base64.b64encode(b"RIFF....junk").decode()]),
            415,
            "audio[0]: unrecognised content",
        ),
        (
            "gearbox/infer",
            _tensor("audio", [2], "BYTES", [B64, base64.b64encode(SHORT).decode()]),
            422,
            "audio[1]: audio is",
        ),
        (
            "gearbox/infer",
            {**_tensor("audio", [1], "BYTES", [B64]), "outputs": [{"name": "label"}]},
            400,
            "unknown output 'label'",
        ),
    ],
)
async def test_bad_inference_requests_get_v2_error_bodies(
    path: str, body: dict, status: int, says: str
) -> None:
    async with serve(_app()) as client:
        r = await client.post(f"/v2/models/{path}", json=body)
        assert says in _v2_error(r, status)


@pytest.mark.anyio
async def test_v2_needs_the_api_key_but_health_does_not() -> None:
    async with serve(_app(api_keys="k")) as client:
        assert (await client.get("/v2/health/ready")).status_code == 200
        _v2_error(await client.get("/v2/models/gearbox"), 401)
        r = await client.get("/v2/models/gearbox", headers={"X-API-Key": "k"})
        assert r.status_code == 200


# --- a real client of the protocol, over HTTP ---


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    svc = start_service(
        tmp_path_factory.mktemp("v2server"),
        AUSCULT_ARTIFACTS_DIR=str(ARTIFACTS),
        AUSCULT_LOG_LEVEL="warning",
    )
    try:
        yield f"127.0.0.1:{svc.port}"
    finally:
        stop_service(svc)


@pytest.fixture
def triton(server_url: str):  # type: ignore[no-untyped-def]
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url=server_url)
    yield client
    client.close()


def test_tritonclient_sees_a_live_ready_server_and_model_metadata(triton) -> None:  # type: ignore[no-untyped-def]
    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("gearbox") and not triton.is_model_ready("nope")
    meta = triton.get_model_metadata("gearbox")
    assert meta["versions"] == [GEARBOX.version]
    assert triton.get_server_metadata()["name"] == "auscult"


def test_tritonclient_scores_encoded_clips_as_binary_bytes(triton, server_url: str) -> None:  # type: ignore[no-untyped-def]
    from tritonclient.http import InferInput

    clips = InferInput("audio", [len(CLIPS)], "BYTES")
    clips.set_data_from_numpy(np.array(CLIPS, dtype=np.object_))  # binary by default
    result = triton.infer("gearbox", [clips], request_id="7")
    scores, levels = result.as_numpy("score"), result.as_numpy("level")
    assert scores.shape == (2,) and scores.dtype == np.float64 and np.isfinite(scores).all()
    v1 = httpx.post(
        f"http://{server_url}/v1/models/gearbox/score",
        files={"file": ("a.wav", CLIPS[0], "audio/wav")},
    ).json()
    assert scores[0] == pytest.approx(v1["score"], rel=1e-5)
    assert levels[0].decode() == v1["level"]
    assert result.get_response()["model_version"] == GEARBOX.version
    assert result.get_response()["id"] == "7"


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_scores_a_spectrogram_batch(triton, binary: bool) -> None:  # type: ignore[no-untyped-def]
    from tritonclient.http import InferInput, InferRequestedOutput

    windows = np.random.default_rng(1).random((4, H, W, 1), dtype=np.float32)
    x = InferInput(GEARBOX.input.name, list(windows.shape), "FP32")
    x.set_data_from_numpy(windows, binary_data=binary)
    outputs = [InferRequestedOutput("score", binary_data=binary), InferRequestedOutput("level")]
    result = triton.infer("gearbox", [x], outputs=outputs, model_version=GEARBOX.version)
    assert result.as_numpy("score").shape == (4,)
    assert {v.decode() for v in result.as_numpy("level")} <= {
        "normal",
        "needs_maintenance",
        "severe",
    }


def test_tritonclient_classifies_with_the_digits_bundle(triton) -> None:  # type: ignore[no-untyped-def]
    from tritonclient.http import InferInput

    clip = InferInput("audio", [1], "BYTES")
    clip.set_data_from_numpy(np.array([GOOD_WAV], dtype=np.object_))
    result = triton.infer("digits", [clip])
    probs = result.as_numpy("probabilities")
    assert probs.shape == (1, len(DIGITS.labels or []))
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert result.as_numpy("label")[0].decode() == DIGITS.labels[int(probs.argmax())]  # type: ignore[index]


def test_tritonclient_raises_the_servers_error_message(triton) -> None:  # type: ignore[no-untyped-def]
    from tritonclient.http import InferInput
    from tritonclient.utils import InferenceServerException

    clip = InferInput("audio", [1], "BYTES")
    clip.set_data_from_numpy(np.array([b"not audio at all"], dtype=np.object_))
    with pytest.raises(InferenceServerException) as e:
        triton.infer("gearbox", [clip])
    assert "audio[0]" in str(e.value)
    with pytest.raises(InferenceServerException, match="no model named"):
        triton.get_model_metadata("nope")


# --- shapes, numbers and sizes at the edges (issue 24: each of these was a 500) -------------

SPEC = GEARBOX.input.name
D_SPEC = DIGITS.input.name
D_H, D_W = DIGITS.features.height, DIGITS.features.width


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body, status, says",
    [
        pytest.param(_tensor(SPEC, [0, 10**22], "FP32", []), 400, "dimension", id="huge-dim"),
        pytest.param(
            _tensor(SPEC, [0, 3037000500, 3037000500], "FP32", []), 400, "dimension", id="2^63"
        ),
        pytest.param(
            _tensor(SPEC, [0, 2_000_000_000, 2_000_000_000], "FP32", []),
            400,
            "too large",
            id="zero-times-huge",
        ),
        pytest.param(_tensor(SPEC, [1] * 65, "FP32", [0.5]), 400, "65 dimensions", id="65-dims"),
        pytest.param(_tensor(SPEC, [1], "FP32", [int("9" * 4000)]), 422, "too large", id="4000"),
        pytest.param(
            _tensor(SPEC, [1, H, W], "FP32", [1e30] + [0.0] * (H * W - 1)),
            422,
            "[0, 1]",
            id="gearbox-1e30",
        ),
        pytest.param(
            _tensor(SPEC, [1, H, W], "FP32", [-3.0] + [0.0] * (H * W - 1)),
            422,
            "[0, 1]",
            id="negative",
        ),
        pytest.param(
            _tensor(SPEC, [-1, H, W], "FP32", []), 400, "negative", id="negative-dimension"
        ),
    ],
)
async def test_edge_shapes_and_numbers_get_4xx_with_the_v2_body(
    body: dict, status: int, says: str
) -> None:
    async with serve(_app()) as client:
        r = await client.post("/v2/models/gearbox/infer", json=body)
        assert says in _v2_error(r, status)
        assert (
            await client.post("/v2/models/gearbox/infer", json=_audio_request(CLIPS))
        ).is_success


@pytest.mark.anyio
async def test_a_classifier_refuses_windows_outside_0_1_as_the_anomaly_model_does() -> None:
    # was: digits answered 200 label "9" for 1e30 where gearbox answered 422
    async with serve(_app()) as client:
        body = _tensor(D_SPEC, [1, D_H, D_W], "FP32", [1e30] + [0.0] * (D_H * D_W - 1))
        assert "[0, 1]" in _v2_error(await client.post("/v2/models/digits/infer", json=body), 422)
        body = _tensor(D_SPEC, [1, D_H, D_W], "FP32", [0.5] * (D_H * D_W))
        assert (await client.post("/v2/models/digits/infer", json=body)).status_code == 200


@pytest.mark.anyio
async def test_json_with_more_values_than_the_budget_is_413_before_parsing() -> None:
    text = '{"inputs":[{"name":"%s","shape":[%d],"datatype":"FP32","data":[%s]}]}'
    async with serve(_app(max_json_values=1000)) as client:
        over = text % (SPEC, 1000, ",".join(["1"] * 1000))
        r = await client.post(
            "/v2/models/gearbox/infer", content=over, headers={"content-type": "application/json"}
        )
        assert "AUSCULT_MAX_JSON_VALUES" in _v2_error(r, 413)
        # under the budget it is parsed (and here refused for its shape, a 400)
        under = text % (SPEC, 900, ",".join(["1"] * 900))
        r = await client.post(
            "/v2/models/gearbox/infer", content=under, headers={"content-type": "application/json"}
        )
        assert "shape" in _v2_error(r, 400)


@pytest.mark.anyio
async def test_an_unexpected_error_under_v2_has_the_v2_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import service.api.v2.routes as routes

    def boom(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(routes, "parse_request", boom)
    async with serve(_app()) as client:
        r = await client.post("/v2/models/gearbox/infer", json=_audio_request(CLIPS))
        assert r.status_code == 500 and r.json() == {"error": "internal error; see the service log"}
