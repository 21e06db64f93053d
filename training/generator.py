"""`python -m training fit-generator`: a class-conditional GAN (CGAN, Mirza and Osindero
2014) on the classifier's log-mel images → ONNX generator → bundle of kind `generator`.

Generator: noise (b, latent_dim) and a one-hot label (b, n_classes) → Dense → three
upsampling convolutions → sigmoid image (b, height, width, 1) in [0, 1], the scale of
service.features' fixed_db images. Discriminator: strided convolutions → features φ; one
logit (real vs generated *for that label*, the label entering by projection) and an
auxiliary class head on φ alone. Adam (2e-4, β1 0.5) on the non-saturating loss with
one-sided label smoothing, plus the class loss (real clips for D, intended class for G).
Audio comes from the images through service.models.generator (Griffin-Lim), as in the service.
"""

from __future__ import annotations

import io
import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.features import FeatureParams
from service.models.bundle import GeneratorSpec, TensorSpec, write_bundle
from service.models.generator import image_to_audio, wav_bytes
from training.classifier.data import (
    check_classes,
    compile_pattern,
    discover_labelled,
    load_images,
    ordered_labels,
)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # as training/__init__.py

NOISE_INPUT = "noise"
LABEL_INPUT = "label"
OUTPUT_NAME = "spectrogram"
PARITY_TOLERANCE = 1e-4
GRID_COLUMNS = 4


@dataclass(frozen=True)
class GeneratorConfig:
    """Network shape and training settings (recorded in the manifest)."""

    latent_dim: int = 32
    filters: tuple[int, ...] = (128, 64, 32)  # generator, widest first; one upsampling each
    disc_filters: tuple[int, ...] = (32, 64, 128)
    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 2e-4
    beta_1: float = 0.5
    real_label: float = 0.9  # one-sided label smoothing
    class_weight: float = 1.0  # the auxiliary class loss (0: a plain projection CGAN)
    grid_every: int = 1  # a sample grid every this many epochs (and after the last)
    griffin_lim_iterations: int = 32
    # the noise's spread when the bundle samples (GeneratorRuntime), not in training and not
    # in the grids and sample wavs written here: below 1, fewer but surer clips (truncation)
    noise_scale: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class GeneratorFitResult:
    bundle_dir: Path
    seconds: float
    history: dict[str, list[float]] = field(default_factory=dict)


def build_generator(height: int, width: int, n_classes: int, cfg: GeneratorConfig) -> Any:
    """[noise (b, latent_dim), label (b, n_classes)] → (b, height, width, 1) in [0, 1].
    Upsampling then convolution (not transposed convolutions: no checkerboard)."""
    import keras
    from keras import layers

    ups = len(cfg.filters)
    h0, w0 = math.ceil(height / 2**ups), math.ceil(width / 2**ups)
    noise = keras.Input((cfg.latent_dim,), name=NOISE_INPUT)
    label = keras.Input((n_classes,), name=LABEL_INPUT)
    x = layers.Concatenate(name="condition")([noise, label])
    x = layers.Dense(h0 * w0 * cfg.filters[0], use_bias=False, name="project")(x)
    x = layers.BatchNormalization(momentum=0.9, name="project_bn")(x)
    x = layers.LeakyReLU(0.2, name="project_act")(x)
    x = layers.Reshape((h0, w0, cfg.filters[0]), name="reshape")(x)
    for i, f in enumerate(cfg.filters):
        x = layers.UpSampling2D(2, name=f"up{i}")(x)
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"conv{i}_bn")(x)
        x = layers.LeakyReLU(0.2, name=f"conv{i}_act")(x)
    x = layers.Conv2D(1, 3, padding="same", activation="sigmoid", name="to_image")(x)
    crop_h, crop_w = h0 * 2**ups - height, w0 * 2**ups - width
    x = layers.Cropping2D(((0, crop_h), (0, crop_w)), name=OUTPUT_NAME)(x)
    return keras.Model([noise, label], x, name="generator")


def build_discriminator(height: int, width: int, n_classes: int, cfg: GeneratorConfig) -> Any:
    """[image (b, height, width, 1), label (b, n_classes)] → [(b, 1) logit: real for that
    label, (b, n_classes) class logits]. The label enters by projection (Miyato and Koyama
    2018): logit = w·φ(x) + embed(label)·φ(x); the class head (AC-GAN, Odena et al. 2017)
    sees φ(x) only, so it cannot read the label it is asked to predict."""
    import keras
    from keras import layers

    image = keras.Input((height, width, 1), name="image")
    label = keras.Input((n_classes,), name=LABEL_INPUT)
    x = image
    for i, f in enumerate(cfg.disc_filters):
        x = layers.Conv2D(f, 4, strides=2, padding="same", name=f"conv{i}")(x)
        x = layers.LeakyReLU(0.2, name=f"act{i}")(x)
    features = layers.Flatten(name="flatten")(x)
    features = layers.Dropout(0.2, seed=cfg.seed, name="dropout")(features)
    embedded = layers.Dense(features.shape[-1], use_bias=False, name="label_embedding")(label)
    projection = layers.Dot(axes=1, name="projection")([embedded, features])
    logit = layers.Add(name="logit")([layers.Dense(1, name="real")(features), projection])
    classes = layers.Dense(n_classes, name="classes")(features)
    return keras.Model([image, label], [logit, classes], name="discriminator")


def one_hot(y: np.ndarray, n_classes: int) -> np.ndarray:
    """(n,) class indices → (n, n_classes) float32."""
    return np.eye(n_classes, dtype=np.float32)[y]


def sample_images(
    generator: Any, labels: np.ndarray, n_classes: int, latent_dim: int, seed: int
) -> np.ndarray:
    """Keras generator, (n,) class indices → (n, height, width) images (inference mode)."""
    noise = np.random.default_rng(seed).standard_normal((len(labels), latent_dim))
    out = generator([noise.astype(np.float32), one_hot(labels, n_classes)], training=False)
    return np.asarray(out)[..., 0]


def grid_png(images: np.ndarray, rows: int) -> bytes:
    """(rows·cols, h, w) images in [0, 1] → one PNG: a row per class, high bands on top,
    a one-pixel gap between tiles."""
    from PIL import Image

    n, h, w = images.shape
    cols = n // rows
    canvas = np.ones((rows * (h + 1) - 1, cols * (w + 1) - 1), np.float32)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[i][::-1]
    buf = io.BytesIO()
    Image.fromarray(np.round(canvas * 255).astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def train(
    images: np.ndarray, y: np.ndarray, n_classes: int, cfg: GeneratorConfig
) -> tuple[Any, dict[str, list[float]], dict[str, bytes]]:
    """images (n, h, w) in [0, 1], y (n,) class indices → (Keras generator, loss history,
    {grid file name: PNG bytes}: GRID_COLUMNS samples per class, same noise every epoch)."""
    import keras
    import tensorflow as tf

    from training.anomaly.autoencoder import seed_everything

    seed_everything(cfg.seed)
    h, w = images.shape[1:]
    gen = build_generator(h, w, n_classes, cfg)
    disc = build_discriminator(h, w, n_classes, cfg)
    g_opt = keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta_1)
    d_opt = keras.optimizers.Adam(cfg.learning_rate, beta_1=cfg.beta_1)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)
    cce = keras.losses.CategoricalCrossentropy(from_logits=True)
    latent = cfg.latent_dim

    @tf.function
    def step(real: Any, labels: Any, noise: Any) -> tuple[Any, Any]:
        with tf.GradientTape() as g_tape, tf.GradientTape() as d_tape:
            fake = gen([noise, labels], training=True)
            real_logit, real_class = disc([real, labels], training=True)
            fake_logit, fake_class = disc([fake, labels], training=True)
            d_loss = bce(tf.fill(tf.shape(real_logit), cfg.real_label), real_logit) + bce(
                tf.zeros_like(fake_logit), fake_logit
            )
            g_loss = bce(tf.ones_like(fake_logit), fake_logit)
            if cfg.class_weight:  # the class head learns on real clips, G must satisfy it
                d_loss += cfg.class_weight * cce(labels, real_class)
                g_loss += cfg.class_weight * cce(labels, fake_class)
        d_opt.apply_gradients(
            zip(
                d_tape.gradient(d_loss, disc.trainable_variables),
                disc.trainable_variables,
                strict=True,
            )
        )
        g_opt.apply_gradients(
            zip(
                g_tape.gradient(g_loss, gen.trainable_variables),
                gen.trainable_variables,
                strict=True,
            )
        )
        return d_loss, g_loss

    rng = np.random.default_rng(cfg.seed)
    x = images[..., None].astype(np.float32)
    labels_1h = one_hot(y, n_classes)
    grid_labels = np.repeat(np.arange(n_classes), GRID_COLUMNS)
    history: dict[str, list[float]] = {"d_loss": [], "g_loss": []}
    grids: dict[str, bytes] = {}
    for epoch in range(1, cfg.epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(x))
        d_losses, g_losses = [], []
        for b in range(max(1, len(order) // cfg.batch_size)):  # the remainder waits
            idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            noise = rng.standard_normal((len(idx), latent)).astype(np.float32)
            d_loss, g_loss = step(x[idx], labels_1h[idx], noise)
            d_losses.append(float(d_loss))
            g_losses.append(float(g_loss))
        history["d_loss"].append(float(np.mean(d_losses)))
        history["g_loss"].append(float(np.mean(g_losses)))
        print(
            f"epoch {epoch}/{cfg.epochs}: d_loss {history['d_loss'][-1]:.3f} "
            f"g_loss {history['g_loss'][-1]:.3f} ({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
        if epoch % cfg.grid_every == 0 or epoch == cfg.epochs:
            samples = sample_images(gen, grid_labels, n_classes, latent, cfg.seed)
            grids[f"grid_epoch_{epoch:03d}.png"] = grid_png(samples, n_classes)
    return gen, history, grids


def to_onnx(generator: Any, n_classes: int, latent_dim: int) -> bytes:
    """Keras generator → ONNX with inputs `noise` (b, latent_dim) and `label` (b, n_classes)
    float32 and output `spectrogram` (b, height, width, 1); dynamic batch axis."""
    import tensorflow as tf
    import tf2onnx

    from training.export import OPSET

    spec = (
        tf.TensorSpec((None, latent_dim), tf.float32, name=NOISE_INPUT),
        tf.TensorSpec((None, n_classes), tf.float32, name=LABEL_INPUT),
    )

    @tf.function(input_signature=spec)
    def forward(noise: Any, label: Any) -> dict[str, Any]:
        return {OUTPUT_NAME: generator([noise, label], training=False)}

    proto, _ = tf2onnx.convert.from_function(forward, input_signature=spec, opset=OPSET)
    return proto.SerializeToString()


def export_checked(generator: Any, n_classes: int, latent_dim: int) -> tuple[bytes, float]:
    """ONNX bytes and the max |ONNX - Keras| on a few samples; raises above tolerance."""
    import onnxruntime as ort

    onnx_bytes = to_onnx(generator, n_classes, latent_dim)
    labels = np.arange(n_classes) % n_classes
    noise = np.random.default_rng(1).standard_normal((n_classes, latent_dim)).astype(np.float32)
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(None, {NOISE_INPUT: noise, LABEL_INPUT: one_hot(labels, n_classes)})[0]
    want = np.asarray(generator([noise, one_hot(labels, n_classes)], training=False))
    diff = float(np.abs(got - want).max())
    if diff > PARITY_TOLERANCE:
        raise RuntimeError(f"ONNX and Keras generators disagree (max abs diff {diff:.2e})")
    return onnx_bytes, diff


def fit_generator(
    data_dir: Path,
    out_dir: Path,
    cfg: GeneratorConfig | None = None,
    params: FeatureParams | None = None,
    label_pattern: str | None = None,
    include_pattern: str | None = None,
) -> GeneratorFitResult:
    """Fit a CGAN on the clips of data_dir (all of them, or those whose file name matches
    `include_pattern`, searched) and write a generator bundle to out_dir: generator.onnx, the sample
    grids and one Griffin-Lim wav per class (`sample_<label>.wav`)."""
    from training.anomaly.fit import library_versions
    from training.classifier.network import feature_params

    start = time.perf_counter()
    cfg = cfg or GeneratorConfig()
    params = params or feature_params(onset_margin=None)
    if params.height != params.n_mels or params.scaling != "fixed_db":
        raise ValueError("a generator needs unresized fixed_db images (height = n_mels)")
    clips = discover_labelled(Path(data_dir), label_pattern)
    include = compile_pattern(include_pattern, "--include-pattern")
    if include is not None:
        clips = [c for c in clips if include.search(c.path.name)]
        check_classes(clips)
    labels = ordered_labels(clips)
    images = load_images(clips, params, "features")
    y = np.array([labels.index(c.label) for c in clips])
    gen, history, grids = train(images, y, len(labels), cfg)
    onnx_bytes, diff = export_checked(gen, len(labels), cfg.latent_dim)

    files: dict[str, bytes] = {"generator.onnx": onnx_bytes, **grids}
    rng = np.random.default_rng(cfg.seed)
    per_class = sample_images(gen, np.arange(len(labels)), len(labels), cfg.latent_dim, cfg.seed)
    for label, image in zip(labels, per_class, strict=True):
        audio = image_to_audio(image, params, cfg.griffin_lim_iterations, rng)
        files[f"sample_{label}.wav"] = wav_bytes(audio, params.sample_rate)
    out_dir = Path(out_dir)
    write_bundle(
        out_dir,
        {
            "name": out_dir.name,
            "kind": "generator",
            "features": params,
            "input": TensorSpec(name=NOISE_INPUT, shape=[None, cfg.latent_dim]),
            "output": TensorSpec(name=OUTPUT_NAME, shape=[None, params.height, params.width, 1]),
            "labels": labels,
            "generator": GeneratorSpec(
                latent_dim=cfg.latent_dim,
                label_input=LABEL_INPUT,
                griffin_lim_iterations=cfg.griffin_lim_iterations,
                noise_scale=cfg.noise_scale,
            ),
            "training": {
                "data": Path(data_dir).name,
                "label_pattern": label_pattern,
                "include_pattern": include_pattern,
                "clips": len(clips),
                "class_counts": dict(sorted(Counter(c.label for c in clips).items())),
                "epochs": cfg.epochs,
                "seed": cfg.seed,
                "generator": cfg.to_dict(),
                "final_d_loss": history["d_loss"][-1],
                "final_g_loss": history["g_loss"][-1],
                "onnx_keras_max_abs_diff": diff,
                "fit_seconds": round(time.perf_counter() - start, 1),
            },
            "versions": library_versions(),
        },
        files=files,
    )
    return GeneratorFitResult(out_dir, time.perf_counter() - start, history)


def write_wavs(model_dir: Path, label: str, n: int, seed: int, out_dir: Path) -> list[Path]:
    """n clips of `label` from a generator bundle, through the service's own runtime (ONNX
    generator + Griffin-Lim) → `<out_dir>/<label>_<seed>_<i>.wav`. Raises DatasetError for
    a bundle that does not load or a label it does not know."""
    from service.models.runtimes import GeneratorRuntime, open_runtime
    from training.datasets import DatasetError

    if n < 1:
        raise DatasetError("--n must be at least 1")
    rt = open_runtime(Path(model_dir))
    if not rt.ready or not isinstance(rt, GeneratorRuntime):
        raise DatasetError(f"{model_dir} is not a generator bundle: {rt.reason or rt.kind}")
    assert rt.manifest is not None and rt.manifest.labels is not None
    if label not in rt.manifest.labels:
        raise DatasetError(f"unknown label {label!r}; the bundle has {rt.manifest.labels}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    clips = rt.generate(rt.manifest.labels.index(label), n, seed)
    for i, audio in enumerate(clips):
        path = out_dir / f"{label}_{seed}_{i}.wav"
        path.write_bytes(wav_bytes(audio, rt.manifest.features.sample_rate))
        paths.append(path)
    return paths
