"""Model inputs back to audio: log-mel image → linear magnitude → Griffin-Lim → waveform.

The inverse of service.features for generator bundles, in numpy/scipy only (the service
imports no librosa and no TensorFlow). The STFT here is the one `features.log_mel` takes
(centred frames, reflect padding, periodic Hann, unnormalised rfft), so a waveform made
here gives back, through `features.log_mel`, the spectrogram it was made from (as far as
a magnitude without phase allows).

Shapes: image `(height, width)` in [0, 1] with height = n_mels and width = frames;
magnitude `(1 + n_fft // 2, n_frames)`; audio `(n_samples,)` float32.
"""

from __future__ import annotations

import io
import wave
import zipfile
from functools import lru_cache
from typing import Literal

import numpy as np
import scipy.fft

from service.features import FeatureParams, _window, mel_filterbank

NNLS_ITERATIONS = 50


def image_to_mel_power(image: np.ndarray, params: FeatureParams) -> np.ndarray:
    """(n_mels, frames) model input in [0, 1] → mel power (the inverse of fixed_db scaling)."""
    if params.scaling != "fixed_db":
        raise ValueError("only fixed_db images keep the level needed to make audio")
    if image.shape[0] != params.n_mels:
        raise ValueError(f"image has {image.shape[0]} rows; the features have {params.n_mels}")
    db = params.db_min + np.clip(image, 0.0, 1.0).astype(np.float64) * (
        params.db_max - params.db_min
    )
    return 10.0 ** (db / 10.0)


@lru_cache(maxsize=8)
def _pinv(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> np.ndarray:
    return np.linalg.pinv(mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax).astype(np.float64))


def mel_to_magnitude(
    mel_power: np.ndarray, params: FeatureParams, iterations: int = NNLS_ITERATIONS
) -> np.ndarray:
    """(n_mels, frames) mel power → (bins, frames) linear magnitude.

    The non-negative least-squares inverse of the service's own filterbank M: a start from
    the clipped pseudo-inverse, then multiplicative updates S ← S·(Mᵀy)/(MᵀMS), which keep
    S ≥ 0 and never increase ‖MS - y‖² (Lee and Seung). Returns sqrt(S).
    """
    fb = mel_filterbank(
        params.sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax
    ).astype(np.float64)
    pinv = _pinv(params.sample_rate, params.n_fft, params.n_mels, params.fmin, params.fmax)
    floor = 1e-12
    power = np.maximum(pinv @ mel_power, floor)
    # bins that no triangle covers (e.g. above fmax) stay at the floor
    covered = fb.sum(axis=0) > 0
    power[~covered] = floor
    numerator = fb.T @ mel_power
    gram = fb.T @ fb
    for _ in range(iterations):
        power *= numerator / np.maximum(gram @ power, floor)
    return np.sqrt(np.maximum(power, 0.0))


def stft(audio: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """(n,) → (bins, frames) complex: the STFT of features.log_mel (centred, reflect pad)."""
    mode: Literal["reflect", "constant"] = "reflect" if audio.shape[0] > n_fft // 2 else "constant"
    padded = np.pad(audio, n_fft // 2, mode=mode)
    if padded.shape[0] < n_fft:
        padded = np.pad(padded, (0, n_fft - padded.shape[0]))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    return scipy.fft.rfft(frames * _window(n_fft).astype(np.float64), axis=1).T


def istft(spectrum: np.ndarray, n_fft: int, hop: int, length: int) -> np.ndarray:
    """(bins, frames) complex → (length,) float64: windowed overlap-add, divided by the
    summed squared window (the least-squares inverse of `stft`)."""
    window = _window(n_fft).astype(np.float64)
    frames = scipy.fft.irfft(spectrum.T, n=n_fft, axis=1) * window
    n_frames = frames.shape[0]
    total = n_fft + hop * (n_frames - 1)
    out = np.zeros(total)
    norm = np.zeros(total)
    for t in range(n_frames):
        out[t * hop : t * hop + n_fft] += frames[t]
        norm[t * hop : t * hop + n_fft] += window**2
    out /= np.where(norm > 1e-8, norm, 1.0)
    out = out[n_fft // 2 :]  # undo the centring pad
    return out[:length] if out.shape[0] >= length else np.pad(out, (0, length - out.shape[0]))


def griffin_lim(
    magnitude: np.ndarray,
    n_fft: int,
    hop: int,
    length: int,
    iterations: int = 32,
    momentum: float = 0.99,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """(bins, frames) magnitude → (length,) float32 waveform whose STFT magnitude is close.

    Fast Griffin-Lim (Perraudin et al. 2013, momentum 0.99 as librosa); the starting
    phases are random from `rng` (zero without one), so a seeded rng gives the same audio.
    """
    if rng is None:
        angles = np.ones_like(magnitude, dtype=np.complex128)
    else:
        angles = np.exp(2j * np.pi * rng.random(magnitude.shape))
    rebuilt = np.zeros_like(angles)
    for _ in range(iterations):
        audio = istft(magnitude * angles, n_fft, hop, length)
        previous = rebuilt
        rebuilt = stft(audio, n_fft, hop)[:, : magnitude.shape[1]]
        angles = rebuilt - (momentum / (1 + momentum)) * previous
        angles /= np.maximum(np.abs(angles), 1e-16)
    return istft(magnitude * angles, n_fft, hop, length).astype(np.float32)


def spectral_convergence(audio: np.ndarray, magnitude: np.ndarray, n_fft: int, hop: int) -> float:
    """‖|STFT(audio)| - magnitude‖ / ‖magnitude‖ (Frobenius): 0 is a perfect match."""
    rebuilt = np.abs(stft(audio.astype(np.float64), n_fft, hop))[:, : magnitude.shape[1]]
    norm = float(np.linalg.norm(magnitude))
    return float(np.linalg.norm(rebuilt - magnitude)) / max(norm, 1e-12)


def image_to_audio(
    image: np.ndarray,
    params: FeatureParams,
    iterations: int = 32,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """(n_mels, frames) model input → (n_samples,) float32 audio at params.sample_rate,
    clip_seconds long (or as long as the frames span); peaks above 1 are scaled down."""
    magnitude = mel_to_magnitude(image_to_mel_power(image, params), params)
    n_frames = image.shape[1]
    length = (
        round(params.clip_seconds * params.sample_rate)
        if params.clip_seconds is not None
        else params.hop_length * (n_frames - 1)
    )
    audio = griffin_lim(
        magnitude, params.n_fft, params.hop_length, length, iterations=iterations, rng=rng
    )
    peak = float(np.abs(audio).max(initial=0.0))
    return audio / peak * 0.99 if peak > 0.99 else audio


def wav_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """(n,) float32 in [-1, 1] → 16-bit PCM mono WAV bytes."""
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """name → bytes as a zip archive (stored: wav barely compresses)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()
