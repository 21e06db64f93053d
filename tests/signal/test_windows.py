"""Any length, any codec: clips are scored window by window, through the HTTP API, on real
bundles fitted on 2-s and on 10-s recordings (issue: a healthy 10-s clip was `severe`)."""

from __future__ import annotations

import io
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.settings import Settings
from tests.conftest import wav_bytes
from training.synth import generate, recording

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

SMALL = ["--filters", "8,16,16", "--epochs", "6", "--seed", "0"]


def _fit(tmp: Path, name: str, seconds: float, n_train: int) -> Path:
    from training.__main__ import main

    data = tmp / f"data-{name}"
    generate(data, seed=3, seconds=seconds, n_train=n_train, n_train_target=2, n_test=3)
    out = tmp / "artifacts" / name
    assert main(["fit", "--data", str(data), "--out", str(out), *SMALL]) == 0
    return out


@pytest.fixture(scope="module")
def window_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("windows")
    _fit(tmp, "two", 2.0, 24)
    _fit(tmp, "ten", 10.0, 8)
    return tmp / "artifacts"


@pytest.fixture
async def api(window_artifacts: Path) -> AsyncIterator[httpx.AsyncClient]:
    from asgi_lifespan import LifespanManager

    app = create_app(Settings(artifacts_dir=window_artifacts))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def _score(client: httpx.AsyncClient, model: str, data: bytes) -> dict:
    r = await client.post(f"/v1/models/{model}/score", files={"file": ("clip", data)})
    assert r.status_code == 200, r.text
    return r.json()


def test_bundles_record_their_window(window_artifacts: Path) -> None:
    from service.models.bundle import read_manifest

    two, ten = read_manifest(window_artifacts / "two"), read_manifest(window_artifacts / "ten")
    assert two.features.window_seconds == 1.0 and ten.features.window_seconds == 1.0
    # fitted on 1-s windows (32 frames) every 16 frames (0.512 s), and one flush with the end;
    # scored every window (31 frames: 0.992 s)
    assert two.training["windows_per_clip"]["median"] == 3  # 63 frames: 0, 16, 31
    assert ten.training["windows_per_clip"]["median"] == 19  # 313 frames: 0 … 272, 281
    assert two.features.window_hop_frames == 31 and two.training["fit_hop_seconds"] is None
    assert two.scoring["aggregation"] == "mean"


@pytest.mark.parametrize("model", ["two", "ten"])
@pytest.mark.parametrize("seconds", [2.0, 10.0, 60.0])
async def test_healthy_clips_of_any_length_score_normal(
    api: httpx.AsyncClient, model: str, seconds: float
) -> None:
    body = await _score(api, model, wav_bytes(recording(seconds=seconds, seed=100)))
    assert body["level"] == "normal", body["score"]
    windows = body["windows"]
    assert windows[0]["start_s"] == 0.0 and windows[-1]["end_s"] == seconds
    # one every 31 frames (0.992 s), and one flush with the end
    assert len(windows) == {2.0: 2, 10.0: 11, 60.0: 61}[seconds]
    # the level is decided by the worst stretch of two windows, which the result names
    worst = body["worst"]
    inside = [w["score"] for w in windows if worst["start_s"] <= w["start_s"] < worst["end_s"]]
    assert len(inside) == 2
    assert worst["score"] == pytest.approx(np.mean(inside))
    pairs = [np.mean([a["score"], b["score"]]) for a, b in itertools.pairwise(windows)]
    assert worst["score"] == pytest.approx(max(pairs))


async def test_a_clip_shorter_than_one_window_is_one_window(api: httpx.AsyncClient) -> None:
    body = await _score(api, "two", wav_bytes(recording(seconds=0.6, seed=101)))
    assert [(w["start_s"], w["end_s"]) for w in body["windows"]] == [(0.0, 0.6)]
    assert body["level"] == "normal", body["score"]


@pytest.mark.parametrize("model", ["two", "ten"])
async def test_a_short_fault_shows_in_its_window(api: httpx.AsyncClient, model: str) -> None:
    clip = recording(seconds=30.0, seed=102, fault="impacts", fault_span=(20.0, 22.0))
    body = await _score(api, model, wav_bytes(clip))
    windows = body["windows"]
    top = max(windows, key=lambda w: w["score"])
    assert top["start_s"] < 22.0 and top["end_s"] > 20.0, top  # overlaps the fault
    healthy = [w["score"] for w in windows if w["end_s"] < 19.0]
    assert top["score"] > 1.5 * max(healthy)
    # 2 s of 30 lift the level, and the worst stretch that decided it is the fault
    assert body["level"] != "normal", body["score"]
    assert body["worst"]["start_s"] < 22.0 and body["worst"]["end_s"] > 20.0, body["worst"]


def _encode(x: np.ndarray, sr: int, fmt: str, subtype: str, level: float | None) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    kwargs = {} if level is None else {"compression_level": level, "bitrate_mode": "CONSTANT"}
    sf.write(buf, x, sr, format=fmt, subtype=subtype, **kwargs)
    return buf.getvalue()


CODECS = {  # name → (format, subtype, compression level)
    "mp3 128 kbit/s": ("MP3", "MPEG_LAYER_III", 0.2),
    "mp3 64 kbit/s": ("MP3", "MPEG_LAYER_III", 0.6),
    "ogg vorbis": ("OGG", "VORBIS", None),
    "flac": ("FLAC", "PCM_16", None),
}


@pytest.mark.parametrize("model", ["two", "ten"])
async def test_healthy_clips_stay_normal_through_codecs_and_resampling(
    api: httpx.AsyncClient, model: str
) -> None:
    from service.features import resample

    for seed in (103, 104):
        x = recording(seconds=10.0, seed=seed)
        wav = await _score(api, model, wav_bytes(x))
        seen = {"wav": wav["score"]}
        for name, (fmt, subtype, level) in CODECS.items():
            body = await _score(api, model, _encode(x, 16000, fmt, subtype, level))
            assert body["input"]["format"] == fmt.lower() if fmt != "MP3" else "mp3"
            seen[name] = body["score"]
        body = await _score(api, model, wav_bytes(resample(x, 16000, 44100), sr=44100))
        assert body["input"]["sample_rate"] == 44100
        seen["44.1 kHz"] = body["score"]
        threshold = wav["thresholds"]["needs_maintenance"]
        assert max(seen.values()) < threshold, (seen, threshold)
