"""16-bit PCM WAV is decoded without libsndfile, to the same numbers libsndfile gives."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from service import features
from service.errors import AudioTooLong, AudioTooShort, InvalidAudio
from tests.conftest import tone, wav_bytes


def chunk(cid: bytes, body: bytes) -> bytes:
    return cid + struct.pack("<I", len(body)) + body + (b"\0" if len(body) % 2 else b"")


def riff(*chunks: bytes) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def fmt_pcm16(channels: int, rate: int, extensible: bool = False) -> bytes:
    align = 2 * channels
    base = struct.pack(
        "<HHIIHH", 0xFFFE if extensible else 1, channels, rate, rate * align, align, 16
    )
    if not extensible:
        return chunk(b"fmt ", base)
    guid = struct.pack("<H", 1) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    return chunk(b"fmt ", base + struct.pack("<HHI", 22, 16, 0) + guid)


def pcm(n: int, channels: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.integers(-32768, 32768, size=(n, channels), dtype=np.int64).astype("<i2")
    x[:2] = [[-32768] * channels, [32767] * channels]  # the extremes
    return x.tobytes()


def by_soundfile(data: bytes, monkeypatch: pytest.MonkeyPatch) -> features.DecodedAudio:
    with monkeypatch.context() as m:
        m.setattr(features, "_pcm16_wav", lambda _: None)
        return features.decode_audio(data)


CASES = {
    "mono": lambda: wav_bytes(tone(0.5)),
    "stereo": lambda: wav_bytes(np.stack([tone(0.5), tone(0.5, 220.0, seed=1)], axis=1)),
    "six-channels": lambda: riff(fmt_pcm16(6, 16000), chunk(b"data", pcm(800, 6))),
    "extensible": lambda: riff(fmt_pcm16(2, 44100, extensible=True), chunk(b"data", pcm(999, 2))),
    "list-chunk-before-data": lambda: riff(
        fmt_pcm16(1, 8000), chunk(b"LIST", b"INFOISFT\x03\0\0\0ab\0"), chunk(b"data", pcm(500, 1))
    ),
    "trailing-chunk": lambda: riff(
        fmt_pcm16(1, 22050), chunk(b"data", pcm(301, 1)), chunk(b"id3 ", b"xyz")
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pcm16_wav_decodes_like_libsndfile(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = CASES[case]()
    assert features._pcm16_wav(data) is not None, "the fast path should take this file"
    got, ref = features.decode_audio(data), by_soundfile(data, monkeypatch)
    assert (got.sample_rate, got.channels, got.duration_s) == (
        ref.sample_rate,
        ref.channels,
        ref.duration_s,
    )
    assert got.samples.dtype == np.float32 and got.samples.flags.c_contiguous
    np.testing.assert_array_equal(got.samples, ref.samples)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(wav_bytes(tone(0.2), subtype="PCM_24"), id="24-bit"),
        pytest.param(wav_bytes(tone(0.2), subtype="FLOAT"), id="float"),
        pytest.param(wav_bytes(tone(0.2), subtype="PCM_U8"), id="8-bit"),
        pytest.param(wav_bytes(tone(0.2))[:-101], id="truncated-data"),
        pytest.param(riff(chunk(b"data", pcm(10, 1)), fmt_pcm16(1, 8000)), id="data-before-fmt"),
        pytest.param(wav_bytes(tone(0.2), fmt="FLAC", subtype="PCM_16"), id="flac"),
    ],
)
def test_other_files_are_left_to_soundfile(data: bytes) -> None:
    assert features._pcm16_wav(data) is None


def test_fast_path_keeps_the_limits() -> None:
    data = wav_bytes(tone(2.0))
    with pytest.raises(AudioTooLong):
        features.decode_audio(data, max_seconds=1.0)
    with pytest.raises(AudioTooShort):
        features.decode_audio(riff(fmt_pcm16(1, 16000), chunk(b"data", b"")))
    with pytest.raises(InvalidAudio):
        features.decode_audio(riff(fmt_pcm16(1, 16000)))  # no data chunk: soundfile refuses
