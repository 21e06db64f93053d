"""Convolutional autoencoder (Keras, MSE, Adam), trained on normal spectrograms only."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@dataclass(frozen=True)
class AutoencoderConfig:
    """Network shape and training settings (recorded in the manifest)."""

    filters: tuple[int, ...] = (16, 32, 64)
    latent_dim: int = 32
    epochs: int = 60
    batch_size: int = 16
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2
    patience: int = 8
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainedAutoencoder:
    autoencoder: Any  # keras.Model: (b, h, w, 1) → (b, h, w, 1)
    encoder: Any  # keras.Model: (b, h, w, 1) → (b, latent_dim)
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs_run: int = 0


def seed_everything(seed: int) -> None:
    """Same seed → same weights and same training trajectory (CPU, deterministic ops)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def build(height: int, width: int, cfg: AutoencoderConfig) -> TrainedAutoencoder:
    """Encoder: strided Conv2D blocks → Dense latent; decoder mirrors it with Conv2DTranspose."""
    import keras
    from keras import layers

    n_down = len(cfg.filters)
    if height % 2**n_down or width % 2**n_down:
        raise ValueError(f"input {height}x{width} must be divisible by {2**n_down}")
    inp = keras.Input((height, width, 1), name="spectrogram")
    x = inp
    for f in cfg.filters:
        x = layers.Conv2D(f, 3, strides=2, padding="same", activation="relu")(x)
    conv_shape = tuple(int(s) for s in x.shape[1:])
    x = layers.Flatten()(x)
    latent = layers.Dense(cfg.latent_dim, name="latent")(x)
    encoder = keras.Model(inp, latent, name="encoder")

    y = layers.Dense(int(np.prod(conv_shape)), activation="relu")(latent)
    y = layers.Reshape(conv_shape)(y)
    for f in reversed(cfg.filters[:-1]):
        y = layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="relu")(y)
    y = layers.Conv2DTranspose(1, 3, strides=2, padding="same", activation="sigmoid")(y)
    autoencoder = keras.Model(inp, y, name="autoencoder")
    autoencoder.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="mse")
    return TrainedAutoencoder(autoencoder, encoder)


def fit(images: np.ndarray, val_images: np.ndarray, cfg: AutoencoderConfig) -> TrainedAutoencoder:
    """images: (n, h, w) in [0, 1]; early stopping on the held-out normal clips."""
    import keras

    seed_everything(cfg.seed)
    model = build(images.shape[1], images.shape[2], cfg)
    x, xv = images[..., None], val_images[..., None]
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.patience, restore_best_weights=True
        )
    ]
    hist = model.autoencoder.fit(
        x,
        x,
        validation_data=(xv, xv),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=2,
    )
    model.history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    model.epochs_run = len(hist.history["loss"])
    return model
