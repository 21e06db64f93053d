"""Model runtimes: one object owns a bundle's onnxruntime session and arrays.

Life cycle (after MLServer's MLModel): construct with a bundle folder, `load()`
verifies and loads it (or records why it failed), `ready` tells, and the
scoring methods take batches of model inputs `(batch, height, width)`.
Nothing here knows about HTTP.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import BundleError
from service.features import Prepared
from service.models.bundle import (
    ANOMALY_ARRAYS,
    CONDITION_OFFSETS,
    Aggregation,
    Manifest,
    aggregate,
    aggregation,
    check_anomaly_shapes,
    level_for,
    load_arrays,
    part_blocks,
    read_manifest,
    scoring_parts,
    verify_files,
    window_scores,
)
from service.models.verdict import (
    LOSSY_DEFAULT,
    LOSSY_FORMATS,
    Verdict,
    limited_by_input,
    verdict,
)

log = logging.getLogger("auscult.runtime")
RUN_CHUNK = 64  # 32-256 run 2048 windows alike (67-71 ms); smaller keeps the arena small


def session_options(threads: int) -> Any:
    """Options that fit a small CPU box: no spinning worker threads (they steal the core
    that decoding and STFT need), a fixed intra-op pool, sequential execution."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3
    # no arena: it keeps the largest run's activations for good (tens of MB after one
    # long clip); plain malloc is given back by the trim after a large request, at the same
    # speed here (2048 windows: 70 ms either way, one window 0.06 ms)
    opts.enable_cpu_mem_arena = False
    return opts


class ModelRuntime:
    """Base runtime. `status` is "loading", "ready" or "failed" (then `reason` says why)."""

    onnx_file = ""

    def __init__(self, bundle_dir: Path, manifest: Manifest | None = None, threads: int = 1):
        self.bundle_dir = Path(bundle_dir)
        self.name = self.bundle_dir.name  # the folder name is the model's URL name
        self.manifest = manifest
        self.threads = threads
        self.status = "loading"
        self.reason: str | None = None
        self.session: Any = None
        self.load_seconds: float | None = None

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    @property
    def kind(self) -> str | None:
        return self.manifest.kind if self.manifest else None

    def load(self) -> None:
        """Verify the bundle and open the session; on failure keep the reason, never raise."""
        start = time.perf_counter()
        try:
            manifest = self.manifest or read_manifest(self.bundle_dir)
            self.manifest = manifest
            verify_files(self.bundle_dir, manifest)
            self._open_session(manifest)
            self._load_extra(manifest)
            self._warm_up(manifest)
        except BundleError as e:
            self.status, self.reason = "failed", str(e)
            log.error("bundle_failed", extra={"model": self.name, "reason": self.reason})
            return
        except Exception as e:  # e.g. onnxruntime refusing a corrupt graph
            self.status, self.reason = "failed", f"{type(e).__name__}: {e}"
            log.error("bundle_failed", extra={"model": self.name, "reason": self.reason})
            return
        self.status = "ready"
        self.load_seconds = time.perf_counter() - start
        log.info("bundle_loaded", extra={"model": self.name, "seconds": self.load_seconds})

    def _new_session(self) -> Any:
        """An onnxruntime session on the bundle's `onnx_file`, with session_options."""
        import onnxruntime as ort

        return ort.InferenceSession(
            str(self.bundle_dir / self.onnx_file),
            sess_options=session_options(self.threads),
            providers=["CPUExecutionProvider"],
        )

    def _open_session(self, manifest: Manifest) -> None:
        self.session = self._new_session()
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or inputs[0].name != manifest.input.name:
            raise BundleError(
                f"{self.onnx_file} input is {[i.name for i in inputs]}, "
                f"manifest says {manifest.input.name!r}"
            )
        f = manifest.features
        expected = [f.height, f.width, 1]
        if list(inputs[0].shape[1:]) != expected or list(manifest.input.shape[1:]) != expected:
            raise BundleError(
                f"{self.onnx_file} input shape {inputs[0].shape} does not match the "
                f"features ({expected})"
            )

    def _load_extra(self, manifest: Manifest) -> None:
        pass

    def _warm_up(self, manifest: Manifest) -> None:
        f = manifest.features
        self.run(np.zeros((1, f.height, f.width), np.float32))

    @property
    def output_dim(self) -> int | None:
        dim = self.session.get_outputs()[0].shape[-1]
        return dim if isinstance(dim, int) else None

    def run(self, images: np.ndarray) -> np.ndarray:
        """(batch, h, w) float32 → first ONNX output (batch, d), in runs of at most
        RUN_CHUNK inputs (a long clip's windows must not allocate activations at once)."""
        assert self.manifest is not None
        name = self.manifest.input.name
        if len(images) <= RUN_CHUNK:
            return self.session.run(None, {name: images[..., None]})[0]
        return np.concatenate(
            [
                self.session.run(None, {name: images[i : i + RUN_CHUNK, ..., None]})[0]
                for i in range(0, len(images), RUN_CHUNK)
            ]
        )


class AnomalyRuntime(ModelRuntime):
    """encoder.onnx → latent → per part: PCA → Mahalanobis → weighted sum (window score,
    one per known operating condition); window scores → the clip's Verdict."""

    onnx_file = "encoder.onnx"
    aggregation: tuple[Aggregation, int] = ("mean", 3)
    offsets: np.ndarray | None = None

    def _load_extra(self, manifest: Manifest) -> None:
        if manifest.thresholds is None:
            raise BundleError("an anomaly bundle needs thresholds in its manifest")
        self.arrays = load_arrays(self.bundle_dir, ANOMALY_ARRAYS)
        check_anomaly_shapes(self.arrays, self.output_dim)
        k, d = self.arrays["pca_components"].shape
        self.parts = scoring_parts(manifest, k, d)
        self.blocks = part_blocks(self.arrays, self.parts)
        self.aggregation = aggregation(manifest)
        self.offsets = None
        if manifest.calibration is not None:
            if f"{CONDITION_OFFSETS}.npy" not in manifest.files:
                raise BundleError(f"a calibrated bundle needs {CONDITION_OFFSETS}.npy")
            offsets = load_arrays(self.bundle_dir, (CONDITION_OFFSETS,))[CONDITION_OFFSETS]
            if offsets.ndim != 2 or offsets.shape[1] != d or not np.isfinite(offsets).all():
                raise BundleError(
                    f"{CONDITION_OFFSETS}.npy must be finite (n_conditions, {d}), "
                    f"got {offsets.shape}"
                )
            manifest.calibration.check(len(offsets))
            self.offsets = offsets

    @property
    def conditions(self) -> list[str]:
        """The operating conditions a request may name (none for uncalibrated bundles)."""
        cal = self.manifest.calibration if self.manifest else None
        return cal.condition_names() if cal else []

    def latents(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)

    def score(self, images: np.ndarray) -> np.ndarray:
        """(batch, h, w) windows → raw window scores (float64): (batch, n_conditions) for a
        calibrated bundle (each condition's), (batch,) for older bundles."""
        return window_scores(
            self.latents(images), self.arrays, self.parts, self.blocks, self.offsets
        )

    def verdict(
        self,
        raw: np.ndarray,
        condition: str | None = None,
        fmt: str | None = None,
        lossy: bool | None = None,
        bandwidth_hz: float | None = None,
        bitrate_kbps: float | None = None,
        stream: str | None = None,
        sample_rate: int | None = None,
    ) -> Verdict:
        """One clip's raw window scores (what `score` returned for its windows) → its score,
        level, condition and worst stretch. `condition` must be one of `conditions`; `fmt`:
        the upload's format (wav, flac, ogg, mp3, png…), or None for model inputs; `lossy`:
        whether the sound went through a lossy codec (None: ogg and mp3 did; a lossless
        file that did is judged as ogg); `bandwidth_hz`: the upload's effective bandwidth
        (Prepared.bandwidth_hz; below the model's top band: a `low_bandwidth` warning and
        never `severe`); `bitrate_kbps`: the upload's (Prepared.bitrate_kbps), which picks
        a lossy upload's tails by bitrate, with `stream` (Prepared.stream: opus or vorbis
        in ogg) and `sample_rate` (the upload's own rate, Prepared.sample_rate)."""
        m = self.manifest
        assert m is not None and m.thresholds is not None
        th = (m.thresholds.needs_maintenance, m.thresholds.severe)
        if m.calibration is not None:
            codec = fmt if fmt in LOSSY_FORMATS else None
            if lossy is False:
                codec = None
            elif lossy and codec is None:
                codec = LOSSY_DEFAULT
            own = codec is not None and codec == fmt  # the upload's own encoding
            kbps, inside, rate = (bitrate_kbps, stream, sample_rate) if own else (None,) * 3
            v = verdict(raw, m.calibration, th, condition, codec, kbps, inside, rate)
        else:
            s = aggregate(raw, *self.aggregation)  # bundles before calibration
            worst = int(np.argmax(raw))
            v = Verdict(s, level_for(s, m.thresholds), "default", "only", raw, (worst, worst))
        fitted = m.calibration.min_bandwidth_hz if m.calibration is not None else None
        return limited_by_input(v, bandwidth_hz, m.features, fitted)

    def verdict_of(
        self,
        raw: np.ndarray,
        p: Prepared,
        condition: str | None = None,
        lossy: bool | None = None,
    ) -> Verdict:
        """`verdict` of an upload's raw window scores, with what its Prepared says about the
        input (format, bandwidth, bitrate, the stream inside, sample rate)."""
        return self.verdict(
            raw,
            condition,
            p.format,
            lossy,
            p.bandwidth_hz,
            p.bitrate_kbps,
            p.stream,
            p.sample_rate,
        )

    def clip_score(self, raw: np.ndarray) -> float:
        """One clip's raw window scores → its score (`verdict(raw).score`)."""
        return self.verdict(raw).score


class ClassifierRuntime(ModelRuntime):
    """classifier.onnx → softmax probabilities over the manifest's ordered labels."""

    onnx_file = "classifier.onnx"

    def _load_extra(self, manifest: Manifest) -> None:
        if not manifest.labels:
            raise BundleError("a classifier bundle needs its labels in the manifest")
        if self.output_dim is not None and self.output_dim != len(manifest.labels):
            raise BundleError(
                f"classifier outputs {self.output_dim} classes, manifest lists "
                f"{len(manifest.labels)} labels"
            )

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(batch, h, w) → (batch, n_labels), rows sum to 1."""
        return self.run(images).astype(np.float64)


class GeneratorRuntime(ModelRuntime):
    """generator.onnx: noise and a one-hot label → images → Griffin-Lim audio
    (service.models.generator). Inputs: the manifest's `input` (noise) and
    `generator.label_input`."""

    onnx_file = "generator.onnx"

    def _open_session(self, manifest: Manifest) -> None:
        spec, f = manifest.generator, manifest.features
        if spec is None or not manifest.labels:
            raise BundleError("a generator bundle needs `generator` and `labels` in its manifest")
        if f.scaling != "fixed_db" or f.height != f.n_mels:
            raise BundleError("a generator's images must be unresized fixed_db log-mels")
        self.session = self._new_session()
        got = {i.name: list(i.shape[1:]) for i in self.session.get_inputs()}
        want = {manifest.input.name: [spec.latent_dim], spec.label_input: [len(manifest.labels)]}
        if got != want:
            raise BundleError(f"{self.onnx_file} inputs are {got}, the manifest says {want}")
        out = list(self.session.get_outputs()[0].shape[1:])
        if out != [f.height, f.width, 1]:
            raise BundleError(
                f"{self.onnx_file} output shape {out} does not match the features "
                f"({[f.height, f.width, 1]})"
            )

    def _warm_up(self, manifest: Manifest) -> None:
        self.generate(0, 1, 0)

    def images(self, label_index: int, noise: np.ndarray) -> np.ndarray:
        """Class index, (count, latent_dim) float32 noise → (count, height, width) in [0, 1]."""
        assert self.manifest is not None and self.manifest.generator is not None
        onehot = np.zeros((len(noise), len(self.manifest.labels or [])), np.float32)
        onehot[:, label_index] = 1.0
        feeds = {self.manifest.input.name: noise, self.manifest.generator.label_input: onehot}
        return self.session.run(None, feeds)[0][..., 0]

    def generate(self, label_index: int, count: int, seed: int) -> list[np.ndarray]:
        """`count` clips of one class, each (n_samples,) float32 at the features' rate; the
        same seed gives the same clips (noise and Griffin-Lim's starting phases)."""
        from service.models.generator import image_to_audio

        assert self.manifest is not None and self.manifest.generator is not None
        rng = np.random.default_rng(seed)
        spec = self.manifest.generator
        noise = rng.standard_normal((count, spec.latent_dim)) * spec.noise_scale
        images = self.images(label_index, noise.astype(np.float32))
        iterations = self.manifest.generator.griffin_lim_iterations
        return [image_to_audio(im, self.manifest.features, iterations, rng) for im in images]


RUNTIMES: dict[str, type[ModelRuntime]] = {
    "anomaly": AnomalyRuntime,
    "classifier": ClassifierRuntime,
    "generator": GeneratorRuntime,
}


def open_runtime(bundle_dir: Path, threads: int = 1) -> ModelRuntime:
    """Read the manifest to pick the runtime class, then load. Never raises."""
    try:
        manifest = read_manifest(bundle_dir)
    except BundleError as e:
        rt = ModelRuntime(bundle_dir, None, threads)
        rt.status, rt.reason = "failed", str(e)
        log.error("bundle_failed", extra={"model": rt.name, "reason": rt.reason})
        return rt
    cls = RUNTIMES[manifest.kind]
    rt = cls(bundle_dir, manifest, threads)
    rt.load()
    return rt
