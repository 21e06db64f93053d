"""Classifier bundles over HTTP: the committed `digits` bundle beside an anomaly bundle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from service.app import create_app
from service.settings import Settings
from tests.conftest import ARTIFACTS, shared_data, tone, wav_bytes
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
