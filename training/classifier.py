"""`python -m training fit-classifier`: labelled clips → features → CNN → ONNX → bundle →
evaluation. The network: Conv2D blocks (Conv → BatchNorm → ReLU → MaxPool), global
average pooling, softmax; Adam on sparse categorical cross-entropy."""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.bundle import TensorSpec, read_manifest, update_bundle, write_bundle
from service.features import FeatureParams
from training import export
from training.autoencoder import seed_everything
from training.classify_data import (
    discover_labelled,
    load_images,
    ordered_labels,
    split_validation,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PARITY_TOLERANCE = 1e-4
INPUT_NAME = "spectrogram"
OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class ClassifierConfig:
    """Network shape and training settings (recorded in the manifest)."""

    filters: tuple[int, ...] = (32, 64, 128)
    dropout: float = 0.3
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    validation_fraction: float = 0.1
    patience: int = 8  # EarlyStopping on val_loss
    lr_patience: int = 2  # ReduceLROnPlateau on val_loss (halves the rate)
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainedClassifier:
    model: Any  # keras.Model: (b, h, w, 1) → (b, n_classes) softmax
    history: dict[str, list[float]] = field(default_factory=dict)
    epochs_run: int = 0
    best_epoch: int = 0  # 1-based epoch whose weights were kept


@dataclass
class ClassifierFitResult:
    bundle_dir: Path
    seconds: float
    evaluation: dict[str, Any] | None


def feature_params(
    sample_rate: int = 8000,
    clip_seconds: float = 1.0,
    n_mels: int = 32,
    n_fft: int | None = None,
    hop_length: int | None = None,
) -> FeatureParams:
    """Speech-style features: ~32 ms windows (a power of two), half-window hop, mel
    bands up to Nyquist. The image is (n_mels, frames of clip_seconds): no resizing."""
    n_fft = n_fft or 2 ** round(math.log2(0.032 * sample_rate))
    hop_length = hop_length or n_fft // 2
    n_samples = round(clip_seconds * sample_rate)
    return FeatureParams(
        sample_rate=sample_rate,
        n_fft=n_fft,
        hop_length=hop_length,
        n_mels=n_mels,
        fmin=0.0,
        fmax=sample_rate / 2,
        height=n_mels,
        width=1 + n_samples // hop_length,  # frames of a centred STFT (features.log_mel)
        scaling="fixed_db",
        clip_seconds=clip_seconds,
    )


def build(height: int, width: int, n_classes: int, cfg: ClassifierConfig) -> Any:
    """(b, height, width, 1) → (b, n_classes) softmax; input "spectrogram", output
    "probabilities". One pooling per block, so any input size works."""
    import keras
    from keras import layers

    inp = keras.Input((height, width, 1), name=INPUT_NAME)
    x = inp
    for i, f in enumerate(cfg.filters):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        # momentum 0.9, not 0.99: with ~100 steps per epoch the moving variance would
        # otherwise still remember its initial 1.0 long after the batches settled.
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{i}")(x)
        x = layers.Activation("relu", name=f"relu{i}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="dropout")(x)
    out = layers.Dense(n_classes, activation="softmax", name=OUTPUT_NAME)(x)
    model = keras.Model(inp, out, name="classifier")
    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def train(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    cfg: ClassifierConfig,
) -> TrainedClassifier:
    """x: (n, h, w) in [0, 1], y: (n,) class indices. Keeps the weights of the epoch
    with the lowest validation loss (checkpointed to a temp folder)."""
    import keras

    seed_everything(cfg.seed)
    model = build(x.shape[1], x.shape[2], n_classes, cfg)
    with tempfile.TemporaryDirectory(prefix="auscult-ckpt-") as tmp:
        best = Path(tmp) / "best.weights.h5"
        callbacks = [
            keras.callbacks.ModelCheckpoint(
                best, monitor="val_loss", save_best_only=True, save_weights_only=True
            ),
            keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=0.5, patience=cfg.lr_patience, min_lr=1e-5
            ),
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience),
        ]
        hist = model.fit(
            x[..., None],
            y,
            validation_data=(x_val[..., None], y_val),
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            shuffle=True,
            callbacks=callbacks,
            verbose=2,
        )
        if best.exists():  # absent only if every val_loss was NaN
            model.load_weights(best)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return TrainedClassifier(
        model, history, len(history["loss"]), int(np.argmin(history["val_loss"])) + 1
    )


def keras_bytes(model: Any) -> bytes:
    """The model as a .keras file without optimizer state (architecture + weights)."""
    import keras

    bare = keras.Model.from_config(model.get_config())  # uncompiled (clone_model compiles)
    bare.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "classifier.keras"
        bare.save(path)
        return path.read_bytes()


def export_checked(model: Any, probe: np.ndarray) -> tuple[bytes, float]:
    """ONNX bytes and the max |ONNX - Keras| on probe (b, h, w); raises above tolerance."""
    onnx_bytes = export.to_onnx(model, INPUT_NAME, OUTPUT_NAME)
    batch = probe[..., None]
    diff = float(np.abs(export.onnx_run(onnx_bytes, batch) - model(batch).numpy()).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX and Keras classifiers disagree (max abs diff {diff:.2e})")
    return onnx_bytes, diff


def fit_classifier(
    data_dir: Path,
    out_dir: Path,
    cfg: ClassifierConfig | None = None,
    params: FeatureParams | None = None,
    label_pattern: str | None = None,
    test_pattern: str | None = None,
    group_pattern: str | None = None,
    save_keras: bool = True,
) -> ClassifierFitResult:
    """Fit a classifier bundle on the train split of data_dir, write it to out_dir and
    evaluate it (through the service runtime) on the test split, or on the validation
    clips when there is no test split."""
    from training.classifier_eval import evaluate_classifier
    from training.fit import library_versions

    start = time.perf_counter()
    cfg = cfg or ClassifierConfig()
    params = params or feature_params()
    clips = discover_labelled(Path(data_dir), label_pattern, test_pattern, group_pattern)
    labels = ordered_labels(clips)
    train_clips = [c for c in clips if c.split == "train"]
    test_clips = [c for c in clips if c.split == "test"]

    images = load_images(train_clips, params, "features (train)")
    y = np.array([labels.index(c.label) for c in train_clips])
    fit_idx, val_idx = split_validation(y, cfg.validation_fraction, cfg.seed)
    trained = train(images[fit_idx], y[fit_idx], images[val_idx], y[val_idx], len(labels), cfg)
    onnx_bytes, diff = export_checked(trained.model, images[val_idx[:32]])

    out_dir = Path(out_dir)
    files = {"classifier.onnx": onnx_bytes}
    if save_keras:
        files["classifier.keras"] = keras_bytes(trained.model)
    best = trained.best_epoch - 1
    write_bundle(
        out_dir,
        {
            "name": out_dir.name,
            "kind": "classifier",
            "features": params,
            "input": TensorSpec(name=INPUT_NAME, shape=[None, params.height, params.width, 1]),
            "output": TensorSpec(name=OUTPUT_NAME, shape=[None, len(labels)]),
            "labels": labels,
            "scoring": {"method": "softmax", "output": "probabilities over labels, in order"},
            "training": {
                "data": Path(data_dir).name,
                "layout": "file names" if label_pattern else "class folders",
                "label_pattern": label_pattern,
                "test_pattern": test_pattern,
                "group_pattern": group_pattern,
                "clips": {"train": len(train_clips), "test": len(test_clips)},
                "clips_fit": len(fit_idx),
                "clips_validation": len(val_idx),
                "class_counts": dict(sorted(Counter(c.label for c in train_clips).items())),
                "epochs": trained.epochs_run,
                "best_epoch": trained.best_epoch,
                "seed": cfg.seed,
                "classifier": cfg.to_dict(),
                "val_loss": trained.history["val_loss"][best],
                "val_accuracy": trained.history["val_accuracy"][best],
                "onnx_keras_max_abs_diff": diff,
            },
            "versions": library_versions(),
        },
        files=files,
    )

    eval_clips, split = (
        (test_clips, "test") if test_clips else ([train_clips[i] for i in val_idx], "validation")
    )
    evaluation = evaluate_classifier(out_dir, eval_clips, split)
    seconds = time.perf_counter() - start
    manifest = read_manifest(out_dir)
    update_bundle(out_dir, {}, training={**manifest.training, "fit_seconds": round(seconds, 1)})
    return ClassifierFitResult(out_dir, seconds, evaluation)
