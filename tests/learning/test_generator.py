"""Generator bundles: Griffin-Lim, fit-generator and generate on the command line, and
POST /v1/models/{name}/generate beside an anomaly bundle."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.app import create_app
from service.features import FeatureParams, log_mel, mel_filterbank, to_image
from service.models.bundle import read_manifest
from service.models.generator import (
    griffin_lim,
    image_to_audio,
    mel_to_magnitude,
    spectral_convergence,
    stft,
)
from service.models.runtimes import GeneratorRuntime, open_runtime
from service.settings import Settings
from tests.helpers import assert_error, serve
from training.__main__ import main

SR = 8000
PITCHES = {"low": 300.0, "mid": 900.0, "high": 2000.0}
TINY = ["--filters", "8,8,4", "--disc-filters", "4,8", "--latent-dim", "4", "--batch-size", "4"]
TINY += ["--n-mels", "16", "--clip-seconds", "0.5"]


def chirp(seconds: float = 1.0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (0.5 * np.sin(2 * np.pi * (200 * t + 700 * t**2))).astype(np.float32)


def test_griffin_lim_gets_closer_to_a_known_magnitude_with_iterations() -> None:
    magnitude = np.abs(stft(chirp().astype(np.float64), 256, 128))
    errors = [
        spectral_convergence(
            griffin_lim(magnitude, 256, 128, SR, n, rng=np.random.default_rng(0)),
            magnitude,
            256,
            128,
        )
        for n in (1, 8, 32)
    ]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.2


def test_mel_inverse_is_a_non_negative_fit_of_the_service_filterbank() -> None:
    params = FeatureParams(sample_rate=SR, n_fft=256, hop_length=128, n_mels=32, fmax=SR / 2)
    fb = mel_filterbank(SR, 256, 32, 0.0, SR / 2).astype(np.float64)
    power = np.abs(stft(chirp().astype(np.float64), 256, 128)) ** 2
    mel = fb @ power
    magnitude = mel_to_magnitude(mel, params)
    assert magnitude.shape == power.shape and (magnitude >= 0).all()
    pinv_fit = np.maximum(np.linalg.pinv(fb) @ mel, 0)
    err = np.linalg.norm(fb @ magnitude**2 - mel) / np.linalg.norm(mel)
    assert err < np.linalg.norm(fb @ pinv_fit - mel) / np.linalg.norm(mel)
    assert err < 0.05


def test_audio_made_from_an_image_gives_that_image_back() -> None:
    params = FeatureParams(
        sample_rate=SR, n_fft=256, hop_length=128, n_mels=32, fmax=SR / 2, height=32,
        width=63, clip_seconds=1.0,
    )  # fmt: skip
    image = to_image(log_mel(chirp(), params), params)
    audio = image_to_audio(image, params, rng=np.random.default_rng(0))
    assert audio.shape == (SR,) and audio.dtype == np.float32
    assert np.abs(to_image(log_mel(audio, params), params) - image).mean() < 0.05  # ~6 dB


@pytest.fixture(scope="module")
def tones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`{class}_{take}.wav` tones of three pitches, 6 takes each."""
    root = tmp_path_factory.mktemp("tones")
    rng = np.random.default_rng(0)
    for label, pitch in PITCHES.items():
        for take in range(6):
            t = np.arange(round(0.4 * SR)) / SR
            x = rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * pitch * t)
            sf.write(root / f"{label}_{take}.wav", x.astype(np.float32), SR, subtype="PCM_16")
    return root


@pytest.fixture(scope="module")
def gan_bundle(tones: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny generator bundle fitted through the CLI (a few seconds)."""
    out = tmp_path_factory.mktemp("bundles") / "tones-gan"
    argv = ["fit-generator", "--data", str(tones), "--out", str(out)]
    argv += ["--label-pattern", r"^(?P<label>[a-z]+)_", "--epochs", "3", *TINY]
    assert main(argv) == 0
    return out


@pytest.mark.slow
def test_fit_generator_writes_a_generator_bundle(gan_bundle: Path) -> None:
    m = read_manifest(gan_bundle)
    assert m.kind == "generator" and m.labels == ["high", "low", "mid"]
    assert m.generator is not None and m.input.shape == [None, m.generator.latent_dim]
    assert (m.features.height, m.features.width) == (16, 32)
    grids = sorted(f for f in m.files if f.startswith("grid_epoch_"))
    assert grids == ["grid_epoch_001.png", "grid_epoch_002.png", "grid_epoch_003.png"]
    for label in m.labels:
        audio, rate = sf.read(gan_bundle / f"sample_{label}.wav")
        assert rate == SR and audio.shape == (SR // 2,)
    rt = open_runtime(gan_bundle)
    assert rt.ready and isinstance(rt, GeneratorRuntime), rt.reason


@pytest.mark.slow
def test_generation_is_deterministic_for_a_seed(gan_bundle: Path) -> None:
    rt = open_runtime(gan_bundle)
    assert isinstance(rt, GeneratorRuntime)
    first, again, other = rt.generate(1, 2, 7), rt.generate(1, 2, 7), rt.generate(1, 2, 8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], other[0])
    assert not np.array_equal(first[0], first[1])


@pytest.mark.slow
def test_generate_cli_writes_wavs_and_refuses_an_unknown_label(
    gan_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["generate", "--model", str(gan_bundle), "--label", "mid", "--n", "3"]
    assert main([*argv, "--seed", "5", "--out", str(tmp_path / "a")]) == 0
    assert main([*argv, "--seed", "5", "--out", str(tmp_path / "b")]) == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["mid_5_0.wav", "mid_5_1.wav", "mid_5_2.wav"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert sf.info(tmp_path / "a" / name).samplerate == SR
    capsys.readouterr()
    bad = ["generate", "--model", str(gan_bundle), "--label", "7", "--out", str(tmp_path / "c")]
    assert main(bad) == 2
    assert "unknown label '7'" in capsys.readouterr().err


@pytest.fixture
def with_generator(artifacts_dir: Path, gan_bundle: Path) -> Path:
    shutil.copytree(gan_bundle, artifacts_dir / "gan")
    return artifacts_dir


@pytest.mark.anyio
@pytest.mark.slow
async def test_generate_returns_a_wav_the_same_for_a_seed(with_generator: Path) -> None:
    async with serve(create_app(Settings(artifacts_dir=with_generator))) as c:
        listed = {m["name"]: m for m in (await c.get("/v1/models")).json()["models"]}
        assert listed["gan"]["kind"] == "generator" and listed["gan"]["status"] == "ready"
        assert listed["gan"]["labels"] == ["high", "low", "mid"]
        assert listed["tiny"]["status"] == "ready"
        detail = (await c.get("/v1/models/gan")).json()
        assert detail["generator"]["latent_dim"] == 4 and detail["labels"] == ["high", "low", "mid"]
        r = await c.post("/v1/models/gan/generate", json={"label": "low", "seed": 3})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/wav" and r.headers["x-auscult-seed"] == "3"
        audio, rate = sf.read(io.BytesIO(r.content))
        assert rate == SR and audio.shape == (SR // 2,) and np.abs(audio).max() > 0
        again = await c.post("/v1/models/gan/generate", json={"label": "low", "seed": 3})
        assert again.content == r.content
        unseeded = await c.post("/v1/models/gan/generate", json={"label": "low"})
        assert unseeded.status_code == 200 and int(unseeded.headers["x-auscult-seed"]) >= 0


@pytest.mark.anyio
@pytest.mark.slow
async def test_generate_several_returns_a_zip_of_that_many_wavs(with_generator: Path) -> None:
    async with serve(create_app(Settings(artifacts_dir=with_generator))) as c:
        r = await c.post("/v1/models/gan/generate", json={"label": "high", "count": 3, "seed": 1})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = z.namelist()
        assert names == [f"gan_high_1_{i}.wav" for i in range(3)]
        clips = [sf.read(io.BytesIO(z.read(n)))[0] for n in names]
    assert all(c.shape == (SR // 2,) for c in clips)
    assert not np.array_equal(clips[0], clips[1])


BAD_BODIES = [
    {"label": "purple"},
    {"label": "low", "count": 0},
    {"label": "low", "count": 3},  # over AUSCULT_MAX_GENERATE_COUNT=2
    {"label": "low", "seed": -1},
    {"label": "low", "count": "many"},
    {"label": "low", "seed": False},
    {"label": True},
    {"count": 1},
    [1, 2],
]


@pytest.mark.anyio
@pytest.mark.slow
async def test_generate_refuses_bad_requests_with_the_error_body(with_generator: Path) -> None:
    settings = Settings(artifacts_dir=with_generator, max_generate_count=2)
    async with serve(create_app(settings)) as c:
        for body in BAD_BODIES:
            assert_error(await c.post("/v1/models/gan/generate", json=body), 422, "invalid_request")
        r = await c.post("/v1/models/gan/generate", json={"label": "low", "count": 2})
        assert r.status_code == 200, r.text  # the limit itself is allowed


@pytest.mark.anyio
@pytest.mark.slow
async def test_generate_and_the_other_routes_refuse_the_other_kinds(with_generator: Path) -> None:
    clip = {"file": ("t.wav", (with_generator / "gan" / "sample_low.wav").read_bytes())}
    async with serve(create_app(Settings(artifacts_dir=with_generator))) as c:
        r = await c.post("/v1/models/tiny/generate", json={"label": "low"})
        assert_error(r, 409, "wrong_model_kind")
        assert_error(await c.post("/v1/models/gan/score", files=clip), 409, "wrong_model_kind")
        assert_error(await c.post("/v1/models/gan/classify", files=clip), 409, "wrong_model_kind")
        r = await c.post("/v1/models/nope/generate", json={"label": "low"})
        assert_error(r, 404, "model_not_found")
        for raw in (b"{", b"\xff\xfe\x07", b""):
            r = await c.post("/v1/models/gan/generate", content=raw, headers=JSON_HEADERS)
            assert_error(r, 422, "invalid_request")
        r = await c.post("/v1/models/gan/generate", content=b" " * 5000, headers=JSON_HEADERS)
        assert_error(r, 413, "payload_too_large")
        meta = await c.get("/v2/models/gan")
        assert meta.status_code == 200 and meta.json()["platform"] == "auscult_generator"
        infer = {"inputs": [{"name": "audio", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
        r = await c.post("/v2/models/gan/infer", json=infer)
        assert r.status_code == 400 and "generate" in r.json()["error"]
        assert (await c.post("/v1/models/tiny/score", files=clip)).status_code == 200


JSON_HEADERS = {"content-type": "application/json"}


@pytest.mark.anyio
@pytest.mark.slow
async def test_openapi_documents_generate(with_generator: Path) -> None:
    async with serve(create_app(Settings(artifacts_dir=with_generator))) as c:
        spec = (await c.get("/openapi.json")).json()
    op = spec["paths"]["/v1/models/{name}/generate"]["post"]
    schema = op["requestBody"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == {"label", "count", "seed"}
    assert schema["required"] == ["label"]
    assert "AUSCULT_MAX_GENERATE_COUNT" in json.dumps(schema)
    assert {"audio/wav", "application/zip"} <= set(op["responses"]["200"]["content"])
    assert {"409", "413", "422"} <= set(op["responses"])
