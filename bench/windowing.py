"""What windows cost: the service's in-process scoring core on two bundles, same clips, one run.

    .venv/bin/python bench/windowing.py --baseline DIR            # artifacts/gearbox vs DIR
    .venv/bin/python bench/windowing.py --baseline DIR --quick    # CI mode
    .venv/bin/python bench/windowing.py --baseline-tree TREE      # against an older checkout


A windowed bundle scores every window of a clip (a 10-s clip at 1-s windows every 0.5 s: 19
model inputs), where a bundle without windows stretched the whole clip into one image. The
budget (issue 11): the windowed core keeps at least 80% of the un-windowed core's throughput
per second of audio. Both bundles score the same generated 10-s clips with bench/serving.py's
`InProcess` (decode → features → encoder → Mahalanobis, one thread, the service's process
set-up), alternating bundle by bundle within every repetition; the ratio is taken per
repetition and its median reported. `--baseline` is any bundle, e.g. the previous default
extracted with `git show` (docs/archive/experiments.md shows how). `--baseline-tree` measures
a checkout of an older revision (`git worktree add TREE REV`) instead: its own code on its own
artifacts/gearbox, in a subprocess started for every repetition, so "today's throughput" is
the code and bundle of that revision, not today's code on an old bundle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.serving import InProcess, make_clips, median  # noqa: E402  (sets up the process)

BUDGET = 0.8  # windowed ÷ baseline audio seconds per second  (≥)


def audio_rate(core: InProcess, clips: list[bytes], seconds: float) -> tuple[float, float]:
    """(seconds of audio scored per second of wall time, median ms per clip) over `clips`."""
    times = []
    t0 = time.perf_counter()
    for data in clips:
        t = time.perf_counter()
        core.score_one(data)
        times.append(time.perf_counter() - t)
    return len(clips) * seconds / (time.perf_counter() - t0), median(times) * 1e3


def describe(core: InProcess, clip: bytes) -> str:
    f = core.params
    if f.window_seconds is None:
        return "one stretched image"
    return f"{len(core.prepare(clip))} windows of {f.window_seconds:g} s"


# Run in the older checkout (its bench.serving and service packages): the same timing loop.
TREE_PROBE = """
import json, sys, time
sys.path.insert(0, ".")
from pathlib import Path
from bench.serving import InProcess, make_clips
core = InProcess(Path("artifacts/gearbox"))
clips = make_clips({n}, {seconds}, seed=0)
core.score_one(clips[0])
times = []
t0 = time.perf_counter()
for data in clips:
    t = time.perf_counter()
    core.score_one(data)
    times.append(time.perf_counter() - t)
wall = time.perf_counter() - t0
print(json.dumps([len(clips) * {seconds} / wall, sorted(times)[len(times) // 2] * 1e3]))
"""


class TreeCore:
    """The baseline measured in an older checkout's own code, one subprocess per repetition."""

    def __init__(self, tree: Path, n: int, seconds: float) -> None:
        self.tree, self.code = tree, TREE_PROBE.format(n=n, seconds=seconds)

    def rate(self) -> tuple[float, float]:
        out = subprocess.run(
            [sys.executable, "-c", self.code], cwd=self.tree, capture_output=True, text=True
        )
        if out.returncode:
            raise SystemExit(f"baseline tree {self.tree}: {out.stderr[-1000:]}")
        rate, ms = json.loads(out.stdout.strip().splitlines()[-1])
        return float(rate), float(ms)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "artifacts" / "gearbox")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--baseline", type=Path, help="a bundle to compare with (today's code)")
    what.add_argument(
        "--baseline-tree", type=Path, help="an older checkout: its code on its artifacts/gearbox"
    )
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="16 clips, 2 repetitions")
    args = p.parse_args(argv)
    n, reps = (16, 2) if args.quick else (args.clips, args.reps)
    clips = make_clips(n, args.seconds, seed=0)
    windowed = InProcess(args.model)
    windowed.score_one(clips[0])  # warm
    if args.baseline_tree is not None:
        tree = TreeCore(args.baseline_tree, n, args.seconds)
        baseline = None
        base_label = f"{'baseline':<9} {args.baseline_tree.name + ' code':<12} {'its gearbox':<22}"

        def measure_baseline() -> tuple[float, float]:
            return tree.rate()
    else:
        baseline = InProcess(args.baseline)
        baseline.score_one(clips[0])
        base_label = f"{'baseline':<9} {baseline.rt.name:<12} {describe(baseline, clips[0]):<22}"

        def measure_baseline() -> tuple[float, float]:
            assert baseline is not None
            return audio_rate(baseline, clips, args.seconds)

    rates: dict[str, list[float]] = {"windowed": [], "baseline": []}
    ms: dict[str, list[float]] = {"windowed": [], "baseline": []}
    ratios = []
    for _ in range(reps):
        for name, measure in (
            ("windowed", lambda: audio_rate(windowed, clips, args.seconds)),
            ("baseline", measure_baseline),
        ):
            rate, per_clip = measure()
            rates[name].append(rate)
            ms[name].append(per_clip)
        ratios.append(rates["windowed"][-1] / rates["baseline"][-1])
    labels = {
        "windowed": f"{'windowed':<9} {windowed.rt.name:<12} {describe(windowed, clips[0]):<22}",
        "baseline": base_label,
    }
    for name, label in labels.items():
        print(
            f"{label} {median(ms[name]):6.2f} ms per "
            f"{args.seconds:g}-s clip  {median(rates[name]):8.0f} audio s/s"
        )
    ratio = median(ratios)
    verdict = "within" if ratio >= BUDGET else "OVER"
    print(
        f"windowed ÷ baseline audio s/s: {ratio:.2f} (median of {reps}; budget ≥ {BUDGET}: ", end=""
    )
    print(f"{verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
