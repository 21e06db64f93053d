"""Choose the two thresholds (needs_maintenance, severe) from measured score distributions."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.models.bundle import Thresholds

MAINTENANCE_Q = 0.95  # a healthy clip crosses needs_maintenance 5% of the time
SEVERE_Q = 0.999


def from_normal_scores(scores: np.ndarray) -> Thresholds:
    """Fit a gamma distribution to held-out normal scores (as the DCASE baseline does)
    and take its 95th and 99.9th percentiles."""
    from scipy import stats

    scores = np.asarray(scores, dtype=np.float64)
    pct = {f"p{q}": float(np.percentile(scores, q)) for q in (50, 90, 95, 99, 100)}
    try:
        shape, loc, scale = stats.gamma.fit(scores, floc=0.0)
        t_m = float(stats.gamma.ppf(MAINTENANCE_Q, shape, loc=loc, scale=scale))
        t_s = float(stats.gamma.ppf(SEVERE_Q, shape, loc=loc, scale=scale))
        method = "gamma_fit_heldout_normal"
        params: dict[str, Any] = {"gamma_shape": shape, "gamma_scale": scale}
    except Exception:  # too few or degenerate scores: fall back to empirical percentiles
        t_m, t_s = pct["p95"], max(pct["p100"], pct["p95"]) * 1.5
        method, params = "percentile_heldout_normal", {}
    if not np.isfinite([t_m, t_s]).all() or t_s <= t_m:
        t_m, t_s = pct["p95"], max(pct["p100"], pct["p95"]) * 1.5
        method, params = "percentile_heldout_normal", {}
    return Thresholds(
        needs_maintenance=t_m,
        severe=t_s,
        method=method,
        details={
            "quantiles": {"needs_maintenance": MAINTENANCE_Q, "severe": SEVERE_Q},
            "heldout_normal_percentiles": pct,
            "n_heldout": int(scores.size),
            **params,
        },
    )


def kmeans_boundaries(scores: np.ndarray, seed: int = 0) -> tuple[list[float], list[float]]:
    """KMeans with 3 clusters on 1-D test scores (the seed's method) →
    (sorted centres, the two boundaries between neighbouring clusters)."""
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=3, n_init=10, random_state=seed).fit(np.asarray(scores)[:, None])
    centres = sorted(float(c) for c in km.cluster_centers_[:, 0])
    return centres, [(centres[0] + centres[1]) / 2, (centres[1] + centres[2]) / 2]


def refine_with_kmeans(
    base: Thresholds, test_scores: np.ndarray, test_labels: np.ndarray, seed: int = 0
) -> Thresholds:
    """Move the thresholds to the KMeans cluster boundaries of labelled test scores when
    that is consistent with the normal distribution: the maintenance boundary must sit
    above the median held-out normal score and below the severe boundary."""
    if test_scores.size < 6 or len(np.unique(test_labels)) < 2:
        return base
    centres, (b1, b2) = kmeans_boundaries(test_scores, seed)
    normal_median = base.details["heldout_normal_percentiles"]["p50"]
    details = {**base.details, "kmeans_centres": centres, "kmeans_boundaries": [b1, b2]}
    details["normal_based"] = {"needs_maintenance": base.needs_maintenance, "severe": base.severe}
    if not (normal_median < b1 < b2):
        return base.model_copy(update={"details": {**details, "kmeans_used": False}})
    return Thresholds(
        needs_maintenance=b1,
        severe=b2,
        method=f"{base.method}+kmeans_test_scores",
        details={**details, "kmeans_used": True},
    )
