"""Detection quality benchmark: auscult's detector against three references, side by side.

    .venv/bin/python bench/quality.py            # full run (3 training seeds) + ablation table
    .venv/bin/python bench/quality.py --quick    # CI: one digit, fold, machine, seed; few epochs

Datasets (built into a temp dir in the DCASE 2021 layout by bench/datasets.py and
bench/machines.py, so the real `training` code reads them): spoken digits one-class (fsdd, mean
over the 10 digits), a real machine with injected faults (4 folds of 10 held-out clips), the
`training synth` set, and three machines generated from physical fault models by an independent
generator (bearing pump, gear drive, and a solenoid valve with short one-actuation clips; one
subset per data seed). fsdd and the machine need ../shared/data; without it they are skipped
with a message. TUNING names the datasets whose results chose auscult's defaults; the others
(HELD_OUT) are only reported.

Methods: auscult as `python -m training fit --sample-rate SR --seed S` builds it
(training.anomaly.fit.fit with the command's own argument handling), scored by
training.anomaly.evaluate through service.models.runtimes, exactly as the service scores;
the DCASE AE baseline, the seed's method (conv AE encoder → PCA → Mahalanobis) and a
Gaussian on log-mel statistics (bench/baselines.py). The learned methods are fitted once per
training seed (--seeds); the main table reports the mean over seeds and the spread of the
harmonic mean. Metrics per DCASE: AUC and pAUC (max FPR 0.1) per domain, averaged over a
dataset's subsets (digits, folds, data seeds), and the harmonic mean of all of them.

The ablation table refits auscult with one choice changed at a time (same `fit` arguments as
the command line, first training seed only) and reports the harmonic mean per dataset.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from statistics import harmonic_mean
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench import baselines, datasets, machines
from training.worker import PRESETS

DOMAINS = ("source", "target")
QUICK_EPOCHS = 8
QUICK_REF_EPOCHS = 5
REF_EPOCHS = 50
DEFAULT_SEEDS = "0,1,2"  # training seeds of a full run; --quick: "0"
MACHINE_DATA_SEEDS = (0, 1, 2)  # subsets of the generated machines (--quick: the first)
# --quick runs one generated machine to keep CI short (tests/benchmarks/test_bench_quality.py
# and test_bench_machines.py build the others); `--quick --datasets gear,valve` runs them.
QUICK_MACHINES = ("bearing",)
# The declared split: the datasets whose results chose auscult's defaults, and those that are
# only reported (no default was chosen on them).
TUNING = ("synth gearbox", "fsdd digits")
HELD_OUT = ("machine faults", "bearing pump", "gear drive", "solenoid valve")
DATASET_KEYS = {
    "fsdd": "fsdd digits",
    "machine": "machine faults",
    "synth": "synth gearbox",
    "bearing": "bearing pump",
    "gear": "gear drive",
    "valve": "solenoid valve",
}
AUSCULT = "auscult (training fit)"
METHODS = ("auscult", "dcase", "seed", "gauss")  # --methods: keys of the main table's rows
ABLATION_DIGITS = (0, 3, 6)
COARSE_BANDS = 32
GAUSS_COARSE = f"ref: Gaussian {COARSE_BANDS}"

# (name, extra `python -m training fit` arguments, what it tests). The first row is the default.
ABLATIONS: list[tuple[str, list[str], str]] = [
    ("default", [], "the defaults of `python -m training fit`"),
    (
        "no AE (band stats)",
        ["--pooling", "band_stats"],
        "the autoencoder's features removed: band statistics alone (issue 7's default)",
    ),
    ("AE only (flat)", ["--pooling", "flat"], "the flattened conv maps alone"),
    (
        "AE min-max",
        ["--ae-input", "minmax"],
        "the convolutions see each window min-max scaled (the previous default)",
    ),
    ("AE sees the level", ["--ae-input", "image"], "the convolutions see the window as scaled"),
    (
        "AE level std bands",
        ["--ae-input", "image", "--standardise-bands"],
        "the convolutions see the window with every band standardised (training mean/std)",
    ),
    (
        "AE both views",
        ["--ae-input", "both"],
        "the convolutions see two channels: the window min-max scaled and as scaled",
    ),
    (
        "AE both std level",
        ["--ae-input", "both", "--standardise-bands"],
        "as AE both views, the level channel standardised per band",
    ),
    (
        "AE latent",
        ["--pooling", "dense+band_stats"],
        "the autoencoder's bottleneck instead of the flattened conv maps",
    ),
    ("concat", ["--fusion", "concat"], "one detector on the concatenated parts, no fusion"),
    (
        "AE time stats",
        ["--pooling", "time_stats+band_stats"],
        "the conv maps' mean/std over time instead of the flattened maps",
    ),
    ("width 64", ["--width", "64"], "each 1-s window stretched to 64 columns"),
    ("scoring hop 0.5 s", ["--window-hop", "0.5"], "the service scores overlapping windows"),
    ("fit hop 1 s", ["--fit-hop", "1"], "fitted on windows without overlap"),
    ("window 2 s", ["--window-seconds", "2"], "2-s windows"),
    ("whole clip", ["--window-seconds", "none"], "no windows: each clip stretched to one image"),
    ("no codec copies", ["--no-codec-copies"], "trained on the original recordings only"),
    ("aggregation max", ["--aggregation", "max"], "clip score = its worst window"),
    ("minmax", ["--scaling", "minmax"], "per-window min-max scaling of every part (drops level)"),
    ("no flux", ["--no-band-flux"], "band mean and std only"),
    ("pca all", ["--pca", "all"], "PCA span only, no complement term"),
    ("detector fit clips", ["--detector-clips", "fit"], "detector without the held-out clips"),
    ("shrinkage oas", ["--shrinkage", "oas"], "OAS instead of Ledoit-Wolf"),
    (
        "aux labels",
        ["--aux-labels", "auto"],
        "the encoder also learns to tell apart the labels file names carry (issue 23)",
    ),
    (
        "aux labels w1",
        ["--aux-labels", "auto", "--aux-weight", "1"],
        "as aux labels, the classification weighing 1 (default 0.1) beside the MSE",
    ),
    (
        "aux labels w0.01",
        ["--aux-labels", "auto", "--aux-weight", "0.01"],
        "as aux labels, the classification weighing 0.01 beside the MSE",
    ),
    (
        "fit job quick",
        PRESETS["quick"],
        "the fit jobs' quick preset (training/worker.py; their standard is the default)",
    ),
]
# The rows a full run computes (--ablation-rows all: every row).
DEFAULT_ABLATION_ROWS = (
    "default",
    "no AE (band stats)",
    "AE only (flat)",
    "AE min-max",
    "AE sees the level",
    "concat",
    "width 64",
    "scoring hop 0.5 s",
    "window 2 s",
    "whole clip",
    "no codec copies",
)


@dataclass
class Dataset:
    name: str
    sample_rate: int
    subsets: list[tuple[str, Callable[[Path], Any]]]  # (subset name, builder(out_dir))


@dataclass
class Result:
    """Metrics of one method on one dataset: training.anomaly.evaluate.metrics_table per
    subset."""

    per_subset: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def domain_mean(self, domain: str, key: str) -> float:
        vals = [
            r[key]
            for m in self.per_subset
            for g, r in m["groups"].items()
            if g.endswith(domain) and key in r
        ]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def hmean(self) -> float:
        vals = [
            v
            for m in self.per_subset
            for r in m["groups"].values()
            for k, v in r.items()
            if k in ("auc", "pauc")
        ]
        return float(harmonic_mean(vals)) if vals else float("nan")


@dataclass
class Seeded:
    """One method on one dataset, a Result per training seed (one entry if deterministic)."""

    runs: dict[int, Result] = field(default_factory=dict)

    def seed(self, s: int) -> Result:
        return self.runs.setdefault(s, Result())

    def domain_mean(self, domain: str, key: str) -> float:
        return float(np.mean([r.domain_mean(domain, key) for r in self.runs.values()]))

    @property
    def hmeans(self) -> list[float]:
        return [r.hmean for r in self.runs.values()]

    @property
    def hmean(self) -> float:
        return float(np.mean(self.hmeans))

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs.values())


def split_of(dataset: str) -> str:
    return "tuning" if dataset in TUNING else "held-out"


# --- methods ---------------------------------------------------------------------------------


def fit_settings(sample_rate: int, extra: list[str]) -> dict[str, Any]:
    """The keyword arguments `python -m training fit --sample-rate SR [extra]` gives fit()."""
    from training.cli import build_parser, fit_kwargs

    argv = ["fit", "--data", ".", "--out", ".", "--sample-rate", str(sample_rate), *extra]
    return fit_kwargs(build_parser().parse_args(argv))


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Keras' per-epoch lines and progress bars (fit's own output)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def run_auscult(data: Path, bundle: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Fit, then AUC/pAUC per group and, at the bundle's shipped thresholds, its levels."""
    from service.models.bundle import read_manifest
    from training.anomaly.evaluate import evaluate
    from training.anomaly.fit import fit

    with quiet():
        fit(data, bundle, run_evaluation=False, **settings)
        metrics, scored = evaluate(data, bundle, write=False)
    thresholds = read_manifest(bundle).thresholds
    assert thresholds is not None
    for group, row in metrics["groups"].items():
        idx = [i for i, c in enumerate(scored.clips) if c.group == group and c.label is not None]
        labels = np.array([scored.clips[i].label for i in idx])
        row.update(level_rates(scored.scores[idx], labels, thresholds))
    return metrics


LEVEL_KEYS = ("false_alarms", "severe_on_healthy", "caught", "caught_at_5pct_fa")


def level_rates(scores: np.ndarray, labels: np.ndarray, thresholds: Any) -> dict[str, float]:
    """At the shipped thresholds: healthy clips not `normal` (false alarms), healthy clips
    `severe`, faulty clips not `normal` (caught); and what the same scores catch with the
    threshold at the healthy clips' 95th percentile (5 % false alarms)."""
    healthy, faulty = scores[labels == "normal"], scores[labels == "anomaly"]
    out: dict[str, float] = {}
    if healthy.size:
        out["false_alarms"] = float(np.mean(healthy >= thresholds.needs_maintenance))
        out["severe_on_healthy"] = float(np.mean(healthy >= thresholds.severe))
    if faulty.size:
        out["caught"] = float(np.mean(faulty >= thresholds.needs_maintenance))
        if healthy.size:
            out["caught_at_5pct_fa"] = float(np.mean(faulty > np.quantile(healthy, 0.95)))
    return out


CODEC_COLUMNS = ("wav", "mp3-128", "mp3-64", "ogg")


def codec_false_alarms(data: Path, bundle: Path) -> dict[str, list[bool]]:
    """For every normal test clip: is its score at or above the bundle's needs_maintenance
    threshold, as recorded (wav) and after a round trip through each codec?"""
    from service.features import prepare
    from service.models.runtimes import AnomalyRuntime, open_runtime
    from training.augment import round_trip
    from training.datasets import discover

    runtime = open_runtime(bundle)
    assert isinstance(runtime, AnomalyRuntime) and runtime.manifest is not None
    m = runtime.manifest
    assert m.thresholds is not None
    normal = [c for c in discover(data) if c.split == "test" and c.label == "normal"]
    out: dict[str, list[bool]] = {k: [] for k in CODEC_COLUMNS}
    for clip in normal:
        raw = clip.path.read_bytes()
        for codec in CODEC_COLUMNS:
            data_ = raw if codec == "wav" else round_trip(raw, codec)
            p = prepare(data_, m.features)
            out[codec].append(
                runtime.verdict(runtime.score(p.images), fmt=p.format).level != "normal"
            )
    return out


def run_reference(data: Path, model: Any) -> dict[str, Any]:
    from training.anomaly.evaluate import ScoredClips, metrics_table
    from training.datasets import discover, training_clips

    clips = discover(data)
    test = [c for c in clips if c.split == "test" and c.label is not None]
    with quiet():
        model.fit([c.path for c in training_clips(clips)])
        scores = model.score([c.path for c in test])
    return metrics_table(ScoredClips(test, scores))


def domain_aware_metrics(data: Path, bundle: Path) -> dict[str, Any] | None:
    """Ablation only (not in the product): the bundle's encoder latents scored by the minimum
    Mahalanobis distance over source and target statistics (DCASE 2023's selective-Mahalanobis
    idea: the target mean of the few target training clips with the shared covariance), per
    window, with the bundle's parts, part weights and window aggregation. None when the
    training split has no target clips."""
    from service.models.bundle import window_scores
    from service.models.runtimes import AnomalyRuntime, open_runtime
    from training.anomaly import mahalanobis
    from training.anomaly.evaluate import ScoredClips, clip_scores, load_windows, metrics_table
    from training.anomaly.fit import split_heldout
    from training.datasets import discover, training_clips

    runtime = open_runtime(bundle)
    assert isinstance(runtime, AnomalyRuntime) and runtime.manifest is not None
    clips = discover(data)
    train = training_clips(clips)
    test = [c for c in clips if c.split == "test" and c.label is not None]
    tr_idx, _ = split_heldout(
        len(train),
        runtime.manifest.training["autoencoder"]["validation_fraction"],
        runtime.manifest.training["seed"],
    )
    train = [train[i] for i in tr_idx]
    target = np.array([c.domain == "target" for c in train])
    if not target.any():
        return None
    with quiet():
        params = runtime.manifest.features
        images, owners = load_windows(train, params, "train")
        z_train = runtime.latents(images)
        images, test_owners = load_windows(test, params, "test")
        z_test = runtime.latents(images)
    target_w = target[owners]
    scoring = runtime.manifest.scoring
    widths = [(p.name, p.dims[1] - p.dims[0]) for p in runtime.parts]
    arrays, parts, _ = mahalanobis.fit_parts(
        z_train[~target_w],
        widths,
        scoring.get("pca_components"),
        scoring["pca_selection"],
        scoring.get("shrinkage", "ledoit_wolf"),
        scoring.get("max_components"),
    )
    parts = [
        p.model_copy(update={"weight": b.weight}) for p, b in zip(parts, runtime.parts, strict=True)
    ]
    source = window_scores(z_test, arrays, parts)
    shifted = {**arrays, "pca_mean": z_train[target_w].mean(axis=0).astype(np.float32)}
    tgt = window_scores(z_test, shifted, parts)
    scores = clip_scores(np.minimum(source, tgt), test_owners, len(test), runtime.aggregation)
    return metrics_table(ScoredClips(test, scores))


# --- datasets --------------------------------------------------------------------------------


def build_datasets(
    quick: bool,
    only: set[str] | None,
    digits: list[int] | None = None,
    machine_subsets: int | None = None,
) -> Iterator[Dataset | str]:
    """Datasets to run, or a message for each that is skipped."""
    shared = datasets.SHARED_DATA
    if only is None or "fsdd" in only:
        if (shared / "fsdd").is_dir():
            digits = digits if digits is not None else [0] if quick else list(range(10))
            yield Dataset(
                "fsdd digits",
                8000,
                [(f"digit {d}", lambda out, d=d: datasets.fsdd_digit(out, d)) for d in digits],
            )
        else:
            yield f"fsdd digits: skipped, {shared / 'fsdd'} is absent"
    if only is None or "machine" in only:
        if (shared / "machine-normal").is_dir():
            folds = [0] if quick else [0, 1, 2, 3]
            yield Dataset(
                "machine faults",
                16000,
                [(f"fold {k}", lambda out, k=k: datasets.machine_faults(out, k)) for k in folds],
            )
        else:
            yield f"machine faults: skipped, {shared / 'machine-normal'} is absent"
    if only is None or "synth" in only:
        yield Dataset("synth gearbox", 16000, [("seed 0", lambda out: datasets.synth(out, 0))])
    data_seeds = MACHINE_DATA_SEEDS[: 1 if quick else machine_subsets]
    generated = (
        ("bearing", machines.bearing_pump),
        ("gear", machines.gear_drive),
        ("valve", machines.solenoid_valve),
    )
    for key, build in generated:
        if (key in only) if only is not None else (not quick or key in QUICK_MACHINES):
            yield Dataset(
                DATASET_KEYS[key],
                machines.SAMPLE_RATE,
                [(f"data seed {k}", lambda out, k=k, b=build: b(out, k)) for k in data_seeds],
            )


# --- output ----------------------------------------------------------------------------------


def format_results(rows: list[tuple[str, str, Seeded]]) -> str:
    """The main table: metrics are means over training seeds; sd/min/max are the spread of the
    harmonic mean over seeds ('-' for a method fitted once)."""
    head = (
        f"{'dataset':<16}{'set':<10}{'method':<24}{'src AUC':>8}{'src pAUC':>9}{'tgt AUC':>8}"
        f"{'tgt pAUC':>9}{'hmean':>8}{'sd':>7}{'min':>7}{'max':>7}{'seeds':>6}{'seconds':>9}"
    )
    lines = [head, "-" * len(head)]
    last = None
    for ds, method, r in rows:
        cells = [r.domain_mean(d, k) for d in DOMAINS for k in ("auc", "pauc")]
        h = r.hmeans
        spread = (
            f"{np.std(h, ddof=1):>7.3f}{min(h):>7.3f}{max(h):>7.3f}"
            if len(h) > 1
            else f"{'-':>7}{'-':>7}{'-':>7}"
        )
        lines.append(
            f"{ds if ds != last else '':<16}{split_of(ds) if ds != last else '':<10}{method:<24}"
            + "".join(f"{v:>{w}.3f}" for v, w in zip(cells, (8, 9, 8, 9), strict=True))
            + f"{r.hmean:>8.3f}{spread}{len(h):>6}{r.seconds:>9.0f}"
        )
        last = ds
    return "\n".join(lines)


def format_levels(rows: list[tuple[str, str, Seeded]]) -> str:
    """auscult's levels at its shipped thresholds per dataset and domain (means over
    training seeds and subsets): false alarms, severe on healthy, faults caught, and what
    the same scores catch at 5 % false alarms."""
    cols = [(k, d) for k in LEVEL_KEYS for d in DOMAINS]
    short = {
        "false_alarms": "FA",
        "severe_on_healthy": "sev|ok",
        "caught": "caught",
        "caught_at_5pct_fa": "@5%FA",
    }
    head = f"{'dataset':<16}{'set':<10}" + "".join(
        f"{short[k] + (' src' if d == 'source' else ' tgt'):>12}" for k, d in cols
    )
    lines = [head, "-" * len(head)]
    for ds, method, r in rows:
        if method != AUSCULT:
            continue
        cells = "".join(f"{r.domain_mean(d, k):>12.3f}" for k, d in cols)
        lines.append(f"{ds:<16}{split_of(ds):<10}{cells}")
    return "\n".join(lines)


def format_ablation(table: dict[str, dict[str, Result]], names: list[str]) -> str:
    notes = {name: note for name, _, note in ABLATIONS}
    head = f"{'variant':<20}" + "".join(f"{n:>16}" for n in names) + "  what changes"
    lines = [head, "-" * len(head)]
    for variant, per_ds in table.items():
        cells = "".join(f"{per_ds[n].hmean:>16.3f}" if n in per_ds else f"{'-':>16}" for n in names)
        lines.append(f"{variant:<20}{cells}  {notes.get(variant, '')}")
    return "\n".join(lines)


def format_codecs(table: dict[str, dict[str, dict[str, list[bool]]]]) -> str:
    head = f"{'variant':<20}{'dataset':<18}" + "".join(f"{k:>9}" for k in CODEC_COLUMNS) + "  clips"
    lines = [head, "-" * len(head)]
    for variant, per_ds in table.items():
        for ds_name, cols in per_ds.items():
            n = len(cols["wav"])
            shares = [float(np.mean(cols[k])) if n else float("nan") for k in CODEC_COLUMNS]
            cells = "".join(f"{v:>9.2f}" for v in shares)
            lines.append(f"{variant:<20}{ds_name:<18}{cells}  {n}")
    return "\n".join(lines)


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_seeds(text: str) -> list[int]:
    seeds = [int(x) for x in text.split(",") if x.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(text)
    return seeds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="one digit, one fold, one generated machine (bearing) with one data seed, one "
        "training seed, few epochs (CI)",
    )
    p.add_argument(
        "--datasets", default=None, help=f"comma list of {','.join(DATASET_KEYS)} (default all)"
    )
    p.add_argument("--digits", default=None, help="comma list of fsdd digits (default all)")
    p.add_argument(
        "--seeds",
        default=None,
        help=f"comma list of training seeds for auscult and the learned references "
        f"(default {DEFAULT_SEEDS}; --quick: 0)",
    )
    p.add_argument(
        "--machine-subsets",
        type=int,
        default=None,
        help=f"data seeds per generated machine (default all {len(MACHINE_DATA_SEEDS)})",
    )
    p.add_argument(
        "--ref-epochs",
        type=int,
        default=None,
        help=f"epochs of the DCASE AE reference (default {REF_EPOCHS}; --quick: "
        f"{QUICK_REF_EPOCHS})",
    )
    p.add_argument(
        "--seed-epochs",
        type=int,
        default=None,
        help=f"epochs of the seed's conv AE (default {baselines.SeedAutoencoder.epochs}, as the "
        f"seed describes it; --quick: {QUICK_REF_EPOCHS})",
    )
    p.add_argument(
        "--ablation",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run the ablation table (default: on in full mode, off in --quick)",
    )
    p.add_argument(
        "--ablation-rows",
        default=",".join(DEFAULT_ABLATION_ROWS),
        help="comma list of ablation rows, or 'all' (default: %(default)s)",
    )
    p.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma list of the main table's methods (auscult is always run: the ablation "
        "starts from its bundles). Default: %(default)s",
    )
    p.add_argument("--keep", type=Path, default=None, help="keep datasets and bundles here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    only = set(args.datasets.split(",")) if args.datasets else None
    if only is not None and only - set(DATASET_KEYS):
        p.error(f"unknown datasets {sorted(only - set(DATASET_KEYS))}; known: {list(DATASET_KEYS)}")
    digits = [int(d) for d in args.digits.split(",")] if args.digits else None
    try:
        seeds = parse_seeds(args.seeds or ("0" if args.quick else DEFAULT_SEEDS))
    except ValueError:
        p.error(f"--seeds must be a comma list of distinct integers, not {args.seeds!r}")
    ablation = (not args.quick) if args.ablation is None else args.ablation
    names = {n for n, _, _ in ABLATIONS}
    wanted = names if args.ablation_rows == "all" else set(args.ablation_rows.split(","))
    if wanted - names:
        p.error(f"unknown ablation rows {sorted(wanted - names)}; known: {sorted(names)}")
    ablation_rows = [row for row in ABLATIONS if row[0] in wanted or row[0] == "default"]
    fit_extra = ["--epochs", str(QUICK_EPOCHS)] if args.quick else []
    ref_epochs = args.ref_epochs or (QUICK_REF_EPOCHS if args.quick else REF_EPOCHS)
    seed_epochs = args.seed_epochs or (
        QUICK_REF_EPOCHS if args.quick else baselines.SeedAutoencoder.epochs
    )

    print(f"Tuning datasets (results chose the defaults): {', '.join(TUNING)}")
    print(f"Held-out datasets (only reported): {', '.join(HELD_OUT)}")
    learned = f"auscult, {baselines.DcaseAutoencoder.name}, {baselines.SeedAutoencoder.name}"
    print(
        f"Training seeds: {','.join(map(str, seeds))} ({learned}; "
        f"{baselines.GaussianStats.name} has no seed: fitted once); epochs: DCASE AE {ref_epochs}, "
        f"seed's conv AE {seed_epochs}"
    )
    sys.stdout.flush()

    methods = ("auscult", *(m for m in METHODS[1:] if m in args.methods.split(",")))
    if set(args.methods.split(",")) - set(METHODS):
        p.error(f"unknown methods in {args.methods!r}; known: {','.join(METHODS)}")
    labels = {
        "auscult": AUSCULT,
        "dcase": baselines.DcaseAutoencoder.name,
        "seed": baselines.SeedAutoencoder.name,
        "gauss": baselines.GaussianStats.name,
    }
    rows: list[tuple[str, str, Seeded]] = []
    messages: list[str] = []
    ablation_table: dict[str, dict[str, Result]] = {}
    codec_table: dict[str, dict[str, dict[str, list[bool]]]] = {}
    built: list[tuple[Dataset, list[Path]]] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="auscult-bench-") as tmp:
        root = args.keep or Path(tmp)
        for ds in build_datasets(args.quick, only, digits, args.machine_subsets):
            if isinstance(ds, str):
                messages.append(ds)
                progress(ds)
                continue
            results = {m: Seeded() for m in methods}
            dirs = []
            for i, (sub, build) in enumerate(ds.subsets):
                data = root / f"{ds.name.split()[0]}-{i}"
                build(data)
                dirs.append(data)
                for s in seeds:
                    runs: dict[str, Callable[[], dict[str, Any]]] = {
                        "auscult": lambda data=data, ds=ds, s=s: run_auscult(
                            data,
                            data / f"bundle-seed{s}",
                            fit_settings(ds.sample_rate, [*fit_extra, "--seed", str(s)]),
                        ),
                        "dcase": lambda data=data, ds=ds, s=s: run_reference(
                            data, baselines.DcaseAutoencoder(ds.sample_rate, ref_epochs, seed=s)
                        ),
                        "seed": lambda data=data, ds=ds, s=s: run_reference(
                            data, baselines.SeedAutoencoder(seed_epochs, seed=s)
                        ),
                    }
                    if s == seeds[0]:  # deterministic: once
                        runs["gauss"] = lambda data=data, ds=ds: run_reference(
                            data, baselines.GaussianStats(ds.sample_rate)
                        )
                    for m, run in runs.items():
                        if m not in methods:
                            continue
                        t0 = time.perf_counter()
                        metrics = run()
                        res = results[m].seed(s)
                        res.per_subset.append(metrics)
                        res.seconds += time.perf_counter() - t0
                        progress(
                            f"[{ds.name} / {sub}] {m:<8} seed {s} hmean {metrics['hmean']:.3f}"
                        )
            built.append((ds, dirs))
            rows += [(ds.name, labels[m], results[m]) for m in methods]

        if ablation:
            for ds, dirs in built:
                chosen = list(range(len(dirs)))
                if ds.name.startswith("fsdd") and digits is None:
                    chosen = [d for d in ABLATION_DIGITS if d < len(dirs)]
                main_row = next(r for n, m, r in rows if n == ds.name and m == AUSCULT)
                defaults = main_row.runs[seeds[0]]
                bundle = f"bundle-seed{seeds[0]}"
                for variant, extra, _ in ablation_rows:
                    res = ablation_table.setdefault(variant, {}).setdefault(ds.name, Result())
                    alarms = codec_table.setdefault(variant, {}).setdefault(
                        ds.name, {k: [] for k in CODEC_COLUMNS}
                    )
                    for i in chosen:
                        if variant == "default":  # the main table's bundles (first seed)
                            res.per_subset.append(defaults.per_subset[i])
                            for k, v in codec_false_alarms(dirs[i], dirs[i] / bundle).items():
                                alarms[k] += v
                            da = domain_aware_metrics(dirs[i], dirs[i] / bundle)
                            if da is not None:
                                ablation_table.setdefault("domain-aware", {}).setdefault(
                                    ds.name, Result()
                                ).per_subset.append(da)
                            continue
                        settings = fit_settings(
                            ds.sample_rate, [*fit_extra, "--seed", str(seeds[0]), *extra]
                        )
                        t0 = time.perf_counter()
                        res.per_subset.append(run_auscult(dirs[i], dirs[i] / "variant", settings))
                        res.seconds += time.perf_counter() - t0
                        for k, v in codec_false_alarms(dirs[i], dirs[i] / "variant").items():
                            alarms[k] += v
                    progress(f"[ablation {ds.name}] {variant:<18} hmean {res.hmean:.3f}")
                # a stronger reference than the main table's: fewer bands, a better covariance
                ref = ablation_table.setdefault(GAUSS_COARSE, {}).setdefault(ds.name, Result())
                for i in chosen:
                    model = baselines.GaussianStats(ds.sample_rate, n_mels=COARSE_BANDS)
                    ref.per_subset.append(run_reference(dirs[i], model))

    print()
    print(
        "Detection quality (DCASE metrics; AUC/pAUC averaged over subsets and training seeds, "
        "hmean over all; sd/min/max: the hmean's spread over seeds)"
    )
    print(format_results(rows))
    print()
    print(
        "auscult's levels at the thresholds each fitted bundle ships with (FA: healthy clips "
        "not normal; sev|ok: healthy clips severe; caught: faulty clips not normal; @5%FA: "
        "what the same scores catch at 5 % false alarms)"
    )
    print(format_levels(rows))
    by_ds: dict[str, dict[str, Seeded]] = {}
    for ds_name, method, r in rows:
        by_ds.setdefault(ds_name, {})[method] = r
    for ds_name, h in by_ds.items():
        ours = h.pop(AUSCULT)
        if not h:  # --methods auscult: no reference to compare with
            continue
        best_name, best = max(h.items(), key=lambda kv: kv[1].hmean)
        verdict = (
            "beats every reference" if ours.hmean > best.hmean else "does NOT beat every reference"
        )
        print(
            f"{ds_name}: auscult {ours.hmean:.3f} (worst seed {min(ours.hmeans):.3f}) vs best "
            f"reference {best.hmean:.3f} ({best_name}): {verdict} [{split_of(ds_name)}]"
        )
    if ablation_table:
        print()
        fsdd_note = (
            f" (fsdd: digits {','.join(map(str, ABLATION_DIGITS))})" if digits is None else ""
        )
        print(
            f"Ablation: auscult harmonic mean per dataset, one change at a time{fsdd_note}; "
            f"single training seed ({seeds[0]}), so differences within the main table's "
            "seed spread are noise"
        )
        print(format_ablation(ablation_table, [ds.name for ds, _ in built]))
        print(
            f"{'domain-aware':<20}  = min Mahalanobis over source and target statistics "
            "(bench-only scoring of the default bundle's latents)"
        )
        print(
            f"{GAUSS_COARSE:<20}  = the Gaussian reference on {COARSE_BANDS} mel bands instead "
            f"of {baselines.N_MELS} (not auscult; for comparison)"
        )
        print()
        print(
            "Codecs: share of NORMAL test clips at or above needs_maintenance (normal-based "
            "thresholds), as recorded and after a round trip, per ablation row"
        )
        print(format_codecs(codec_table))
    for m in messages:
        print(m)
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
