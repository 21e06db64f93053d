"""`python -m training fit`: dataset → features → autoencoder → ONNX → PCA/covariance →
thresholds → bundle → evaluation. Each step is a function of its own module."""

from __future__ import annotations

import logging
import platform
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from service.features import FeatureParams, Prepared
from service.models.bundle import (
    CONDITION_OFFSETS,
    Aggregation,
    TensorSpec,
    part_distances,
    read_manifest,
    update_bundle,
    window_scores,
    write_bundle,
)
from service.models.verdict import LOSSY_FORMATS, verdict
from training import export
from training.anomaly import aux_labels as aux_names
from training.anomaly import calibration, mahalanobis
from training.anomaly.autoencoder import AutoencoderConfig, AuxTargets, scoring_encoder_parts
from training.anomaly.autoencoder import fit as fit_autoencoder
from training.anomaly.evaluate import (
    describe_unreadable,
    drop_unreadable,
    evaluate,
    load_calibration_copies,
    load_windows,
    read_windows,
    tqdm_write,
)
from training.augment import (
    CALIBRATION_CODECS,
    FORMATS,
    codec_copy_format,
    codec_copy_setting,
)
from training.datasets import (
    DatasetError,
    discover,
    labelled_test_clips,
    training_clips,
)

log = logging.getLogger("auscult.training")
PARITY_TOLERANCE = 1e-4
DetectorClips = Literal["all", "fit"]
Fusion = Literal["scores", "concat"]
WINDOW_SECONDS = 1.0  # the default window (docs/archive/experiments.md: chosen on digits and synth)


@dataclass
class FitResult:
    bundle_dir: Path
    seconds: float
    evaluation: dict[str, Any] | None
    clips: int = 0  # training clips fitted on
    skipped: tuple[str, ...] = ()  # unreadable training files left out, "name (reason)"
    epochs: int = 0

    def summary(self) -> str:
        """One line for the end of `python -m training fit`."""
        skipped = f", {len(self.skipped)} unreadable skipped" if self.skipped else ""
        return (
            f"bundle written to {self.bundle_dir} in {self.seconds:.1f} s "
            f"({self.clips} clips{skipped}, {self.epochs} epochs)"
        )


@dataclass
class FitHooks:
    """Progress of a fit for whoever runs it (the fit jobs' trainer): `stage(text)` as each
    long step starts, `epoch(done, epochs, logs)` after every autoencoder epoch. Either may
    raise to stop the fit (nothing is written then)."""

    stage: Callable[[str], None] | None = None
    epoch: Callable[[int, int, dict[str, float]], None] | None = None


def stage(what: str, hooks: FitHooks | None = None) -> None:
    """A line on stderr as a long step of the fit starts (between progress bars)."""
    tqdm_write(f"fit: {what} …")
    if hooks is not None and hooks.stage is not None:
        hooks.stage(what)


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
    pca_selection: mahalanobis.Selection = "full",
    pca_components: int | None = None,
    shrinkage: mahalanobis.Shrinkage = "ledoit_wolf",
    run_evaluation: bool = True,
    detector_clips: DetectorClips = "all",
    window_seconds: float | None = WINDOW_SECONDS,
    fusion: Fusion = "scores",
    aggregation: Aggregation = "mean",
    aggregation_k: int = 3,
    max_components: int | None = 128,
    codec_copies: bool = True,
    fit_hop_seconds: float | None = None,
    false_alarm_rate: float = calibration.FALSE_ALARM_RATE,
    severe_rate: float = calibration.SEVERE_RATE,
    group_by: str | None = None,
    stretch_seconds: float = calibration.STRETCH_SECONDS,
    kmeans_thresholds: bool = False,
    strict_files: bool = False,
    hooks: FitHooks | None = None,
    aux_labels: aux_names.AuxMode = "off",
) -> FitResult:
    """Fit an anomaly bundle on the normal training clips of data_dir and write it to out_dir.

    Clips are cut into windows of `window_seconds` (None: each clip is one image stretched
    to the model's width, as bundles before windows); the autoencoder and the detector are fit
    on windows, the split into fit and held-out data is by clip. Every part of the encoder's
    output (cfg.pooling) gets its own detector whose distances are fused by their held-out
    normal spread (`fusion="scores"`), or all parts are scored as one vector ("concat").
    detector_clips: "fit" fits the Mahalanobis detector on the clips the autoencoder was
    trained on; "all" refits it on every training clip (held-out ones included) once the
    thresholds and fusion weights are set from the held-out clips scored without them.
    codec_copies: every training clip is also fit on as a lossy-codec round trip
    (training.augment), so a healthy mp3 or ogg is scored as normal.
    fit_hop_seconds: seconds between the windows fitted on (None: half a window), which may
    be closer than the bundle's scoring hop (params.window_hop_seconds): overlapping windows
    give the detector more vectors, a scoring hop of one window halves the service's work.
    Levels (training.anomaly.calibration): `false_alarm_rate` and `severe_rate` of healthy
    clips from unseen recordings, estimated by cross-fitting the detector over recording
    groups (files, or the first group of the `group_by` regex in file names); a clip's
    statistic is its worst `stretch_seconds`. `kmeans_thresholds` moves the thresholds to
    KMeans boundaries of the labelled test scores instead (the seed's method; opt-in).
    `aggregation` is recorded for bundles read without a calibration.
    An unreadable training file is left out with a warning on stderr naming it (DatasetError
    with `strict_files`). `hooks`: progress callbacks (FitHooks). `aux_labels` ("auto"): when
    the training file names carry two or more labels (section, domain, attributes; see
    training.anomaly.aux_labels), the autoencoder also learns to tell them apart (recorded as
    `training.aux_labels`).
    """
    start = time.perf_counter()
    cfg = cfg or AutoencoderConfig()
    params = params or FeatureParams()
    clips = discover(Path(data_dir))
    train = training_clips(clips)
    if train[0].path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        params = image_params(train[0].path, params)
        window_seconds = None  # a picture is one window of the model's size
    params = params.model_copy(update={"window_seconds": window_seconds})
    params = FeatureParams.model_validate(params.model_dump())  # re-check the new fields
    if len(train) < 4:  # before reading any: fails as fast as it can
        split_heldout(len(train), cfg.validation_fraction, cfg.seed)

    fit_params = params
    if window_seconds is not None:
        fit_params = params.model_copy(update={"window_hop_seconds": fit_hop_seconds})
    copies = " and their ogg/mp3 copies" if codec_copies else ""
    stage(f"features of {len(train)} training clips{copies}", hooks)
    inputs: dict[int, Prepared] = {}
    images, owners, bad = read_windows(train, fit_params, "features (train)", codec_copies, inputs)
    skipped = tuple(f"{train[i].path.name} ({reason})" for i, reason in bad.items())
    if bad and strict_files:
        raise DatasetError(describe_unreadable(train, bad))
    for item in skipped:
        tqdm_write(f"warning: skipped unreadable file {item}")
    if bad:
        n = len(train)
        rank = {old: new for new, old in enumerate(i for i in range(n) if i not in bad)}
        train, owners = drop_unreadable(train, owners, bad)
        # a clip's inputs (i) and its codec copy's (i + n) follow it to its new index
        inputs = {
            rank[k % n] + len(train) * (k // n): v for k, v in inputs.items() if k % n in rank
        }
        if len(train) < 4:
            raise DatasetError(
                f"need at least 4 readable normal training clips, found {len(train)} "
                f"({len(bad)} unreadable skipped)"
            )
    tr_idx, val_idx = split_heldout(len(train), cfg.validation_fraction, cfg.seed)
    source = owners % len(train)  # a codec copy belongs with its clip
    tr_w, val_w = np.isin(source, tr_idx), np.isin(source, val_idx)
    original = owners < len(train)
    chosen = aux_names.choose(aux_labels, train)
    aux = None
    if chosen is not None:
        window_class = np.array(chosen.clip_class)[source]
        aux = AuxTargets(window_class[tr_w], window_class[val_w], len(chosen.names))
    also = f", telling {len(chosen.names)} labels apart" if chosen is not None else ""
    stage(f"training the autoencoder on {int(tr_w.sum())} windows{also}", hooks)
    model = fit_autoencoder(
        images[tr_w], images[val_w], cfg, hooks.epoch if hooks is not None else None, aux
    )

    stage("exporting the encoder and the autoencoder to ONNX", hooks)
    encoder_onnx = export.to_onnx(model.encoder, "spectrogram", "latent")
    autoencoder_onnx = export.to_onnx(model.autoencoder, "spectrogram", "reconstruction")
    probe = images[: min(8, len(images))][..., None]
    diff = float(np.abs(export.onnx_run(encoder_onnx, probe) - model.encoder(probe).numpy()).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX and Keras encoders disagree (max abs diff {diff:.2e})")

    # Latents from the exported graph: exactly what the service will compute.
    def encode(windows: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [
                export.onnx_run(encoder_onnx, windows[i : i + 64][..., None])
                for i in range(0, len(windows), 64)
            ]
        )

    stage(f"encoding {len(images)} windows with the exported encoder", hooks)
    latents = encode(images)
    widths = scoring_encoder_parts(model.autoencoder, cfg.pooling, cfg.band_pool, cfg.band_flux)
    if fusion == "concat" or len(widths) == 1:
        widths = [(cfg.pooling, int(latents.shape[1]))]

    def fit_on(rows: np.ndarray) -> tuple[dict[str, np.ndarray], list[Any], list[Any]]:
        return mahalanobis.fit_parts(
            latents[rows], widths, pca_components, pca_selection, shrinkage, max_components
        )

    stage("fitting PCA and the covariance of every part", hooks)
    arrays, parts, part_fits = fit_on(tr_w)
    parts = mahalanobis.standardise(parts, part_distances(latents[val_w], arrays, parts))

    # Levels: cross-fit the detector over recording groups (training.anomaly.calibration)
    named = calibration.names_carry_conditions(train)
    clip_cond_names = [calibration.condition_of(c, named) for c in train]
    cond_names = sorted(set(clip_cond_names))
    clip_condition = np.array([cond_names.index(c) for c in clip_cond_names])
    clip_groups = [
        calibration.group_of(c, re.compile(group_by) if group_by else None) for c in train
    ]
    # folds depend on the data alone, not on the autoencoder's seed
    clip_fold = calibration.assign_folds(clip_groups, clip_cond_names, 0)
    if fit_params == params:
        cal_latents, cal_owner = latents, owners
    else:  # the windows the service scores: the bundle's own hop
        cal_images, cal_owner = load_windows(train, params, "features (levels)", codec_copies)
        cal_latents = encode(cal_images)
    if codec_copies:  # low-bitrate copies: scored held out for the levels, never fitted on
        extra_images, extra_owner = load_calibration_copies(train, params, inputs)
        if len(extra_images):
            cal_latents = np.concatenate([cal_latents, encode(extra_images)])
            cal_owner = np.concatenate([cal_owner, extra_owner])
    weights = parts

    def fold_detector(rows: np.ndarray) -> calibration.Detector:
        fold_arrays, fold_parts, _ = fit_on(rows)
        return fold_arrays, [
            p.model_copy(update={"weight": w.weight})
            for p, w in zip(fold_parts, weights, strict=True)
        ]

    stage(
        f"calibrating the levels: the detector cross-fitted over {clip_fold.max() + 1} folds", hooks
    )
    raw_heldout = calibration.crossfit_scores(
        latents,
        source,
        cal_latents,
        cal_owner % len(train),
        clip_condition,
        clip_fold,
        len(cond_names),
        fold_detector,
    )
    hop = params.window_hop_seconds or params.window_seconds or 1.0

    def codec_of(owner: int) -> str | None:
        """The lossy format a calibration clip went through (a codec copy's, or the
        original file's own), None for lossless."""
        if owner >= 2 * len(train):
            return FORMATS[CALIBRATION_CODECS[owner // len(train) - 2]]
        if owner >= len(train):
            return codec_copy_format(owner - len(train))
        fmt = train[owner].path.suffix.lower().lstrip(".")
        return fmt if fmt in LOSSY_FORMATS else None

    def copy_of(owner: int) -> tuple[str, float, str, int | None] | None:
        """A codec copy's (codec setting, kbit/s, stream codec and sample rate as the
        service measures an upload's)."""
        p = inputs.get(owner)
        if owner < len(train) or p is None or p.bitrate_kbps is None or p.stream is None:
            return None
        if owner >= 2 * len(train):
            setting = CALIBRATION_CODECS[owner // len(train) - 2]
        else:
            setting = codec_copy_setting(owner - len(train))
        return setting, p.bitrate_kbps, p.stream, p.sample_rate

    detector_rows = tr_w
    if detector_clips == "all":  # more clips → a better covariance estimate
        stage("refitting the detector on every training clip", hooks)
        detector_rows = np.ones(len(latents), bool)
        arrays, parts, part_fits = fit_on(detector_rows)
        parts = [
            p.model_copy(update={"weight": w.weight, "loc": w.loc, "scale": w.scale})
            for p, w in zip(parts, weights, strict=True)
        ]
    arrays[CONDITION_OFFSETS] = calibration.condition_offsets(
        latents[detector_rows], clip_condition[source[detector_rows]], len(cond_names), arrays
    )

    # what the bundle (the service) scores the training clips, for the manifest
    bundle_raw = window_scores(cal_latents, arrays, parts, offsets=arrays[CONDITION_OFFSETS])
    # The low-bitrate copies only calibrate: the served detector never saw them, and it scores
    # them as it scores unseen recordings through that codec (worst 2-s stretch 19.39 ± 0.39
    # against 19.43 ± 0.32 raw), while the fold detectors, fitted on fewer clips, put them
    # nearer (19.07 ± 0.40): thresholds from those would false-alarm on mp3 at 24 kbit/s.
    only_calibrate = cal_owner >= 2 * len(train)
    raw_levels = np.where(only_calibrate[:, None], bundle_raw, raw_heldout)

    level = calibration.fit_level_calibration(
        raw_levels,
        cal_owner,
        len(train),
        clip_condition,
        cond_names,
        clip_groups,
        int(clip_fold.max()) + 1,
        stretch_seconds,
        hop,
        false_alarm_rate,
        severe_rate,
        codec_of,
        copy_of,
    )
    thresholds = level.thresholds
    known = [b for p in inputs.values() if (b := p.bandwidth_hz) is not None]
    if known:  # inputs this narrow were calibrated on: narrower ones get low_bandwidth
        level.calibration = level.calibration.model_copy(
            update={"min_bandwidth_hz": round(min(known), 1)}
        )

    def bundle_scores(clip_ids: np.ndarray) -> np.ndarray:
        """The bundle's scores of these training clips (originals)."""
        th = (thresholds.needs_maintenance, thresholds.severe)
        return np.array(
            [
                verdict(
                    bundle_raw[cal_owner == i],
                    level.calibration,
                    th,
                    codec=codec_of(i),
                    kbps=None if (made := copy_of(i)) is None else made[1],
                    stream=None if made is None else made[2],
                    sample_rate=None if made is None else made[3],
                ).score
                for i in clip_ids
            ]
        )

    held_clips = bundle_scores(val_idx)
    train_ids = np.unique(source[detector_rows & original])
    train_scores = bundle_scores(train_ids)
    window_counts = np.bincount(owners[original], minlength=len(train))

    stage("writing the bundle", hooks)
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
            "calibration": level.calibration,
            "scoring": {
                "method": "mahalanobis",
                "fusion": fusion,
                "parts": [p.model_dump(mode="json") for p in parts],
                "aggregation": aggregation,
                "aggregation_k": aggregation_k,
                "calibrated_on": "crossfit_recording_groups",
                "pca_selection": pca_selection,
                "shrinkage": shrinkage,
                "max_components": max_components,
                "detector_clips": detector_clips,
                "part_fits": part_fits,
            },
            "training": {
                "data": Path(data_dir).name,
                "group_by": group_by,
                "clips": len(train),
                "clips_fit": len(tr_idx),
                "clips_heldout": len(val_idx),
                "windows": len(images),
                "fit_hop_seconds": fit_params.window_hop_seconds,
                "windows_per_clip": {
                    "min": int(window_counts.min()),
                    "median": float(np.median(window_counts)),
                    "max": int(window_counts.max()),
                },
                "epochs": model.epochs_run,
                "seed": cfg.seed,
                "autoencoder": cfg.to_dict(),
                # the reconstruction's MSE (with aux labels, "loss" adds the classification's)
                "final_loss": model.history.get("reconstruction_loss", model.history["loss"])[-1],
                "final_val_loss": model.history.get(
                    "val_reconstruction_loss", model.history["val_loss"]
                )[-1],
                "aux_labels": {
                    "mode": aux_labels,
                    "on": chosen is not None,
                    "labels": chosen.summary() if chosen is not None else {},
                    "weight": cfg.aux_weight if chosen is not None else None,
                    # the classification's cross-entropy on the held-out clips, last epoch
                    "final_val_loss": model.history["val_aux_classes_loss"][-1]
                    if chosen is not None
                    else None,
                },
                "onnx_keras_max_abs_diff": diff,
                "normal_score_percentiles": {
                    f"p{q}": float(np.percentile(train_scores, q)) for q in (50, 90, 95, 99, 100)
                },
                # what the bundle (and so the service) scores the held-out clips
                "heldout_scores": {
                    train[i].path.name: float(s) for i, s in zip(val_idx, held_clips, strict=True)
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
        stage(f"evaluating on {len(test)} labelled test clips", hooks)
    if run_evaluation and test and kmeans_thresholds:
        _metrics, scored = evaluate(Path(data_dir), out_dir, write=False)
        labelled = np.array([c.label is not None for c in scored.clips])
        refined = calibration.refine_with_kmeans(
            thresholds,
            scored.scores[labelled],
            np.array([c.label == "anomaly" for c in scored.clips])[labelled],
            cfg.seed,
        )
        update_bundle(out_dir, {}, thresholds=refined)
    if run_evaluation and test:
        evaluation, _ = evaluate(Path(data_dir), out_dir, write=True)
    seconds = time.perf_counter() - start
    manifest = read_manifest(out_dir)
    update_bundle(out_dir, {}, training={**manifest.training, "fit_seconds": round(seconds, 1)})
    return FitResult(out_dir, seconds, evaluation, len(train), skipped, model.epochs_run)
