"""Scoring over HTTP through a real tiny bundle: formats, batches, parity with training."""

from __future__ import annotations

import builtins
import io
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from service.features import image_to_png, prepare
from service.models.bundle import read_manifest
from service.models.runtimes import AnomalyRuntime
from tests.conftest import tone, wav_bytes
from tests.helpers import GOOD_WAV, with_wav_sizes

pytestmark = pytest.mark.anyio


async def score(client: httpx.AsyncClient, data: bytes, filename: str = "clip") -> dict[str, Any]:
    r = await client.post("/v1/models/tiny/score", files={"file": (filename, data)})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def encoded(fmt: str, subtype: str | None = None) -> bytes:
    if fmt.upper() not in sf.available_formats():
        pytest.skip(f"this libsndfile cannot write {fmt}")
    return wav_bytes(tone(1.0), subtype=subtype, fmt=fmt)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fmt", "subtype"),
    [
        ("WAV", "PCM_16"),
        ("WAV", "FLOAT"),
        ("FLAC", "PCM_16"),
        ("OGG", "VORBIS"),
        ("MP3", "MPEG_LAYER_III"),
    ],
    ids=["wav-pcm16", "wav-float", "flac", "ogg-vorbis", "mp3"],
)
async def test_score_accepts_every_audio_format(
    client: httpx.AsyncClient, fmt: str, subtype: str
) -> None:
    body = await score(client, encoded(fmt, subtype), f"clip.{fmt.lower()}")
    assert body["input"]["kind"] == "audio"
    assert body["input"]["format"] == {"OGG": "ogg", "MP3": "mp3", "FLAC": "flac"}.get(fmt, "wav")
    assert body["input"]["sample_rate"] == 16000 and body["input"]["channels"] == 1
    assert body["input"]["duration_s"] == pytest.approx(1.0, abs=0.06)
    assert np.isfinite(body["score"]) and body["score"] >= 0


async def test_score_downmixes_eight_channels(client: httpx.AsyncClient) -> None:
    # MIMII recordings are 8-channel: the service scores their mean.
    mono = tone(1.0)
    body = await score(client, wav_bytes(np.stack([mono] * 8, axis=1), subtype="FLOAT"))
    assert body["input"]["channels"] == 8
    assert body["score"] == pytest.approx(
        (await score(client, wav_bytes(mono, subtype="FLOAT")))["score"]
    )


async def test_score_resamples_96khz(client: httpx.AsyncClient) -> None:
    import soxr

    clip = tone(1.0)
    hi_res = soxr.resample(clip, 16000, 96000, quality="VHQ")
    body = await score(client, wav_bytes(hi_res, sr=96000, subtype="FLOAT"))
    assert body["input"]["sample_rate"] == 96000 and body["input"]["duration_s"] == 1.0
    at_16k = await score(client, wav_bytes(clip, subtype="FLOAT"))
    assert body["score"] == pytest.approx(at_16k["score"], rel=0.02)


async def test_score_of_truncated_wav_uses_the_samples_present(client: httpx.AsyncClient) -> None:
    # Documented behaviour: a WAV whose header claims more data than the file holds (a cut
    # upload, or a recorder that streams and never patches the sizes) is scored on what is
    # there, and `input.duration_s` says how much that was.
    full = wav_bytes(tone(1.0))
    body = await score(client, full[: 44 + 2 * 8000])
    assert body["input"]["duration_s"] == 0.5
    assert body["score"] == (await score(client, wav_bytes(tone(1.0)[:8000])))["score"]


async def test_score_of_wav_claiming_hours_reads_only_what_is_present(
    client: httpx.AsyncClient,
) -> None:
    claims_hours = with_wav_sizes(GOOD_WAV, 0xFFFFFFF0)  # ~37 h of 16 kHz 16-bit mono
    body = await score(client, claims_hours)
    assert body["input"]["duration_s"] == 1.0
    assert body["score"] == (await score(client, GOOD_WAV))["score"]


async def test_png_spectrogram_scores_like_its_audio(
    client: httpx.AsyncClient, tiny_bundle: Path
) -> None:
    params = read_manifest(tiny_bundle).features
    audio = wav_bytes(tone(1.0, freq=700))
    png = image_to_png(prepare(audio, params).image)
    body = await score(client, png, "clip.png")
    assert body["input"] == {
        "kind": "image",
        "format": "png",
        "duration_s": None,
        "sample_rate": None,
        "channels": None,
        "bandwidth_hz": None,
        "bitrate_kbps": None,
    }
    # The PNG holds 8-bit pixels: the same clip, quantised.
    assert body["score"] == pytest.approx((await score(client, audio))["score"], rel=0.05)


async def test_batch_results_follow_input_order(client: httpx.AsyncClient) -> None:
    clips = [(f"clip{i}.wav", wav_bytes(tone(1.0, freq=200 + 300 * i, seed=i))) for i in range(5)]
    r = await client.post("/v1/models/tiny/score/batch", files=[("files", c) for c in clips])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["model_version"]
    assert [res["filename"] for res in body["results"]] == [name for name, _ in clips]
    singles = [(await score(client, data))["score"] for _, data in clips]
    assert [res["score"] for res in body["results"]] == pytest.approx(singles, rel=1e-5)
    assert len(set(singles)) == len(singles)  # the clips really differ, so order is tested


async def test_single_batch_and_in_process_scores_agree(
    client: httpx.AsyncClient, tiny_bundle: Path
) -> None:
    data = wav_bytes(tone(1.0, freq=1234, seed=3))
    single = (await score(client, data))["score"]
    r = await client.post(
        "/v1/models/tiny/score/batch",
        files=[("files", ("a.wav", data)), ("files", ("b.wav", data))],
    )
    batch = [res["score"] for res in r.json()["results"]]
    runtime = AnomalyRuntime(tiny_bundle, read_manifest(tiny_bundle))
    runtime.load()
    assert runtime.ready, runtime.reason
    raw = runtime.score(prepare(data, runtime.manifest.features).image[None])  # type: ignore[union-attr]
    assert batch == pytest.approx([single, single], rel=1e-5)
    assert single == pytest.approx(runtime.verdict(raw).score, rel=1e-5)


async def test_heldout_clip_scores_as_at_fit_time(
    client: httpx.AsyncClient, tiny_bundle: Path, synth_dir: Path
) -> None:
    heldout = read_manifest(tiny_bundle).training["heldout_scores"]
    assert heldout
    for name, expected in sorted(heldout.items())[:3]:
        body = await score(client, (synth_dir / "train" / name).read_bytes(), name)
        assert body["score"] == pytest.approx(expected, rel=1e-4, abs=1e-5), name


async def test_score_level_follows_the_manifest_thresholds(
    client: httpx.AsyncClient, tiny_bundle: Path
) -> None:
    thresholds = read_manifest(tiny_bundle).thresholds
    assert thresholds is not None
    noise = (np.random.default_rng(0).standard_normal(16000) * 0.9).clip(-1, 1)
    for data in (GOOD_WAV, wav_bytes(noise)):
        body = await score(client, data)
        assert body["thresholds"] == {
            "needs_maintenance": thresholds.needs_maintenance,
            "severe": thresholds.severe,
        }
        s = body["score"]
        expected = (
            "severe"
            if s >= thresholds.severe
            else "needs_maintenance"
            if s >= thresholds.needs_maintenance
            else "normal"
        )
        assert body["level"] == expected


async def test_uploads_never_touch_the_disk(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Starlette's form parser would spool a >1 MB file to a temporary file; ours must not.
    import starlette.formparsers

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"an upload touched the disk: {args!r}")

    real_open = builtins.open

    def read_only_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if any(c in mode for c in "wax+"):
            no_disk(file, mode)
        return real_open(file, mode, *args, **kwargs)

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", no_disk)
    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(io, "open", read_only_open)
    spool_dir = tmp_path / "tmp"
    spool_dir.mkdir()
    monkeypatch.setenv("TMPDIR", str(spool_dir))
    monkeypatch.setattr(tempfile, "tempdir", str(spool_dir))

    big = wav_bytes(tone(40.0), subtype="FLOAT")  # 2.5 MB, over Starlette's spooling threshold
    assert len(big) > 2 * 1024 * 1024
    body = await score(client, big, "big.wav")
    assert body["input"]["duration_s"] == 40.0
    r = await client.post(
        "/v1/models/tiny/score/batch", files=[("files", ("a.wav", big)), ("files", ("b.wav", big))]
    )
    assert r.status_code == 200, r.text
    assert os.listdir(spool_dir) == []
