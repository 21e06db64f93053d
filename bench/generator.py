"""The generator bundle, measured: class fidelity and usefulness as training data.

Fidelity: clips made by the generator (ONNX generator + Griffin-Lim, the service's own
GeneratorRuntime) are classified by a classifier bundle through the service's classify
path (wav bytes → service.features → ClassifierRuntime); the share labelled with the
class they were made for, per class and overall. The images before Griffin-Lim are
scored too, to show what the phase reconstruction costs.

Usefulness: a classifier (training.classifier.network.train, the bundle's own recipe) fitted on
`--real-per-class` real clips per class of the speakers the generator learned from, with
and without `--gen-per-class` generated clips per class, scored on every clip of a
speaker neither of them heard (`--heldout`); over `--seeds` (which real clips, and the
network's initialisation).

    python bench/generator.py --generator artifacts/digits-gan --classifier artifacts/digits \\
        --data ../shared/data/fsdd --heldout yweweler
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from service.features import prepare
from service.models.generator import wav_bytes
from service.models.runtimes import ClassifierRuntime, GeneratorRuntime, open_runtime

LABEL_RX = re.compile(r"^(?P<label>\d)_(?P<speaker>[a-z]+)_")


def _open(path: Path, kind: type) -> Any:
    rt = open_runtime(path)
    if not rt.ready or not isinstance(rt, kind):
        raise SystemExit(f"{path}: not a loadable {kind.__name__}: {rt.reason or rt.kind}")
    return rt


def generated_clips(gen: GeneratorRuntime, per_class: int, seed: int) -> dict[str, list]:
    """label → per_class clips (n_samples,), made with seed + the class index."""
    labels = gen.manifest.labels if gen.manifest else None
    assert labels is not None
    return {lab: gen.generate(i, per_class, seed + i) for i, lab in enumerate(labels)}


def fidelity(
    gen: GeneratorRuntime, clf: ClassifierRuntime, per_class: int, seed: int
) -> dict[str, Any]:
    """Share of generated clips the classifier labels with their intended class."""
    assert gen.manifest is not None and clf.manifest is not None
    clf_labels = clf.manifest.labels or []
    rate = gen.manifest.features.sample_rate
    rows: dict[str, Any] = {}
    hits = hits_img = total = 0
    for i, (label, clips) in enumerate(generated_clips(gen, per_class, seed).items()):
        images = np.concatenate(
            [prepare(wav_bytes(a, rate), clf.manifest.features).images for a in clips]
        )
        predicted = [clf_labels[k] for k in clf.probabilities(images).argmax(axis=1)]
        ok = sum(p == label for p in predicted)
        # the generator's own images, before Griffin-Lim (same features as the classifier's
        # only when both use the same front end)
        ok_img = None
        if gen.manifest.features == clf.manifest.features:
            spec = gen.manifest.generator
            assert spec is not None
            noise = np.random.default_rng(seed + i).standard_normal((per_class, spec.latent_dim))
            noise *= spec.noise_scale
            raw = gen.images(i, noise.astype(np.float32))
            ok_img = int(sum(clf_labels[k] == label for k in clf.probabilities(raw).argmax(1)))
            hits_img += ok_img
        rows[label] = {"n": len(clips), "correct": ok, "accuracy": ok / len(clips)}
        if ok_img is not None:
            rows[label]["image_accuracy"] = ok_img / len(clips)
        hits += ok
        total += len(clips)
    return {
        "accuracy": hits / total,
        "image_accuracy": hits_img / total if hits_img else None,
        "n": total,
        "per_class": rows,
    }


def _real_images(paths: list[Path], params: Any) -> np.ndarray:
    return np.stack([prepare(p.read_bytes(), params).image for p in paths]).astype(np.float32)


def usefulness(
    gen: GeneratorRuntime,
    data: Path,
    heldout: str,
    real_per_class: int,
    gen_per_class: int,
    seeds: list[int],
    epochs: int,
) -> dict[str, Any]:
    """Unseen-speaker accuracy of a classifier fitted on few real clips, without and with
    generated ones. The generator's features are the classifier's (its manifest)."""
    from training.classifier.network import ClassifierConfig, train

    assert gen.manifest is not None and gen.manifest.labels is not None
    labels, params = gen.manifest.labels, gen.manifest.features
    by_label: dict[str, list[Path]] = {lab: [] for lab in labels}
    test: list[tuple[Path, int]] = []
    for p in sorted(data.glob("*.wav")):
        m = LABEL_RX.search(p.name)
        if m is None or m["label"] not in by_label:
            continue
        if m["speaker"] == heldout:
            test.append((p, labels.index(m["label"])))
        else:
            by_label[m["label"]].append(p)
    x_test = _real_images([p for p, _ in test], params)
    y_test = np.array([k for _, k in test])
    runs: dict[str, list[float]] = {"real": [], "real+generated": []}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        picked = {
            lab: list(rng.choice(by_label[lab], real_per_class, replace=False)) for lab in labels
        }
        # one real clip per class validates (early stopping) in both runs; the rest fit
        val = [(ps[0], labels.index(lab)) for lab, ps in picked.items()]
        fit = [(p, labels.index(lab)) for lab, ps in picked.items() for p in ps[1:]]
        x_fit, y_fit = _real_images([p for p, _ in fit], params), np.array([k for _, k in fit])
        x_val, y_val = _real_images([p for p, _ in val], params), np.array([k for _, k in val])
        made = generated_clips(gen, gen_per_class, 1000 * (seed + 1))
        x_gen = np.stack(
            [
                prepare(wav_bytes(a, params.sample_rate), params).image
                for lab in labels
                for a in made[lab]
            ]
        )
        y_gen = np.repeat(np.arange(len(labels)), gen_per_class)
        # few clips: no early stopping (10 validation clips are too noisy to stop on), a
        # patient learning-rate schedule, small batches (the fit recipe's defaults, tuned on
        # 2,000 clips, left the 10-per-class model at chance)
        cfg = ClassifierConfig(
            epochs=epochs, patience=epochs, lr_patience=10, batch_size=16, seed=seed
        )
        for name, (x, y) in {
            "real": (x_fit, y_fit),
            "real+generated": (np.concatenate([x_fit, x_gen]), np.concatenate([y_fit, y_gen])),
        }.items():
            model = train(x, y, x_val, y_val, len(labels), cfg).model
            predicted = np.asarray(model.predict(x_test[..., None], verbose=0)).argmax(axis=1)
            runs[name].append(float((predicted == y_test).mean()))
            print(f"seed {seed} {name}: unseen-speaker accuracy {runs[name][-1]:.3f}", flush=True)
    return {
        "heldout_speaker": heldout,
        "test_clips": len(test),
        "real_per_class": real_per_class,
        "gen_per_class": gen_per_class,
        "seeds": seeds,
        "accuracy": runs,
        "mean": {k: float(np.mean(v)) for k, v in runs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generator", type=Path, default=Path("artifacts/digits-gan"))
    p.add_argument("--classifier", type=Path, default=Path("artifacts/digits"))
    p.add_argument("--data", type=Path, default=Path("../shared/data/fsdd"))
    p.add_argument("--per-class", type=int, default=50, help="fidelity: clips per class")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--heldout", default="yweweler", help="usefulness: the unseen speaker")
    p.add_argument("--real-per-class", type=int, default=10)
    p.add_argument("--gen-per-class", type=int, default=100)
    p.add_argument("--seeds", default="0,1,2", help="usefulness runs")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--skip-usefulness", action="store_true")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args(argv)

    gen = _open(args.generator, GeneratorRuntime)
    clf = _open(args.classifier, ClassifierRuntime)
    start = time.perf_counter()
    out: dict[str, Any] = {
        "generator": {"path": args.generator.name, "version": gen.manifest.version},
        "classifier": {"path": args.classifier.name, "version": clf.manifest.version},
    }
    fid = fidelity(gen, clf, args.per_class, args.seed)
    out["fidelity"] = fid
    print(f"class fidelity ({fid['n']} clips, {args.classifier.name} {clf.manifest.version}):")
    for label, row in fid["per_class"].items():
        extra = (
            f"  (images before Griffin-Lim {row['image_accuracy']:.2f})"
            if "image_accuracy" in row
            else ""
        )
        print(f"  {label}: {row['accuracy']:.2f}{extra}")
    img = (
        f" (images before Griffin-Lim {fid['image_accuracy']:.3f})" if fid["image_accuracy"] else ""
    )
    print(f"  all: {fid['accuracy']:.3f}{img}")
    if not args.skip_usefulness:
        use = usefulness(
            gen,
            args.data,
            args.heldout,
            args.real_per_class,
            args.gen_per_class,
            [int(s) for s in args.seeds.split(",")],
            args.epochs,
        )
        out["usefulness"] = use
        print(
            f"usefulness (speaker {use['heldout_speaker']}, {use['test_clips']} clips, "
            f"{use['real_per_class']} real per class, seeds {use['seeds']}):"
        )
        for name, accs in use["accuracy"].items():
            print(f"  {name}: mean {np.mean(accs):.3f} ({', '.join(f'{a:.3f}' for a in accs)})")
    out["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
