"""Classifier bundles over HTTP: the committed `digits` bundle beside an anomaly bundle."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bench.leading_silence import with_lead
from service.app import create_app
from service.settings import Settings
from tests.conftest import ARTIFACTS, REPO, shared_data, tone, wav_bytes
from tests.helpers import assert_error, serve

pytestmark = pytest.mark.anyio
DIGITS = ARTIFACTS / "digits"


@pytest.fixture
def both_kinds(artifacts_dir: Path) -> Path:
    shutil.copytree(DIGITS, artifacts_dir / "digits")
    return artifacts_dir


async def test_classify_returns_label_confidence_and_every_probability(both_kinds: Path) -> None:
    async with serve(create_app(Settings(artifacts_dir=both_kinds))) as c:
        r = await c.post(
            "/v1/models/digits/classify",
            files={"file": ("t.wav", wav_bytes(tone(0.8, 300.0, sr=8000), sr=8000))},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert set(body["probabilities"]) == {str(d) for d in range(10)}
        assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert body["confidence"] == max(body["probabilities"].values())
        assert body["label"] == max(body["probabilities"], key=body["probabilities"].get)


async def test_each_route_refuses_the_other_kind_of_model(both_kinds: Path) -> None:
    clip = {"file": ("t.wav", wav_bytes(tone(0.8)))}
    async with serve(create_app(Settings(artifacts_dir=both_kinds))) as c:
        assert_error(await c.post("/v1/models/digits/score", files=clip), 409, "wrong_model_kind")
        batch = [("files", ("t.wav", wav_bytes(tone(0.8))))]
        r = await c.post("/v1/models/digits/score/batch", files=batch)
        assert_error(r, 409, "wrong_model_kind")
        assert_error(await c.post("/v1/models/tiny/classify", files=clip), 409, "wrong_model_kind")
        assert (await c.post("/v1/models/tiny/score", files=clip)).status_code == 200


def after_silence(wav: bytes, lead_s: float) -> bytes:
    """The clip with lead_s of quiet room noise before it and 0.5 s after (as someone
    recording with the web page does: click, wait, speak, click)."""
    audio, sr = sf.read(io.BytesIO(wav), dtype="float32")
    return with_lead(audio, sr, lead_s, np.random.default_rng(1))


async def test_a_digit_is_recognised_after_seconds_of_silence(both_kinds: Path) -> None:
    """The classifier sees one second; it starts just before the word, not at the file's
    start (the bundle's features.onset_margin_s)."""
    seven = (REPO / "docs" / "examples" / "7_george_0.wav").read_bytes()
    async with serve(create_app(Settings(artifacts_dir=both_kinds))) as c:
        info = (await c.get("/v1/models/digits")).json()
        assert info["features"]["onset_margin_s"] == pytest.approx(0.1)
        for lead_s in (0.0, 1.5, 4.0):
            clip = {"file": ("seven.wav", after_silence(seven, lead_s))}
            r = await c.post("/v1/models/digits/classify", files=clip)
            assert r.status_code == 200, r.text
            assert r.json()["label"] == "7", (lead_s, r.json()["probabilities"])


@pytest.mark.realdata
async def test_spoken_digits_are_recognised_over_http(both_kinds: Path) -> None:
    fsdd = shared_data("fsdd")
    names = [f"{d}_{s}_{t}.wav" for d in range(10) for s in ("george", "lucas") for t in (0, 3)]
    files = [("files", (n, (fsdd / n).read_bytes())) for n in names]
    async with serve(create_app(Settings(artifacts_dir=both_kinds))) as c:
        r = await c.post("/v1/models/digits/classify/batch", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == names
    correct = sum(x["label"] == x["filename"][0] for x in results)
    assert correct >= 38  # of 40 held-out takes
    # the same clips in room noise, said at once and 2 s into the recording: as well heard
    labels = {}
    async with serve(create_app(Settings(artifacts_dir=both_kinds))) as c:
        for lead_s in (0.0, 2.0):
            late = [("files", (name, after_silence(wav, lead_s))) for _, (name, wav) in files]
            r = await c.post("/v1/models/digits/classify/batch", files=late)
            assert r.status_code == 200, r.text
            labels[lead_s] = [x["label"] for x in r.json()["results"]]
    right = {
        lead_s: sum(label == name[0] for label, name in zip(said, names, strict=True))
        for lead_s, said in labels.items()
    }
    assert right[0.0] >= 36 and right[2.0] >= right[0.0] - 1, right
