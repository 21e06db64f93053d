"""The command line's parser (`python -m training …`) and the `fit` options → keyword
arguments of training.anomaly.fit.fit, shared by the command, the fit jobs' trainer and
bench/quality.py."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from training.anomaly.autoencoder import PART_NAMES, AutoencoderConfig, pooling_parts
from training.anomaly.aux_labels import AUX_MODES, MIN_LABEL_CLIPS

C = TypeVar("C")
DESCRIPTION = """Command line: python -m training {fit,fit-classifier,fit-generator,generate,enrol,
evaluate,spectrograms,synth,worker} …"""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v)


def _pooling(text: str) -> str:
    try:
        pooling_parts(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    return text


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError("use a fraction, e.g. 0.01") from e
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError("a rate must lie between 0 and 0.5 (e.g. 0.01)")
    return value


def _regex(text: str) -> str:
    import re

    try:
        re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"not a regular expression: {e}") from e
    return text


def _window(text: str) -> float | None:
    if text == "none":
        return None
    try:
        value = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError("use seconds (e.g. 2) or none") from e
    if value <= 0:
        raise argparse.ArgumentTypeError("the window must be longer than 0 s")
    return value


class _HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help line, except where there is none to show
    (required options, flags, None) or the help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.required
            or action.default is None
            or action.default is argparse.SUPPRESS
            or action.nargs == 0
            or "%(default)" in text
        ):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    from training.synth import MACHINES

    p = argparse.ArgumentParser(prog="python -m training", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, formatter_class=_HelpWithDefaults, **kwargs)

    f = add_parser(
        "fit",
        help="fit an anomaly bundle on normal clips",
        description="Fit an anomaly bundle on the healthy clips of a dataset folder: a DCASE "
        "layout (DIR/train/ and a test folder), the seed's DIR/SpectrogramImage/, or a flat "
        "folder of healthy clips (wav/flac/ogg/mp3, or png spectrograms), all used for "
        "training.",
    )
    f.add_argument(
        "--data",
        required=True,
        type=Path,
        help="dataset folder: a DCASE layout or a flat folder of healthy clips",
    )
    f.add_argument("--out", required=True, type=Path, help="bundle folder, e.g. artifacts/NAME")
    ae = AutoencoderConfig()
    f.add_argument("--epochs", type=int, default=ae.epochs, help="autoencoder training epochs")
    f.add_argument(
        "--patience",
        type=int,
        default=ae.patience,
        help="epochs without a lower held-out loss before the autoencoder's training stops",
    )
    f.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    f.add_argument("--filters", type=_ints, default=ae.filters, help="e.g. 16,32,64")
    f.add_argument(
        "--bottleneck", choices=["conv", "dense"], default=ae.bottleneck, help="autoencoder"
    )
    f.add_argument(
        "--latent-dim",
        type=int,
        default=ae.latent_dim,
        help="bottleneck size: channels (conv) or units (dense)",
    )
    f.add_argument(
        "--pooling",
        type=_pooling,
        default=ae.pooling,
        help=f"encoder output scored by the detector: one or more of {', '.join(PART_NAMES)} "
        "joined by '+' (flat: the last conv block flattened; time_stats: its mean/std over "
        "time; dense: the bottleneck; input: every mel band's mean/std; band_stats: mean, "
        "std and peak flux of --band-pool bands). Default: %(default)s",
    )
    f.add_argument(
        "--fusion",
        choices=["scores", "concat"],
        default="scores",
        help="scores: a detector per part, distances fused by their held-out normal spread; "
        "concat: one detector on the concatenated parts",
    )
    f.add_argument(
        "--window-seconds",
        type=_window,
        default=1.0,
        help="clips are cut into windows of this many seconds, each scored (none: every "
        "clip is one image stretched to --width). Default: %(default)s",
    )
    f.add_argument(
        "--window-hop",
        type=float,
        default=None,
        help="seconds between the windows the service scores (default: one window, no overlap)",
    )
    f.add_argument(
        "--fit-hop",
        type=float,
        default=None,
        help="seconds between the windows fitted on (default: half a window)",
    )
    f.add_argument(
        "--aggregation",
        choices=["mean", "max", "top_k_mean"],
        default="mean",
        help="window scores → clip score",
    )
    f.add_argument("--aggregation-k", type=int, default=3, help="k for top_k_mean")
    f.add_argument(
        "--codec-copies",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also fit on an ogg/mp3 round trip of every training clip (healthy mp3 and "
        "ogg uploads then score as normal), and measure the levels on low-bitrate round "
        "trips (mp3 at 24 and 32 kbit/s, and from 22.05 and 44.1 kHz, opus 16 kbit/s, vorbis at "
        "its lowest quality)",
    )
    f.add_argument(
        "--max-components",
        type=int,
        default=128,
        help="principal directions kept per part (the rest share one variance); 0: all",
    )
    f.add_argument(
        "--band-pool",
        type=int,
        default=ae.band_pool,
        help="band_stats: adjacent mel bands averaged into one (2: 64 mels → 32 bands)",
    )
    f.add_argument(
        "--band-flux",
        action=argparse.BooleanOptionalAction,
        default=ae.band_flux,
        help="band_stats: keep each band's peak flux max |x[t+1]-x[t]|",
    )
    f.add_argument(
        "--standardise-bands",
        action=argparse.BooleanOptionalAction,
        default=ae.standardise_bands,
        help="standardise every mel band inside the network",
    )
    f.add_argument(
        "--ae-input",
        choices=("image", "minmax", "centred", "both"),
        default=ae.ae_input,
        help="what the autoencoder's convolutions see: the window as scaled (image), every "
        "window min-max scaled on its own (minmax: level-independent; band_stats keeps the "
        "level), every window minus its own mean (centred: gain-independent, keeps the "
        "contrast) or the first two as two channels (both)",
    )
    f.add_argument("--n-mels", type=int, default=64, help="mel bands = input height")
    f.add_argument(
        "--width",
        type=int,
        default=32,
        help="input width: time columns of one window (32: a 1-s window's own frames at the "
        "default hop, not stretched)",
    )
    f.add_argument(
        "--fmax",
        type=float,
        default=None,
        help="highest mel frequency (default: 0.8 x Nyquist, below the low-pass of mp3 and "
        "other lossy codecs, which empty the top bands)",
    )
    f.add_argument("--sample-rate", type=int, default=16000)
    f.add_argument("--n-fft", type=int, default=None, help="default: 64 ms at the sample rate")
    f.add_argument("--hop-length", type=int, default=None, help="default: n_fft / 2")
    f.add_argument(
        "--scaling", choices=["fixed_db", "minmax"], default="fixed_db", help="image scaling"
    )
    f.add_argument(
        "--pca",
        choices=["full", "all", "top", "residual"],
        default="full",
        help="full: every principal direction plus the complement of their span",
    )
    f.add_argument("--pca-components", type=int, default=None, help="for --pca top/residual")
    f.add_argument(
        "--shrinkage", default="ledoit_wolf", help="ledoit_wolf, oas or a number in [0, 1]"
    )
    f.add_argument(
        "--detector-clips",
        choices=["all", "fit"],
        default="all",
        help="clips the Mahalanobis detector is fit on: all training clips (thresholds "
        "still from the held-out ones) or only those the autoencoder was trained on",
    )
    f.add_argument(
        "--false-alarm-rate",
        type=_rate,
        default=0.01,
        help="share of healthy clips from recordings never seen that may reach "
        "needs_maintenance. Default: %(default)s",
    )
    f.add_argument(
        "--severe-rate",
        type=_rate,
        default=0.001,
        help="share of healthy clips from recordings never seen that may reach severe "
        "(severe also lies at least twice as far above typical as needs_maintenance). "
        "Default: %(default)s",
    )
    f.add_argument(
        "--group-by",
        type=_regex,
        default=None,
        help="regex whose first group (or whole match) in a file name names the recording "
        "session, unit or speaker a clip came from; the rates are estimated on groups held "
        "out of the detector's fit. Default: every file is its own group",
    )
    f.add_argument(
        "--stretch-seconds",
        type=float,
        default=2.0,
        help="a clip's level is that of its worst stretch this long. Default: %(default)s",
    )
    f.add_argument(
        "--kmeans-thresholds",
        action="store_true",
        help="move the thresholds to KMeans boundaries of the LABELLED test scores (the "
        "seed's method; a user with no labelled faults cannot do this). Off by default",
    )
    f.add_argument(
        "--aux-labels",
        choices=AUX_MODES,
        default="off",
        help="auto: when the training file names carry two or more labels (DCASE section, "
        f"domain and attributes, takes and indices taken away) with {MIN_LABEL_CLIPS}+ clips "
        "each, the autoencoder also learns to tell them apart (the head is not exported). "
        "Default: %(default)s",
    )
    f.add_argument(
        "--aux-weight",
        type=float,
        default=ae.aux_weight,
        help="--aux-labels: weight of the classification loss beside the reconstruction's",
    )
    f.add_argument("--no-evaluate", action="store_true", help="skip the evaluation on test clips")
    f.add_argument(
        "--strict-files",
        action="store_true",
        help="stop at an unreadable training file (default: leave it out with a warning naming it)",
    )
    f.add_argument(
        "--force", action="store_true", help="replace a bundle already in --out (default: refuse)"
    )

    c = add_parser(
        "fit-classifier",
        help="fit a classifier bundle on labelled clips",
        description="Layouts: DIR/train/<class>/*.wav (+ optional DIR/test/<class>/), or any "
        "audio under DIR labelled by --label-pattern. Patterns are regexes searched in the "
        "file name (extension included). fsdd: --label-pattern "
        "'^(?P<label>\\d)_(?P<speaker>[a-z]+)_' --test-pattern '_[0-4]\\.wav$'",
    )
    c.add_argument("--data", required=True, type=Path, help="dataset folder")
    c.add_argument("--out", type=Path, help="bundle folder, e.g. artifacts/NAME")
    c.add_argument(
        "--label-pattern",
        help="regex with a named group 'label' (other named "
        "groups, e.g. 'speaker', get their own accuracy table)",
    )
    c.add_argument(
        "--test-pattern",
        help="files whose name matches are the test split (as are files under DIR/test/)",
    )
    c.add_argument("--group-pattern", help="regex with named groups to report accuracy by")
    c.add_argument(
        "--loso",
        metavar="GROUP",
        help="also measure leave-one-GROUP-out (GROUP: a named group of the patterns, e.g. "
        "speaker): the recipe refitted without each group's clips (train and test) and "
        "scored on them; recorded in the bundle's evaluation and report",
    )
    c.add_argument(
        "--loso-only", action="store_true", help="with --loso: print its table, write no bundle"
    )
    c.add_argument(
        "--loso-groups",
        type=lambda t: tuple(v for v in t.split(",") if v),
        help="with --loso-only: only these held-out groups, e.g. george,jackson (a quick "
        "look at the hardest folds)",
    )
    c.add_argument(
        "--extra-train",
        type=Path,
        metavar="DIR",
        help="more labelled clips (same layout or --label-pattern) that only ever train: "
        "never validation, test or a held-out group (e.g. synthetic voices made by "
        "bench/espeak_voices.py)",
    )
    c.add_argument("--epochs", type=int, default=30)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--filters", type=_ints, default=(32, 64, 128), help="e.g. 32,64,128")
    c.add_argument(
        "--arch",
        choices=["cnn", "tc"],
        default="cnn",
        help="cnn: 2-D conv blocks; tc: mel bands as channels of 1-D residual convolutions "
        "over time",
    )
    c.add_argument("--convs", type=int, default=1, help="cnn: convolutions per block")
    c.add_argument("--kernel", type=int, default=9, help="tc: kernel of the residual blocks")
    c.add_argument("--learning-rate", type=float, default=1e-3)
    c.add_argument(
        "--lr-patience",
        type=int,
        default=2,
        help="epochs without a lower validation loss before the learning rate is halved",
    )
    c.add_argument(
        "--normalise",
        choices=["none", "clip", "band", "max"],
        default="none",
        help="per-clip normalisation inside the network: clip (mean/variance of the image), "
        "band (of every mel band over time), max (minus the image's maximum)",
    )
    c.add_argument("--dropout", type=float, default=0.3)
    c.add_argument("--batch-size", type=int, default=32)
    c.add_argument("--copies", type=int, default=0, help="perturbed copies per clip")
    c.add_argument("--speed", type=float, default=0.0, help="copies: pitch+tempo ±fraction")
    c.add_argument("--tempo", type=float, default=0.0, help="copies: tempo ±fraction")
    c.add_argument("--gain-db", type=float, default=0.0, help="copies: level ±dB")
    c.add_argument(
        "--noise-snr-db",
        type=float,
        default=0.0,
        help="copies: white noise at an SNR from this to 20 dB more (0: none)",
    )
    c.add_argument(
        "--warp",
        type=float,
        default=0.0,
        help="vocal tract length perturbation: each training image's mel axis warped by a "
        "factor in [1 - warp, 1 + warp], drawn per batch (0: none)",
    )
    c.add_argument("--freq-masks", type=int, default=0, help="SpecAugment")
    c.add_argument("--freq-mask-width", type=int, default=4, help="mel rows")
    c.add_argument("--time-masks", type=int, default=0, help="SpecAugment")
    c.add_argument("--time-mask-width", type=int, default=8, help="frames")
    c.add_argument("--validation-fraction", type=float, default=0.1)
    c.add_argument("--sample-rate", type=int, default=8000)
    c.add_argument("--clip-seconds", type=float, default=1.0, help="clips are padded/trimmed")
    c.add_argument(
        "--onset-margin",
        type=float,
        default=0.1,
        help="a recording longer than the clip is cut from this many seconds before its "
        "first loud 10-ms frame (the service does the same), so silence before a word does "
        "not push it out of the clip; perturbed training copies stay as made; negative: "
        "every recording's own start",
    )
    c.add_argument("--n-mels", type=int, default=32, help="mel bands = input height")
    c.add_argument("--n-fft", type=int, default=None, help="default: ~32 ms")
    c.add_argument("--hop-length", type=int, default=None, help="default: n_fft / 2")
    c.add_argument("--no-keras", action="store_true", help="do not add classifier.keras")

    g = add_parser(
        "fit-generator",
        help="fit a class-conditional GAN (a generator bundle) on labelled clips",
        description="Learns the classifier's log-mel images per class; writes generator.onnx, "
        "a sample grid per epoch and one Griffin-Lim wav per class. fsdd: --label-pattern "
        "'^(?P<label>\\d)_'",
    )
    g.add_argument("--data", required=True, type=Path, help="dataset folder")
    g.add_argument("--out", required=True, type=Path, help="bundle folder, e.g. artifacts/NAME")
    g.add_argument("--label-pattern", help="regex with a named group 'label' (as fit-classifier)")
    g.add_argument("--include-pattern", help="only files whose name matches are learned from")
    g.add_argument("--epochs", type=int, default=60)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--latent-dim", type=int, default=32)
    g.add_argument("--filters", type=_ints, default=(128, 64, 32), help="generator, e.g. 64,32,16")
    g.add_argument("--disc-filters", type=_ints, default=(32, 64, 128), help="discriminator")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument(
        "--class-weight", type=float, default=1.0, help="auxiliary class loss (0: plain CGAN)"
    )
    g.add_argument(
        "--noise-scale",
        type=float,
        default=1.0,
        help="standard deviation of the noise when sampling (below 1: fewer, surer clips)",
    )
    g.add_argument("--grid-every", type=int, default=1, help="a sample grid every N epochs")
    g.add_argument("--sample-rate", type=int, default=8000)
    g.add_argument("--clip-seconds", type=float, default=1.0)
    g.add_argument("--n-mels", type=int, default=32)

    r = add_parser("generate", help="write wavs of one class with a generator bundle")
    r.add_argument("--model", required=True, type=Path, help="generator bundle folder")
    r.add_argument("--label", required=True, help="one of the bundle's labels")
    r.add_argument("--n", type=int, default=1, help="how many clips")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", required=True, type=Path, help="folder for the wavs")

    n = add_parser(
        "enrol",
        help="add an operating condition to an anomaly bundle from ≥ 10 healthy clips",
        description="Measures the condition's healthy sound (its mean and spread) with the "
        "bundle's encoder and detector, refitting nothing, and rewrites the bundle as a new "
        "version; a running service picks it up on reload. Requests may then name the "
        "condition, and clips nearest to it are judged by it.",
    )
    n.add_argument("--model", required=True, type=Path, help="anomaly bundle folder")
    n.add_argument(
        "--data", required=True, type=Path, help="folder of healthy clips (wav/flac/ogg/mp3)"
    )
    n.add_argument("--condition", required=True, help="the condition's name, e.g. rpm_1800")

    e = add_parser("evaluate", help="AUC/pAUC table + report.png for a bundle")
    e.add_argument("--data", required=True, type=Path)
    e.add_argument("--model", required=True, type=Path)

    s = add_parser(
        "spectrograms",
        help="audio folder → grayscale PNG spectrograms a bundle scores",
        description="Every audio file under --in becomes PNG spectrograms under --out, made "
        "with the feature parameters of the bundle that will score them (one PNG per window "
        "for a windowed bundle: NAME_w000.png, …).",
    )
    s.add_argument("--in", dest="in_dir", required=True, type=Path, help="folder of audio files")
    s.add_argument("--out", required=True, type=Path, help="folder for the PNGs")
    s.add_argument(
        "--model",
        type=Path,
        default=None,
        help="bundle folder the images are for (default: the service's default model, "
        "$AUSCULT_ARTIFACTS_DIR/$AUSCULT_DEFAULT_MODEL, i.e. artifacts/gearbox)",
    )

    w = add_parser(
        "worker",
        help="the trainer of fit jobs: runs the jobs the service spools (POST /v1/fits)",
        description="Takes fit jobs from the jobs folder the service spools them to "
        "(AUSCULT_JOBS_DIR), runs `fit` with each job's preset and publishes the bundle "
        "into the artifacts folder atomically; the service loads it by itself.",
    )
    w.add_argument("--jobs", required=True, type=Path, help="the jobs folder (AUSCULT_JOBS_DIR)")
    w.add_argument(
        "--artifacts", required=True, type=Path, help="the artifacts folder the service serves"
    )
    w.add_argument(
        "--ray",
        metavar="ADDRESS",
        default=None,
        help="run each fit as a Ray task on this cluster (auto, ray://host:10001, or local "
        "for a Ray started in this process); needs the bulk extra",
    )
    w.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    w.add_argument("--poll", type=float, default=1.0, help="seconds between looks for jobs")
    w.add_argument(
        "--fit-args",
        default="",
        help="more `fit` options for every job, after the preset's (e.g. '--filters 8,16,32')",
    )

    y = add_parser("synth", help="write a synthetic machine-sound dataset (DCASE 2021 layout)")
    y.add_argument("--out", required=True, type=Path, help="dataset folder to write")
    y.add_argument(
        "--machine", choices=sorted(MACHINES), default="gearbox", help="machine to imitate"
    )
    y.add_argument("--seed", type=int, default=0, help="seed of the random sounds")
    y.add_argument("--seconds", type=float, default=2.0, help="seconds of every clip")
    y.add_argument("--train", type=int, default=40, help="source-domain training clips")
    y.add_argument(
        "--train-target",
        type=int,
        default=4,
        help="target-domain training clips (DCASE 2021: a few; 2022 and later: 10). "
        "Default: %(default)s",
    )
    y.add_argument(
        "--test", type=int, default=8, help="normal (and anomalous) clips per test domain"
    )
    return p


def config_from_args(cls: type[C], args: argparse.Namespace) -> C:
    """A config dataclass from the parsed options of the same names (fields without an
    option keep their defaults)."""
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


def fit_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """`fit` subcommand arguments → keyword arguments of training.anomaly.fit.fit (also used by
    bench/quality.py, so the benchmark fits exactly what this command fits)."""
    from service.features import FeatureParams

    cfg = config_from_args(AutoencoderConfig, args)
    n_fft = args.n_fft or round(0.064 * args.sample_rate)
    params = FeatureParams(
        sample_rate=args.sample_rate,
        n_fft=n_fft,
        hop_length=args.hop_length or n_fft // 2,
        n_mels=args.n_mels,
        height=args.n_mels,
        width=args.width,
        fmax=args.fmax if args.fmax is not None else 0.8 * args.sample_rate / 2,
        scaling=args.scaling,
        window_hop_seconds=(
            (args.window_hop or args.window_seconds) if args.window_seconds is not None else None
        ),
    )
    shrinkage = args.shrinkage
    if shrinkage not in ("ledoit_wolf", "oas"):
        shrinkage = float(shrinkage)
    return {
        "cfg": cfg,
        "params": params,
        "pca_selection": args.pca,
        "pca_components": args.pca_components,
        "shrinkage": shrinkage,
        "detector_clips": args.detector_clips,
        "window_seconds": args.window_seconds,
        "fusion": args.fusion,
        "aggregation": args.aggregation,
        "aggregation_k": args.aggregation_k,
        "max_components": args.max_components or None,
        "codec_copies": args.codec_copies,
        "fit_hop_seconds": args.fit_hop,
        "false_alarm_rate": args.false_alarm_rate,
        "severe_rate": args.severe_rate,
        "group_by": args.group_by,
        "stretch_seconds": args.stretch_seconds,
        "kmeans_thresholds": args.kmeans_thresholds,
        "aux_labels": args.aux_labels,
    }
