"""service.features: sniffing, decoding limits and the audio → image path, without HTTP."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Callable

import numpy as np
import pytest
import soundfile as sf

from service import errors, features
from service.features import (
    FeatureParams,
    decode_audio,
    image_to_png,
    log_mel,
    mel_filterbank,
    prepare,
    sniff,
)
from tests.conftest import tone, wav_bytes
from tests.helpers import png_bytes, with_flac_streaminfo, with_wav_sizes

PARAMS = FeatureParams(height=32, n_mels=32, width=32)
MB = 1024 * 1024


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak Python/numpy memory allocated while fn runs (its error, if any, is swallowed)."""
    features.warm_up(PARAMS)  # caches built outside the measurement
    tracemalloc.start()
    try:
        fn()
    except errors.AuscultError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    ("data", "kind", "fmt"),
    [
        (wav_bytes(tone(0.2)), "audio", "wav"),
        (wav_bytes(tone(0.2), fmt="FLAC"), "audio", "flac"),
        (wav_bytes(tone(0.2), fmt="OGG", subtype="VORBIS"), "audio", "ogg"),
        (b"ID3\x04\x00" + bytes(20), "audio", "mp3"),
        (png_bytes(8, 8), "image", "png"),
        (b"\xff\xd8\xff\xe0" + bytes(20), "image", "jpeg"),
    ],
    ids=["wav", "flac", "ogg", "mp3-id3", "png", "jpeg"],
)
def test_sniff_recognises_content_by_magic_bytes(data: bytes, kind: str, fmt: str) -> None:
    assert sniff(data) == (kind, fmt)


@pytest.mark.parametrize(
    "data", [b"", b"RIFF", b"<html>", b"%PDF-1.7"], ids=["empty", "riff-only", "html", "pdf"]
)
def test_sniff_rejects_unknown_content(data: bytes) -> None:
    with pytest.raises(errors.UnsupportedMediaType):
        sniff(data)


def test_decode_downmixes_channels_to_their_mean() -> None:
    rng = np.random.default_rng(0)
    stereo = (rng.standard_normal((4000, 3)) * 0.1).astype(np.float32)
    decoded = decode_audio(wav_bytes(stereo, subtype="FLOAT"))
    assert decoded.channels == 3 and decoded.sample_rate == 16000
    np.testing.assert_array_equal(decoded.samples, stereo.mean(axis=1, dtype=np.float32))


def test_decode_reads_long_audio_in_blocks_without_losing_samples() -> None:
    clip = tone(40.0)  # more than one decode block
    decoded = decode_audio(wav_bytes(clip, subtype="FLOAT"))
    assert decoded.duration_s == 40.0
    np.testing.assert_array_equal(decoded.samples, clip)


def test_decode_of_wav_claiming_hours_allocates_only_what_is_present() -> None:
    claims_hours = with_wav_sizes(wav_bytes(tone(0.5)), 0xFFFFFFF0)
    assert peak_bytes(lambda: decode_audio(claims_hours, max_seconds=300)) < 1 * MB
    assert decode_audio(claims_hours, max_seconds=300).duration_s == 0.5


def test_decode_of_flac_claiming_huge_rate_and_channels_allocates_nothing() -> None:
    # 3 kB of FLAC whose header claims 20 s of 8 channels at 655 kHz (420 MB of float32).
    lying = with_flac_streaminfo(
        wav_bytes(tone(0.2), fmt="FLAC"), sample_rate=655_350, channels=8, frames=655_350 * 20
    )
    assert len(lying) < 10_000
    assert peak_bytes(lambda: decode_audio(lying, max_seconds=300)) < 4 * MB


def test_decode_memory_does_not_grow_with_channel_count() -> None:
    mono = tone(20.0)
    one = wav_bytes(mono)
    eight = wav_bytes(np.stack([mono] * 8, axis=1))
    assert peak_bytes(lambda: decode_audio(eight)) < 2 * peak_bytes(lambda: decode_audio(one))


def test_decode_rejects_audio_longer_than_the_limit_from_the_header() -> None:
    with pytest.raises(errors.AudioTooLong, match="the limit is 2 s"):
        decode_audio(wav_bytes(tone(2.5)), max_seconds=2)
    assert decode_audio(wav_bytes(tone(2.0)), max_seconds=2).duration_s == 2.0


def test_prepare_gives_the_model_input_shape_in_unit_range() -> None:
    prepared = prepare(wav_bytes(tone(1.0)), PARAMS)
    assert prepared.image.shape == (PARAMS.height, PARAMS.width)
    assert prepared.image.dtype == np.float32
    assert prepared.image.min() >= 0.0 and prepared.image.max() <= 1.0


def test_png_round_trip_keeps_the_image_within_one_grey_level() -> None:
    image = prepare(wav_bytes(tone(1.0, freq=900)), PARAMS).image
    back = prepare(image_to_png(image), PARAMS)
    assert back.kind == "image" and back.format == "png"
    np.testing.assert_allclose(back.image, image, atol=0.5 / 255 + 1e-6)


def test_png_rows_are_flipped_so_high_bands_are_on_top() -> None:
    from PIL import Image

    image = np.zeros((PARAMS.height, PARAMS.width), np.float32)
    image[0] = 1.0  # lowest mel band
    picture = np.asarray(Image.open(io.BytesIO(image_to_png(image))))
    assert picture[-1].min() == 255 and picture[0].max() == 0


def test_image_of_wrong_size_is_refused_not_resized() -> None:
    with pytest.raises(errors.InvalidImage, match="expects 32x32"):
        prepare(png_bytes(32, 64), PARAMS)


def test_one_channel_read_matches_soundfile() -> None:
    data = wav_bytes(tone(1.0), fmt="FLAC")
    expected, sr = sf.read(io.BytesIO(data), dtype="float32")
    decoded = decode_audio(data)
    assert decoded.sample_rate == sr
    np.testing.assert_array_equal(decoded.samples, expected)


@pytest.mark.parametrize("level", [0.5, 1e-4])
def test_log_mel_float32_fft_matches_a_float64_fft(level: float) -> None:
    """The float32 FFT changes log-mel values by far less than the image's resolution."""
    params = FeatureParams()
    rng = np.random.default_rng(3)
    t = np.arange(3 * params.sample_rate) / params.sample_rate
    audio = (level * (np.sin(2 * np.pi * 440 * t) + 0.3 * rng.standard_normal(t.size))).astype(
        np.float32
    )
    n_fft, hop = params.n_fft, params.hop_length
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(audio, n_fft // 2, "reflect"), n_fft)
    spectrum = np.fft.rfft(frames[::hop].astype(np.float64) * np.hanning(n_fft + 1)[:-1], axis=1)
    fb = mel_filterbank(params.sample_rate, n_fft, params.n_mels, params.fmin, params.fmax)
    reference = 10 * np.log10(np.maximum(fb.astype(np.float64) @ (np.abs(spectrum) ** 2).T, 1e-10))
    np.testing.assert_allclose(log_mel(audio, params), reference, atol=1e-3)


# --- where a classifier's clip starts (onset_margin_s) -----------------------------------


def word_after_silence(lead_s: float, floor: float, sr: int = 8000) -> np.ndarray:
    """lead_s of noise at `floor` RMS, then a 0.4-s "word" (a loud tone), then 0.3 s noise."""
    rng = np.random.default_rng(0)
    word = 0.3 * np.sin(2 * np.pi * 440 * np.arange(int(0.4 * sr)) / sr)
    parts = [rng.standard_normal(int(lead_s * sr)) * floor, word, rng.standard_normal(2400) * floor]
    return np.concatenate(parts).astype(np.float32)


@pytest.mark.parametrize("lead_s", [0.0, 0.05, 0.5, 2.0, 7.0])
@pytest.mark.parametrize("floor", [1e-4, 1e-2])
def test_from_onset_starts_the_margin_before_the_word(lead_s: float, floor: float) -> None:
    audio = word_after_silence(lead_s, floor)
    out = features.from_onset(audio, 8000, 0.1)
    kept_lead = (out.shape[0] - audio.shape[0]) / 8000 + lead_s
    assert kept_lead == pytest.approx(min(lead_s, 0.1), abs=0.011)  # one 10-ms frame
    assert np.array_equal(out, audio[audio.shape[0] - out.shape[0] :])  # a suffix, unchanged


def test_from_onset_passes_over_a_click_long_before_the_word() -> None:
    """Pressing Record clicks: a 20-ms burst at 0.2 s, quieter than the word at 2.5 s."""
    audio = word_after_silence(2.5, 1e-3)
    audio[1600:1760] += 0.1 * np.sign(np.sin(np.arange(160)))
    out = features.from_onset(audio, 8000, 0.1)
    assert out.shape[0] == audio.shape[0] - int(2.4 * 8000)  # 0.1 s before the word


def test_from_onset_keeps_steady_and_tiny_clips() -> None:
    steady = tone(1.0, 300.0, sr=8000)
    assert features.from_onset(steady, 8000, 0.1) is steady  # no onset in a steady sound
    tiny = np.ones(50, np.float32)
    assert features.from_onset(tiny, 8000, 0.1) is tiny


def word_columns(img: np.ndarray) -> np.ndarray:
    """The frames of an image where the loud tone is."""
    return np.flatnonzero((img > 0.6).any(axis=0))


CLIP_PARAMS = FeatureParams(
    sample_rate=8000, n_fft=256, hop_length=128, n_mels=32, fmax=4000, height=32, width=63,
    clip_seconds=1.0, onset_margin_s=0.1,
)  # fmt: skip


def test_a_long_recording_is_clipped_from_just_before_its_word() -> None:
    image = features.audio_to_image(word_after_silence(0.1, 1e-3), 8000, CLIP_PARAMS)
    late = features.audio_to_image(word_after_silence(3.0, 1e-3), 8000, CLIP_PARAMS)
    assert word_columns(image).size > 20  # the 0.4-s word
    assert np.array_equal(word_columns(image), word_columns(late))  # in the same frames
    assert np.abs(image - late).mean() < 0.02  # only the noise around it differs
    unaligned = CLIP_PARAMS.model_copy(update={"onset_margin_s": None})
    silent = features.audio_to_image(word_after_silence(3.0, 1e-3), 8000, unaligned)
    assert word_columns(silent).size == 0  # without it the clip is the noise alone


def test_a_recording_that_fits_the_clip_is_kept_as_recorded() -> None:
    audio = word_after_silence(0.25, 1e-3)  # 0.95 s: the word 0.25 s in
    image = features.audio_to_image(audio, 8000, CLIP_PARAMS)
    unaligned = CLIP_PARAMS.model_copy(update={"onset_margin_s": None})
    assert np.array_equal(image, features.audio_to_image(audio, 8000, unaligned))
    assert word_columns(image)[0] == pytest.approx(0.25 * 8000 / 128, abs=2)
