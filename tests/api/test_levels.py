"""Levels over HTTP with a real tiny bundle: what a result says about its worst stretch and
condition, naming a condition (v1 form field, v2 parameter), and enrolling a new one through
the API and the CLI; a failed enrol leaves the served version untouched."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.features import prepare
from service.models.bundle import read_manifest
from service.models.runtimes import AnomalyRuntime, open_runtime
from tests.conftest import wav_bytes
from training.synth import Condition, recording

pytestmark = pytest.mark.anyio
NEW = Condition(rpm=1800, load=0.6)


def _clips(n: int, seed: int = 100, seconds: float = 1.0) -> list[bytes]:
    return [wav_bytes(recording(seconds=seconds, seed=seed + i, condition=NEW)) for i in range(n)]


async def _score(client: httpx.AsyncClient, data: bytes, **fields: str) -> dict[str, Any]:
    r = await client.post("/v1/models/tiny/score", files={"file": ("c.wav", data)}, data=fields)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def test_a_result_names_its_condition_and_worst_stretch(client: httpx.AsyncClient) -> None:
    detail = (await client.get("/v1/models/tiny")).json()
    cal = detail["calibration"]
    assert cal["false_alarm_rate"] == 0.01 and cal["severe_rate"] == 0.001
    assert cal["estimate"]["recordings"] == 18 and cal["estimate"]["warnings"]
    names = [c["name"] for c in cal["conditions"]]
    assert names == ["section_00_source", "section_00_target"]
    body = await _score(client, wav_bytes(recording(seconds=3.0, seed=5)))
    assert body["condition"]["chosen"] == "nearest" and body["condition"]["name"] in names
    worst = body["worst"]
    assert worst["end_s"] > worst["start_s"]
    named = await _score(client, wav_bytes(recording(seconds=3.0, seed=5)), condition=names[1])
    assert named["condition"] == {"name": names[1], "chosen": "request"}


async def test_an_unknown_condition_is_a_422_naming_the_known_ones(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post(
        "/v1/models/tiny/score/batch",
        files=[("files", ("c.wav", wav_bytes(recording(seconds=1.0))))],
        data={"condition": "rpm_9999"},
    )
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "invalid_request" and "section_00_source" in err["message"]


async def test_v2_takes_the_condition_as_a_parameter(client: httpx.AsyncClient) -> None:
    import base64

    clip = base64.b64encode(wav_bytes(recording(seconds=2.0, seed=9))).decode()
    body = {
        "parameters": {"condition": "section_00_target"},
        "inputs": [{"name": "audio", "shape": [1], "datatype": "BYTES", "data": [clip]}],
    }
    r = await client.post("/v2/models/tiny/infer", json=body)
    assert r.status_code == 200, r.text
    v2_score = r.json()["outputs"][0]["data"][0]
    v1 = await _score(
        client, wav_bytes(recording(seconds=2.0, seed=9)), condition="section_00_target"
    )
    assert v2_score == pytest.approx(v1["score"], rel=1e-6)
    body["parameters"] = {"condition": "nope"}
    r = await client.post("/v2/models/tiny/infer", json=body)
    assert r.status_code == 400 and "section_00_target" in r.json()["error"]


def _fingerprint(bundle: Path) -> str:
    return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()


async def test_enrolling_a_condition_serves_a_new_version_that_knows_it(
    client: httpx.AsyncClient, artifacts_dir: Path
) -> None:
    before = read_manifest(artifacts_dir / "tiny").version
    files = [("files", (f"h{i}.wav", d)) for i, d in enumerate(_clips(10))]
    r = await client.post("/v1/models/tiny/conditions/rpm_1800", files=files)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["previous_version"] == before and body["version"] != before
    assert body["conditions"][-1] == "rpm_1800" and body["condition"]["clips"] == 10
    manifest = read_manifest(artifacts_dir / "tiny")
    assert manifest.version == body["version"]
    assert manifest.training["enrolled"][-1] == {
        "condition": "rpm_1800",
        "clips": 10,
        "from": before,
    }
    detail = (await client.get("/v1/models/tiny")).json()
    assert detail["version"] == body["version"]
    # a healthy clip of the new condition is now judged by it
    scored = await _score(client, _clips(1, seed=500)[0])
    assert scored["model_version"] == body["version"]
    assert scored["condition"]["name"] == "rpm_1800"


@pytest.mark.parametrize(
    ("files", "code"),
    [
        (lambda: [("files", (f"h{i}.wav", d)) for i, d in enumerate(_clips(3))], "invalid_request"),
        (
            lambda: (
                [("files", (f"h{i}.wav", d)) for i, d in enumerate(_clips(9))]
                + [("files", ("notes.txt", b"not audio at all"))]
            ),
            "unsupported_media_type",
        ),
    ],
    ids=["too-few-clips", "unreadable-clip"],
)
async def test_a_failed_enrol_is_a_4xx_and_changes_nothing(
    client: httpx.AsyncClient, artifacts_dir: Path, files: Any, code: str
) -> None:
    before = _fingerprint(artifacts_dir / "tiny")
    r = await client.post("/v1/models/tiny/conditions/rpm_1800", files=files())
    assert 400 <= r.status_code < 500 and r.json()["error"]["code"] == code, r.text
    assert _fingerprint(artifacts_dir / "tiny") == before
    assert sorted(p.name for p in artifacts_dir.iterdir()) == ["tiny"]


async def test_a_bad_condition_name_is_refused_before_the_upload(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/v1/models/tiny/conditions/..%20bad", files=[("files", ("a.wav", b"x"))])
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


async def test_enrolling_needs_the_admin_key(settings_factory: Any) -> None:
    from service.app import create_app
    from tests.helpers import serve

    app = create_app(settings_factory(api_keys=["user"], admin_keys=["admin"]))
    files = [("files", (f"h{i}.wav", d)) for i, d in enumerate(_clips(10))]
    async with serve(app) as c:
        r = await c.post(
            "/v1/models/tiny/conditions/rpm_1800", files=files, headers={"X-API-Key": "user"}
        )
        assert r.status_code == 401


def test_the_enrol_command_adds_a_condition_and_refuses_too_few_clips(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    from training.__main__ import main

    bundle = tmp_path / "tiny"
    shutil.copytree(tiny_bundle, bundle)
    data = tmp_path / "rpm_1800"
    data.mkdir()
    for i, d in enumerate(_clips(10, seconds=2.0)):
        (data / f"healthy_{i}.wav").write_bytes(d)
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(data.iterdir())[:4]:
        shutil.copy(p, few / p.name)
    before = _fingerprint(bundle)
    args = ["enrol", "--model", str(bundle), "--condition", "rpm_1800"]
    assert main([*args, "--data", str(few)]) == 1
    assert _fingerprint(bundle) == before
    assert main([*args, "--data", str(data)]) == 0
    m = read_manifest(bundle)
    assert m.calibration is not None and m.calibration.condition_names()[-1] == "rpm_1800"
    offsets = np.load(bundle / "condition_offsets.npy")
    assert offsets.shape[0] == 3 and np.isfinite(offsets).all()


async def test_a_wav_that_went_through_a_lossy_codec_can_say_so(
    client: httpx.AsyncClient, tiny_bundle: Path
) -> None:
    cal = read_manifest(tiny_bundle).calibration
    # codec copies: each condition has tails of its ogg and of its mp3 round trips
    assert cal is not None and all(set(c.codec_tails) == {"ogg", "mp3"} for c in cal.conditions)
    data = wav_bytes(recording(seconds=3.0, seed=21))
    as_wav = await _score(client, data)
    as_lossy = await _score(client, data, codec="lossy")
    assert await _score(client, data, codec="lossless") == as_wav
    # the same windows, judged by the tails of lossy round trips (never tighter than the
    # lossless ones: a round trip adds spread, and a few copies' tail is tighter than truth)
    assert as_lossy["worst"]["start_s"] == as_wav["worst"]["start_s"]
    rt = open_runtime(tiny_bundle)
    assert isinstance(rt, AnomalyRuntime) and rt.manifest is not None
    raw = rt.score(prepare(data, rt.manifest.features).images)
    assert as_lossy["score"] == pytest.approx(rt.verdict(raw, None, "wav", True).score, rel=1e-9)
    assert as_wav["score"] == pytest.approx(rt.verdict(raw, None, "wav", False).score, rel=1e-9)
    assert as_lossy["score"] <= as_wav["score"]
    r = await client.post(
        "/v1/models/tiny/score", files={"file": ("c.wav", data)}, data={"codec": "opus"}
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


async def test_one_clip_gets_one_level_everywhere(
    client: httpx.AsyncClient, tiny_bundle: Path
) -> None:
    """Single, batch, v2 and bulk (the page calls the first two) give the same score, level
    and worst stretch for the same clip, as wav and as ogg."""
    import base64

    from bulk.limits import Limits
    from bulk.rows import prepare_table, score_table
    from service.models.runtimes import open_runtime
    from training.augment import round_trip

    fault = recording(seconds=6.0, seed=31, fault="rubbing", fault_span=(3.0, 5.0))
    wav = wav_bytes(fault)
    for data in (wav, round_trip(wav, "ogg")):
        single = await _score(client, data)
        r = await client.post("/v1/models/tiny/score/batch", files=[("files", ("c", data))])
        (batch,) = r.json()["results"]
        body = {
            "inputs": [
                {
                    "name": "audio",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(data).decode()],
                }
            ]
        }
        v2 = {
            o["name"]: o["data"][0]
            for o in (await client.post("/v2/models/tiny/infer", json=body)).json()["outputs"]
        }
        runtime = open_runtime(tiny_bundle)
        assert runtime.manifest is not None
        table = prepare_table(["c"], [data], runtime.manifest.features, Limits.service_defaults())
        (row,) = score_table(runtime, table).to_pylist()  # type: ignore[arg-type]
        for other in (batch, {"score": v2["score"], "level": v2["level"]}, row):
            assert other["score"] == pytest.approx(single["score"], rel=1e-6)
            assert other["level"] == single["level"]
        assert (batch["worst"], batch["condition"]) == (single["worst"], single["condition"])
        assert (row["worst_start_s"], row["worst_end_s"]) == (
            single["worst"]["start_s"],
            single["worst"]["end_s"],
        )
        assert row["condition"] == single["condition"]["name"]
