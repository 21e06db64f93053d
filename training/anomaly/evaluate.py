"""DCASE-style evaluation of an anomaly bundle, scored exactly as the service scores.

AUC and pAUC (max FPR 0.1) per section and domain, and their harmonic mean;
report.json and report.png (ROC curves, score histograms with the thresholds,
KMeans score clusters) written into the bundle.
"""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import harmonic_mean
from typing import Any

import numpy as np
from tqdm import tqdm

from service.features import FeatureParams, Prepared, load_file
from service.models.bundle import Aggregation, Manifest, aggregate, update_bundle
from service.models.runtimes import AnomalyRuntime, open_runtime
from training.augment import CALIBRATION_CODECS, calibration_copy, codec_copy
from training.datasets import AUDIO_EXTS, Clip, DatasetError, discover

MAX_FPR = 0.1


@dataclass
class ScoredClips:
    clips: list[Clip]
    scores: np.ndarray  # (n,)


def load_windows(
    clips: list[Clip],
    params: FeatureParams,
    desc: str,
    codec_copies: bool = False,
    inputs: dict[int, Prepared] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs of every clip's windows → ((n_windows, h, w), (n_windows,) index of the
    clip each window belongs to). With codec_copies, each audio clip i also contributes the
    windows of a lossy-codec round trip of itself (training.augment), as clip i + len(clips).
    `inputs`, when given, receives every clip's (and copy's) Prepared by index, its images
    dropped (for its bandwidth and bitrate). Raises DatasetError listing unreadable files."""
    images, owners, bad = read_windows(clips, params, desc, codec_copies, inputs)
    if bad:
        raise DatasetError(describe_unreadable(clips, bad))
    return images, owners


def read_windows(
    clips: list[Clip],
    params: FeatureParams,
    desc: str,
    codec_copies: bool = False,
    inputs: dict[int, Prepared] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """As `load_windows`, but an unreadable clip is left out (it has no windows) and
    reported: → (images, owners, {clip index: reason})."""
    blocks, owners, bad = [], [], {}
    for i, clip in enumerate(tqdm(clips, desc=desc, unit="clip", leave=False)):
        try:
            prepared = load_file(str(clip.path), params)
            images = prepared.images
            if codec_copies and clip.path.suffix.lower() in AUDIO_EXTS:
                copy = codec_copy(clip.path, i, params)
                blocks.append(copy.images)
                owners.append(np.full(len(copy.images), i + len(clips)))
                if inputs is not None:
                    inputs[i + len(clips)] = dataclasses.replace(copy, images=copy.images[:0])
        except Exception as e:
            bad[i] = str(getattr(e, "message", e))
            continue
        if inputs is not None:
            inputs[i] = dataclasses.replace(prepared, images=prepared.images[:0])
        blocks.append(images)
        owners.append(np.full(len(images), i))
    if not blocks:
        return np.zeros((0, params.height, params.width), np.float32), np.zeros(0, int), bad
    return np.concatenate(blocks).astype(np.float32), np.concatenate(owners), bad


def describe_unreadable(clips: list[Clip], bad: dict[int, str], shown: int = 10) -> str:
    """One line: how many files could not be read, the first `shown` with their reasons."""
    items = [f"{clips[i].path.name} ({reason})" for i, reason in bad.items()]
    more = f"; … {len(items) - shown} more" if len(items) > shown else ""
    return f"{len(items)} unreadable file(s): {'; '.join(items[:shown])}{more}"


def drop_unreadable(
    clips: list[Clip], owners: np.ndarray, bad: dict[int, str]
) -> tuple[list[Clip], np.ndarray]:
    """The clips without the unreadable ones, and the windows' owners renumbered to match
    (a codec copy of clip i, owner i + n, becomes new_i + n_kept)."""
    n = len(clips)
    kept = [i for i in range(n) if i not in bad]
    rank = np.full(n, -1)
    rank[kept] = np.arange(len(kept))
    new_owners = rank[owners % n] + len(kept) * (owners >= n)
    return [clips[i] for i in kept], new_owners


def tqdm_write(line: str) -> None:
    """A line on stderr that does not break a progress bar."""
    tqdm.write(line, file=sys.stderr)


def load_calibration_copies(
    clips: list[Clip], params: FeatureParams, inputs: dict[int, Prepared] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs of every audio clip i's round trip through each of training.augment's
    CALIBRATION_CODECS (k-th: clip (2 + k) * len(clips) + i): ((n_windows, h, w),
    (n_windows,)). `inputs` receives each copy's Prepared (images dropped)."""
    blocks, owners = [], []
    for i, clip in enumerate(tqdm(clips, desc="low-bitrate copies", unit="clip", leave=False)):
        if clip.path.suffix.lower() not in AUDIO_EXTS:
            continue
        for k, codec in enumerate(CALIBRATION_CODECS):
            copy = calibration_copy(clip.path, codec, params)
            owner = (2 + k) * len(clips) + i
            blocks.append(copy.images)
            owners.append(np.full(len(copy.images), owner))
            if inputs is not None:
                inputs[owner] = dataclasses.replace(copy, images=copy.images[:0])
    if not blocks:
        return np.zeros((0, params.height, params.width), np.float32), np.zeros(0, np.int64)
    return np.concatenate(blocks).astype(np.float32), np.concatenate(owners)


def clip_scores(
    window_scores: np.ndarray, owners: np.ndarray, n_clips: int, method: tuple[Aggregation, int]
) -> np.ndarray:
    """(n_windows,) scores and their clips' indices → (n_clips,) clip scores, aggregated by
    `method`: the bundle's (aggregation, k), e.g. `AnomalyRuntime.aggregation`."""
    return np.array([aggregate(window_scores[owners == i], *method) for i in range(n_clips)])


def score_clips(runtime: AnomalyRuntime, clips: list[Clip], batch: int = 256) -> ScoredClips:
    """Every clip scored as the service scores it when a request names no condition: its
    windows, then its verdict. An unreadable clip is left out (of the result too) with a
    warning naming it."""
    assert runtime.manifest is not None
    images, owners, bad = read_windows(clips, runtime.manifest.features, "features (test)")
    for i, reason in bad.items():  # scored clips only: the metrics leave them out
        tqdm_write(f"warning: skipped unreadable test file {clips[i].path.name} ({reason})")
    if bad:
        kept, owners = drop_unreadable(clips, owners, bad)
        if not kept:
            raise DatasetError(describe_unreadable(clips, bad) + "; no test clip left")
        clips = kept
    windows = np.concatenate(
        [runtime.score(images[i : i + batch]) for i in range(0, len(images), batch)]
    )
    scores = np.array(
        [
            runtime.verdict(windows[owners == i], fmt=c.path.suffix.lower().lstrip(".")).score
            for i, c in enumerate(clips)
        ]
    )
    return ScoredClips(clips, scores)


def metrics_table(scored: ScoredClips) -> dict[str, Any]:
    """{"groups": {group: {auc, pauc, n_normal, n_anomaly}}, "hmean": …} over labelled clips."""
    from sklearn.metrics import roc_auc_score

    groups: dict[str, Any] = {}
    names = sorted({c.group for c in scored.clips if c.label is not None})
    for g in names:
        idx = [i for i, c in enumerate(scored.clips) if c.group == g and c.label is not None]
        y = np.array([scored.clips[i].label == "anomaly" for i in idx], dtype=int)
        s = scored.scores[idx]
        row: dict[str, Any] = {"n_normal": int((y == 0).sum()), "n_anomaly": int(y.sum())}
        if 0 < y.sum() < len(y):
            row["auc"] = float(roc_auc_score(y, s))
            row["pauc"] = float(roc_auc_score(y, s, max_fpr=MAX_FPR))
        groups[g] = row
    values = [v for r in groups.values() for k, v in r.items() if k in ("auc", "pauc")]
    return {
        "groups": groups,
        "hmean": float(harmonic_mean(values)) if values else None,
        "max_fpr": MAX_FPR,
    }


def format_table(metrics: dict[str, Any]) -> str:
    lines = [f"{'section / domain':<24}{'AUC':>8}{'pAUC':>8}{'normal':>8}{'anomaly':>9}"]
    for g, r in metrics["groups"].items():
        auc = f"{r['auc']:.3f}" if "auc" in r else "-"
        pauc = f"{r['pauc']:.3f}" if "pauc" in r else "-"
        lines.append(f"{g:<24}{auc:>8}{pauc:>8}{r['n_normal']:>8}{r['n_anomaly']:>9}")
    if metrics["hmean"] is not None:
        lines.append(f"{'harmonic mean':<24}{metrics['hmean']:>8.3f}")
    return "\n".join(lines)


def render_report(scored: ScoredClips, manifest: Manifest) -> bytes:
    """ROC curves per group, histograms with thresholds, KMeans clusters → PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from training.anomaly.calibration import kmeans_boundaries

    th = manifest.thresholds
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    for g in sorted({c.group for c in scored.clips if c.label is not None}):
        idx = [i for i, c in enumerate(scored.clips) if c.group == g and c.label is not None]
        y = np.array([scored.clips[i].label == "anomaly" for i in idx], dtype=int)
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, scored.scores[idx])
            ax.plot(fpr, tpr, label=g)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.axvline(MAX_FPR, color="grey", lw=0.8, ls="--")
    ax.set(
        title="ROC per section and domain",
        xlabel="false positive rate",
        ylabel="true positive rate",
    )
    ax.legend(fontsize=8)

    ax = axes[1]
    labels = np.array([c.label or "unlabelled" for c in scored.clips])
    bins = np.linspace(
        min(0.0, float(scored.scores.min())), float(scored.scores.max()) * 1.05 + 1e-9, 40
    )
    for lab, color in (("normal", "tab:blue"), ("anomaly", "tab:red"), ("unlabelled", "tab:grey")):
        if (labels == lab).any():
            ax.hist(scored.scores[labels == lab], bins=bins, alpha=0.6, label=lab, color=color)
    if th is not None:
        ax.axvline(th.needs_maintenance, color="orange", label="needs_maintenance")
        ax.axvline(th.severe, color="darkred", label="severe")
    ax.set(title="score distribution", xlabel="anomaly score", ylabel="clips")
    ax.legend(fontsize=8)

    ax = axes[2]
    if len(scored.scores) >= 3:
        centres, bounds = kmeans_boundaries(scored.scores)
        cluster = np.digitize(scored.scores, bounds)
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, len(scored.scores))
        for k, color in enumerate(("tab:green", "tab:orange", "tab:red")):
            m = cluster == k
            ax.scatter(
                scored.scores[m],
                jitter[m],
                s=14,
                color=color,
                label=f"cluster {k} (c={centres[k]:.2f})",
            )
        for b in bounds:
            ax.axvline(b, color="k", ls=":", lw=0.8)
    ax.set(title="KMeans score clusters (k=3)", xlabel="anomaly score", yticks=[])
    ax.legend(fontsize=8)
    fig.suptitle(f"{manifest.name} ({manifest.version})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def evaluate(
    data_dir: Path, bundle_dir: Path, write: bool = True
) -> tuple[dict[str, Any], ScoredClips]:
    """Score the test clips of data_dir with the bundle; write report.json/png into it."""
    runtime = open_runtime(Path(bundle_dir))
    if not isinstance(runtime, AnomalyRuntime) or not runtime.ready:
        raise DatasetError(
            f"{bundle_dir} is not a loadable anomaly bundle: {runtime.reason or runtime.kind}"
        )
    test = [c for c in discover(Path(data_dir)) if c.split == "test"]
    if not test:
        raise DatasetError(f"{data_dir} has no test clips to evaluate on")
    scored = score_clips(runtime, test)
    metrics = metrics_table(scored)
    if write:
        assert runtime.manifest is not None
        report = {
            "metrics": metrics,
            "clips": [
                {"file": c.path.name, "group": c.group, "label": c.label, "score": float(s)}
                for c, s in zip(scored.clips, scored.scores, strict=True)
            ],
        }
        update_bundle(
            Path(bundle_dir),
            {
                "report.json": (json.dumps(report, indent=1) + "\n").encode(),
                "report.png": render_report(scored, runtime.manifest),
            },
            evaluation=metrics,
        )
    return metrics, scored
