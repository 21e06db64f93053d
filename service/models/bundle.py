"""The model bundle contract: manifest schema, checksums, atomic writing, verification.

A bundle is a folder `artifacts/<name>/` (see DESIGN.md). Training writes it
with `write_bundle`; the service reads it with `read_bundle`, which refuses a
bundle whose schema version, file list or checksums do not match.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field, ValidationError

from service.errors import BundleError
from service.features import FeatureParams
from service.models.verdict import LevelCalibration, level_of

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"

ANOMALY_ARRAYS = ("pca_components", "pca_mean", "mean_vec", "inv_cov")
CONDITION_OFFSETS = "condition_offsets"  # (n_conditions, d): with a manifest `calibration`
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "anomaly": ("encoder.onnx", *(f"{a}.npy" for a in ANOMALY_ARRAYS)),
    "classifier": ("classifier.onnx",),
    "generator": ("generator.onnx",),
}


class TensorSpec(BaseModel):
    name: str
    shape: list[int | None] = Field(description="None marks the dynamic batch axis")


class Thresholds(BaseModel):
    """Score boundaries: normal < needs_maintenance ≤ score < severe ≤ severe."""

    needs_maintenance: float
    severe: float
    method: str = Field(description="how the thresholds were chosen")
    details: dict[str, Any] = Field(default_factory=dict)


class ScoringPart(BaseModel):
    """One part of the scoring vector (manifest `scoring.parts`): latent columns
    [dims[0], dims[1]) scored with PCA components [components[0], components[1]) by their
    own Mahalanobis distance d; the window score is Σ weight·d over the parts."""

    name: str
    dims: tuple[int, int]
    components: tuple[int, int]
    residual_precision: float = Field(0.0, ge=0)
    weight: float = Field(1.0, gt=0)
    loc: float | None = Field(None, description="mean of held-out normal windows' d")
    scale: float | None = Field(None, description="their standard deviation")


Aggregation = Literal["mean", "max", "top_k_mean"]


class GeneratorSpec(BaseModel):
    """How a generator bundle makes audio (manifest `generator`): standard normal noise
    (the manifest's `input`, (b, latent_dim)) and a one-hot label (input `label_input`,
    (b, n_labels)) → image (the `output`) → Griffin-Lim (service.models.generator)."""

    latent_dim: int = Field(gt=0)
    label_input: str
    griffin_lim_iterations: int = Field(32, ge=1, le=1000)
    noise_scale: float = Field(
        1.0, gt=0, le=1, description="the noise's standard deviation (< 1: the truncation trick)"
    )


class Manifest(BaseModel):
    """`manifest.json`; everything the service needs besides the binary files."""

    schema_version: int
    name: str
    kind: Literal["anomaly", "classifier", "generator"]
    version: str
    created_at: str
    features: FeatureParams
    input: TensorSpec
    output: TensorSpec
    thresholds: Thresholds | None = None
    calibration: LevelCalibration | None = Field(
        None,
        description="anomaly bundles: conditions and the clip statistic (service.models.verdict)",
    )
    labels: list[str] | None = None
    generator: GeneratorSpec | None = None
    scoring: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    files: dict[str, str] = Field(description="sha256 of every other file in the bundle")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def new_version(files: dict[str, str]) -> str:
    """A version string: UTC date plus a digest of the files' checksums."""
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:8]
    return f"{datetime.now(UTC):%Y%m%d}-{digest}"


def write_bundle(
    out_dir: Path,
    manifest_fields: dict[str, Any],
    arrays: dict[str, np.ndarray] | None = None,
    files: dict[str, bytes] | None = None,
) -> Manifest:
    """Write a complete bundle atomically: build it in a temp folder, then rename.

    `manifest_fields` are Manifest fields except schema_version, version,
    created_at and files, which are filled in here. An existing `out_dir` is
    replaced only once the new bundle is complete.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for key, arr in (arrays or {}).items():
            np.save(tmp / f"{key}.npy", np.asarray(arr), allow_pickle=False)
        for fname, data in (files or {}).items():
            (tmp / fname).write_bytes(data)
        checksums = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            version=manifest_fields.pop("version", None) or new_version(checksums),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            files=checksums,
            **manifest_fields,
        )
        (tmp / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def update_bundle(bundle_dir: Path, extra_files: dict[str, bytes], **fields: Any) -> Manifest:
    """Add files (e.g. a report) and manifest fields to an existing bundle, keeping checksums."""
    bundle_dir = Path(bundle_dir)
    manifest = read_manifest(bundle_dir)
    for fname, data in extra_files.items():
        (bundle_dir / fname).write_bytes(data)
        manifest.files[fname] = sha256_file(bundle_dir / fname)
    updated = manifest.model_copy(update=fields)
    tmp = bundle_dir / f".{MANIFEST}.tmp"
    tmp.write_text(updated.model_dump_json(indent=2) + "\n")
    tmp.replace(bundle_dir / MANIFEST)
    return updated


def read_manifest(bundle_dir: Path) -> Manifest:
    """Parse and schema-check manifest.json (checksums are not verified here)."""
    path = Path(bundle_dir) / MANIFEST
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise BundleError(f"no {MANIFEST}") from e
    except (OSError, ValueError) as e:
        raise BundleError(f"unreadable {MANIFEST}: {e}") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{MANIFEST} holds a JSON {type(raw).__name__}, not an object")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"schema_version {raw.get('schema_version')!r} is not supported "
            f"(this service reads {SCHEMA_VERSION})"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        raise BundleError(f"invalid {MANIFEST}: {e.error_count()} error(s): {e}") from e


def verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Check that the kind's required files are listed and every listed file matches."""
    bundle_dir = Path(bundle_dir)
    missing = [f for f in REQUIRED_FILES[manifest.kind] if f not in manifest.files]
    if missing:
        raise BundleError(f"manifest lists no {', '.join(missing)}")
    for fname, expected in manifest.files.items():
        path = bundle_dir / fname
        if not path.is_file():
            raise BundleError(f"missing file {fname}")
        if sha256_file(path) != expected:
            raise BundleError(f"checksum mismatch for {fname}")


def load_arrays(bundle_dir: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Load float arrays (as float32) without pickles."""
    out = {}
    for name in names:
        try:
            out[name] = np.load(Path(bundle_dir) / f"{name}.npy", allow_pickle=False).astype(
                np.float32
            )
        except (OSError, ValueError) as e:
            raise BundleError(f"unreadable {name}.npy: {e}") from e
    return out


def check_anomaly_shapes(arrays: dict[str, np.ndarray], latent_dim: int | None) -> None:
    """pca_components (k, d), pca_mean (d,), mean_vec (k,), inv_cov (k, k); d = encoder output."""
    comps, pmean = arrays["pca_components"], arrays["pca_mean"]
    mvec, icov = arrays["mean_vec"], arrays["inv_cov"]
    if comps.ndim != 2:
        raise BundleError(f"pca_components must be 2-D, got shape {comps.shape}")
    k, d = comps.shape
    if latent_dim is not None and d != latent_dim:
        raise BundleError(f"pca_components has {d} columns but the encoder outputs {latent_dim}")
    if pmean.shape != (d,):
        raise BundleError(f"pca_mean has shape {pmean.shape}, expected ({d},)")
    if mvec.shape != (k,):
        raise BundleError(f"mean_vec has shape {mvec.shape}, expected ({k},)")
    if icov.shape != (k, k):
        raise BundleError(f"inv_cov has shape {icov.shape}, expected ({k}, {k})")
    if not all(np.isfinite(a).all() for a in arrays.values()):
        raise BundleError("bundle arrays contain NaN or infinite values")


def mahalanobis(
    latents: np.ndarray,
    pca_components: np.ndarray,
    pca_mean: np.ndarray,
    mean_vec: np.ndarray,
    inv_cov: np.ndarray,
    residual_precision: float = 0.0,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """(batch, d) latents → (batch,) distances sqrt((z-μ)ᵀ Σ⁻¹ (z-μ) + w·‖r‖²), or with
    `offsets` (C, d) → (batch, C): the distance to each condition's mean, pca_mean +
    offsets[c], under the same covariance.

    z is the PCA projection of the centred latent c = latent - pca_mean, and r = c - zᵀ·V
    the part of c outside the PCA span. w (`residual_precision`, manifest `scoring`; 0 for
    bundles without it) is the inverse of the shrunk variance of that complement, so the
    sum is the Mahalanobis distance under a shrinkage covariance of the full latent space,
    stored as k PCA components instead of a d x d matrix.
    Shared by training (calibration) and the service so both compute the same score.
    """
    # float64 throughout: a float32 product's rounding depends on the batch around a row
    # (BLAS blocks differently for 1, 2 or 64 rows, ~1e-6 of a score), and a window must
    # score the same alone (a live stream) as with the rest of its clip (an upload)
    c = latents.astype(np.float64) - pca_mean
    p = c @ pca_components.T
    z = p - mean_vec
    za = z @ inv_cov
    d2 = (za * z).sum(axis=1, dtype=np.float64)
    if offsets is not None:
        return _offset_distances(c, p, za, d2, pca_components, inv_cov, residual_precision, offsets)
    if residual_precision:
        d2 = d2 + residual_precision * np.maximum(_residual2(c, p), 0.0)
    return np.sqrt(np.maximum(d2, 0.0))


def _offset_distances(
    c: np.ndarray,
    p: np.ndarray,
    za: np.ndarray,
    d2: np.ndarray,
    pca_components: np.ndarray,
    inv_cov: np.ndarray,
    residual_precision: float,
    offsets: np.ndarray,
) -> np.ndarray:
    """Distances (n, C) to each condition's mean pca_mean + offsets[c] (offsets (C, d)),
    from one projection of the latents: with o = offsets·Vᵀ, (z-o)ᵀA(z-o) = zᵀAz - 2·oᵀAz
    + oᵀAo (A symmetric), and ‖r - r_o‖² = ‖c - Δ‖² - ‖p - o‖²."""
    delta = offsets.astype(np.float64)
    o = delta @ pca_components.T.astype(np.float64)  # (C, k)
    oa = o @ inv_cov
    out = d2[:, None] - 2.0 * (za.astype(np.float64) @ o.T) + (oa * o).sum(axis=1)
    if residual_precision:
        cc = np.einsum("bi,bi->b", c, c, dtype=np.float64)[:, None]
        cc = cc - 2.0 * (c.astype(np.float64) @ delta.T) + (delta * delta).sum(axis=1)
        pp = np.einsum("bi,bi->b", p, p, dtype=np.float64)[:, None]
        pp = pp - 2.0 * (p.astype(np.float64) @ o.T) + (o * o).sum(axis=1)
        out = out + residual_precision * np.maximum(cc - pp, 0.0)
    return np.sqrt(np.maximum(out, 0.0))


def _residual2(c: np.ndarray, p: np.ndarray) -> np.ndarray:
    """‖r‖² = ‖c‖² - ‖p‖² (the components are orthonormal rows): no reconstruction p·V,
    which cost as much as the projection itself."""
    rr = np.einsum("bi,bi->b", c, c, dtype=np.float64)
    rr -= np.einsum("bi,bi->b", p, p, dtype=np.float64)
    return rr


def residual_precision(manifest: Manifest) -> float:
    """The manifest's `scoring.residual_precision` (0.0 when absent: older bundles)."""
    value = manifest.scoring.get("residual_precision", 0.0)
    try:
        w = float(value)
    except (TypeError, ValueError) as e:
        raise BundleError(f"scoring.residual_precision is not a number: {value!r}") from e
    if not np.isfinite(w) or w < 0:
        raise BundleError(f"scoring.residual_precision must be finite and >= 0, got {w}")
    return w


def scoring_parts(manifest: Manifest, n_components: int, latent_dim: int) -> list[ScoringPart]:
    """The manifest's `scoring.parts`, checked against the arrays' shapes; a bundle without
    parts is one part: everything, weight 1, `scoring.residual_precision`."""
    raw = manifest.scoring.get("parts")
    if raw is None:
        w = residual_precision(manifest)
        return [
            ScoringPart(
                name="all", dims=(0, latent_dim), components=(0, n_components), residual_precision=w
            )
        ]
    try:
        parts = [ScoringPart.model_validate(p) for p in raw]
    except (ValidationError, TypeError) as e:
        raise BundleError(f"invalid scoring.parts: {e}") from e
    if not parts:
        raise BundleError("scoring.parts is empty")
    for p in parts:
        (d0, d1), (k0, k1) = p.dims, p.components
        if not (0 <= d0 < d1 <= latent_dim and 0 <= k0 <= k1 <= n_components):
            raise BundleError(
                f"scoring part {p.name!r} ({p.dims}, {p.components}) does not fit arrays of "
                f"{latent_dim} latent dims and {n_components} components"
            )
    return parts


def part_blocks(
    arrays: dict[str, np.ndarray], parts: list[ScoringPart]
) -> list[dict[str, np.ndarray]]:
    """Each part's own block of the bundle arrays, as contiguous float64 copies (slicing or
    casting the shared arrays on every call would copy a part's components each time)."""
    blocks = []
    for p in parts:
        (d0, d1), (k0, k1) = p.dims, p.components
        blocks.append(
            {
                name: np.ascontiguousarray(arrays[name][index], dtype=np.float64)
                for name, index in (
                    ("pca_components", np.s_[k0:k1, d0:d1]),
                    ("pca_mean", np.s_[d0:d1]),
                    ("mean_vec", np.s_[k0:k1]),
                    ("inv_cov", np.s_[k0:k1, k0:k1]),
                )
            }
        )
    return blocks


def part_distances(
    latents: np.ndarray,
    arrays: dict[str, np.ndarray],
    parts: list[ScoringPart],
    blocks: list[dict[str, np.ndarray]] | None = None,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """(n, d) latents → (n, n_parts) Mahalanobis distance of every part (each part a block
    of the PCA arrays: its components are zero outside its own latent columns), or with
    `offsets` (C, d) → (n, n_parts, C), the distances to each condition's mean. `blocks`:
    part_blocks(arrays, parts), computed once by a caller that scores many batches."""
    blocks = blocks if blocks is not None else part_blocks(arrays, parts)
    shape = (latents.shape[0], len(parts)) + (() if offsets is None else (len(offsets),))
    out = np.empty(shape, np.float64)
    for j, (p, block) in enumerate(zip(parts, blocks, strict=True)):
        d0, d1 = p.dims
        out[:, j] = mahalanobis(
            latents[:, d0:d1],
            **block,
            residual_precision=p.residual_precision,
            offsets=None if offsets is None else offsets[:, d0:d1],
        )
    return out


def window_scores(
    latents: np.ndarray,
    arrays: dict[str, np.ndarray],
    parts: list[ScoringPart],
    blocks: list[dict[str, np.ndarray]] | None = None,
    offsets: np.ndarray | None = None,
) -> np.ndarray:
    """(n, d) latents → (n,) window scores: Σ weight·distance over the parts; with
    `offsets` (C, d) → (n, C), each condition's."""
    weights = np.array([p.weight for p in parts])
    d = part_distances(latents, arrays, parts, blocks, offsets)
    return d @ weights if offsets is None else np.einsum("npc,p->nc", d, weights)


def aggregation(manifest: Manifest) -> tuple[Aggregation, int]:
    """How window scores make the clip score: (`scoring.aggregation`, its k); bundles
    without windows score one window per clip (mean of one)."""
    spec = manifest.scoring.get("aggregation", "mean")
    k = int(manifest.scoring.get("aggregation_k", 3))
    if spec not in ("mean", "max", "top_k_mean") or k < 1:
        raise BundleError(f"unknown scoring.aggregation {spec!r} (k={k})")
    return spec, k


def aggregate(scores: np.ndarray, method: Aggregation, k: int = 3) -> float:
    """(n_windows,) → the clip's score: their mean, max, or the mean of the k largest."""
    if method == "max":
        return float(scores.max())
    if method == "top_k_mean":
        return float(np.sort(scores)[-k:].mean())
    return float(scores.mean())


def level_for(score: float, thresholds: Thresholds) -> str:
    """normal < needs_maintenance ≤ score < severe ≤ severe; NaN is severe, never normal
    (a last line of defence: the service refuses non-finite scores before this)."""
    return level_of(score, thresholds.needs_maintenance, thresholds.severe)
