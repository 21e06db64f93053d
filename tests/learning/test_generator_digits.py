"""The committed `digits-gan` bundle: it serves beside the other committed bundles, and the
committed `digits` classifier recognises the digits it makes."""

from __future__ import annotations

import io

import pytest
import soundfile as sf

from bench.generator import fidelity
from service.app import create_app
from service.models.bundle import read_manifest
from service.models.runtimes import ClassifierRuntime, GeneratorRuntime, open_runtime
from service.settings import Settings
from tests.conftest import ARTIFACTS
from tests.helpers import serve

DIGITS_GAN = ARTIFACTS / "digits-gan"


def test_committed_generator_makes_digits_the_committed_classifier_recognises() -> None:
    gen, clf = open_runtime(DIGITS_GAN), open_runtime(ARTIFACTS / "digits")
    assert isinstance(gen, GeneratorRuntime) and gen.ready, gen.reason
    assert isinstance(clf, ClassifierRuntime) and clf.ready, clf.reason
    result = fidelity(gen, clf, per_class=5, seed=7)
    assert result["accuracy"] >= 0.7, result["per_class"]


@pytest.mark.anyio
async def test_committed_bundles_serve_side_by_side() -> None:
    async with serve(create_app(Settings(artifacts_dir=ARTIFACTS))) as c:
        listed = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}
        assert all(listed[n]["status"] == "ready" for n in ("gearbox", "digits", "digits-gan"))
        assert listed["digits-gan"]["kind"] == "generator"
        for name in ("gearbox", "digits", "digits-gan"):  # manifests name their own folder
            assert read_manifest(ARTIFACTS / name).name == name
        assert listed["digits-gan"]["labels"] == [str(d) for d in range(10)]
        r = await c.post("/v1/models/digits-gan/generate", json={"label": 7, "seed": 0})
        assert r.status_code == 200, r.text
        audio, rate = sf.read(io.BytesIO(r.content))
        assert rate == 8000 and audio.shape == (8000,)
        clip = {"file": ("generated-7.wav", r.content)}
        assert (await c.post("/v1/models/digits/classify", files=clip)).status_code == 200
        r = await c.post("/v1/models/gearbox/generate", json={"label": 7})
        assert r.status_code == 409
