"""Command line: python -m training {fit,fit-classifier,fit-generator,generate,enrol,evaluate,
spectrograms,synth,worker} …"""

from __future__ import annotations

import argparse
import sys

from training.anomaly.autoencoder import pooling_parts
from training.cli import build_parser, config_from_args, fit_kwargs
from training.datasets import DatasetError

__all__ = ["build_parser", "config_from_args", "fit_kwargs", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "fit-classifier" and args.loso_only and not args.loso:
        parser.error("--loso-only needs --loso GROUP")
    if args.command == "fit-classifier" and not args.out and not args.loso_only:
        parser.error("fit-classifier needs --out (or --loso GROUP --loso-only)")
    pools_bands = args.command == "fit" and "band_stats" in pooling_parts(args.pooling)
    if pools_bands and (args.band_pool < 1 or args.n_mels % args.band_pool):
        parser.error(f"--band-pool {args.band_pool} must divide --n-mels {args.n_mels}")
    try:
        return _run(args)
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # a service-only install: one line, not a traceback
        print(
            f"error: {e.name} is not installed; python -m training needs the train extra "
            "(pip install -e '.[train]')",
            file=sys.stderr,
        )
        return 2


def _run(args: argparse.Namespace) -> int:
    from training import import_tensorflow_quietly

    if args.command in ("fit-classifier", "fit-generator", "generate"):
        import_tensorflow_quietly()
    if args.command == "worker":
        import shlex

        from training.worker import Trainer

        trainer = Trainer(
            args.jobs, args.artifacts, args.ray, shlex.split(args.fit_args), args.poll
        )
        print(
            f"trainer {trainer.id}: jobs {args.jobs}, artifacts {args.artifacts}"
            + (f", Ray {args.ray}" if args.ray else ""),
            file=sys.stderr,
            flush=True,
        )
        import signal

        # `docker stop`: the job in progress is marked failed, not left running
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        try:
            trainer.serve(once=args.once)
        except KeyboardInterrupt:
            return 130
        return 0
    if args.command == "synth":
        from training.synth import generate

        counts = generate(
            args.out,
            args.machine,
            args.seed,
            args.seconds,
            n_train=args.train,
            n_train_target=args.train_target,
            n_test=args.test,
        )
        print(f"wrote {sum(counts.values())} clips to {args.out}: {counts}")
        return 0
    if args.command == "spectrograms":
        from service.models.bundle import read_manifest
        from training.spectrograms import default_model, write_spectrograms

        model = args.model or default_model()
        if not (model / "manifest.json").is_file():
            what = "--model" if args.model else "the default model (no --model given)"
            print(
                f"error: {what} {model} is not a bundle folder; name the bundle that will "
                "score the images with --model",
                file=sys.stderr,
            )
            return 2
        params = read_manifest(model).features
        print(f"spectrograms for {model}: {params.width}x{params.height} images", file=sys.stderr)
        written, failures = write_spectrograms(args.in_dir, args.out, params)
        print(f"wrote {written} spectrograms to {args.out}")
        for f in failures:
            print(f"skipped {f}", file=sys.stderr)
        return 0 if written else 2
    if args.command == "enrol":
        from service.errors import InvalidRequest
        from training.anomaly.enrol import enrol_folder

        try:
            manifest, cond, seconds = enrol_folder(args.model, args.data, args.condition)
        except (DatasetError, InvalidRequest, OSError) as e:
            print(f"error: {getattr(e, 'message', e)}; {args.model} is unchanged", file=sys.stderr)
            return 1
        print(
            f"enrolled condition {cond.name!r} from {cond.clips} clips into {args.model} "
            f"(version {manifest.version}) in {seconds:.1f} s"
        )
        return 0
    if args.command == "evaluate":
        from training.anomaly.evaluate import evaluate, format_table

        metrics, _ = evaluate(args.data, args.model)
        print(format_table(metrics))
        print(f"report: {args.model / 'report.png'}, {args.model / 'report.json'}")
        return 0
    if args.command == "fit":
        taken = args.out.exists() and (not args.out.is_dir() or any(args.out.iterdir()))
        if taken and not args.force:
            print(
                f"error: {args.out} already exists and is not empty; choose another --out "
                "or add --force to replace it",
                file=sys.stderr,
            )
            return 2
        import_tensorflow_quietly()
        from training.anomaly.evaluate import format_table
        from training.anomaly.fit import fit

        result = fit(
            args.data,
            args.out,
            run_evaluation=not args.no_evaluate,
            strict_files=args.strict_files,
            **fit_kwargs(args),
        )
        print(result.summary())
        if result.evaluation:
            print(format_table(result.evaluation))
        return 0
    if args.command == "fit-classifier":
        from training.augment import AugmentConfig
        from training.classifier.evaluate import format_table as format_classifier_table
        from training.classifier.network import ClassifierConfig, feature_params, fit_classifier

        cfg = config_from_args(ClassifierConfig, args)
        aug = config_from_args(AugmentConfig, args)
        params = feature_params(
            args.sample_rate,
            args.clip_seconds,
            args.n_mels,
            args.n_fft,
            args.hop_length,
            None if args.onset_margin < 0 else args.onset_margin,
        )
        if args.loso_only:
            from training.classifier.data import discover_extra, discover_labelled, ordered_labels
            from training.classifier.evaluate import format_loso
            from training.classifier.network import extra_fit_set, leave_one_group_out

            clips = discover_labelled(
                args.data, args.label_pattern, args.test_pattern, args.group_pattern
            )
            extra = extra_fit_set(
                discover_extra(args.extra_train, args.label_pattern),
                ordered_labels(clips),
                params,
                aug,
                cfg.seed,
            )
            loso = leave_one_group_out(clips, args.loso, params, cfg, aug, args.loso_groups, extra)
            print(format_loso(loso))
            return 0
        result = fit_classifier(
            args.data,
            args.out,
            cfg,
            params,
            args.label_pattern,
            args.test_pattern,
            args.group_pattern,
            save_keras=not args.no_keras,
            aug=aug,
            loso=args.loso,
            extra_dir=args.extra_train,
        )
        print(f"bundle written to {result.bundle_dir} in {result.seconds:.1f} s")
        if result.evaluation:
            print(format_classifier_table(result.evaluation))
        return 0
    if args.command == "fit-generator":
        from training.classifier.network import feature_params
        from training.generator import GeneratorConfig, fit_generator

        gcfg = config_from_args(GeneratorConfig, args)
        params = feature_params(args.sample_rate, args.clip_seconds, args.n_mels, onset_margin=None)
        gen = fit_generator(
            args.data, args.out, gcfg, params, args.label_pattern, args.include_pattern
        )
        print(f"bundle written to {gen.bundle_dir} in {gen.seconds:.1f} s")
        return 0
    if args.command == "generate":
        from training.generator import write_wavs

        paths = write_wavs(args.model, args.label, args.n, args.seed, args.out)
        print(f"wrote {len(paths)} wav(s) to {args.out}")
        return 0
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
