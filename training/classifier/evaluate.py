"""Evaluation of a classifier bundle, scored exactly as the service scores
(service.models.runtimes.open_runtime + service.features).

Accuracy, per-class precision/recall/F1, the confusion matrix and accuracy per
group (e.g. per speaker); report.json and report.png written into the bundle.
Leave-one-group-out: the recipe retrained once per group (e.g. speaker) without it and
scored on it, the figure for voices (or machines) the classifier never heard.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from service.models.bundle import Manifest, update_bundle
from service.models.runtimes import ClassifierRuntime, open_runtime
from training.classifier.data import (
    LabelledClip,
    label_key,
    load_images,
)
from training.datasets import DatasetError


def open_classifier(bundle_dir: Path) -> ClassifierRuntime:
    """A loaded ClassifierRuntime, or DatasetError saying why not."""
    runtime = open_runtime(Path(bundle_dir))
    if not isinstance(runtime, ClassifierRuntime) or not runtime.ready:
        reason = runtime.reason or f"kind is {runtime.kind}"
        raise DatasetError(f"{bundle_dir} is not a loadable classifier bundle: {reason}")
    return runtime


def predict(runtime: ClassifierRuntime, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """(n, h, w) → (n, n_labels) probabilities."""
    return np.concatenate(
        [runtime.probabilities(images[i : i + batch]) for i in range(0, len(images), batch)]
    )


def classification_metrics(
    clips: list[LabelledClip], probs: np.ndarray, labels: list[str], split: str
) -> dict[str, Any]:
    """Accuracy, per-class P/R/F1, confusion (rows true, columns predicted), per-group accuracy."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.array([labels.index(c.label) for c in clips])
    y_pred = probs.argmax(axis=1)
    idx = list(range(len(labels)))
    prec, rec, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=idx, zero_division=0
    )
    groups: dict[str, dict[str, Any]] = {}
    for key in sorted({k for c in clips for k in c.groups}):
        values = sorted({c.groups[key] for c in clips if key in c.groups}, key=label_key)
        groups[key] = {}
        for v in values:
            m = np.array([c.groups.get(key) == v for c in clips])
            groups[key][v] = {"accuracy": float((y_true[m] == y_pred[m]).mean()), "n": int(m.sum())}
    return {
        "split": split,
        "n": len(clips),
        "accuracy": float((y_true == y_pred).mean()),
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            lab: {
                "precision": float(prec[i]),
                "recall": float(rec[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, lab in enumerate(labels)
        },
        "confusion": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
        "groups": groups,
    }


def format_loso(loso: dict[str, Any]) -> str:
    """The leave-one-group-out table: one row per held-out group, then mean and worst."""
    key = loso["group"]
    lines = [f"leave-one-{key}-out ({len(loso['folds'])} fits)", f"{key:<12}{'accuracy':>10}"]
    lines += [f"{v:<12}{r['accuracy']:>10.4f}{r['n']:>8}" for v, r in loso["folds"].items()]
    lines.append(f"{'mean':<12}{loso['mean']:>10.4f}")
    lines.append(f"{'worst':<12}{loso['worst']:>10.4f}  ({loso['worst_group']})")
    return "\n".join(lines)


def format_table(metrics: dict[str, Any]) -> str:
    """Human-readable tables: per class, per group, confusion matrix."""
    labels = list(metrics["per_class"])
    lines = [
        f"{metrics['split']} split: {metrics['n']} clips, accuracy {metrics['accuracy']:.4f}, "
        f"macro F1 {metrics['macro_f1']:.4f}",
        "",
        f"{'class':<12}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}",
    ]
    for lab, r in metrics["per_class"].items():
        lines.append(
            f"{lab:<12}{r['precision']:>10.3f}{r['recall']:>8.3f}{r['f1']:>8.3f}{r['support']:>9}"
        )
    for key, rows in metrics["groups"].items():
        lines += ["", f"{key:<12}{'accuracy':>10}{'clips':>8}"]
        lines += [f"{v:<12}{r['accuracy']:>10.3f}{r['n']:>8}" for v, r in rows.items()]
    w = max(4, *(len(lab) + 1 for lab in labels))
    lines += ["", "confusion matrix (rows: true, columns: predicted)"]
    lines.append(" " * w + "".join(f"{lab:>{w}}" for lab in labels))
    for lab, row in zip(labels, metrics["confusion"], strict=True):
        lines.append(f"{lab:>{w}}" + "".join(f"{n:>{w}}" for n in row))
    if metrics.get("leave_one_group_out"):
        lines += ["", format_loso(metrics["leave_one_group_out"])]
    return "\n".join(lines)


def render_report(metrics: dict[str, Any], manifest: Manifest) -> bytes:
    """Confusion matrix, per-class P/R/F1 and per-group accuracy → PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(metrics["per_class"])
    cm = np.array(metrics["confusion"])
    loso = metrics.get("leave_one_group_out")
    n_panels = 2 + len(metrics["groups"]) + bool(loso)
    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 5))
    ax = axes[0]
    ax.imshow(cm, cmap="Blues")
    for (i, j), n in np.ndenumerate(cm):
        if n:
            ax.text(
                j,
                i,
                str(n),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if n > cm.max() / 2 else "black",
            )
    ticks = range(len(labels))
    ax.set(
        xticks=ticks,
        yticks=ticks,
        xlabel="predicted",
        ylabel="true",
        title=f"confusion matrix ({metrics['split']}, n={metrics['n']})",
    )
    ax.set_xticklabels(labels, rotation=90 if len(labels) > 12 else 0)
    ax.set_yticklabels(labels)

    ax = axes[1]
    x = np.arange(len(labels))
    for k, (name, color) in enumerate(
        (("precision", "tab:blue"), ("recall", "tab:orange"), ("f1", "tab:green"))
    ):
        ax.bar(
            x + (k - 1) * 0.27,
            [metrics["per_class"][lab][name] for lab in labels],
            width=0.27,
            label=name,
            color=color,
        )
    lo = min(r[m] for r in metrics["per_class"].values() for m in ("precision", "recall", "f1"))
    ax.set(
        xticks=x,
        ylim=(max(0.0, lo - 0.05), 1.005),
        title=f"per class (accuracy {metrics['accuracy']:.3f})",
    )
    ax.set_xticklabels(labels, rotation=90 if len(labels) > 12 else 0)
    ax.legend(fontsize=8, loc="lower right")

    groups = metrics["groups"].items()
    for ax, (key, rows) in zip(axes[2 : 2 + len(groups)], groups, strict=True):
        acc = [r["accuracy"] for r in rows.values()]
        ax.bar(range(len(rows)), acc, color="tab:purple")
        ax.set(
            xticks=range(len(rows)),
            ylim=(max(0.0, min(acc) - 0.05), 1.005),
            title=f"accuracy per {key}",
        )
        ax.set_xticklabels(list(rows), rotation=45, ha="right")
    if loso:
        ax = axes[-1]
        acc = [r["accuracy"] for r in loso["folds"].values()]
        ax.bar(range(len(acc)), acc, color="tab:red")
        ax.axhline(loso["mean"], color="black", lw=1, ls="--")
        ax.set(
            xticks=range(len(acc)),
            ylim=(max(0.0, min(acc) - 0.05), 1.005),
            title=f"{loso['group']} never heard (mean {loso['mean']:.3f}, "
            f"worst {loso['worst']:.3f})",
        )
        ax.set_xticklabels(list(loso["folds"]), rotation=45, ha="right")
    fig.suptitle(f"{manifest.name} ({manifest.version})")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def evaluate_classifier(
    bundle_dir: Path,
    clips: list[LabelledClip],
    split: str = "test",
    write: bool = True,
    loso: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score clips with the bundle through the service runtime; write report.json/png.
    A leave_one_group_out result, if given, is kept beside the metrics."""
    runtime = open_classifier(bundle_dir)
    manifest = runtime.manifest
    assert manifest is not None and manifest.labels is not None
    unknown = sorted({c.label for c in clips} - set(manifest.labels))
    if unknown:
        raise DatasetError(f"labels not known to {bundle_dir}: {', '.join(unknown)}")
    images = load_images(clips, manifest.features, f"features ({split})")
    probs = predict(runtime, images)
    metrics = classification_metrics(clips, probs, manifest.labels, split)
    if loso:
        metrics["leave_one_group_out"] = loso
    if write:
        report = {
            "metrics": metrics,
            "clips": [
                {
                    "file": c.path.name,
                    "label": c.label,
                    "predicted": manifest.labels[int(p.argmax())],
                    "confidence": round(float(p.max()), 4),
                    "groups": c.groups,
                }
                for c, p in zip(clips, probs, strict=True)
            ],
        }
        update_bundle(
            Path(bundle_dir),
            {
                "report.json": (json.dumps(report, indent=1) + "\n").encode(),
                "report.png": render_report(metrics, manifest),
            },
            evaluation=metrics,
        )
    return metrics
