"""Command line: python -m bulk score --model artifacts/NAME --in DIR_OR_GLOB --out X.parquet

Exit status 0 when the job ran (bad files are rows with an error code, not a failure),
2 for a usage error (no files, a bundle that does not load, no Ray installed, a cluster
that cannot be reached), 1 when the job failed (the output cannot be written, an input
vanished after it was listed, a worker died): then no output file is left behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bulk.limits import Limits


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bulk", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("score", help="score an archive of recordings into one Parquet file")
    s.add_argument("--model", required=True, type=Path, help="anomaly bundle folder")
    s.add_argument(
        "--in",
        dest="inputs",
        required=True,
        help="a folder (every wav/flac/ogg/mp3/png/jpeg file under it), a glob such as "
        "'archive/**/*.wav' (quoted), or one file",
    )
    s.add_argument("--out", required=True, type=Path, help="Parquet file to write")
    s.add_argument(
        "--address",
        default=None,
        help="an existing Ray cluster: auto (on this node), HOST:PORT or ray://HOST:PORT. "
        "Default: start a local Ray on this machine",
    )
    s.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)"
    )
    s.add_argument(
        "--batch-size", type=int, default=32, help="files per model run (default: %(default)s)"
    )
    s.add_argument(
        "--actors",
        type=int,
        default=None,
        help="model actors (default: one per CPU of the Ray cluster)",
    )
    d = Limits.service_defaults()
    s.add_argument(
        "--max-seconds",
        type=float,
        default=d.max_seconds,
        help="longest clip; longer ones are audio_too_long rows (default: the service's, "
        "%(default)g)",
    )
    s.add_argument(
        "--unordered",
        action="store_true",
        help="rows in the order files finish, not the sorted paths' (a slow file holds "
        "back no others)",
    )
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("num_cpus", "batch_size", "actors", "max_seconds"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            print(f"bulk: --{name.replace('_', '-')} must be positive", file=sys.stderr)
            return 2
    try:
        import ray
        import ray.exceptions
        from tqdm import tqdm
    except ModuleNotFoundError as e:
        print(
            f"bulk: {e.name} is not installed; install the bulk extra: pip install -e '.[bulk]'",
            file=sys.stderr,
        )
        return 2
    from bulk.pipeline import JobError, eprint, read_bundle_files, score_files, start_ray, stop_ray
    from bulk.sources import NoFiles, find_files

    try:  # both checked before Ray starts: a usage error costs no start-up
        bundle = read_bundle_files(args.model)
        files = find_files(args.inputs)
    except (JobError, NoFiles) as e:
        print(f"bulk: {e}", file=sys.stderr)
        return 2
    d = Limits.service_defaults()
    limits = Limits(args.max_seconds, d.min_sample_rate, d.max_sample_rate, d.max_samples)
    bar = tqdm(total=len(files), unit="file", disable=args.no_progress or None, file=sys.stderr)
    started = False
    try:
        ray_start_s, started = start_ray(args.address, args.num_cpus)
        summary = score_files(
            args.model,
            files,
            args.out,
            limits=limits,
            bundle=bundle,
            batch_size=args.batch_size,
            actors=args.actors,
            ordered=not args.unordered,
            progress=bar.update,
        )
    except JobError as e:
        print(f"bulk: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the output cannot be written, an input is gone
        print(f"bulk: {e}", file=sys.stderr)
        return 1
    except ray.exceptions.RayError as e:  # a worker failed (out of memory, node lost)
        print(f"bulk: the job failed: {str(e).strip().splitlines()[-1]}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        if started:
            stop_ray()  # ends a local Ray of ours; from a cluster it only disconnects
    summary.ray_start_s = ray_start_s
    eprint(*summary.lines(), f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
