"""`python -m training fit`: dataset → features → autoencoder → ONNX → PCA/covariance →
thresholds → bundle → evaluation. Each step is a function of its own module."""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.bundle import TensorSpec, read_manifest, update_bundle, write_bundle
from service.features import FeatureParams
from training import calibration, detector, export
from training.autoencoder import AutoencoderConfig
from training.autoencoder import fit as fit_autoencoder
from training.datasets import DatasetError, discover, labelled_test_clips, training_clips
from training.evaluate import evaluate, load_images

log = logging.getLogger("auscult.training")
PARITY_TOLERANCE = 1e-4
DetectorClips = Literal["all", "fit"]


@dataclass
class FitResult:
    bundle_dir: Path
    seconds: float
    evaluation: dict[str, Any] | None


def image_params(first_image: Path, base: FeatureParams) -> FeatureParams:
    """For PNG datasets the model input size is the pictures' size."""
    from PIL import Image

    with Image.open(first_image) as img:
        return base.model_copy(update={"height": img.height, "width": img.width})


def split_heldout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of n training clips → (train indices, held-out indices)."""
    if n < 4:
        raise DatasetError(f"need at least 4 normal training clips, found {n}")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(2, round(n * fraction)), n - 2)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def keras_model_bytes(model: Any) -> bytes:
    """The model's architecture and weights as a .keras file, without optimizer state
    (which would triple the size); recompile with Adam to resume training."""
    import keras

    bare = keras.Model.from_config(model.get_config())  # clone_model keeps optimizer state
    bare.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        bare.save(path)
        return path.read_bytes()


def library_versions() -> dict[str, str]:
    import keras
    import onnxruntime
    import sklearn
    import tensorflow as tf
    import tf2onnx

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "tf2onnx": tf2onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "scikit-learn": sklearn.__version__,
    }


def fit(
    data_dir: Path,
    out_dir: Path,
    cfg: AutoencoderConfig | None = None,
    params: FeatureParams | None = None,
    pca_selection: detector.Selection = "full",
    pca_components: int | None = None,
    shrinkage: detector.Shrinkage = "ledoit_wolf",
    run_evaluation: bool = True,
    detector_clips: DetectorClips = "all",
) -> FitResult:
    """Fit an anomaly bundle on the normal training clips of data_dir and write it to out_dir.

    detector_clips: "fit" fits the Mahalanobis detector on the clips the autoencoder was
    trained on; "all" refits it on every training clip (held-out ones included) once the
    thresholds are calibrated on the held-out clips scored by the detector fit without them.
    """
    start = time.perf_counter()
    cfg = cfg or AutoencoderConfig()
    params = params or FeatureParams()
    clips = discover(Path(data_dir))
    train = training_clips(clips)
    if train[0].path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        params = image_params(train[0].path, params)
    tr_idx, val_idx = split_heldout(len(train), cfg.validation_fraction, cfg.seed)

    images = load_images(train, params, "features (train)")
    model = fit_autoencoder(images[tr_idx], images[val_idx], cfg)

    encoder_onnx = export.to_onnx(model.encoder, "spectrogram", "latent")
    autoencoder_onnx = export.to_onnx(model.autoencoder, "spectrogram", "reconstruction")
    probe = images[: min(8, len(images))][..., None]
    diff = float(np.abs(export.onnx_run(encoder_onnx, probe) - model.encoder(probe).numpy()).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX and Keras encoders disagree (max abs diff {diff:.2e})")

    # Latents from the exported graph: exactly what the service will compute.
    latents = np.concatenate(
        [
            export.onnx_run(encoder_onnx, images[i : i + 64][..., None])
            for i in range(0, len(images), 64)
        ]
    )
    arrays, det_summary = detector.fit_detector(
        latents[tr_idx], pca_components, pca_selection, shrinkage
    )
    residual = det_summary["residual_precision"]
    heldout_scores = detector.score(latents[val_idx], arrays, residual)
    thresholds = calibration.from_normal_scores(heldout_scores)
    detector_idx = tr_idx
    if detector_clips == "all":  # more clips → a better covariance estimate
        detector_idx = np.arange(len(latents))
        arrays, det_summary = detector.fit_detector(
            latents, pca_components, pca_selection, shrinkage
        )
        residual = det_summary["residual_precision"]
        # from here on: what the bundle (the service) scores them, for the manifest
        heldout_scores = detector.score(latents[val_idx], arrays, residual)
    train_scores = detector.score(latents[detector_idx], arrays, residual)
    det_summary["detector_clips"] = detector_clips

    keras_bytes = keras_model_bytes(model.autoencoder)

    out_dir = Path(out_dir)
    h, w = params.height, params.width
    write_bundle(
        out_dir,
        {
            "name": out_dir.name,
            "kind": "anomaly",
            "features": params,
            "input": TensorSpec(name="spectrogram", shape=[None, h, w, 1]),
            "output": TensorSpec(name="latent", shape=[None, int(latents.shape[1])]),
            "thresholds": thresholds,
            "scoring": {"method": "mahalanobis", **det_summary},
            "training": {
                "data": Path(data_dir).name,
                "clips": len(train),
                "clips_fit": len(tr_idx),
                "clips_heldout": len(val_idx),
                "epochs": model.epochs_run,
                "seed": cfg.seed,
                "autoencoder": cfg.to_dict(),
                "final_loss": model.history["loss"][-1],
                "final_val_loss": model.history["val_loss"][-1],
                "onnx_keras_max_abs_diff": diff,
                "normal_score_percentiles": {
                    f"p{q}": float(np.percentile(train_scores, q)) for q in (50, 90, 95, 99, 100)
                },
                # what the bundle (and so the service) scores the held-out clips
                "heldout_scores": {
                    train[i].path.name: float(s)
                    for i, s in zip(val_idx, heldout_scores, strict=True)
                },
                "fit_seconds": round(time.perf_counter() - start, 1),
            },
            "versions": library_versions(),
        },
        arrays=arrays,
        files={
            "encoder.onnx": encoder_onnx,
            "autoencoder.onnx": autoencoder_onnx,
            "autoencoder.keras": keras_bytes,
        },
    )

    evaluation = None
    test = labelled_test_clips(clips)
    if run_evaluation and test:
        _metrics, scored = evaluate(Path(data_dir), out_dir, write=False)
        labelled = np.array([c.label is not None for c in scored.clips])
        refined = calibration.refine_with_kmeans(
            thresholds,
            scored.scores[labelled],
            np.array([c.label == "anomaly" for c in scored.clips])[labelled],
            cfg.seed,
        )
        update_bundle(out_dir, {}, thresholds=refined)
        evaluation, _ = evaluate(Path(data_dir), out_dir, write=True)
    seconds = time.perf_counter() - start
    manifest = read_manifest(out_dir)
    update_bundle(out_dir, {}, training={**manifest.training, "fit_seconds": round(seconds, 1)})
    return FitResult(out_dir, seconds, evaluation)
