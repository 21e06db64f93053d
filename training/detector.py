"""PCA + shrinkage covariance on the latents of normal clips → Mahalanobis scoring arrays."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from service.bundle import mahalanobis

Selection = Literal["all", "top", "residual"]


def fit_detector(
    latents: np.ndarray,
    n_components: int | None = None,
    selection: Selection = "all",
    shrinkage: Literal["ledoit_wolf", "oas"] | float = "ledoit_wolf",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """latents (n, d) of normal training clips → arrays for the bundle and a summary.

    selection: "all" keeps every principal direction (full whitening);
    "top" keeps the n_components of highest variance; "residual" keeps the
    n_components of LOWEST variance, where anomalies of a machine often show.
    """
    from sklearn.covariance import OAS, LedoitWolf, ShrunkCovariance
    from sklearn.decomposition import PCA

    n, d = latents.shape
    pca = PCA(n_components=min(n, d), svd_solver="full").fit(latents)
    comps = pca.components_
    if selection == "top" and n_components:
        comps = comps[:n_components]
    elif selection == "residual" and n_components:
        comps = comps[-n_components:]
    z = (latents - pca.mean_) @ comps.T
    if shrinkage == "ledoit_wolf":
        est = LedoitWolf().fit(z)
    elif shrinkage == "oas":
        est = OAS().fit(z)
    else:
        est = ShrunkCovariance(shrinkage=float(shrinkage)).fit(z)
    arrays = {
        "pca_components": comps.astype(np.float32),
        "pca_mean": pca.mean_.astype(np.float32),
        "mean_vec": est.location_.astype(np.float32),
        "inv_cov": np.linalg.pinv(est.covariance_).astype(np.float32),
    }
    summary = {
        "latent_dim": int(d),
        "pca_components": int(comps.shape[0]),
        "pca_selection": selection,
        "shrinkage": shrinkage,
        "shrinkage_value": float(getattr(est, "shrinkage_", 0.0) or 0.0),
    }
    return arrays, summary


def score(latents: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """(n, d) latents → (n,) Mahalanobis scores with the bundle's arrays."""
    return mahalanobis(
        latents,
        arrays["pca_components"],
        arrays["pca_mean"],
        arrays["mean_vec"],
        arrays["inv_cov"],
    )
