"""`python -m training fit-classifier`: labelled clips → features → CNN → ONNX → bundle →
evaluation. The network: an optional per-clip normalisation layer, Conv2D blocks
(Conv → BatchNorm → ReLU, `convs` times, → MaxPool), global average pooling, dropout,
softmax; Adam on sparse categorical cross-entropy. Training may see perturbed copies of the
clips and SpecAugment masks (training.augment)."""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.features import FeatureParams
from service.models.bundle import TensorSpec, read_manifest, update_bundle, write_bundle
from training import export
from training.anomaly.autoencoder import seed_everything
from training.augment import AugmentConfig, band_centres, spec_augment, warp_batch
from training.classifier.data import (
    LabelledClip,
    discover_extra,
    discover_labelled,
    group_folds,
    load_images,
    ordered_labels,
    split_validation,
)
from training.classifier.evaluate import evaluate_classifier
from training.datasets import DatasetError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PARITY_TOLERANCE = 1e-4
# fsdd's recordings start up to 0.1 s before the word (most less); a user's recording may
# start seconds before it
ONSET_MARGIN_S = 0.1
INPUT_NAME = "spectrogram"
OUTPUT_NAME = "probabilities"
Normalise = Literal["none", "clip", "band", "max"]
Arch = Literal["cnn", "tc"]


@dataclass(frozen=True)
class ClassifierConfig:
    """Network shape and training settings (recorded in the manifest)."""

    # cnn: 2-D conv blocks over (mel, time); tc: mel bands as channels of 1-D convolutions
    # over time (a stem, then a residual block per further filter count, each halving time)
    arch: Arch = "cnn"
    filters: tuple[int, ...] = (32, 64, 128)
    convs: int = 1  # cnn: Conv → BN → ReLU per block, before its pooling
    kernel: int = 9  # tc: kernel of the residual blocks' convolutions (frames)
    # inside the network (so the service's ONNX graph applies it): none; clip: the image
    # to zero mean, unit variance; band: every mel band so over time; max: minus its maximum
    normalise: Normalise = "none"
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


@lru_cache(maxsize=1)
def _clip_norm_class() -> Any:
    import keras
    from keras import ops

    @keras.saving.register_keras_serializable(package="auscult")
    class ClipNorm(keras.layers.Layer):
        """(b, h, w, 1) → every sample normalised on its own (see ClassifierConfig.normalise)."""

        def __init__(self, mode: str = "clip", **kw: Any):
            super().__init__(**kw)
            self.mode = mode

        def call(self, x: Any) -> Any:
            if self.mode == "max":
                return x - ops.max(x, axis=(1, 2, 3), keepdims=True)
            axes = (1, 2, 3) if self.mode == "clip" else (2, 3)
            mean = ops.mean(x, axis=axes, keepdims=True)
            var = ops.mean(ops.square(x - mean), axis=axes, keepdims=True)
            return (x - mean) / ops.sqrt(var + 1e-4)

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "mode": self.mode}

    return ClipNorm


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
    onset_margin: float | None = ONSET_MARGIN_S,
) -> FeatureParams:
    """Speech-style features: ~32 ms windows (a power of two), half-window hop, mel
    bands up to Nyquist. The image is (n_mels, frames of clip_seconds): no resizing. Each
    clip starts onset_margin seconds before its first loud frame (None: where it starts)."""
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
        onset_margin_s=onset_margin,
    )


def build(height: int, width: int, n_classes: int, cfg: ClassifierConfig) -> Any:
    """(b, height, width, 1) → (b, n_classes) softmax; input "spectrogram", output
    "probabilities". One pooling per block, so any input size works."""
    import keras
    from keras import layers

    inp = keras.Input((height, width, 1), name=INPUT_NAME)
    x = inp
    if cfg.normalise != "none":
        x = _clip_norm_class()(mode=cfg.normalise, name="clip_norm")(x)
    if cfg.arch == "tc":
        return _compile(_temporal(x, inp, width, height, n_classes, cfg), cfg)
    for i, f in enumerate(cfg.filters):
        for j in range(cfg.convs):
            tag = f"{i}" if j == 0 else f"{i}_{j}"
            x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{tag}")(x)
            # momentum 0.9, not 0.99: with ~100 steps per epoch the moving variance would
            # otherwise still remember its initial 1.0 long after the batches settled.
            x = layers.BatchNormalization(momentum=0.9, name=f"bn{tag}")(x)
            x = layers.Activation("relu", name=f"relu{tag}")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"pool{i}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="dropout")(x)
    out = layers.Dense(n_classes, activation="softmax", name=OUTPUT_NAME)(x)
    return _compile(keras.Model(inp, out, name="classifier"), cfg)


def _temporal(
    x: Any, inp: Any, width: int, height: int, n_classes: int, cfg: ClassifierConfig
) -> Any:
    """(b, height, width, 1) → (b, width, height): mel bands become channels, then 1-D
    convolutions over time; residual blocks with a strided shortcut (TC-ResNet style)."""
    import keras
    from keras import layers

    x = layers.Reshape((height, width), name="squeeze")(x)
    x = layers.Permute((2, 1), name="bands_as_channels")(x)
    x = layers.Conv1D(cfg.filters[0], 3, padding="same", use_bias=False, name="stem")(x)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for i, f in enumerate(cfg.filters[1:]):
        y = layers.Conv1D(
            f, cfg.kernel, strides=2, padding="same", use_bias=False, name=f"conv{i}a"
        )(x)
        y = layers.BatchNormalization(momentum=0.9, name=f"bn{i}a")(y)
        y = layers.Activation("relu", name=f"relu{i}a")(y)
        y = layers.Conv1D(f, cfg.kernel, padding="same", use_bias=False, name=f"conv{i}b")(y)
        y = layers.BatchNormalization(momentum=0.9, name=f"bn{i}b")(y)
        s = layers.Conv1D(f, 1, strides=2, padding="same", use_bias=False, name=f"skip{i}")(x)
        s = layers.BatchNormalization(momentum=0.9, name=f"bn{i}s")(s)
        x = layers.Activation("relu", name=f"relu{i}")(layers.Add(name=f"add{i}")([y, s]))
    x = layers.GlobalAveragePooling1D(name="gap")(x)
    x = layers.Dropout(cfg.dropout, seed=cfg.seed, name="dropout")(x)
    out = layers.Dense(n_classes, activation="softmax", name=OUTPUT_NAME)(x)
    return keras.Model(inp, out, name="classifier")


def _compile(model: Any, cfg: ClassifierConfig) -> Any:
    import keras

    model.compile(
        optimizer=keras.optimizers.Adam(cfg.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def _batches(
    x: np.ndarray,
    y: np.ndarray,
    copies: np.ndarray | None,
    aug: AugmentConfig,
    batch_size: int,
    seed: int,
    params: FeatureParams | None = None,
) -> Any:
    """A keras PyDataset over (x (n, h, w), y (n,)): shuffled every epoch, each clip drawn
    as itself or one of its copies (n, k, h, w), then mel-warped (aug.warp; params: the
    features, for the bands' frequencies) and SpecAugment-masked."""
    import keras

    centres = band_centres(params) if aug.warp and params is not None else None

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.on_epoch_end()

        def __len__(self) -> int:
            return math.ceil(len(x) / batch_size)

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(x))
            k = 0 if copies is None else copies.shape[1]
            self.pick = self.rng.integers(0, k + 1, len(x))  # 0: the clip itself

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            idx = self.order[i * batch_size : (i + 1) * batch_size]
            batch = x[idx]
            if copies is not None:
                use = self.pick[idx] > 0
                batch[use] = copies[idx[use], self.pick[idx[use]] - 1]
            if centres is not None:
                batch = warp_batch(batch, centres, aug.warp, self.rng)
            if aug.freq_masks or aug.time_masks:
                batch = spec_augment(batch, aug, self.rng)
            return batch[..., None], y[idx]

    return Batches()


def train(
    x: np.ndarray,
    y: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    cfg: ClassifierConfig,
    aug: AugmentConfig | None = None,
    copies: np.ndarray | None = None,
    params: FeatureParams | None = None,
) -> TrainedClassifier:
    """x: (n, h, w) in [0, 1], y: (n,) class indices; copies: (n, k, h, w) perturbed
    images of x (aug.copies) or None; params: the features (needed for aug.warp). Keeps the
    weights of the epoch with the lowest validation loss (checkpointed to a temp folder)."""
    import keras

    aug = aug or AugmentConfig()
    if aug.warp and params is None:
        raise ValueError("aug.warp needs the feature params (the bands' frequencies)")
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
            _batches(x, y, copies, aug, cfg.batch_size, cfg.seed, params),
            validation_data=(x_val[..., None], y_val),
            epochs=cfg.epochs,
            callbacks=callbacks,
            verbose=2,
        )
        if best.exists():  # absent only if every val_loss was NaN
            model.load_weights(best)
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    return TrainedClassifier(
        model, history, len(history["loss"]), int(np.argmin(history["val_loss"])) + 1
    )


def augmented_copies(
    clips: list[LabelledClip], params: FeatureParams, aug: AugmentConfig, seed: int
) -> np.ndarray | None:
    """aug.copies perturbed images of every clip → (n, copies, h, w), or None without copies."""
    from tqdm import tqdm

    from training.augment import load_audio, perturbed_copies

    if not aug.copies:
        return None
    audios = [
        load_audio(c.path, params.sample_rate)
        for c in tqdm(clips, desc="audio (copies)", unit="clip", leave=False)
    ]
    return perturbed_copies(audios, params, aug, seed)


FitSet = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def extra_fit_set(
    extra: list[LabelledClip],
    labels: list[str],
    params: FeatureParams,
    aug: AugmentConfig,
    seed: int,
) -> FitSet | None:
    """Clips that only ever train (e.g. synthetic voices) → (images (n, h, w), y (n,),
    copies (n, k, h, w) or None), or None without any. Their labels must be known."""
    if not extra:
        return None
    unknown = sorted({c.label for c in extra} - set(labels))
    if unknown:
        raise DatasetError(f"--extra-train class(es) not in the data: {', '.join(unknown)}")
    images = load_images(extra, params, "features (extra)")
    y = np.array([labels.index(c.label) for c in extra])
    return images, y, augmented_copies(extra, params, aug, seed + 1)


def with_extra(
    x: np.ndarray, y: np.ndarray, copies: np.ndarray | None, extra: FitSet | None
) -> FitSet:
    """A fit set with the extra clips appended (copies on both sides or neither)."""
    if extra is None:
        return x, y, copies
    ex, ey, ec = extra
    both = None if copies is None or ec is None else np.concatenate([copies, ec])
    return np.concatenate([x, ex]), np.concatenate([y, ey]), both


def predict_keras(model: Any, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """(n, h, w) → (n, n_classes) probabilities from a Keras model (no export)."""
    return np.concatenate(
        [
            model(images[i : i + batch, ..., None], training=False).numpy()
            for i in range(0, len(images), batch)
        ]
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


def leave_one_group_out(
    clips: list[LabelledClip],
    key: str,
    params: FeatureParams,
    cfg: ClassifierConfig,
    aug: AugmentConfig,
    only: tuple[str, ...] | None = None,
    extra: FitSet | None = None,
) -> dict[str, Any]:
    """Fit the recipe once per value of group `key` (or only those in `only`) on the clips
    of all other values (train and test splits alike; cfg.validation_fraction of them for
    early stopping) and score the held-out clips with the Keras model on the service's
    features. `extra` (network.extra_fit_set: clips that only ever train, e.g. synthetic
    voices) joins every fold's fit set: never its validation, never a fold of its own.

    → {"group", "folds": {value: {"accuracy", "n", "epochs", "best_epoch"}}, "mean" (of
    the fold accuracies), "worst", "worst_group", "seconds"}."""
    start = time.perf_counter()
    folds = group_folds(clips, key)  # checks the groups before any feature is computed
    if only:
        unknown = sorted(set(only) - {value for value, _, _ in folds})
        if unknown:
            raise DatasetError(f"--loso-groups: no {key} {', '.join(unknown)}")
        folds = [f for f in folds if f[0] in only]
    labels = ordered_labels(clips)
    images = load_images(clips, params, "features (all)")
    copies = augmented_copies(clips, params, aug, cfg.seed)
    y = np.array([labels.index(c.label) for c in clips])
    results: dict[str, dict[str, Any]] = {}
    for value, train_idx, test_idx in folds:
        fit_i, val_i = split_validation(y[train_idx], cfg.validation_fraction, cfg.seed)
        fit_i, val_i = train_idx[fit_i], train_idx[val_i]
        x_fit, y_fit, c_fit = with_extra(
            images[fit_i], y[fit_i], None if copies is None else copies[fit_i], extra
        )
        trained = train(x_fit, y_fit, images[val_i], y[val_i], len(labels), cfg, aug, c_fit, params)
        pred = predict_keras(trained.model, images[test_idx]).argmax(axis=1)
        results[value] = {
            "accuracy": float((pred == y[test_idx]).mean()),
            "n": len(test_idx),
            "epochs": trained.epochs_run,
            "best_epoch": trained.best_epoch,
        }
        print(f"leave-one-{key}-out: {value} {results[value]['accuracy']:.4f}", flush=True)
    accs = {v: r["accuracy"] for v, r in results.items()}
    worst = min(accs, key=lambda v: accs[v])
    return {
        "group": key,
        "folds": results,
        "mean": float(np.mean(list(accs.values()))),
        "worst": accs[worst],
        "worst_group": worst,
        "seconds": round(time.perf_counter() - start, 1),
    }


def fit_classifier(
    data_dir: Path,
    out_dir: Path,
    cfg: ClassifierConfig | None = None,
    params: FeatureParams | None = None,
    label_pattern: str | None = None,
    test_pattern: str | None = None,
    group_pattern: str | None = None,
    save_keras: bool = True,
    aug: AugmentConfig | None = None,
    loso: str | None = None,
    extra_dir: Path | None = None,
) -> ClassifierFitResult:
    """Fit a classifier bundle on the train split of data_dir, write it to out_dir and
    evaluate it (through the service runtime) on the test split, or on the validation
    clips when there is no test split. With `loso` (a group key, e.g. "speaker") the same
    recipe is first measured leave-one-group-out on all clips (`leave_one_group_out`);
    the figures go into the manifest's evaluation and the report. Clips under `extra_dir`
    (labelled by the same pattern) are added to every fit set, never to a validation, test
    or held-out set."""
    from training.anomaly.fit import library_versions

    start = time.perf_counter()
    cfg = cfg or ClassifierConfig()
    aug = aug or AugmentConfig()
    params = params or feature_params()
    clips = discover_labelled(Path(data_dir), label_pattern, test_pattern, group_pattern)
    labels = ordered_labels(clips)
    train_clips = [c for c in clips if c.split == "train"]
    test_clips = [c for c in clips if c.split == "test"]
    extra = discover_extra(extra_dir, label_pattern)
    extra_set = extra_fit_set(extra, labels, params, aug, cfg.seed)  # for the folds and the fit
    loso_result = (
        leave_one_group_out(clips, loso, params, cfg, aug, extra=extra_set) if loso else None
    )

    images = load_images(train_clips, params, "features (train)")
    copies = augmented_copies(train_clips, params, aug, cfg.seed)
    y = np.array([labels.index(c.label) for c in train_clips])
    fit_idx, val_idx = split_validation(y, cfg.validation_fraction, cfg.seed)
    x_fit, y_fit, c_fit = with_extra(
        images[fit_idx],
        y[fit_idx],
        None if copies is None else copies[fit_idx],
        extra_set,
    )
    trained = train(x_fit, y_fit, images[val_idx], y[val_idx], len(labels), cfg, aug, c_fit, params)
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
                "extra_train": None if extra_dir is None else Path(extra_dir).name,
                "clips_extra": len(extra),
                "clips_fit": len(y_fit),
                "clips_validation": len(val_idx),
                "class_counts": dict(sorted(Counter(c.label for c in train_clips).items())),
                "epochs": trained.epochs_run,
                "best_epoch": trained.best_epoch,
                "seed": cfg.seed,
                "classifier": cfg.to_dict(),
                "augment": aug.to_dict(),
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
    evaluation = evaluate_classifier(out_dir, eval_clips, split, loso=loso_result)
    seconds = time.perf_counter() - start
    manifest = read_manifest(out_dir)
    update_bundle(out_dir, {}, training={**manifest.training, "fit_seconds": round(seconds, 1)})
    return ClassifierFitResult(out_dir, seconds, evaluation)
