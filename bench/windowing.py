"""What windows cost: the service's in-process scoring core on two bundles, same clips, one run.

    .venv/bin/python bench/windowing.py --baseline DIR            # artifacts/gearbox vs DIR
    .venv/bin/python bench/windowing.py --baseline DIR --quick    # CI mode

A windowed bundle scores every window of a clip (a 10-s clip at 1-s windows every 0.5 s: 19
model inputs), where a bundle without windows stretched the whole clip into one image. The
budget (issue 11): the windowed core keeps at least 80% of the un-windowed core's throughput
per second of audio. Both bundles score the same generated 10-s clips with bench/serving.py's
`InProcess` (decode → features → encoder → Mahalanobis, one thread, the service's process
set-up), alternating bundle by bundle within every repetition; the ratio is taken per
repetition and its median reported. `--baseline` is any bundle, e.g. the previous default
extracted with `git show` (bench/README.md shows how).
"""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=REPO / "artifacts" / "gearbox")
    p.add_argument("--baseline", type=Path, required=True, help="a bundle to compare with")
    p.add_argument("--clips", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="16 clips, 2 repetitions")
    args = p.parse_args(argv)
    n, reps = (16, 2) if args.quick else (args.clips, args.reps)
    clips = make_clips(n, args.seconds, seed=0)
    cores = {"windowed": InProcess(args.model), "baseline": InProcess(args.baseline)}
    for core in cores.values():
        core.score_one(clips[0])  # warm
    rates: dict[str, list[float]] = {k: [] for k in cores}
    ms: dict[str, list[float]] = {k: [] for k in cores}
    ratios = []
    for _ in range(reps):
        for name, core in cores.items():
            rate, per_clip = audio_rate(core, clips, args.seconds)
            rates[name].append(rate)
            ms[name].append(per_clip)
        ratios.append(rates["windowed"][-1] / rates["baseline"][-1])
    for name, core in cores.items():
        f = core.params
        what = (
            "one stretched image"
            if f.window_seconds is None
            else (f"{len(core.prepare(clips[0]))} windows of {f.window_seconds:g} s")
        )
        print(
            f"{name:<9} {core.rt.name:<12} {what:<22} {median(ms[name]):6.2f} ms per "
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
