"""What one upload may cost: the steps of `features.prepare`, with the service's limits.

`features.prepare` is the shared preprocessing (training calls it too); the service
calls its steps through `prepare_bounded`, which adds what a public endpoint needs:
- the sample rate within [min_sample_rate, max_sample_rate], judged from the header
  before anything is decoded (a 692-byte WAV claiming 1 Hz is minutes of audio once
  resampled; a FLAC may claim 655 kHz);
- a per-request budget of decoded plus resampled samples (`SampleBudget`), shared by
  the files of a batch, so a small body cannot buy unbounded CPU;
- finite numbers: samples beyond ±MAX_ABS_SAMPLE (finite, but their float32 power
  spectrum overflows to inf and then NaN) and non-finite model inputs are refused with
  422 non_finite_values, never scored.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

import numpy as np

from service.errors import (
    AudioTooLong,
    AudioTooShort,
    InvalidAudio,
    NonFiniteValues,
    SampleRateOutOfRange,
)
from service.features import (
    DecodedAudio,
    FeatureParams,
    Prepared,
    decode_audio,
    decode_image,
    prepare_audio,
    sniff,
)

# Audio samples are about [-1, 1]; some tools write unnormalised float WAVs (±32768).
# Beyond 1e6 the float32 power spectrum of a 1024-sample frame nears its overflow (~3e38
# once summed into mel bands) and such values are a corrupt stream, not a machine.
MAX_ABS_SAMPLE = 1e6


@dataclass(frozen=True)
class InputLimits:
    max_seconds: float
    min_sample_rate: int
    max_sample_rate: int


class SampleBudget:
    """Samples a request may still decode and resample; shared by a batch's worker
    threads. `take` raises AudioTooLong once the request would go over."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            if n > self.left:
                raise AudioTooLong(
                    f"decoding this file would take the request to {self.limit - self.left + n}"
                    f" samples; one request may decode and resample at most {self.limit}"
                )
            self.left -= n


def sample_cost(frames: int, sample_rate: int, params: FeatureParams) -> int:
    """Samples decoded at the file's rate plus, when it differs, resampled at the model's."""
    resampled = 0
    if sample_rate != params.sample_rate:
        resampled = -(-frames * params.sample_rate // sample_rate)
    return frames + resampled


def _probe(data: bytes) -> tuple[int, int] | None:
    """(sample_rate, frames) from the header alone (~30 µs), or None when libsndfile cannot
    read it (then `decode_audio` decides, and the checks follow the decoding)."""
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            return int(f.samplerate), int(f.frames)
    except Exception:
        return None


def _check_rate(sample_rate: int, limits: InputLimits) -> None:
    if not limits.min_sample_rate <= sample_rate <= limits.max_sample_rate:
        raise SampleRateOutOfRange(
            f"sample rate {sample_rate} Hz is outside {limits.min_sample_rate}-"
            f"{limits.max_sample_rate} Hz"
        )


def check_finite_images(images: np.ndarray) -> None:
    if not np.isfinite(images).all():
        raise NonFiniteValues("the features of this input are not finite numbers")


def prepare_bounded(
    data: bytes, params: FeatureParams, limits: InputLimits, budget: SampleBudget
) -> Prepared:
    """Bytes of any supported format → model input, as `features.prepare`, within the
    limits. Raises the typed input errors."""
    if not data:
        raise InvalidAudio("empty upload")
    kind, fmt = sniff(data)
    if kind == "image":
        images = decode_image(data, params)[None]
        check_finite_images(images)
        return Prepared(images, kind, fmt, None, None, None)

    prepared = prepare_audio(data, fmt, decode_bounded(data, params, limits, budget), params)
    check_finite_images(prepared.images)
    return prepared


def decode_bounded(
    data: bytes, params: FeatureParams, limits: InputLimits, budget: SampleBudget
) -> DecodedAudio:
    """Encoded audio → its samples, within the limits (rate, length, the request's sample
    budget, finite and sane values, the model's minimum length)."""
    header = _probe(data)
    if header is not None:
        sample_rate, frames = header
        _check_rate(sample_rate, limits)
        if frames > limits.max_seconds * sample_rate:
            raise AudioTooLong(
                f"audio is {frames / sample_rate:.1f} s long; the limit is {limits.max_seconds:g} s"
            )
        budget.take(sample_cost(frames, sample_rate, params))
    audio = decode_audio(data, max_seconds=limits.max_seconds)
    if header is None:
        _check_rate(audio.sample_rate, limits)
        budget.take(sample_cost(audio.samples.shape[0], audio.sample_rate, params))
    peak = float(np.max(np.abs(audio.samples)))  # NaN and inf fail the test below too
    if not peak <= MAX_ABS_SAMPLE:
        raise NonFiniteValues(
            f"audio samples reach {peak:.3g}; samples beyond ±{MAX_ABS_SAMPLE:g} (or NaN, "
            "infinite) cannot be scored"
        )
    if audio.duration_s < params.min_seconds:
        raise AudioTooShort(
            f"audio is {audio.duration_s:.3f} s long; the minimum is {params.min_seconds:g} s"
        )
    return audio
