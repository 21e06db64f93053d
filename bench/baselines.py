"""Reference detectors for the quality benchmark (bench-only code, not part of the product).

- `DcaseAutoencoder`: the DCASE 2020/2021 Task 2 baseline. Log-mel (128 bands), 5 consecutive
  frames concatenated (640 values) → dense autoencoder 128-128-128-128-8-128-128-128-128-640
  with BatchNorm + ReLU, MSE, Adam; clip score = mean reconstruction error over its vectors.
- `GaussianStats`: per-band mean and standard deviation of the log-mel over time (256 values
  with the default 128 bands),
  Ledoit-Wolf shrinkage covariance, Mahalanobis distance.
- `SeedAutoencoder`: the seed's method (the stack auscult replaces), as the seed describes it.
  Audio resampled to 22,050 Hz; 128-band log-mel up to 8 kHz (librosa's default window 2048
  and hop 512) in dB relative to the clip's maximum (80 dB range, as librosa's
  power_to_db(ref=np.max)); the whole clip min-max scaled to [0, 1] and resized (bilinear) to
  224x224; a conv autoencoder (Conv2D 32 → MaxPool → Conv2D 64 → MaxPool, mirrored decoder of
  transposed convolutions, MSE, Adam 1e-3, 20 epochs) fitted on the normal training clips; the
  encoder's output flattened (56·56·64 values) → PCA (128 components, fewer with fewer clips)
  → Mahalanobis distance with the plain inverse covariance of the training clips' PCA scores.

The first two read audio with the product's decoder and log-mel (service.features) at the
dataset's native sample rate, with the DCASE baseline's window (64 ms) and hop (32 ms).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.features import FeatureParams

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

N_MELS = 128
FRAMES = 5


def logmel(
    path: Path, sample_rate: int, n_mels: int = N_MELS, params: FeatureParams | None = None
) -> np.ndarray:
    """One clip → (n_mels, n_frames) dB log-mel at sample_rate (window 64 ms, hop 32 ms,
    unless `params` says otherwise)."""
    from service.features import FeatureParams, decode_audio, log_mel, resample

    if params is None:
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


class SeedAutoencoder:
    """The seed's method: conv-autoencoder encoder features → PCA → Mahalanobis distance."""

    name = "seed conv AE + PCA"
    sample_rate = 22050  # the seed's rate (librosa's default), whatever the dataset's
    size = 224  # the seed's square picture
    top_db = 80.0  # librosa.power_to_db's default dynamic range
    components = 128
    epochs = 20

    def __init__(self, epochs: int = epochs, batch_size: int = 16, seed: int = 0):
        from service.features import FeatureParams

        self.epochs, self.batch_size, self.seed = epochs, batch_size, seed
        self.params = FeatureParams(
            sample_rate=self.sample_rate,
            n_fft=2048,
            hop_length=512,
            n_mels=N_MELS,
            fmax=8000.0,
            height=self.size,
            width=self.size,
            scaling="minmax",
        )

    def _images(self, paths: Sequence[Path]) -> np.ndarray:
        """Clips → (n, 224, 224, 1) float32 in [0, 1]."""
        from service.features import to_image

        out = np.empty((len(paths), self.size, self.size, 1), np.float32)
        for i, p in enumerate(paths):
            mel = logmel(p, self.sample_rate, params=self.params)
            out[i, :, :, 0] = to_image(np.maximum(mel, mel.max() - self.top_db), self.params)
        return out

    def _latents(self, images: np.ndarray) -> np.ndarray:
        """Encoder outputs flattened: (n, 56 * 56 * 64) float32, predicted in batches."""
        return np.concatenate(
            [
                self.encoder.predict(images[i : i + 64], verbose=0).reshape(
                    len(images[i : i + 64]), -1
                )
                for i in range(0, len(images), 64)
            ]
        )

    def fit(self, paths: Sequence[Path]) -> SeedAutoencoder:
        import keras
        from keras import layers
        from sklearn.decomposition import PCA

        keras.utils.set_random_seed(self.seed)
        x = self._images(paths)
        inp = keras.Input((self.size, self.size, 1))
        h = layers.Conv2D(32, 3, padding="same", activation="relu")(inp)
        h = layers.MaxPooling2D(2)(h)
        h = layers.Conv2D(64, 3, padding="same", activation="relu")(h)
        code = layers.MaxPooling2D(2)(h)
        h = layers.Conv2DTranspose(64, 3, strides=2, padding="same", activation="relu")(code)
        h = layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu")(h)
        out = layers.Conv2D(1, 3, padding="same", activation="sigmoid")(h)
        autoencoder = keras.Model(inp, out)
        autoencoder.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        autoencoder.fit(
            x, x, epochs=self.epochs, batch_size=self.batch_size, shuffle=True, verbose=0
        )
        self.encoder = keras.Model(inp, code)
        z = self._latents(x)
        del x
        # centred training latents span len(paths) - 1 directions at most
        k = min(self.components, len(paths) - 1, z.shape[1])
        self.pca = PCA(k, svd_solver="full").fit(z)
        scores = self.pca.transform(z).astype(np.float64)
        self.mean = scores.mean(axis=0)
        self.precision = np.linalg.inv(np.cov(scores, rowvar=False))
        return self

    def score(self, paths: Sequence[Path]) -> np.ndarray:
        d = self.pca.transform(self._latents(self._images(paths))).astype(np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", d, self.precision, d), 0.0))
