"""Training-time augmentation.

Detectors: lossy-codec copies of training clips, so the normal distribution includes what
codecs do. Classifiers: perturbed copies of every clip (speed, tempo, gain, noise) and
SpecAugment masks and mel-axis warps (vocal tract length perturbation) drawn per batch, so
a voice the classifier never heard is less new.

Users send mp3 and ogg as well as wav. A codec's psychoacoustic model removes sound it
judges masked (a noise floor between strong harmonics, the top of the spectrum), which moves
a band's level by tens of dB: far outside the spread of healthy wav recordings, so a
healthy mp3 would score as an anomaly. Fitting on a codec round trip of each training clip
beside the original teaches the detector that those changes are normal.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.features import (
    FeatureParams,
    Prepared,
    decode_audio,
    fit_length,
    log_mel,
    mel_filterbank,
    prepare,
    resample,
    to_image,
)

# (soundfile format, subtype, compression level): Vorbis at libsndfile's default quality,
# MP3 at constant ~128 and ~64 kbit/s (libsndfile maps the level linearly onto the bitrates
# the sample rate allows; 0.2 and 0.6 give those at 16 kHz).
CODECS: dict[str, tuple[str, str, float | None]] = {
    "ogg": ("OGG", "VORBIS", None),
    "mp3-128": ("MP3", "MPEG_LAYER_III", 0.2),
    "mp3-64": ("MP3", "MPEG_LAYER_III", 0.6),
    "vorbis-low": ("OGG", "VORBIS", 1.0),  # libvorbis's lowest quality: ~28 kbit/s at 16 kHz
}
# The rates voice-note and phone apps send (issue 23), by bitrate whatever the sample rate
# (encode_at): LAME at 24 kbit/s leaves holes in quiet bands and low-passes the top, Opus at
# 16 kbit/s smooths the noise floor. The detector is not fitted on them (that cost wav
# clips a sixth of the faults caught: bench/README.md); the levels are (CALIBRATION_CODECS).
# mp3 at 32 kbit/s keeps the band to ~7.3 kHz with far milder holes than at 24: judged by the
# 24-kbit/s tails it caught no fault at all (bench/README.md), so it has its own. LAME spends
# a bitrate differently at other sample rates (a 44.1-kHz recording at 48 kbit/s is as bursty
# as a 16-kHz one at 32): copies at 22.05 and 44.1 kHz for the rates phones write there.
# (codec, kbit/s, the rate to encode at: None for the clip's own)
LOW_BITRATES: dict[str, tuple[str, float, int | None]] = {
    "mp3-24": ("mp3", 24, None),
    "mp3-32": ("mp3", 32, None),
    "mp3-24-22k": ("mp3", 24, 22050),
    "mp3-48-22k": ("mp3", 48, 22050),
    "mp3-32-44k": ("mp3", 32, 44100),
    "mp3-48-44k": ("mp3", 48, 44100),
    "opus-16": ("opus", 16, None),
}
FORMATS = {
    "ogg": "ogg",
    "mp3-128": "mp3",
    "mp3-64": "mp3",
    "mp3-24": "mp3",
    "mp3-32": "mp3",
    "mp3-24-22k": "mp3",
    "mp3-48-22k": "mp3",
    "mp3-32-44k": "mp3",
    "mp3-48-44k": "mp3",
    "opus-16": "ogg",
    "vorbis-low": "ogg",
}
CYCLE = ("ogg", "mp3-128", "ogg", "mp3-64")  # the detector's copies: one per clip
# every clip, for the levels only
CALIBRATION_CODECS = (
    "mp3-24",
    "mp3-32",
    "mp3-24-22k",
    "mp3-48-22k",
    "mp3-32-44k",
    "mp3-48-44k",
    "opus-16",
    "vorbis-low",
)


def round_trip(data: bytes, codec: str) -> bytes:
    """Audio file bytes → the same audio encoded with `codec` (a CODECS or LOW_BITRATES
    key)."""
    import soundfile as sf

    audio = decode_audio(data)
    if codec in LOW_BITRATES:
        kind, kbps, rate = LOW_BITRATES[codec]
        x, sr = audio.samples, audio.sample_rate
        if rate is not None and rate != sr:
            x, sr = resample(x, sr, rate), rate
        return encode_at(x, sr, kind, kbps, clamp=True)
    fmt, subtype, level = CODECS[codec]
    kwargs: dict[str, object] = {}
    if level is not None:
        kwargs = {"compression_level": level}
        if fmt == "MP3":
            kwargs["bitrate_mode"] = "CONSTANT"
    buf = io.BytesIO()
    sf.write(buf, audio.samples, audio.sample_rate, format=fmt, subtype=subtype, **kwargs)
    return buf.getvalue()


# libsndfile maps a compression level in [0, 1] linearly onto a codec's bitrates: MP3 from
# the highest to the lowest its MPEG version allows at the sample rate (measured: 0.632 →
# 64 kbit/s, 0.895 → 24 kbit/s at 16 kHz), Opus from 256 to 6 kbit/s (measured with the
# Ogg pages: 0.96 → 17.9 kbit/s, 0.896 → 34 kbit/s).
MP3_BITRATES = {1: (32, 320), 2: (8, 160), 25: (8, 64)}  # MPEG version → (lowest, highest)
OPUS_BITRATES = (6, 256)


def _mpeg_version(sample_rate: int) -> int:
    return 1 if sample_rate >= 32000 else 2 if sample_rate >= 16000 else 25


OPUS_SAMPLE_RATES = (8000, 12000, 16000, 24000, 48000)


def encode_at(
    samples: np.ndarray, sample_rate: int, codec: str, kbps: float, clamp: bool = False
) -> bytes:
    """(n,) float32 audio → `codec` ("mp3", "opus") bytes at about `kbps` kbit/s (constant
    for mp3), with libsndfile's own encoders (LAME, libopus): no system package needed.
    Opus takes 8, 12, 16, 24 or 48 kHz (other rates are resampled to 48 kHz). ValueError for
    a bitrate the codec cannot give at this sample rate, unless `clamp` (then the nearest)."""
    import soundfile as sf

    if codec == "opus" and sample_rate not in OPUS_SAMPLE_RATES:
        samples, sample_rate = resample(samples, sample_rate, 48000), 48000

    if codec == "mp3":
        low, high = MP3_BITRATES[_mpeg_version(sample_rate)]
        fmt, subtype, mode = "MP3", "MPEG_LAYER_III", {"bitrate_mode": "CONSTANT"}
    elif codec == "opus":
        low, high = OPUS_BITRATES
        fmt, subtype, mode = "OGG", "OPUS", {}
    else:
        raise ValueError(f"no bitrate control for {codec!r}")
    if clamp:
        kbps = min(max(kbps, low), high)
    if not low <= kbps <= high:
        raise ValueError(f"{codec} at {sample_rate} Hz takes {low}-{high} kbit/s, not {kbps:g}")
    level = min((high - kbps) / (high - low), 0.999)  # libsndfile refuses 1.0 for mp3
    buf = io.BytesIO()
    sf.write(
        buf, samples, sample_rate, format=fmt, subtype=subtype, compression_level=level, **mode
    )
    return buf.getvalue()


def codec_copy_setting(index: int) -> str:
    """The codec setting (a CYCLE entry) of clip `index`'s codec copy."""
    return CYCLE[index % len(CYCLE)]


def calibration_copy(path: Path, codec: str, params: FeatureParams) -> Prepared:
    """Model input of a low-bitrate round trip (a CALIBRATION_CODECS entry) of the clip at
    path, for the levels only."""
    return prepare(round_trip(Path(path).read_bytes(), codec), params)


def codec_copy_format(index: int) -> str:
    """The file format (ogg, mp3) of clip `index`'s codec copy."""
    return FORMATS[CYCLE[index % len(CYCLE)]]


def codec_copy(path: Path, index: int, params: FeatureParams) -> Prepared:
    """Model input of a codec round trip of the clip at path; the codec cycles with index."""
    return prepare(round_trip(Path(path).read_bytes(), CYCLE[index % len(CYCLE)]), params)


@dataclass(frozen=True)
class AugmentConfig:
    """Classifier augmentation (recorded in the manifest). `copies` perturbed copies of every
    clip are made once; each epoch a clip is seen as itself or one of its copies, then masked.
    Zero switches a perturbation off."""

    copies: int = 0
    speed: float = 0.0  # resampled by a factor in [1 - speed, 1 + speed]: pitch and tempo
    tempo: float = 0.0  # log-mel frames stretched by [1 - tempo, 1 + tempo]: tempo only
    gain_db: float = 0.0  # level changed by up to ± gain_db
    noise_snr_db: float = 0.0  # white noise mixed in at an SNR in [noise_snr_db, +20 dB]
    freq_masks: int = 0  # SpecAugment: this many bands of up to freq_mask_width mel rows
    freq_mask_width: int = 4
    time_masks: int = 0  # and this many spans of up to time_mask_width frames
    time_mask_width: int = 8
    # VTLP: every drawn image's mel axis warped by a factor in [1 - warp, 1 + warp]
    warp: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_audio(path: Path, sample_rate: int) -> np.ndarray:
    """A file's samples (n,) float32 at sample_rate, as the service decodes them."""
    audio = decode_audio(Path(path).read_bytes())
    return resample(audio.samples, audio.sample_rate, sample_rate)


def perturbed_image(
    audio: np.ndarray, params: FeatureParams, cfg: AugmentConfig, rng: np.random.Generator
) -> np.ndarray:
    """(n,) audio at params.sample_rate → one randomly perturbed model input (height, width).

    Without perturbations it equals service.features.audio_to_image. Classifier features
    (clip_seconds set, width = the clip's frames): a tempo-stretched log-mel is cut or padded
    with silence to that width, as the service pads the audio."""
    import soxr

    x = audio.astype(np.float32)
    if cfg.speed:
        factor = rng.uniform(1 - cfg.speed, 1 + cfg.speed)
        # played `factor` times faster: fewer samples at the same rate, pitch up by factor
        x = soxr.resample(x, params.sample_rate * factor, params.sample_rate).astype(np.float32)
    if cfg.gain_db:
        x = x * np.float32(10 ** (rng.uniform(-cfg.gain_db, cfg.gain_db) / 20))
    if cfg.noise_snr_db:
        rms = float(np.sqrt(np.mean(x**2))) + 1e-8
        snr = rng.uniform(cfg.noise_snr_db, cfg.noise_snr_db + 20)
        x = x + rng.standard_normal(x.shape[0]).astype(np.float32) * np.float32(
            rms * 10 ** (-snr / 20)
        )
    n_samples = round((params.clip_seconds or x.shape[0] / params.sample_rate) * params.sample_rate)
    if not cfg.tempo:  # exactly the service's features of the perturbed audio
        return to_image(log_mel(fit_length(x, n_samples), params), params)
    mel = log_mel(x[:n_samples], params)
    n = mel.shape[1]
    m = max(2, round(n / rng.uniform(1 - cfg.tempo, 1 + cfg.tempo)))
    src = np.linspace(0, n - 1, m)
    mel = np.stack([np.interp(src, np.arange(n), row) for row in mel]).astype(np.float32)
    silence = np.float32(-100.0)  # the dB of the zeros the service pads a short clip with
    if mel.shape[1] < params.width:
        mel = np.pad(mel, ((0, 0), (0, params.width - mel.shape[1])), constant_values=silence)
    return to_image(mel[:, : params.width], params)


def perturbed_copies(
    audios: list[np.ndarray], params: FeatureParams, cfg: AugmentConfig, seed: int
) -> np.ndarray:
    """cfg.copies perturbed images of every clip → (n, copies, height, width) float32."""
    rng = np.random.default_rng(seed)
    out = np.empty((len(audios), cfg.copies, params.height, params.width), np.float32)
    for i, audio in enumerate(audios):
        for k in range(cfg.copies):
            out[i, k] = perturbed_image(audio, params, cfg, rng)
    return out


def spec_augment(batch: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """(b, h, w) images → a copy with random mel bands and time spans set to each image's
    mean (SpecAugment's frequency and time masks)."""
    out = batch.copy()
    h, w = batch.shape[1:]
    for img in out:
        fill = img.mean()
        for _ in range(cfg.freq_masks):
            size = int(rng.integers(0, cfg.freq_mask_width + 1))
            start = int(rng.integers(0, max(1, h - size)))
            img[start : start + size] = fill
        for _ in range(cfg.time_masks):
            size = int(rng.integers(0, cfg.time_mask_width + 1))
            start = int(rng.integers(0, max(1, w - size)))
            img[:, start : start + size] = fill
    return out


def band_centres(params: FeatureParams) -> np.ndarray:
    """(height,) centre frequency (Hz) of every image row: the centroid of its mel triangle
    (rows interpolated when the image is resized from n_mels)."""
    fb = mel_filterbank(params.sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax)
    freqs = np.linspace(0, params.sample_rate / 2, fb.shape[1])
    centres = (fb @ freqs) / np.maximum(fb.sum(axis=1), 1e-12)
    if params.height == params.n_mels:
        return centres
    return np.interp(
        np.linspace(0, params.n_mels - 1, params.height), np.arange(params.n_mels), centres
    )


def warp_matrix(centres: np.ndarray, alpha: float) -> np.ndarray:
    """(h,) row centre frequencies, warp factor → (h, h) float32 W such that W @ image
    (h, w) is the image with every frequency f moved to alpha·f (vocal tract length
    perturbation): output row i reads the input at centres[i] / alpha, interpolated linearly
    between rows; beyond the lowest or highest row the edge row is repeated."""
    h = len(centres)
    pos = np.interp(centres / alpha, centres, np.arange(h))  # fractional source row
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, h - 1)
    frac = pos - lo
    out = np.zeros((h, h), np.float32)
    out[np.arange(h), lo] += 1 - frac
    out[np.arange(h), hi] += frac
    return out


def warp_batch(
    batch: np.ndarray, centres: np.ndarray, warp: float, rng: np.random.Generator
) -> np.ndarray:
    """(b, h, w) images → a copy with each image's mel axis warped by its own random factor
    in [1 - warp, 1 + warp] (warp_matrix)."""
    alphas = rng.uniform(1 - warp, 1 + warp, len(batch))
    mats = np.stack([warp_matrix(centres, a) for a in alphas])
    return np.einsum("bij,bjw->biw", mats, batch).astype(np.float32)
