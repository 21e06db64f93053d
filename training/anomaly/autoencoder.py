"""Convolutional autoencoder (Keras, MSE, Adam), trained on normal spectrograms only."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as training/__init__.py


# What the scoring encoder outputs: one or more parts joined by "+", concatenated in order.
#   flat        the last conv block flattened, (h/2^depth)·(w/2^depth)·filters[-1] values (the
#               seeds' recipe: where in the window and at which band a pattern sits)
#   time_stats  mean and std over time of every (row, channel) of the last conv block
#   dense       the autoencoder's bottleneck (latent_dim values; needs --bottleneck dense)
#   input       every mel band's mean and std over time of the input
#   band_stats  BandStats of the input: bands of `band_pool` rows, mean/std/peak flux each
PART_NAMES = ("flat", "time_stats", "dense", "input", "band_stats")
Pooling = str


def pooling_parts(pooling: str) -> list[str]:
    """ "flat+band_stats" → ["flat", "band_stats"]; raises ValueError for unknown parts."""
    parts = [p for p in pooling.split("+") if p]
    unknown = [p for p in parts if p not in PART_NAMES]
    if not parts or unknown or len(set(parts)) != len(parts):
        raise ValueError(
            f"pooling {pooling!r}: use one or more of {', '.join(PART_NAMES)} joined by '+'"
        )
    return parts


@dataclass(frozen=True)
class AutoencoderConfig:
    """Network shape and training settings (recorded in the manifest)."""

    filters: tuple[int, ...] = (16, 32, 64)
    # The autoencoder's bottleneck. "conv": a 1x1 convolution down to latent_dim channels
    # (height/2^depth · width/2^depth · latent_dim values, few weights); "dense": a Dense
    # layer of latent_dim units on the flattened last conv block.
    bottleneck: Literal["conv", "dense"] = "conv"
    latent_dim: int = 4
    # What the encoder gives the detector: parts joined by "+" (see PART_NAMES above).
    pooling: Pooling = "flat+band_stats"
    # BandStats: adjacent mel rows averaged into one band, and whether the peak flux is kept.
    band_pool: int = 2
    band_flux: bool = True
    # Standardise every mel band (mean and std of the training images over clips and time)
    # inside the network, before the first convolution.
    standardise_bands: bool = False
    # What the convolutions see: the window as scaled by the features ("image"), every
    # window min-max scaled on its own ("minmax": the conv parts ignore level and gain, as the
    # seeds' images did; band_stats still sees the level), or both as two channels ("both":
    # the shape of the window and its level; the autoencoder reconstructs both), or every
    # window minus its own mean ("centred": a gain change is removed, contrast is kept).
    ae_input: Literal["image", "minmax", "centred", "both"] = "centred"
    epochs: int = 60
    batch_size: int = 16
    learning_rate: float = 1e-3
    validation_fraction: float = 0.2
    patience: int = 8
    seed: int = 0
    # With labels from the file names (fit --aux-labels): weight of the classification loss of
    # the head on the last conv block beside the reconstruction MSE (training.anomaly.aux_labels).
    aux_weight: float = 0.1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AuxTargets:
    """Class index per training and per held-out window (-1: not classified), n classes."""

    train: np.ndarray
    val: np.ndarray
    n_classes: int


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


@lru_cache(maxsize=1)
def _time_stats_class() -> Any:
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="auscult")
    class TimeStats(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            mean = ops.mean(x, axis=2)
            std = ops.sqrt(ops.mean(ops.square(x - ops.expand_dims(mean, 2)), axis=2) + 1e-8)
            flat = (-1, int(x.shape[1]) * int(x.shape[3]))
            return ops.concatenate([ops.reshape(mean, flat), ops.reshape(std, flat)], axis=1)

    return TimeStats


@lru_cache(maxsize=1)
def _minmax_class() -> Any:
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="auscult")
    class MinMax(keras.layers.Layer):
        """(b, h, w, 1) → every sample scaled to [0, 1] by its own min and max."""

        def call(self, x: Any) -> Any:
            lo = ops.min(x, axis=(1, 2, 3), keepdims=True)
            hi = ops.max(x, axis=(1, 2, 3), keepdims=True)
            return (x - lo) / ops.maximum(hi - lo, 1e-6)

    return MinMax


@lru_cache(maxsize=1)
def _centre_class() -> Any:
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="auscult")
    class Centre(keras.layers.Layer):
        """(b, h, w, 1) → every sample minus its own mean, plus 0.5, clipped to [0, 1]: a gain
        change (an offset in dB) is removed, the contrast between bands and frames is kept."""

        def call(self, x: Any) -> Any:
            return ops.clip(x - ops.mean(x, axis=(1, 2, 3), keepdims=True) + 0.5, 0.0, 1.0)

    return Centre


@lru_cache(maxsize=1)
def _band_standardise_class() -> Any:
    import keras

    @keras.saving.register_keras_serializable(package="auscult")
    class BandStandardise(keras.layers.Layer):
        """(b, h, w, 1) → (x - mean[h]) / std[h], with frozen per-band statistics."""

        def __init__(self, mean: Any = None, std: Any = None, height: int = 0, **kw: Any):
            super().__init__(**kw)
            self.height = int(height or len(mean))
            self.mean = self.add_weight(
                shape=(1, self.height, 1, 1),
                initializer=keras.initializers.Constant(
                    0.0 if mean is None else np.reshape(mean, (1, -1, 1, 1))
                ),
                trainable=False,
                name="mean",
            )
            self.std = self.add_weight(
                shape=(1, self.height, 1, 1),
                initializer=keras.initializers.Constant(
                    1.0 if std is None else np.reshape(std, (1, -1, 1, 1))
                ),
                trainable=False,
                name="std",
            )

        def call(self, x: Any) -> Any:
            return (x - self.mean) / self.std

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "height": self.height}

    return BandStandardise


@lru_cache(maxsize=1)
def _band_stats_class() -> Any:
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="auscult")
    class BandStats(keras.layers.Layer):
        """(b, h, w, 1) → (b, k·h/pool): every `pool` adjacent mel rows averaged into one band,
        then per band its mean and standard deviation over time and, with `flux`, its peak
        flux max_t |x[t+1] - x[t]| (onsets: impacts and clicks the mean and std smooth over).
        k = 3 with flux, else 2; order [means, stds, fluxes]."""

        def __init__(self, pool: int = 2, flux: bool = True, **kw: Any):
            super().__init__(**kw)
            self.pool, self.flux = int(pool), bool(flux)

        def call(self, x: Any) -> Any:
            bands = int(x.shape[1]) // self.pool
            x = ops.mean(ops.reshape(x, (-1, bands, self.pool, int(x.shape[2]))), axis=2)
            mean = ops.mean(x, axis=2)
            std = ops.sqrt(ops.mean(ops.square(x - ops.expand_dims(mean, 2)), axis=2) + 1e-8)
            stats = [mean, std]
            if self.flux:
                stats.append(ops.max(ops.abs(x[:, :, 1:] - x[:, :, :-1]), axis=2))
            return ops.concatenate(stats, axis=1)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "pool": self.pool, "flux": self.flux}

    return BandStats


def band_stats_layer(pool: int, flux: bool, name: str = "band_stats") -> Any:
    """A Keras layer (b, h, w, 1) → (b, (3 if flux else 2)·h/pool); see BandStats."""
    return _band_stats_class()(pool=pool, flux=flux, name=name)


def time_stats_layer(name: str = "time_stats") -> Any:
    """A Keras layer (b, h, w, c) → (b, 2·h·c): mean and standard deviation over time (w)."""
    return _time_stats_class()(name=name)


def build(
    height: int,
    width: int,
    cfg: AutoencoderConfig,
    band_stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainedAutoencoder:
    """Encoder: strided Conv2D blocks → bottleneck; decoder mirrors it with Conv2DTranspose.
    The scoring encoder ends in time statistics of the last block or in the bottleneck
    (cfg.pooling)."""
    import keras
    from keras import layers

    n_down = len(cfg.filters)
    if height % 2**n_down or width % 2**n_down:
        raise ValueError(f"input {height}x{width} must be divisible by {2**n_down}")
    if "band_stats" in pooling_parts(cfg.pooling) and (cfg.band_pool < 1 or height % cfg.band_pool):
        raise ValueError(f"--band-pool {cfg.band_pool} must divide the input height {height}")
    inp = keras.Input((height, width, 1), name="spectrogram")
    mean, std = band_stats if band_stats is not None else (np.zeros(height), np.ones(height))
    x = inp
    if cfg.ae_input == "both":  # two channels: the window's shape and its level
        level = inp
        if cfg.standardise_bands:
            level = _band_standardise_class()(mean, std, name="standardise_bands")(inp)
        x = layers.Concatenate(name="views")([_minmax_class()(name="minmax")(inp), level])
    else:
        if cfg.ae_input == "minmax":
            x = _minmax_class()(name="minmax")(x)
        elif cfg.ae_input == "centred":
            x = _centre_class()(name="centred")(x)
        if cfg.standardise_bands:
            x = _band_standardise_class()(mean, std, name="standardise_bands")(x)
    for i, f in enumerate(cfg.filters):
        name = "features" if i == n_down - 1 else None
        x = layers.Conv2D(f, 3, strides=2, padding="same", activation="relu", name=name)(x)
    conv_shape = tuple(int(s) for s in x.shape[1:])
    if cfg.bottleneck == "conv":
        latent = layers.Conv2D(cfg.latent_dim, 1, name="latent")(x)
        y = layers.Conv2D(conv_shape[-1], 1, activation="relu")(latent)
    else:
        latent = layers.Dense(cfg.latent_dim, name="latent")(layers.Flatten()(x))
        y = layers.Dense(int(np.prod(conv_shape)), activation="relu")(latent)
        y = layers.Reshape(conv_shape)(y)
    for f in reversed(cfg.filters[:-1]):
        y = layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="relu")(y)
    channels = 2 if cfg.ae_input == "both" else 1  # "both" reconstructs both views
    y = layers.Conv2DTranspose(
        channels, 3, strides=2, padding="same", activation="sigmoid", name="reconstruction"
    )(y)
    autoencoder = keras.Model(inp, y, name="autoencoder")
    autoencoder.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate), loss="mse")
    encoder = scoring_encoder(autoencoder, cfg.pooling, cfg.band_pool, cfg.band_flux)
    return TrainedAutoencoder(autoencoder, encoder)


def scoring_encoder(
    autoencoder: Any, pooling: str, band_pool: int = 2, band_flux: bool = True
) -> Any:
    """The model exported as encoder.onnx, built from a trained (or loaded) autoencoder:
    (b, h, w, 1) → the parts of `pooling` concatenated in order (see PART_NAMES)."""
    return _scoring_encoder(autoencoder, pooling, band_pool, band_flux)[0]


def scoring_encoder_parts(
    autoencoder: Any, pooling: str, band_pool: int = 2, band_flux: bool = True
) -> list[tuple[str, int]]:
    """[(part name, width)] of scoring_encoder's output, in order."""
    return _scoring_encoder(autoencoder, pooling, band_pool, band_flux)[1]


def _scoring_encoder(
    autoencoder: Any, pooling: str, band_pool: int, band_flux: bool
) -> tuple[Any, list[tuple[str, int]]]:
    import keras
    from keras import layers

    spectrogram = autoencoder.inputs[0]
    features = autoencoder.get_layer("features").output
    build = {
        "flat": lambda: layers.Flatten(name="flat")(features),
        "time_stats": lambda: time_stats_layer()(features),
        "dense": lambda: layers.Flatten(name="dense")(autoencoder.get_layer("latent").output),
        "input": lambda: time_stats_layer("input_stats")(spectrogram),
        "band_stats": lambda: band_stats_layer(band_pool, band_flux)(spectrogram),
    }
    names = pooling_parts(pooling)
    outputs = [build[n]() for n in names]
    out = outputs[0] if len(outputs) == 1 else layers.Concatenate(name="stats")(outputs)
    widths = [(n, int(o.shape[-1])) for n, o in zip(names, outputs, strict=True)]
    return keras.Model(spectrogram, out, name="encoder"), widths


def load_autoencoder(path: Any) -> Any:
    """A saved autoencoder.keras, with auscult's custom layers registered first."""
    import keras

    for register in (
        _time_stats_class,
        _band_stats_class,
        _band_standardise_class,
        _minmax_class,
        _centre_class,
    ):
        register()
    return keras.models.load_model(path, compile=False)


def scoring_encoder_for(autoencoder: Any, recorded: dict[str, Any]) -> Any:
    """scoring_encoder with the settings a manifest recorded (training.anomaly.autoencoder); bundles
    from before `pooling` existed scored the dense bottleneck."""
    return scoring_encoder(
        autoencoder,
        recorded.get("pooling", "dense"),
        recorded.get("band_pool", 2),
        recorded.get("band_flux", True),
    )


def fit(
    images: np.ndarray,
    val_images: np.ndarray,
    cfg: AutoencoderConfig,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
    aux: AuxTargets | None = None,
) -> TrainedAutoencoder:
    """images: (n, h, w) in [0, 1]; early stopping on the held-out normal clips.
    `on_epoch(done, epochs, logs)` after every epoch (it may raise to stop the fit).
    `aux`: also train a linear classifier on the flattened last conv block to tell the
    windows' labels apart (loss weight cfg.aux_weight, classes balanced); the head lives in a
    training-only model, so the returned autoencoder and encoder do not contain it."""
    import keras

    seed_everything(cfg.seed)
    band_stats = (images.mean(axis=(0, 2)), images.std(axis=(0, 2)) + 1e-3)
    model = build(images.shape[1], images.shape[2], cfg, band_stats)
    x, xv = images[..., None], val_images[..., None]
    y, yv = x, xv
    if cfg.ae_input != "image":  # the autoencoder reconstructs what its convolutions see
        scale = model.autoencoder.get_layer("centred" if cfg.ae_input == "centred" else "minmax")
        y, yv = scale(x).numpy(), scale(xv).numpy()
        if cfg.ae_input == "both":  # and the window as scaled ([0, 1], as the sigmoid's)
            y, yv = np.concatenate([y, x], -1), np.concatenate([yv, xv], -1)
    trainer: Any = model.autoencoder
    sample_weight: Any = None
    if aux is not None:
        trainer, x_y, xv_yv, sample_weight = _with_head(model.autoencoder, aux, cfg, y, yv)
        y, yv = x_y, xv_yv
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=cfg.patience, restore_best_weights=True
        )
    ]
    if on_epoch is not None:
        report = on_epoch
        callbacks.append(
            keras.callbacks.LambdaCallback(
                on_epoch_end=lambda epoch, logs: report(
                    epoch + 1, cfg.epochs, {k: float(v) for k, v in (logs or {}).items()}
                )
            )
        )
    hist = trainer.fit(
        x,
        y,
        sample_weight=sample_weight,
        validation_data=(xv, yv) if aux is None else (xv, yv, _class_weights(aux.val)),
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=2,
    )
    model.history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    model.epochs_run = len(hist.history["loss"])
    return model


def _class_weights(classes: np.ndarray) -> Any:
    """Sample weights per output of the trainer: none for the reconstruction; for the classes
    per window 0 if unclassified (-1), else n / (k · count of its class), so every class
    weighs the same however many windows it has."""
    w = np.zeros(len(classes), np.float32)
    known = classes >= 0
    names, counts = np.unique(classes[known], return_counts=True)
    for c, n in zip(names, counts, strict=True):
        w[classes == c] = known.sum() / (len(names) * n)
    return [None, w]


def _with_head(
    autoencoder: Any, aux: AuxTargets, cfg: AutoencoderConfig, y: np.ndarray, yv: np.ndarray
) -> tuple[Any, list[np.ndarray], list[np.ndarray], Any]:
    """The autoencoder with a classification head (shared layers: training it trains the
    autoencoder) → (trainer, targets, held-out targets, sample weights)."""
    import keras
    from keras import layers

    flat = layers.Flatten(name="aux_flat")(autoencoder.get_layer("features").output)
    logits = layers.Dense(aux.n_classes, name="aux_classes")(flat)
    trainer = keras.Model(autoencoder.inputs[0], [autoencoder.outputs[0], logits], name="trainer")
    trainer.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss=["mse", keras.losses.SparseCategoricalCrossentropy(from_logits=True)],
        loss_weights=[1.0, cfg.aux_weight],
    )
    targets = [y, np.maximum(aux.train, 0)]
    held = [yv, np.maximum(aux.val, 0)]
    return trainer, targets, held, _class_weights(aux.train)
