"""MelStream: a recording pushed in pieces gives audio_to_windows' windows, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from service import features as F
from service.errors import AudioTooShort, InvalidAudio, NonFiniteValues

PARAMS = F.FeatureParams(
    sample_rate=16000,
    n_mels=64,
    height=64,
    width=32,
    fmax=6400,
    window_seconds=1.0,
    window_hop_seconds=1.0,
)
HALF_HOP = PARAMS.model_copy(update={"window_hop_seconds": None, "n_mels": 48, "width": 40})


@pytest.mark.parametrize("params", [PARAMS, HALF_HOP], ids=["hop-1s", "half-hop-resized"])
@pytest.mark.parametrize("rate", [16000, 8000, 22050, 44100, 48000])
@pytest.mark.parametrize("seconds", [0.15, 0.9, 1.0, 1.05, 2.3, 7.77])
def test_pushed_pieces_give_the_whole_recordings_windows(
    params: F.FeatureParams, rate: int, seconds: float
) -> None:
    rng = np.random.default_rng(round(seconds * 100) + rate)
    x = (0.1 * rng.standard_normal(round(seconds * rate))).astype(np.float32)
    want, want_spans = F.audio_to_windows(x, rate, params)
    stream = F.MelStream(rate, params)
    got, spans, pos = [], [], 0
    while pos < x.size:
        step = int(rng.integers(1, 6000))
        images, s = stream.push(x[pos : pos + step])
        got.append(images)
        spans += s
        pos += step
    images, s = stream.finish()
    got.append(images)
    spans += s
    np.testing.assert_array_equal(np.concatenate(got), want)
    assert spans == want_spans


def test_the_stream_keeps_its_unfinished_window_not_the_recording() -> None:
    stream = F.MelStream(16000, PARAMS)
    x = (0.1 * np.random.default_rng(0).standard_normal(1600)).astype(np.float32)
    held = []
    for _ in range(300):  # 30 s in 100-ms frames
        stream.push(x)
        held.append(stream.nbytes)
    unfinished = 4 * round(1.1 * 16000)  # float32 samples of the window being filled
    assert max(held[50:]) < 64 * 1024 + unfinished  # plus one window's columns


def test_a_stream_below_the_minimum_is_too_short() -> None:
    stream = F.MelStream(16000, PARAMS)
    stream.push(np.zeros(800, np.float32))
    with pytest.raises(AudioTooShort):
        stream.finish()


def test_decode_pcm_matches_a_wav_and_refuses_partial_or_non_finite_samples() -> None:
    pcm = np.array([[0, -32768], [32767, 5]], "<i2")
    mono = F.decode_pcm(pcm.tobytes(), "pcm_s16le", 2)
    wav = F.decode_audio(_wav(pcm)).samples
    np.testing.assert_array_equal(mono, wav)
    with pytest.raises(InvalidAudio):
        F.decode_pcm(b"\x00\x01\x02", "pcm_s16le", 1)
    with pytest.raises(NonFiniteValues):
        F.decode_pcm(np.array([np.nan], "<f4").tobytes(), "f32le", 1)


def _wav(pcm: np.ndarray) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, pcm, 16000, subtype="PCM_16", format="WAV")
    return buf.getvalue()
