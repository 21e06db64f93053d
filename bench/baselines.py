"""Reference detectors for the quality benchmark (bench-only code, not part of the product).

- `DcaseAutoencoder`: the DCASE 2020/2021 Task 2 baseline. Log-mel (128 bands), 5 consecutive
  frames concatenated (640 values) → dense autoencoder 128-128-128-128-8-128-128-128-128-640
  with BatchNorm + ReLU, MSE, Adam; clip score = mean reconstruction error over its vectors.
- `GaussianStats`: per-band mean and standard deviation of the log-mel over time (256 values
  with the default 128 bands),
  Ledoit-Wolf shrinkage covariance, Mahalanobis distance.

Both read audio with the product's decoder and log-mel (service.features), at the dataset's
native sample rate, with the DCASE baseline's window (64 ms) and hop (32 ms).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

N_MELS = 128
FRAMES = 5


def logmel(path: Path, sample_rate: int, n_mels: int = N_MELS) -> np.ndarray:
    """One clip → (n_mels, n_frames) dB log-mel at sample_rate (window 64 ms, hop 32 ms)."""
    from service.features import FeatureParams, decode_audio, log_mel, resample

    n_fft = 1024 * sample_rate // 16000
    params = FeatureParams(
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=n_fft // 2,
        n_mels=n_mels,
        fmax=sample_rate / 2,
    )
    audio = decode_audio(Path(path).read_bytes())
    return log_mel(resample(audio.samples, audio.sample_rate, sample_rate), params)


def frame_vectors(mel: np.ndarray, frames: int = FRAMES) -> np.ndarray:
    """(n_mels, n_frames) → (n_frames - frames + 1, n_mels * frames), as the DCASE baseline."""
    _, t = mel.shape
    if t < frames:
        mel = np.pad(mel, ((0, 0), (0, frames - t)), mode="edge")
        t = frames
    n = t - frames + 1
    return np.concatenate([mel[:, i : i + n].T for i in range(frames)], axis=1).astype(np.float32)


class DcaseAutoencoder:
    """The DCASE Task 2 baseline autoencoder on 5-frame log-mel context vectors."""

    name = "DCASE AE baseline"

    def __init__(self, sample_rate: int, epochs: int = 50, batch_size: int = 512, seed: int = 0):
        self.sample_rate, self.epochs, self.batch_size, self.seed = (
            sample_rate,
            epochs,
            batch_size,
            seed,
        )

    def _vectors(self, paths: Sequence[Path]) -> list[np.ndarray]:
        return [frame_vectors(logmel(p, self.sample_rate)) for p in paths]

    def fit(self, paths: Sequence[Path]) -> DcaseAutoencoder:
        import keras
        from keras import layers

        keras.utils.set_random_seed(self.seed)
        x = np.concatenate(self._vectors(paths))
        dim = x.shape[1]
        inp = keras.Input((dim,))
        h = inp
        for units in (128, 128, 128, 128, 8, 128, 128, 128, 128):
            h = layers.Dense(units)(h)
            h = layers.BatchNormalization()(h)
            h = layers.Activation("relu")(h)
        out = layers.Dense(dim)(h)
        self.model = keras.Model(inp, out)
        self.model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        self.model.fit(
            x,
            x,
            epochs=self.epochs,
            batch_size=self.batch_size,
            shuffle=True,
            validation_split=0.1,
            verbose=0,
        )
        return self

    def score(self, paths: Sequence[Path]) -> np.ndarray:
        vecs = self._vectors(paths)
        x = np.concatenate(vecs)
        err = np.mean((self.model.predict(x, batch_size=4096, verbose=0) - x) ** 2, axis=1)
        bounds = np.cumsum([0] + [len(v) for v in vecs])
        return np.array([err[a:b].mean() for a, b in itertools.pairwise(bounds)])


def band_stats(mel: np.ndarray) -> np.ndarray:
    """(n_mels, n_frames) → (2 * n_mels,) per-band mean and standard deviation over time."""
    return np.concatenate([mel.mean(axis=1), mel.std(axis=1)]).astype(np.float64)


class GaussianStats:
    """Mahalanobis distance of log-mel band statistics under a Ledoit-Wolf Gaussian."""

    name = "Gaussian log-mel stats"

    def __init__(self, sample_rate: int, n_mels: int = N_MELS):
        self.sample_rate, self.n_mels = sample_rate, n_mels

    def _features(self, paths: Sequence[Path]) -> np.ndarray:
        return np.stack([band_stats(logmel(p, self.sample_rate, self.n_mels)) for p in paths])

    def fit(self, paths: Sequence[Path]) -> GaussianStats:
        from sklearn.covariance import LedoitWolf

        est = LedoitWolf().fit(self._features(paths))
        self.mean, self.precision = est.location_, np.linalg.pinv(est.covariance_)
        return self

    def score(self, paths: Sequence[Path]) -> np.ndarray:
        d = self._features(paths) - self.mean
        return np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", d, self.precision, d), 0.0))
