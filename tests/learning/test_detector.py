"""The detector: PCA + shrinkage covariance + Mahalanobis, and the bundle's residual term."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.models.bundle import mahalanobis, part_distances, read_manifest
from service.models.runtimes import AnomalyRuntime, open_runtime
from training.anomaly.mahalanobis import fit_detector, fit_parts, score, standardise


def _latents(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    return (rng.standard_normal((n, d)) @ mixing + 2.0).astype(np.float32)


def _ledoit_wolf_distance(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    from sklearn.covariance import LedoitWolf

    est = LedoitWolf().fit(train.astype(np.float64))
    diff = test - est.location_
    return np.sqrt(np.einsum("bi,ij,bj->b", diff, np.linalg.inv(est.covariance_), diff))


@pytest.mark.parametrize("n, d", [(30, 200), (200, 12)])
def test_full_selection_is_the_ledoit_wolf_distance_in_the_whole_latent_space(
    n: int, d: int
) -> None:
    train, test = _latents(n, d), _latents(7, d, seed=1)
    arrays, summary = fit_detector(train, selection="full")
    k = min(n - 1, d)
    assert arrays["pca_components"].shape == (k, d)
    assert (summary["residual_precision"] > 0) == (k < d)  # a complement exists iff n <= d
    got = score(test, arrays, summary["residual_precision"])
    np.testing.assert_allclose(got, _ledoit_wolf_distance(train, test), rtol=1e-3)


def test_all_selection_ignores_what_lies_outside_the_training_span() -> None:
    train = _latents(20, 100)
    arrays, summary = fit_detector(train, selection="all")
    assert summary["residual_precision"] == 0.0
    outside = train[:1] + np.linalg.svd(train - train.mean(0))[2][-1] * 100  # null direction
    full, full_summary = fit_detector(train, selection="full")
    s_all = score(np.r_[train[:1], outside], arrays)
    s_full = score(np.r_[train[:1], outside], full, full_summary["residual_precision"])
    assert s_all[1] < 1.5 * s_all[0]  # barely moves: the span has no such direction
    assert s_full[1] > 10 * s_full[0]


def test_mahalanobis_without_residual_is_the_old_formula() -> None:
    rng = np.random.default_rng(0)
    comps = np.linalg.qr(rng.standard_normal((6, 4)))[0].T.astype(np.float32)
    args = {
        "pca_components": comps,
        "pca_mean": rng.standard_normal(6).astype(np.float32),
        "mean_vec": rng.standard_normal(4).astype(np.float32),
        "inv_cov": np.eye(4, dtype=np.float32) * 2,
    }
    x = rng.standard_normal((5, 6)).astype(np.float32)
    z = (x - args["pca_mean"]) @ comps.T - args["mean_vec"]
    old = np.sqrt(np.einsum("bi,ij,bj->b", z, args["inv_cov"], z))
    np.testing.assert_allclose(mahalanobis(x, **args), old, rtol=1e-6)
    np.testing.assert_allclose(mahalanobis(x, **args, residual_precision=0.0), old, rtol=1e-6)


def _copy_with_scoring(bundle: Path, tmp_path: Path, **scoring: object) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["scoring"] = {k: v for k, v in {**manifest["scoring"], **scoring}.items() if v != "-"}
    manifest.pop("calibration")  # a bundle from before operating conditions
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def test_service_scores_each_part_with_its_own_detector_and_weight(tiny_bundle: Path) -> None:
    m = read_manifest(tiny_bundle)
    parts = m.scoring["parts"]
    assert [p["name"] for p in parts] == ["flat", "band_stats"]  # the default pooling
    assert all(p["residual_precision"] > 0 and p["weight"] > 0 for p in parts)
    rt = open_runtime(tiny_bundle)
    assert isinstance(rt, AnomalyRuntime) and rt.ready
    images = np.random.default_rng(0).uniform(0, 1, (3, 32, 32)).astype(np.float32)
    latents = rt.latents(images)
    assert rt.offsets is not None and len(rt.offsets) == len(rt.conditions) == 2
    expected = np.zeros((3, 2))
    for c, offset in enumerate(rt.offsets):  # each condition: the distance to its own mean
        for p in parts:  # each part: its own columns, its own block of the arrays
            (d0, d1), (k0, k1) = p["dims"], p["components"]
            expected[:, c] += p["weight"] * mahalanobis(
                latents[:, d0:d1],
                rt.arrays["pca_components"][k0:k1, d0:d1],
                rt.arrays["pca_mean"][d0:d1] + offset[d0:d1],
                rt.arrays["mean_vec"][k0:k1],
                rt.arrays["inv_cov"][k0:k1, k0:k1],
                p["residual_precision"],
            )
    np.testing.assert_allclose(rt.score(images), expected, rtol=1e-5)
    # the blocks outside a part are zero: one part's columns never move another's distance
    (d0, d1), (k0, k1) = parts[1]["dims"], parts[0]["components"]
    assert not rt.arrays["pca_components"][k0:k1, d0:d1].any()


def test_fit_parts_equals_separate_detectors_and_standardise_fuses_to_one() -> None:
    a, b = _latents(40, 30), _latents(40, 6, seed=2) * 50  # very different scales
    latents = np.concatenate([a, b], axis=1)
    arrays, parts, _ = fit_parts(latents, [("a", 30), ("b", 6)])
    test = np.concatenate([_latents(5, 30, seed=3), _latents(5, 6, seed=4) * 50], axis=1)
    dist = part_distances(test, arrays, parts)
    for j, (x, cols) in enumerate(((a, slice(0, 30)), (b, slice(30, 36)))):
        alone, summary = fit_detector(x)
        np.testing.assert_allclose(
            dist[:, j], score(test[:, cols], alone, summary["residual_precision"]), rtol=1e-4
        )
    held = part_distances(_latents(30, 36, seed=5), arrays, parts)
    fused = standardise(parts, held)
    w = np.array([p.weight for p in fused])
    assert (held @ w).mean() == pytest.approx(1.0)  # a typical normal window scores 1
    # each part counts by its own normal spread: equal z-scores move the fused score equally
    z_step = np.array([p.scale for p in fused]) * w
    assert z_step[0] == pytest.approx(z_step[1])


def test_bundle_without_residual_precision_still_loads(tiny_bundle: Path, tmp_path: Path) -> None:
    old = _copy_with_scoring(tiny_bundle, tmp_path, residual_precision="-", parts="-")
    rt = open_runtime(old)
    assert isinstance(rt, AnomalyRuntime) and rt.ready
    assert [p.residual_precision for p in rt.parts] == [0.0]
    images = np.random.default_rng(0).uniform(0, 1, (2, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(rt.score(images), mahalanobis(rt.latents(images), **rt.arrays))


@pytest.mark.parametrize("bad", [-1.0, "many"])
def test_bundle_with_a_bad_residual_precision_is_refused(
    tiny_bundle: Path, tmp_path: Path, bad: object
) -> None:
    rt = open_runtime(_copy_with_scoring(tiny_bundle, tmp_path, residual_precision=bad, parts="-"))
    assert rt.status == "failed" and "residual_precision" in (rt.reason or "")


@pytest.mark.parametrize(
    "parts",
    [
        [],
        [{"name": "x", "dims": [0, 10**6], "components": [0, 1]}],  # beyond the latent
        [{"name": "x", "dims": [0, 4], "components": [0, 1], "weight": -1}],
        "many",
    ],
)
def test_bundle_with_bad_scoring_parts_is_refused(
    tiny_bundle: Path, tmp_path: Path, parts: object
) -> None:
    rt = open_runtime(_copy_with_scoring(tiny_bundle, tmp_path, parts=parts))
    assert rt.status == "failed" and "part" in (rt.reason or ""), rt.reason


def test_bundle_with_an_unknown_aggregation_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    rt = open_runtime(_copy_with_scoring(tiny_bundle, tmp_path, aggregation="median"))
    assert rt.status == "failed" and "aggregation" in (rt.reason or "")


@pytest.mark.parametrize(("n", "d"), [(40, 300), (300, 40), (64, 64), (5, 1)])
def test_the_gram_ledoit_wolf_coefficient_is_sklearns(n: int, d: int) -> None:
    from sklearn.covariance import ledoit_wolf_shrinkage as sklearn_shrinkage

    from training.anomaly.mahalanobis import ledoit_wolf_shrinkage

    rng = np.random.default_rng(n * d)
    x = (rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + 3).astype(np.float32)
    expected = sklearn_shrinkage(x.astype(np.float64))
    assert ledoit_wolf_shrinkage(x) == pytest.approx(expected, rel=1e-9, abs=1e-12)
