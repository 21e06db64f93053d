"""PCA + shrinkage covariance on the latents of normal clips → Mahalanobis scoring arrays."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from service.models.bundle import ScoringPart, mahalanobis

Selection = Literal["full", "all", "top", "residual"]
Shrinkage = Literal["ledoit_wolf", "oas"] | float


def ledoit_wolf_shrinkage(latents: np.ndarray) -> float:
    """sklearn.covariance.ledoit_wolf_shrinkage's coefficient δ for (n, d) latents, from
    the smaller of XᵀX and XXᵀ (the same sums: ‖XᵀX‖²_F = ‖XXᵀ‖²_F and Σ_k ‖x_k‖⁴), so a
    4096-wide part of a few hundred windows costs O(n²d), not sklearn's O(nd²)."""
    x = latents.astype(np.float64)
    x = x - x.mean(axis=0)
    n, d = x.shape
    if d == 1:
        return 0.0
    norms = np.einsum("ij,ij->i", x, x)  # ‖x_k‖²
    small = x.T @ x if d <= n else x @ x.T
    trace = norms.sum() / n  # trace of the sample covariance
    mu = trace / d
    delta_ = float((small**2).sum()) / n**2
    beta = (float((norms**2).sum()) / n - delta_) / (d * n)
    delta = (delta_ - 2.0 * mu * trace + d * mu**2) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else float(beta / delta)


def _shrunk(latents: np.ndarray, shrinkage: Shrinkage) -> tuple[Any, float]:
    """(estimator with location_ and covariance_, shrinkage coefficient)."""
    from sklearn.covariance import OAS, LedoitWolf, ShrunkCovariance

    if shrinkage == "ledoit_wolf":
        est = LedoitWolf().fit(latents)
    elif shrinkage == "oas":
        est = OAS().fit(latents)
    else:
        est = ShrunkCovariance(shrinkage=float(shrinkage)).fit(latents)
        return est, float(shrinkage)
    return est, float(est.shrinkage_)


def _fit_full(
    latents: np.ndarray, shrinkage: Shrinkage, max_components: int | None = None
) -> tuple[dict[str, np.ndarray], float, float]:
    """Mahalanobis under the shrunk covariance Σ = (1-δ)·S + δ·μ·I of the FULL latent space.

    With fewer clips than latent dimensions the sample covariance S has rank r < d. Σ's
    eigenvectors are S's r principal directions (eigenvalues (1-δ)λᵢ + δμ) and their
    orthogonal complement (eigenvalue δμ), so Σ⁻¹ is stored as r PCA components with a
    diagonal inv_cov plus one `residual_precision` 1/(δμ) for the complement: directions in
    which the normal clips never varied, where anomalies often show (Rippel et al. 2020).
    """
    n, d = latents.shape
    mean = latents.mean(axis=0)
    centred = latents - mean
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    eig = sv**2 / n  # eigenvalues of the (biased) sample covariance, as sklearn's
    rank = int((eig > eig[0] * 1e-10).sum()) if eig.size and eig[0] > 0 else 0
    if shrinkage == "ledoit_wolf":  # the coefficient only: no d x d covariance
        delta = ledoit_wolf_shrinkage(latents)
    else:
        _, delta = _shrunk(latents, shrinkage)
    mu = float(eig.sum() / d)
    delta = max(delta, 1e-6) if rank < d else delta
    shrunk = (1 - delta) * eig[:rank] + delta * mu
    residual = 1.0 / (delta * mu) if rank < d and mu > 0 else 0.0
    keep = rank if max_components is None else min(rank, max_components)
    if keep < rank:  # the dropped directions join the complement: one mean variance for all
        rest = (shrunk[keep:].sum() + (d - rank) * delta * mu) / (d - keep)
        residual = 1.0 / rest
    arrays = {
        "pca_components": vt[:keep].astype(np.float32),
        "pca_mean": mean.astype(np.float32),
        "mean_vec": np.zeros(keep, np.float32),
        "inv_cov": np.diag(1.0 / shrunk[:keep]).astype(np.float32),
    }
    return arrays, residual, delta


def fit_detector(
    latents: np.ndarray,
    n_components: int | None = None,
    selection: Selection = "full",
    shrinkage: Shrinkage = "ledoit_wolf",
    max_components: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """latents (n, d) of normal training clips → arrays for the bundle and a summary
    (the summary goes into the manifest's `scoring`; `residual_precision` is read back).

    selection: "full" scores the whole latent space (the principal directions plus the
    complement of their span, see `_fit_full`); "all" keeps every principal direction of
    the training latents but ignores the complement; "top" keeps the n_components of
    highest variance; "residual" keeps the n_components of LOWEST variance.
    """
    from sklearn.decomposition import PCA

    n, d = latents.shape
    latents = latents.astype(np.float64)
    residual = 0.0
    if selection == "full":
        arrays, residual, delta = _fit_full(latents, shrinkage, max_components)
        k = arrays["pca_components"].shape[0]
    else:
        pca = PCA(n_components=min(n, d), svd_solver="full").fit(latents)
        comps = pca.components_
        if selection == "top" and n_components:
            comps = comps[:n_components]
        elif selection == "residual" and n_components:
            comps = comps[-n_components:]
        z = (latents - pca.mean_) @ comps.T
        est, delta = _shrunk(z, shrinkage)
        arrays = {
            "pca_components": comps.astype(np.float32),
            "pca_mean": pca.mean_.astype(np.float32),
            "mean_vec": est.location_.astype(np.float32),
            "inv_cov": np.linalg.pinv(est.covariance_).astype(np.float32),
        }
        k = comps.shape[0]
    summary = {
        "latent_dim": int(d),
        "pca_components": int(k),
        "pca_selection": selection,
        "shrinkage": shrinkage,
        "shrinkage_value": float(delta),
        "residual_precision": float(residual),
    }
    return arrays, summary


def score(
    latents: np.ndarray, arrays: dict[str, np.ndarray], residual_precision: float = 0.0
) -> np.ndarray:
    """(n, d) latents → (n,) Mahalanobis scores with the bundle's arrays."""
    return mahalanobis(
        latents,
        arrays["pca_components"],
        arrays["pca_mean"],
        arrays["mean_vec"],
        arrays["inv_cov"],
        residual_precision,
    )


def fit_parts(
    latents: np.ndarray,
    widths: list[tuple[str, int]],
    n_components: int | None = None,
    selection: Selection = "full",
    shrinkage: Shrinkage = "ledoit_wolf",
    max_components: int | None = None,
) -> tuple[dict[str, np.ndarray], list[ScoringPart], list[dict[str, Any]]]:
    """One detector per part of the latent (widths: [(name, n_columns)] in order) →
    block-diagonal bundle arrays, the parts (weight 1 each until `standardise`) and each
    part's fit summary. One part spanning every column is the plain detector."""
    blocks, parts, summaries = [], [], []
    d0 = k0 = 0
    for name, width in widths:
        arrays, summary = fit_detector(
            latents[:, d0 : d0 + width], n_components, selection, shrinkage, max_components
        )
        k = arrays["pca_components"].shape[0]
        parts.append(
            ScoringPart(
                name=name,
                dims=(d0, d0 + width),
                components=(k0, k0 + k),
                residual_precision=summary["residual_precision"],
            )
        )
        blocks.append(arrays)
        summaries.append({"part": name, **summary})
        d0, k0 = d0 + width, k0 + k
    comps = np.zeros((k0, d0), np.float32)
    inv_cov = np.zeros((k0, k0), np.float32)
    for p, arrays in zip(parts, blocks, strict=True):
        (a, b), (i, j) = p.dims, p.components
        comps[i:j, a:b] = arrays["pca_components"]
        inv_cov[i:j, i:j] = arrays["inv_cov"]
    merged = {
        "pca_components": comps,
        "pca_mean": np.concatenate([a["pca_mean"] for a in blocks]),
        "mean_vec": np.concatenate([a["mean_vec"] for a in blocks]),
        "inv_cov": inv_cov,
    }
    return merged, parts, summaries


def standardise(parts: list[ScoringPart], distances: np.ndarray) -> list[ScoringPart]:
    """Weights that fuse the parts by their held-out normal distances (n, n_parts): with each
    part's mean m and standard deviation s, the score Σ (d/s) / Σ (m/s) ranks windows as the
    mean of the parts' z-scores (each part counts by its own normal spread) and is 1 for a
    window at every part's normal mean."""
    loc = distances.mean(axis=0)
    scale = np.maximum(distances.std(axis=0), 1e-6 * np.maximum(loc, 1e-12))
    norm = float((loc / scale).sum())
    return [
        p.model_copy(update={"weight": float(1 / (s * norm)), "loc": float(m), "scale": float(s)})
        for p, m, s in zip(parts, loc, scale, strict=True)
    ]
