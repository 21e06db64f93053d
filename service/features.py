"""The one preprocessing module: bytes → audio → log-mel → model input.

Training and the service both call these functions, so a clip gets the same
features at fit time and at scoring time. Every parameter lives in
`FeatureParams`, which is written into each bundle's manifest.

Shapes:
- audio: `(n_samples,)` float32 mono in [-1, 1] (roughly)
- log-mel: `(n_mels, n_frames)` float32 in dB
- model input ("image"): `(height, width)` float32 in [0, 1]; batched as
  `(batch, height, width, 1)`; row 0 is the LOWEST mel band
- windows: with `window_seconds` set, the log-mel of a clip of any length is cut into
  windows of that length (`(n_windows, n_mels, window_frames)`), each becoming one image;
  without it (older bundles, classifiers) the whole clip is resized to one image
- PNG spectrograms are stored as pictures: row 0 is the HIGHEST band
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import scipy.fft
import scipy.sparse
from pydantic import BaseModel, Field, model_validator

from service.errors import (
    AudioTooLong,
    AudioTooShort,
    InvalidAudio,
    InvalidImage,
    NonFiniteValues,
    UnsupportedMediaType,
)

MediaKind = Literal["audio", "image"]

AUDIO_FORMATS = ("wav", "flac", "ogg", "mp3")
DECODE_BLOCK_SAMPLES = 1 << 18  # samples (all channels together) decoded per read: 1 MiB
IMAGE_FORMATS = ("png", "jpeg")
_FILE_OBJECT = re.compile(r"<[\w.]+ object at 0x[0-9a-fA-F]+>")


class FeatureParams(BaseModel):
    """Feature extraction parameters; stored in the manifest under `features`."""

    sample_rate: int = Field(16000, gt=0)
    n_fft: int = Field(1024, gt=0)
    hop_length: int = Field(512, gt=0)
    n_mels: int = Field(64, gt=0)
    fmin: float = Field(0.0, ge=0)
    fmax: float | None = 8000.0
    height: int = Field(64, gt=0, description="model input rows (mel bands after resizing)")
    width: int = Field(128, gt=0, description="model input columns (time after resizing)")
    scaling: Literal["fixed_db", "minmax"] = Field(
        "fixed_db",
        description="fixed_db keeps absolute level: dB clipped to [db_min, db_max] then "
        "mapped to [0, 1]; minmax (the seed's) rescales every image to its own range",
    )
    db_min: float = -100.0
    db_max: float = 20.0
    clip_seconds: float | None = Field(
        None, description="if set, audio is padded/trimmed to this length (classifiers)"
    )
    onset_margin_s: float | None = Field(
        None,
        ge=0,
        description="with clip_seconds: a longer recording's clip starts this long before "
        "its first loud 10-ms frame, so silence before a word does not push the word out "
        "of the clip; unset keeps the recording's own start",
    )
    min_seconds: float = Field(0.1, ge=0, description="shorter clips are rejected")
    window_seconds: float | None = Field(
        None,
        gt=0,
        description="if set, a clip is cut into windows of this length, each scored on its "
        "own; a shorter clip is mirrored in time until it fills one window",
    )
    window_hop_seconds: float | None = Field(
        None, gt=0, description="start-to-start distance of windows (default: half a window)"
    )

    @model_validator(mode="after")
    def _check(self) -> FeatureParams:
        if self.fmax is not None and self.fmax > self.sample_rate / 2:
            raise ValueError("fmax must not exceed sample_rate / 2")
        if self.db_max <= self.db_min:
            raise ValueError("db_max must be greater than db_min")
        return self

    @property
    def window_frames(self) -> int:
        """Log-mel frames in one window (window_seconds must be set): as many as a clip of
        exactly that length has (frames are centred: one more than hops)."""
        assert self.window_seconds is not None
        return 1 + max(1, round(self.window_seconds * self.sample_rate / self.hop_length))

    @property
    def clip_samples(self) -> int:
        """Samples of a classifier's clip (clip_seconds must be set)."""
        assert self.clip_seconds is not None
        return round(self.clip_seconds * self.sample_rate)

    @property
    def window_hop_frames(self) -> int:
        assert self.window_seconds is not None
        hop_s = self.window_hop_seconds or self.window_seconds / 2
        return max(1, round(hop_s * self.sample_rate / self.hop_length))


@dataclass(frozen=True)
class DecodedAudio:
    """Decoded clip at its native rate, before resampling."""

    samples: np.ndarray  # (n_samples,) float32 mono
    sample_rate: int
    channels: int
    duration_s: float


def stream_codec(data: bytes, fmt: str) -> str | None:
    """The lossy codec of an upload of format `fmt`: mp3, or for ogg the codec its first
    page names (opus or vorbis); None for anything else."""
    if fmt == "mp3":
        return "mp3"
    if fmt == "ogg":
        head = data[:512]
        if b"OpusHead" in head:
            return "opus"
        if b"\x01vorbis" in head:
            return "vorbis"
    return None


def sniff(data: bytes) -> tuple[MediaKind, str]:
    """Recognise a payload by its magic bytes → (kind, format); never by file name."""
    head = data[:12]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio", "wav"
    if head[:4] == b"fLaC":
        return "audio", "flac"
    if head[:4] == b"OggS":
        return "audio", "ogg"
    if head[:3] == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0):
        return "audio", "mp3"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "image", "png"
    if head[:3] == b"\xff\xd8\xff":
        return "image", "jpeg"
    raise UnsupportedMediaType(
        "unrecognised content: send wav, flac, ogg or mp3 audio, or a png/jpeg spectrogram"
    )


def _pcm16_wav(data: bytes) -> tuple[np.ndarray, int] | None:
    """A plain 16-bit PCM WAV → ((frames, channels) int16 view, rate); None for anything else.

    The common upload, read in place by numpy: ~10x faster than libsndfile, whose reads
    call back into Python block by block (holding the GIL the other workers need).
    Other sample formats and anything unusual (truncated or inconsistent chunks) return
    None and go to soundfile, which decides.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        start = pos + 8
        if start + size > len(data):
            return None
        if chunk_id == b"fmt ":
            if size < 16:
                return None
            tag, channels, rate, _, align, bits = struct.unpack_from("<HHIIHH", data, start)
            if tag == 0xFFFE and size >= 26:  # WAVE_FORMAT_EXTENSIBLE: sub-format in the GUID
                tag = struct.unpack_from("<H", data, start + 24)[0]
            fmt = (tag, channels, rate, align, bits)
        elif chunk_id == b"data":
            if fmt is None:
                return None
            tag, channels, rate, align, bits = fmt
            if tag != 1 or bits != 16 or not 1 <= channels <= 1024 or align != 2 * channels:
                return None
            if not 1 <= rate <= 1 << 20:
                return None
            if size % align:
                return None
            pcm = np.frombuffer(data, dtype="<i2", count=size // 2, offset=start)
            return pcm.reshape(-1, channels), rate
        pos = start + size + (size & 1)  # chunks are word-aligned
    return None


def pcm16_mono(pcm: np.ndarray) -> np.ndarray:
    """(frames, channels) int16 → (frames,) float32 mono: x / 32768 exactly, as libsndfile
    converts, then the channels' mean, downmixed block by block (memory follows one channel,
    not all)."""
    frames, channels = pcm.shape
    scale = np.float32(1 / 0x8000)
    if channels == 1:
        mono = pcm[:, 0].astype(np.float32)
        mono *= scale
        return mono
    mono = np.empty(frames, np.float32)
    block = max(1, DECODE_BLOCK_SAMPLES // 4 // channels)
    for i in range(0, frames, block):
        part = pcm[i : i + block].astype(np.float32)
        part *= scale
        mono[i : i + block] = part.mean(axis=1, dtype=np.float32)
    return mono


def decode_audio(data: bytes, max_seconds: float | None = None) -> DecodedAudio:
    """Decode wav/flac/ogg/mp3 bytes to mono float32 at the native rate.

    The length is checked from the header *before* samples are read, and again
    while they are, so a small file claiming hours of audio allocates nothing.
    Plain 16-bit PCM WAV is read directly (same numbers as libsndfile: x / 32768).
    """
    wav = _pcm16_wav(data)
    if wav is not None:
        pcm, sr = wav
        frames, channels = pcm.shape
        if max_seconds is not None and frames > max_seconds * sr:
            raise AudioTooLong(f"audio is {frames / sr:.1f} s long; the limit is {max_seconds:g} s")
        if frames == 0:
            raise AudioTooShort("audio has no samples")
        return DecodedAudio(
            samples=pcm16_mono(pcm),
            sample_rate=sr,
            channels=channels,
            duration_s=frames / sr,
        )

    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
            if sr <= 0 or channels <= 0:
                raise InvalidAudio("audio header has no sample rate or no channels")
            if max_seconds is not None and frames > max_seconds * sr:
                raise AudioTooLong(
                    f"audio is {frames / sr:.1f} s long; the limit is {max_seconds:g} s"
                )
            # Block by block, downmixed as it goes: memory follows the samples the file
            # really holds (one read() would allocate whatever the header claims, e.g.
            # 300 s x 8 channels at 655 kHz for a 3 kB FLAC) and one channel, not all.
            block = max(1, DECODE_BLOCK_SAMPLES // channels)
            parts: list[np.ndarray] = []
            n_frames = 0
            while (chunk := f.read(block, dtype="float32", always_2d=True)).shape[0]:
                if not np.isfinite(chunk).all():
                    raise NonFiniteValues("audio contains NaN or infinite samples")
                parts.append(chunk.mean(axis=1, dtype=np.float32) if channels > 1 else chunk[:, 0])
                n_frames += chunk.shape[0]
                if max_seconds is not None and n_frames > max_seconds * sr:
                    raise AudioTooLong(f"audio is longer than the limit of {max_seconds:g} s")
    except (AudioTooLong, InvalidAudio, NonFiniteValues):
        raise
    except Exception as e:  # soundfile raises LibsndfileError, RuntimeError, ValueError…
        reason = getattr(e, "error_string", None) or str(e)  # libsndfile's own words
        raise InvalidAudio(f"could not decode audio: {reason}") from e
    if n_frames == 0:
        raise AudioTooShort("audio has no samples")
    return DecodedAudio(
        samples=np.ascontiguousarray(np.concatenate(parts), dtype=np.float32),
        sample_rate=sr,
        channels=channels,
        duration_s=n_frames / sr,
    )


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """(n,) at orig_sr → (m,) float32 at target_sr (soxr, high quality)."""
    if orig_sr == target_sr:
        return audio
    import soxr

    return soxr.resample(audio, orig_sr, target_sr, quality="HQ").astype(np.float32, copy=False)


ONSET_FRAME_S = 0.01
ONSET_MIN_RANGE_DB = 6.0


def from_onset(
    audio: np.ndarray, sample_rate: int, margin_s: float, span_s: float = 1.0
) -> np.ndarray:
    """(n,) → the clip from `margin_s` before its onset: the first 10-ms frame at least
    half-way (in dB) from the clip's noise floor (its 10th-percentile frame) to its loudest
    frame, searched from `span_s` (less the margin) before that loudest frame, so it lies
    within span_s of the start: a click well before the word is passed over. A clip whose
    frames span less than 6 dB (a steady sound) is kept."""
    frame = max(1, round(ONSET_FRAME_S * sample_rate))
    n = audio.shape[0] // frame
    if n < 2:
        return audio
    power = np.mean(np.square(audio[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)
    level = 10 * np.log10(power + 1e-12)
    floor, top = float(np.percentile(level, 10)), int(level.argmax())
    if level[top] - floor < ONSET_MIN_RANGE_DB:
        return audio
    margin = round(margin_s * sample_rate)
    first = max(0, top - max(0, round(span_s * sample_rate) - margin) // frame + 1)
    onset = first + int(np.argmax(level[first:] >= floor + (level[top] - floor) / 2))
    return audio[max(0, onset * frame - margin) :]


def onset_aligned(audio: np.ndarray, params: FeatureParams) -> np.ndarray:
    """A classifier's recording (n,) at params.sample_rate, longer than its clip, from
    params.onset_margin_s before its onset (from_onset), so the word is inside the clip. One
    that fits is kept as recorded, as the model learnt such clips (fsdd's are cut around
    the word by their speakers; docs/archive/experiments.md has what aligning those too
    measured)."""
    margin, clip = params.onset_margin_s, params.clip_seconds
    if margin is None or clip is None or audio.shape[0] <= params.clip_samples:
        return audio
    return from_onset(audio, params.sample_rate, margin, clip)


BANDWIDTH_DROP_DB = 30.0  # a codec's low-pass leaves the top this far below the band under it
BANDWIDTH_BELOW_HZ = 500.0  # the band under a candidate edge, whose median level is compared
BANDWIDTH_GAP_HZ = 300.0  # a low-pass filter's transition, skipped above a candidate
BANDWIDTH_EDGE_DB = 10.0  # the edge: where the level has fallen this far
BANDWIDTH_ACTIVE_DB = 40.0  # frames this far below the loudest are silence, not spectrum


def effective_bandwidth(audio: np.ndarray, sample_rate: int, n_fft: int = 1024) -> float | None:
    """(n,) float32 at sample_rate → the highest frequency (Hz) the sound carries, or None for
    silence or a clip shorter than n_fft.

    The mean power spectrum of the clip's non-silent frames (within 40 dB of the loudest),
    in dB. A cliff is a frequency k above which, past a 300-Hz transition, everything
    (5-bin averages) lies at least 30 dB below the median level of the 500 Hz under k: what
    a lossy codec's low-pass (or a lower recording rate) leaves. The edge of the highest
    cliff is its last frequency within 10 dB of that level. A spectrum without a cliff (a
    lossless recording, however dull its top) has the full band: sample_rate / 2.
    """
    hop = n_fft  # frames side by side: the spectrum's average, at a quarter of the STFT's cost
    n = (audio.shape[0] - n_fft) // hop + 1
    if n < 1:
        return None
    frames = np.lib.stride_tricks.sliding_window_view(audio, n_fft)[::hop][:n]
    power = np.abs(scipy.fft.rfft(frames * _window(n_fft), axis=1)) ** 2
    energy = power.sum(axis=1)
    active = energy >= max(float(energy.max()) * 10 ** (-BANDWIDTH_ACTIVE_DB / 10), 1e-10)
    if not active.any():
        return None
    level = 10 * np.log10(power[active].mean(axis=0, dtype=np.float64) + 1e-20)
    bin_hz = sample_rate / n_fft
    below, gap = (
        max(1, round(BANDWIDTH_BELOW_HZ / bin_hz)),
        max(1, round(BANDWIDTH_GAP_HZ / bin_hz)),
    )
    # the loudest of every suffix level[j:] (averaged over 5 bins: one stray bin is no band)
    smooth = np.convolve(level, np.ones(5) / 5, mode="same")
    tops = np.maximum.accumulate(smooth[::-1])[::-1]
    # every candidate k at once (a loop of medians cost 6 ms per clip): the median level of
    # the `below` bins under k, and the highest k whose suffix past the gap drops enough
    ks = np.arange(below + 1, len(level) - gap - 2)
    if ks.size == 0:
        return sample_rate / 2
    unders = np.median(np.lib.stride_tricks.sliding_window_view(level, below)[ks - below], axis=1)
    hits = np.flatnonzero(unders - tops[ks + gap] >= BANDWIDTH_DROP_DB)
    if hits.size == 0:
        return sample_rate / 2
    k, under = int(ks[hits[-1]]), float(unders[hits[-1]])
    # the cliff lies between k - below and k + gap: its edge is the last bin there within
    # BANDWIDTH_EDGE_DB of the level under it
    span = smooth[k - below : k + gap]
    return float(k - below + np.flatnonzero(span >= under - BANDWIDTH_EDGE_DB)[-1]) * bin_hz


@lru_cache(maxsize=16)
def _band_centres(
    sample_rate: int, n_mels: int, fmin: float, fmax: float | None
) -> tuple[float, ...]:
    top = float(sample_rate) / 2 if fmax is None else fmax
    lo, hi = _hz_to_mel(np.array([float(fmin), top]))
    return tuple(float(f) for f in _mel_to_hz(np.linspace(lo, hi, n_mels + 2))[1:-1])


def band_centres(params: FeatureParams) -> np.ndarray:
    """(n_mels,) the centre (Hz) of every mel band, lowest first (the filterbank's peaks)."""
    return np.array(_band_centres(params.sample_rate, params.n_mels, params.fmin, params.fmax))


def top_band_centre(params: FeatureParams) -> float:
    """The centre (Hz) of the highest mel band the model reads: an input whose bandwidth
    ends below it leaves at least that band empty."""
    return float(band_centres(params)[-1])


BANDWIDTH_MAX_FRAMES = 256  # a long clip's spectrum from this many frames spread over it


def input_bandwidth(audio: np.ndarray, sample_rate: int, params: FeatureParams) -> float | None:
    """A decoded clip (n,) at its own rate → the highest frequency (Hz) it carries once at
    the model's rate (at most params.sample_rate / 2), None for silence: the effective
    bandwidth of the frames a ~64-ms FFT makes at the clip's rate, at most
    BANDWIDTH_MAX_FRAMES of them spread over a long clip."""
    n_fft = 1 << max(8, round(np.log2(0.064 * sample_rate)))
    n = audio.shape[0] // n_fft
    if n > BANDWIDTH_MAX_FRAMES:
        starts = np.linspace(0, (n - 1) * n_fft, BANDWIDTH_MAX_FRAMES).astype(np.int64)
        audio = audio[starts[:, None] + np.arange(n_fft)].reshape(-1)
    edge = effective_bandwidth(audio, sample_rate, n_fft)
    return None if edge is None else min(edge, params.sample_rate / 2)


def fit_length(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Zero-pad or trim the end of a (n,) clip to exactly n_samples."""
    if audio.shape[0] >= n_samples:
        return audio[:n_samples]
    return np.pad(audio, (0, n_samples - audio.shape[0]))


# Slaney's mel scale (librosa's default, htk=False): linear below 1 kHz, log above.
_F_SP = 200.0 / 3
_MIN_LOG_HZ = 1000.0
_MIN_LOG_MEL = _MIN_LOG_HZ / _F_SP
_LOGSTEP = np.log(6.4) / 27.0


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    mels = hz / _F_SP
    log_t = hz >= _MIN_LOG_HZ
    mels[log_t] = _MIN_LOG_MEL + np.log(hz[log_t] / _MIN_LOG_HZ) / _LOGSTEP
    return mels


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    hz = _F_SP * mels
    log_t = mels >= _MIN_LOG_MEL
    hz[log_t] = _MIN_LOG_HZ * np.exp(_LOGSTEP * (mels[log_t] - _MIN_LOG_MEL))
    return hz


@lru_cache(maxsize=16)
def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> np.ndarray:
    """(n_mels, 1 + n_fft // 2) float32 Slaney-normalised triangles, built once per parameter set.

    The same numbers as `librosa.filters.mel(sr=…, n_fft=…, n_mels=…, fmin=…, fmax=…)`
    (tests/signal/test_features_filterbank.py checks it bit for bit), computed here so the
    service never imports librosa (numba and most of scipy: ~2 s and ~60 MB at start-up).
    """
    fmax = float(sample_rate) / 2 if fmax is None else fmax
    weights = np.zeros((n_mels, 1 + n_fft // 2), dtype=np.float32)
    fftfreqs = np.fft.rfftfreq(n=n_fft, d=1.0 / sample_rate)
    lo, hi = _hz_to_mel(np.array([float(fmin), float(fmax)]))
    mel_f = _mel_to_hz(np.linspace(lo, hi, n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fftfreqs)
    for i in range(n_mels):
        lower = -ramps[i] / fdiff[i]
        upper = ramps[i + 2] / fdiff[i + 1]
        weights[i] = np.maximum(0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, np.newaxis]
    return weights


@lru_cache(maxsize=16)
def _sparse_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> scipy.sparse.csr_array:
    """mel_filterbank as a sparse matrix: every triangle spans a few FFT bins, so the
    product with a power spectrum costs ~2·bins multiplications per frame instead of
    n_mels·bins."""
    return scipy.sparse.csr_array(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax))


@lru_cache(maxsize=16)
def _window(n_fft: int) -> np.ndarray:
    # periodic Hann as librosa, float32 like the frames it multiplies
    return np.hanning(n_fft + 1)[:-1].astype(np.float32)


def log_mel(audio: np.ndarray, params: FeatureParams) -> np.ndarray:
    """(n_samples,) float32 at params.sample_rate → (n_mels, n_frames) dB (ref 1.0)."""
    n_fft, hop = params.n_fft, params.hop_length
    # Centre frames as librosa does (reflect padding), so frame t covers t*hop.
    half = n_fft // 2
    if audio.shape[0] > half:
        # np.pad(audio, half, mode="reflect"), without its general-purpose set-up cost
        padded = np.concatenate((audio[half:0:-1], audio, audio[-2 : -half - 2 : -1]))
    else:
        padded = np.pad(audio, half)
        if padded.shape[0] < n_fft:
            padded = np.pad(padded, (0, n_fft - padded.shape[0]))
    return frames_db(np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop], params)


def frames_db(frames: np.ndarray, params: FeatureParams) -> np.ndarray:
    """(n_frames, n_fft) float32 samples → (n_mels, n_frames) dB: log_mel's columns. Each
    column depends on its own frame alone, so frames computed a few at a time (a live
    stream, MelStream) give log_mel's numbers."""
    n_fft = params.n_fft
    # Frames as columns: the window product writes them contiguous in that order, so the
    # power spectrum comes out (bins, n_frames) as the sparse product needs it (a transposed
    # operand would be copied again inside scipy.sparse).
    # float32 FFT with scipy: ~4x faster than numpy's (float64-only inside) for the same
    # image; log-mel values differ from a float64 FFT by < 1e-4 dB (tests/signal/test_features.py).
    spectrum = scipy.fft.rfft(frames.T * _window(n_fft)[:, None], axis=0)  # complex64
    power = spectrum.real**2 + spectrum.imag**2  # (bins, n_frames) float32
    fb = _sparse_filterbank(params.sample_rate, n_fft, params.n_mels, params.fmin, params.fmax)
    mel = fb @ power  # (n_mels, n_frames)
    return (10.0 * np.log10(np.maximum(mel, 1e-10))).astype(np.float32, copy=False)


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a (h, w) float32 array to (height, width)."""
    if image.shape == (height, width):
        return image
    from PIL import Image

    resized = Image.fromarray(image.astype(np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized, dtype=np.float32)


def to_image(mel_db: np.ndarray, params: FeatureParams) -> np.ndarray:
    """(n_mels, n_frames) dB → (height, width) float32 in [0, 1], row 0 = lowest band."""
    scaled = _scale(mel_db, params).astype(np.float32)
    return np.clip(_resize(scaled, params.height, params.width), 0.0, 1.0)


@lru_cache(maxsize=16)
def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_in, n_out) float32 weights of a triangle (bilinear) resampling of an axis, widened
    when shrinking so every input contributes (as PIL's BILINEAR); columns sum to 1."""
    scale = n_in / n_out
    support = max(1.0, scale)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5
    dist = np.abs(np.arange(n_in)[:, None] - centres[None, :]) / support
    weights = np.maximum(0.0, 1.0 - dist)
    weights /= np.maximum(weights.sum(axis=0, keepdims=True), 1e-12)
    return weights.astype(np.float32)


def _scale(mel_db: np.ndarray, params: FeatureParams) -> np.ndarray:
    """dB → [0, 1] by params.scaling; the last two axes are (n_mels, frames)."""
    if params.scaling == "fixed_db":
        return (np.clip(mel_db, params.db_min, params.db_max) - params.db_min) / (
            params.db_max - params.db_min
        )
    lo = mel_db.min(axis=(-2, -1), keepdims=True)
    hi = mel_db.max(axis=(-2, -1), keepdims=True)
    return np.where(hi > lo, (mel_db - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)


def window_starts(n_frames: int, params: FeatureParams) -> list[int]:
    """First frame of every window of a clip with n_frames log-mel frames: every
    `window_hop_frames`, plus one window flush with the end so the whole clip is covered.
    A clip shorter than one window has the single start 0."""
    size, hop = params.window_frames, params.window_hop_frames
    if n_frames <= size:
        return [0]
    starts = list(range(0, n_frames - size + 1, hop))
    if starts[-1] + size < n_frames:
        starts.append(n_frames - size)
    return starts


def to_windows(mel_db: np.ndarray, params: FeatureParams) -> tuple[np.ndarray, list[int]]:
    """(n_mels, n_frames) dB → ((n_windows, height, width) float32 in [0, 1], start frames).

    A clip shorter than one window is mirrored in time (x, reversed x, x, …) until it fills
    one: a steady sound keeps its statistics and no seam adds a jump between frames.
    Every window is resized with the same fixed matrix, so a window's image does not depend
    on the clip's length.
    """
    size = params.window_frames
    n = mel_db.shape[1]
    if n < size:
        idx = np.arange(size) % (2 * n)
        mel_db = mel_db[:, np.where(idx < n, idx, 2 * n - 1 - idx)]
    starts = window_starts(mel_db.shape[1], params)
    frames = np.lib.stride_tricks.sliding_window_view(mel_db, size, axis=1)[:, starts]
    return window_images(np.moveaxis(frames, 1, 0), params), starts


def window_images(frames: np.ndarray, params: FeatureParams) -> np.ndarray:
    """(n_windows, n_mels, window_frames) dB → (n_windows, height, width) float32 in [0, 1]:
    to_windows' images, each from its own window alone."""
    size = params.window_frames
    scaled = _scale(frames, params).astype(np.float32)  # (n_win, mels, size)
    if size != params.width:
        scaled = scaled @ _interp_matrix(size, params.width)
    if params.n_mels != params.height:
        scaled = np.einsum("mh,wmt->wht", _interp_matrix(params.n_mels, params.height), scaled)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32, copy=False)


def audio_to_image(audio: np.ndarray, sample_rate: int, params: FeatureParams) -> np.ndarray:
    """Mono (n,) at any rate → model input (height, width): the whole clip as one image
    (bundles without windows)."""
    audio = resample(audio, sample_rate, params.sample_rate)
    if params.clip_seconds is not None:
        audio = fit_length(onset_aligned(audio, params), params.clip_samples)
    return to_image(log_mel(audio, params), params)


def image_to_png(image: np.ndarray) -> bytes:
    """Model input (height, width) in [0, 1] → grayscale PNG bytes (high bands on top)."""
    from PIL import Image

    pixels = np.round(np.clip(image, 0, 1)[::-1] * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes, params: FeatureParams) -> np.ndarray:
    """PNG/JPEG spectrogram bytes → model input (height, width) in [0, 1].

    The picture must already have the model's size: resizing a spectrogram
    made with other parameters would silently score the wrong thing.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > 4096 * 4096:
                raise InvalidImage("image is too large")
            if img.size != (params.width, params.height):
                raise InvalidImage(
                    f"image is {img.width}x{img.height}; this model expects "
                    f"{params.width}x{params.height} (width x height) spectrograms"
                )
            pixels = np.asarray(img.convert("L"), dtype=np.float32)
    except InvalidImage:
        raise
    except Exception as e:  # PIL names its file object: "<_io.BytesIO object at 0x…>"
        why = _FILE_OBJECT.sub("the upload", str(e))
        raise InvalidImage(f"could not decode image: {why}") from e
    return np.ascontiguousarray(pixels[::-1] / 255.0, dtype=np.float32)


def audio_to_windows(
    audio: np.ndarray, sample_rate: int, params: FeatureParams
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Mono (n,) at any rate → ((n_windows, height, width) model inputs, [(start_s, end_s)]).
    Without `window_seconds` the whole clip is one window."""
    duration = audio.shape[0] / sample_rate
    if params.window_seconds is None:
        return audio_to_image(audio, sample_rate, params)[None], [(0.0, duration)]
    audio = resample(audio, sample_rate, params.sample_rate)
    images, starts = to_windows(log_mel(audio, params), params)
    return images, window_spans(starts, duration, params, last=True)


PCM_FORMATS = ("pcm_s16le", "f32le")


def decode_pcm(data: bytes, fmt: str, channels: int) -> np.ndarray:
    """Raw little-endian PCM (`pcm_s16le` or `f32le`, channels interleaved) → (n,) float32
    mono, with decode_audio's arithmetic (a WAV of the same samples gives the same numbers).
    `data` must hold whole sample frames; float samples must be finite (NonFiniteValues)."""
    width = 2 if fmt == "pcm_s16le" else 4
    if len(data) % (width * channels):
        raise InvalidAudio(
            f"a frame of {len(data)} bytes is not a whole number of {channels}-channel "
            f"{fmt} samples ({width * channels} bytes each)"
        )
    if fmt == "pcm_s16le":
        return pcm16_mono(np.frombuffer(data, dtype="<i2").reshape(-1, channels))
    values = np.frombuffer(data, dtype="<f4").reshape(-1, channels)
    if not np.isfinite(values).all():
        raise NonFiniteValues("audio contains NaN or infinite samples")
    if channels == 1:
        return values[:, 0].astype(np.float32)
    return values.mean(axis=1, dtype=np.float32)


def window_spans(
    starts: list[int], duration: float, params: FeatureParams, last: bool
) -> list[tuple[float, float]]:
    """(start_s, end_s) of the windows that start at these frames of a clip `duration`
    seconds long; `last`: the final one reaches the clip's end (audio_to_windows')."""
    frame_s = params.hop_length / params.sample_rate
    size = params.window_frames
    spans = [(s * frame_s, min(duration, (s + size - 1) * frame_s)) for s in starts]
    if last and spans:
        spans[-1] = (spans[-1][0], duration)
    return spans


class MelStream:
    """A recording's windows as its samples arrive, the same ones (images and spans) as
    `audio_to_windows` gives for the whole recording: `push` (n,) float32 mono at the
    recording's own rate → the windows completed by it; `finish()` → the rest.

    Samples are resampled by a soxr stream (identical output to soxr.resample of the
    whole), and log-mel frames are computed once every sample they cover has arrived; a
    window goes out once its last frame is known and cannot touch the recording's end
    (reflect padding, the window flush with the end). Until the first window, every
    sample is kept (a recording shorter than a window takes audio_to_windows' own path);
    after it, a few frames' samples and one window's columns."""

    def __init__(self, sample_rate: int, params: FeatureParams) -> None:
        if params.window_seconds is None:
            raise ValueError("MelStream needs a model with windows")
        self.params, self.rate = params, sample_rate
        self.resampler = None
        if sample_rate != params.sample_rate:
            import soxr

            self.resampler = soxr.ResampleStream(
                sample_rate, params.sample_rate, 1, dtype="float32", quality="HQ"
            )
        self.native = 0  # samples received, at the recording's rate
        self.n = 0  # samples at the model's rate
        self.pending: list[np.ndarray] = []  # model-rate samples until buf starts
        # until the first window: the recording's own samples, when they are resampled (its
        # bandwidth is measured on them; at the model's rate, on buf)
        self.first: list[np.ndarray] | None = [] if self.resampler is not None else None
        self.windowed = False  # a window is out (before, buf holds the whole recording)
        self.buf = np.zeros(0, np.float32)  # reflect-padded samples from padded index buf_start
        self.buf_start = 0
        self.started = False  # buf holds samples (the recording is longer than half a frame)
        self.frames = 0  # log-mel frames computed
        self.cols = np.zeros((params.n_mels, 0), np.float32)  # their columns from col_start
        self.col_start = 0
        self.next_start = 0  # the next regular window's first frame
        self.last_start = -1  # the last window's first frame, once one is out
        self.bandwidth_hz: float | None = None  # input_bandwidth of the first window's audio

    @property
    def duration_s(self) -> float:
        return self.native / self.rate

    @property
    def nbytes(self) -> int:
        """The samples and columns held (the stream's working set, roughly)."""
        held = self.buf.nbytes + self.cols.nbytes
        for kept in (self.pending, self.first):
            held += sum(a.nbytes for a in kept or ())
        return held

    def push(self, audio: np.ndarray) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """(n,) float32 at the recording's rate → (windows completed (k, height, width),
        their spans)."""
        self.native += audio.shape[0]
        if self.first is not None:
            self.first.append(audio)
        if self.resampler is not None:
            audio = self.resampler.resample_chunk(audio, last=False)
        return self._model_samples(audio)

    def _model_samples(self, y: np.ndarray) -> tuple[np.ndarray, list[tuple[float, float]]]:
        p = self.params
        n_fft, hop, half = p.n_fft, p.hop_length, p.n_fft // 2
        if y.shape[0] == 0:
            return self._none()
        self.n += y.shape[0]
        if not self.started:
            self.pending.append(y)
            if self.n <= half:
                return self._none()  # log_mel's zero padding may yet apply
            audio = np.concatenate(self.pending)
            self.pending = []
            self.buf = np.concatenate((audio[half:0:-1], audio))
            self.started = True
        else:
            self.buf = np.concatenate((self.buf, y))
        end = half + self.n  # padded samples so far, before the end's reflection
        last = (end - n_fft) // hop  # the last frame that lies inside them
        # frames are computed once a window can go out, a window's worth in one call (per
        # 100-ms push, the calls' overhead cost three times the arithmetic)
        if last > self.next_start + p.window_frames - 1 and last >= self.frames:
            self._add_frames(self.buf, last + 1)
        # keep what the next frames and the end's reflection (n_fft + 1 samples) need; until
        # the first window, everything (a recording shorter than one is scored whole)
        drop = max(0, min(self.frames * hop, end - n_fft - 1)) - self.buf_start
        if drop > 0 and self.windowed:
            self.buf = self.buf[drop:].copy()
            self.buf_start += drop
        starts = []
        # strictly inside: a frame after the window exists, so it cannot be the last window
        # (whose end_s is the recording's end)
        while self.next_start + p.window_frames < self.frames:
            starts.append(self.next_start)
            self.next_start += p.window_hop_frames
        if not starts:
            return self._none()
        if not self.windowed:  # the first window: the bandwidth of the recording so far
            heard = self.buf[half:] if self.first is None else np.concatenate(self.first)
            self.bandwidth_hz = input_bandwidth(heard, self.rate, p)
            self.first, self.windowed = None, True
        images = self._windows(starts)
        self.last_start = starts[-1]
        keep = max(0, min(self.next_start, self.frames) - p.window_frames)
        if keep > self.col_start:
            self.cols = self.cols[:, keep - self.col_start :].copy()
            self.col_start = keep
        return images, window_spans(starts, self.duration_s, p, last=False)

    def _add_frames(self, padded: np.ndarray, upto: int) -> None:
        """Compute frames self.frames..upto-1 from `padded` (samples from buf_start)."""
        p = self.params
        a = self.frames * p.hop_length - self.buf_start
        b = (upto - 1) * p.hop_length + p.n_fft - self.buf_start
        frames = np.lib.stride_tricks.sliding_window_view(padded[a:b], p.n_fft)[:: p.hop_length]
        self.cols = np.concatenate((self.cols, frames_db(frames, p)), axis=1)
        self.frames = upto

    def _windows(self, starts: list[int]) -> np.ndarray:
        size = self.params.window_frames
        stack = np.stack(
            [self.cols[:, s - self.col_start : s - self.col_start + size] for s in starts]
        )
        return window_images(stack, self.params)

    def _none(self) -> tuple[np.ndarray, list[tuple[float, float]]]:
        p = self.params
        return np.zeros((0, p.height, p.width), np.float32), []

    def finish(self) -> tuple[np.ndarray, list[tuple[float, float]]]:
        """The windows not yet given (those that touch the recording's end), with spans;
        then the stream is done. Raises AudioTooShort below params.min_seconds."""
        p = self.params
        images, spans = self._none()
        if self.resampler is not None:
            images, spans = self._model_samples(
                self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            )
        if self.duration_s < p.min_seconds or self.n == 0:
            raise AudioTooShort(
                f"the stream held {self.duration_s:.3f} s of audio; the minimum is "
                f"{p.min_seconds:g} s"
            )
        if not self.windowed:  # no window out yet: the whole recording, as a file
            audio = self.buf[p.n_fft // 2 :] if self.started else np.concatenate(self.pending)
            heard = np.concatenate(self.first) if self.first is not None else audio
            self.bandwidth_hz = input_bandwidth(heard, self.rate, p)
            windows, starts = to_windows(log_mel(audio, p), p)
            self.pending, self.first = [], None
            return windows, window_spans(starts, self.duration_s, p, last=True)
        half = p.n_fft // 2
        buf = self.buf
        padded = np.concatenate((buf, buf[buf.shape[0] - half - 1 : buf.shape[0] - 1][::-1]))
        n_frames = (self.n + 2 * half - p.n_fft) // p.hop_length + 1
        if n_frames > self.frames:
            self._add_frames(padded, n_frames)
        starts = [s for s in window_starts(n_frames, p) if s > self.last_start]
        tail = self._windows(starts)
        self.last_start = starts[-1] if starts else self.last_start
        tail_spans = window_spans(starts, self.duration_s, p, last=True)
        return np.concatenate((images, tail)), spans + tail_spans


@dataclass(frozen=True)
class Prepared:
    """One upload turned into model input, plus what the response reports about it."""

    images: np.ndarray  # (n_windows, height, width) float32; one window for a picture
    kind: MediaKind
    format: str
    duration_s: float | None
    sample_rate: int | None
    channels: int | None
    spans: list[tuple[float, float]] | None = None  # (start_s, end_s) per window; audio only
    bandwidth_hz: float | None = None  # input_bandwidth; audio only (None: silence too)
    bitrate_kbps: float | None = None  # the upload's size over its duration; audio only
    stream: str | None = None  # the lossy codec inside: mp3, opus or vorbis (stream_codec)

    @property
    def image(self) -> np.ndarray:
        """The first window (height, width): the whole clip for bundles without windows."""
        return self.images[0]


def prepare(data: bytes, params: FeatureParams, max_seconds: float | None = None) -> Prepared:
    """Bytes of any supported format → model input. Raises the typed input errors."""
    if not data:
        raise InvalidAudio("empty upload")
    kind, fmt = sniff(data)
    if kind == "image":
        return Prepared(decode_image(data, params)[None], kind, fmt, None, None, None)
    audio = decode_audio(data, max_seconds=max_seconds)
    if audio.duration_s < params.min_seconds:
        raise AudioTooShort(
            f"audio is {audio.duration_s:.3f} s long; the minimum is {params.min_seconds:g} s"
        )
    return prepare_audio(data, fmt, audio, params)


def prepare_audio(data: bytes, fmt: str, audio: DecodedAudio, params: FeatureParams) -> Prepared:
    """A decoded upload → its windows and what the response reports about it (length,
    rate, bandwidth, bitrate, the lossy stream inside)."""
    images, spans = audio_to_windows(audio.samples, audio.sample_rate, params)
    return Prepared(
        images,
        "audio",
        fmt,
        audio.duration_s,
        audio.sample_rate,
        audio.channels,
        spans,
        input_bandwidth(audio.samples, audio.sample_rate, params),
        len(data) * 8 / audio.duration_s / 1000,
        stream_codec(data, fmt),
    )


def load_file(path: str, params: FeatureParams, max_seconds: float | None = None) -> Prepared:
    """Read a file from disk and `prepare` it (training's entry point). The errors are
    worded for a file, not for an upload (no "send …")."""
    with open(path, "rb") as f:
        data = f.read()
    if not data:
        raise InvalidAudio("the file is empty")
    try:
        return prepare(data, params, max_seconds=max_seconds)
    except UnsupportedMediaType as e:
        raise UnsupportedMediaType(
            "its content is not wav, flac, ogg or mp3 audio, nor a png/jpeg spectrogram"
        ) from e


def warm_up(params: FeatureParams) -> None:
    """Build the cached filterbank and touch every code path once (cold-start cost)."""
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(params.sample_rate).astype(np.float32) * 0.1
    audio_to_windows(noise, 44100, params)
