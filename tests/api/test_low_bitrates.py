"""Low bitrates over HTTP on every committed anomaly bundle (issue 23): a healthy recording
the bundle never saw stays `normal` as mp3 at 24 kbit/s and more (at 16 and 22.05 kHz) and
as Opus at 16 kbit/s and more, with `low_bitrate` where the detector was not fitted on the
codec and rate; below the bandwidth the bundle reads, the result keeps its score, says
`low_bandwidth` and is never `severe`. The encoders are libsndfile's own (the soundfile
wheel carries LAME and libopus), so no system package is needed."""

from __future__ import annotations

import base64
import shutil
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.features import resample, top_band_centre
from service.models.bundle import read_manifest
from service.models.verdict import nearest_rate
from service.settings import Settings
from tests.conftest import ARTIFACTS, wav_bytes
from tests.helpers import serve
from training.augment import encode_at
from training.synth import recording

pytestmark = pytest.mark.anyio

BUNDLES = sorted(
    p.parent.name
    for p in ARTIFACTS.glob("*/manifest.json")
    if read_manifest(p.parent).kind == "anomaly"
)
HEALTHY_SEED = 4242  # a recording no committed bundle was fitted on (they use data seed 0)
JUDGED = [("mp3", k) for k in (24, 32, 48, 64)] + [("opus", k) for k in (16, 24, 32)]


def _encoder_or_skip(codec: str) -> None:
    import soundfile as sf

    have = {"mp3": "MPEG_LAYER_III" in sf.available_subtypes("MP3")}
    have["opus"] = "OPUS" in sf.available_subtypes("OGG")
    if not have[codec]:
        pytest.skip(f"this libsndfile ({sf.__libsndfile_version__}) cannot write {codec}")


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    """The service on copies of the committed anomaly bundles."""
    root = tmp_path_factory.mktemp("artifacts")
    for name in BUNDLES:
        shutil.copytree(ARTIFACTS / name, root / name)
    settings = Settings(artifacts_dir=root, log_level="warning")  # type: ignore[call-arg]
    async with serve(create_app(settings)) as c:
        yield c


def _healthy(seconds: float = 10.0) -> np.ndarray:
    return recording(seconds=seconds, seed=HEALTHY_SEED)


async def _score(client: httpx.AsyncClient, model: str, name: str, data: bytes) -> dict[str, Any]:
    r = await client.post(f"/v1/models/{model}/score", files={"file": (name, data)})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", BUNDLES)
@pytest.mark.parametrize(("codec", "kbps"), JUDGED, ids=[f"{c}-{k}" for c, k in JUDGED])
async def test_a_healthy_clip_stays_normal_at_voice_note_bitrates(
    client: httpx.AsyncClient, model: str, codec: str, kbps: int
) -> None:
    _encoder_or_skip(codec)
    data = encode_at(_healthy(), 16000, codec, kbps)
    assert abs(len(data) * 8 / 10 / 1000 - kbps) < 3  # the rate asked for (plus Ogg pages)
    body = await _score(client, model, f"healthy.{'ogg' if codec == 'opus' else codec}", data)
    assert body["input"]["format"] == ("ogg" if codec == "opus" else "mp3")
    assert body["level"] == "normal", body["score"]
    assert body["input"]["bandwidth_hz"] > 0
    # judged by thresholds measured at this codec and rate; `low_bitrate` says when the
    # detector itself was not fitted on them (a fault could read normal too)
    rated = _nearest_rate(model, body["condition"]["name"], codec, body["input"])
    codes = [w["code"] for w in body["warnings"]]
    assert codes == ([] if rated.fitted else ["low_bitrate"])


def _nearest_rate(model: str, condition: str, codec: str, info: dict[str, Any]) -> Any:
    cal = read_manifest(ARTIFACTS / model).calibration
    assert cal is not None
    (c,) = [c for c in cal.conditions if c.name == condition]
    rated = nearest_rate(
        c, "ogg" if codec == "opus" else codec, info["bitrate_kbps"], codec, info["sample_rate"]
    )
    assert rated is not None, f"{model} has no rate tails for {codec}"
    return rated


RECORDERS = [(22050, 24), (24000, 24), (22050, 48), (44100, 32), (44100, 48), (48000, 48)]


@pytest.mark.parametrize("model", BUNDLES)
@pytest.mark.parametrize(("rate", "kbps"), RECORDERS, ids=[f"{r}-{k}" for r, k in RECORDERS])
async def test_a_healthy_clip_stays_normal_as_mp3_from_a_faster_recorder(
    client: httpx.AsyncClient, model: str, rate: int, kbps: int
) -> None:
    """A recorder at 22.05-48 kHz writes mp3 at its own rate, and LAME spends a bitrate
    quite differently there (at 44.1 kHz and 48 kbit/s the holes are as bursty as at 16 kHz
    and 32); the service judges it by the copies encoded at the calibrated rate nearest its
    own."""
    _encoder_or_skip("mp3")
    data = encode_at(resample(_healthy(), 16000, rate), rate, "mp3", kbps)
    body = await _score(client, model, "phone.mp3", data)
    assert body["input"]["sample_rate"] == rate
    assert body["level"] == "normal", body["score"]
    rated = _nearest_rate(model, body["condition"]["name"], "mp3", body["input"])
    assert rated.sample_rate in (22050, 44100)


@pytest.mark.parametrize("model", BUNDLES)
async def test_the_lowest_rates_are_calibrated_but_only_the_fitted_ones_are_trusted(
    client: httpx.AsyncClient, model: str
) -> None:
    """mp3 at 64 kbit/s was fitted on: no warning; at 24 kbit/s only its thresholds were
    measured (from the copies' worst stretches too: LAME's artifacts come in bursts):
    `low_bitrate`, and the healthy clip reads normal."""
    _encoder_or_skip("mp3")
    fitted = await _score(client, model, "a.mp3", encode_at(_healthy(), 16000, "mp3", 64))
    measured = await _score(client, model, "b.mp3", encode_at(_healthy(), 16000, "mp3", 24))
    assert fitted["warnings"] == [] and fitted["level"] == "normal"
    assert [w["code"] for w in measured["warnings"]] == ["low_bitrate"]
    assert "24 kbit/s" in measured["warnings"][0]["message"]
    assert measured["level"] == "normal", measured["score"]
    rated = _nearest_rate(model, measured["condition"]["name"], "mp3", measured["input"])
    assert rated.worst is not None  # the bundle was fitted with the worst-stretch tails


LOW = [
    ("mp3 16 kbit/s", lambda x: ("low.mp3", encode_at(x, 16000, "mp3", 16))),
    ("opus 8 kbit/s", lambda x: ("low.ogg", encode_at(x, 16000, "opus", 8))),
    ("wav at 8 kHz", lambda x: ("low.wav", wav_bytes(resample(x, 16000, 8000), sr=8000))),
]


@pytest.mark.parametrize("model", BUNDLES)
@pytest.mark.parametrize(("what", "make"), LOW, ids=[w for w, _ in LOW])
async def test_below_the_models_band_a_clip_is_warned_about_and_never_severe(
    client: httpx.AsyncClient, model: str, what: str, make: Any
) -> None:
    if what.split()[0] in ("mp3", "opus"):
        _encoder_or_skip(what.split()[0])
    name, data = make(_healthy())
    body = await _score(client, model, name, data)
    fitted = read_manifest(ARTIFACTS / model).features
    assert body["input"]["bandwidth_hz"] < top_band_centre(fitted)
    (warning,) = [w for w in body["warnings"] if w["code"] == "low_bandwidth"]
    assert f"{body['input']['bandwidth_hz'] / 1000:.1f} kHz" in warning["message"]
    assert np.isfinite(body["score"])
    assert body["level"] != "severe", body["score"]


@pytest.mark.parametrize("model", BUNDLES)
async def test_a_low_bandwidth_fault_keeps_its_score_and_is_still_flagged(
    client: httpx.AsyncClient, model: str
) -> None:
    """A strong fault sent at 16 kbit/s: its score stays above the severe threshold (it is
    reported, not hidden), its level is needs_maintenance, not a confident severe."""
    _encoder_or_skip("mp3")
    x = recording(seconds=10.0, seed=HEALTHY_SEED + 1, fault="impacts")
    body = await _score(client, model, "fault.mp3", encode_at(x, 16000, "mp3", 16))
    assert "low_bandwidth" in [w["code"] for w in body["warnings"]]
    assert body["score"] >= body["thresholds"]["severe"]
    assert body["level"] == "needs_maintenance"


@pytest.mark.parametrize("model", BUNDLES)
async def test_batch_and_v2_give_the_same_warning_and_level(
    client: httpx.AsyncClient, model: str
) -> None:
    _encoder_or_skip("mp3")
    low = encode_at(_healthy(), 16000, "mp3", 16)
    good = wav_bytes(_healthy())
    single = await _score(client, model, "low.mp3", low)
    r = await client.post(
        f"/v1/models/{model}/score/batch",
        files=[("files", ("good.wav", good)), ("files", ("low.mp3", low))],
    )
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert first["warnings"] == [] and first["input"]["bandwidth_hz"] == 8000
    assert second["warnings"] == single["warnings"] and second["level"] == single["level"]
    assert second["score"] == pytest.approx(single["score"], rel=1e-6)
    body = {
        "inputs": [
            {
                "name": "audio",
                "shape": [2],
                "datatype": "BYTES",
                "data": [base64.b64encode(d).decode() for d in (good, low)],
            }
        ]
    }
    r = await client.post(f"/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    out = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert out["warnings"][0] == "" and "low_bandwidth" in out["warnings"][1].split(",")
    assert out["level"][1] == single["level"]
    assert out["score"][1] == pytest.approx(single["score"], rel=1e-6)


def test_the_committed_bundles_are_tested() -> None:
    assert "gearbox" in BUNDLES
