"""Levels a maintenance engineer acts on, at a bundle's shipped thresholds, on recordings it
never saw (issue 22's targets):

    .venv/bin/python bench/verdicts.py --model artifacts/gearbox            # full run
    .venv/bin/python bench/verdicts.py --model artifacts/gearbox --quick    # a short one

1. `unseen`: `training synth --seconds 10` test sets at data seeds the bundle was not fitted
   on (source and target domains): false alarms (healthy clips not `normal`), severe on
   healthy, faults caught (not `normal`), and what the same scores catch at 5 % false alarms;
   `codecs`: the same clips sent as mp3 (128 and 64 kbit/s) and ogg vorbis.
2. `short faults`: a 2-s fault of every kind inside healthy 10-s and 60-s recordings, and
   the false alarms of healthy 10-s and 60-s recordings.
3. `enrol`: a new operating point (another speed and load): its healthy and faulty clips
   before enrolling it, the seconds `enrol` takes from 10 clips, and after.

Every clip is scored as the service scores it when a request names no condition
(AnomalyRuntime.score → verdict; tests/api check that the HTTP API gives the same numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from service.features import prepare
from service.models.runtimes import AnomalyRuntime, open_runtime
from training.synth import ANOMALY_KINDS, Condition, generate, recording

NEW_CONDITION = Condition(rpm=1800, load=0.6)  # between the synthetic source and target


def wav(x: np.ndarray, sr: int = 16000) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, sr, subtype="PCM_16", format="WAV")
    return buf.getvalue()


def levels(runtime: AnomalyRuntime, clips: list[bytes], condition: str | None = None) -> list:
    """Each clip's (score, level) as the service gives them."""
    assert runtime.manifest is not None
    out = []
    for data in clips:
        p = prepare(data, runtime.manifest.features)
        v = runtime.verdict_of(runtime.score(p.images), p, condition)
        out.append((v.score, v.level))
    return out


def rates(healthy: list, faulty: list) -> dict[str, Any]:
    """False alarms, severe on healthy, caught, and caught at the healthy clips' 95th
    percentile (what the same scores allow at 5 % false alarms)."""
    h = np.array([s for s, _ in healthy])
    f = np.array([s for s, _ in faulty])
    row: dict[str, Any] = {
        "healthy": len(healthy),
        "false_alarms": float(np.mean([lv != "normal" for _, lv in healthy])) if healthy else None,
        "severe_on_healthy": float(np.mean([lv == "severe" for _, lv in healthy]))
        if healthy
        else None,
    }
    if faulty:
        row["faulty"] = len(faulty)
        row["caught"] = float(np.mean([lv != "normal" for _, lv in faulty]))
        row["severe_of_faults"] = float(np.mean([lv == "severe" for _, lv in faulty]))
        if healthy:
            row["caught_at_5pct_fa"] = float(np.mean(f > np.quantile(h, 0.95)))
    return row


CODECS = ("mp3-128", "mp3-64", "ogg")


def unseen(
    runtime: AnomalyRuntime, seeds: list[int], n_test: int, tmp: Path
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(figures per seed and domain as wav, figures per codec and domain)."""
    from training.augment import round_trip

    out: dict[str, Any] = {}
    pooled: dict[str, list] = {"healthy": [], "faulty": []}
    by_codec: dict[tuple[str, str], dict[str, list]] = {}
    for seed in seeds:
        data = tmp / f"synth-{seed}"
        generate(data, seed=seed, seconds=10.0, n_train=0, n_train_target=0, n_test=n_test)
        for domain in ("source", "target"):
            files = sorted((data / f"{domain}_test").glob("*.wav"))
            healthy = levels(runtime, [p.read_bytes() for p in files if "_normal_" in p.name])
            faulty = levels(runtime, [p.read_bytes() for p in files if "_anomaly_" in p.name])
            out[f"seed {seed} {domain}"] = rates(healthy, faulty)
            pooled["healthy"] += healthy
            pooled["faulty"] += faulty
            for codec in CODECS:
                row = by_codec.setdefault((codec, domain), {"healthy": [], "faulty": []})
                for p in files:
                    key = "faulty" if "_anomaly_" in p.name else "healthy"
                    row[key] += levels(runtime, [round_trip(p.read_bytes(), codec)])
        shutil.rmtree(data)
    out["all"] = rates(pooled["healthy"], pooled["faulty"])
    codecs = {f"{c} {d}": rates(r["healthy"], r["faulty"]) for (c, d), r in by_codec.items()}
    return out, codecs


def short_faults(runtime: AnomalyRuntime, n_healthy: int, n_fault_seeds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for seconds, n in ((10.0, n_healthy), (60.0, max(10, n_healthy // 2))):
        healthy = levels(
            runtime, [wav(recording(seconds=seconds, seed=5000 + s)) for s in range(n)]
        )
        faulty = []
        for kind in ANOMALY_KINDS:
            for s in range(n_fault_seeds):
                rng = np.random.default_rng(s)
                start = float(rng.uniform(0.5, seconds - 2.5))
                x = recording(
                    seconds=seconds, seed=6000 + s, fault=kind, fault_span=(start, start + 2)
                )
                faulty += levels(runtime, [wav(x)])
        out[f"{seconds:.0f} s"] = rates(healthy, faulty)
    return out


def enrol(runtime: AnomalyRuntime, n_eval: int, tmp: Path) -> dict[str, Any]:
    from training.anomaly.enrol import enrol_folder

    def clips(first: int, n: int, fault: bool) -> list[bytes]:
        return [
            wav(
                recording(
                    seconds=10.0,
                    seed=first + i,
                    fault=ANOMALY_KINDS[i % len(ANOMALY_KINDS)] if fault else None,
                    condition=NEW_CONDITION,
                )
            )
            for i in range(n)
        ]

    healthy, faulty = clips(8000, n_eval, False), clips(9000, n_eval, True)
    out: dict[str, Any] = {
        "before (nearest known condition)": rates(levels(runtime, healthy), levels(runtime, faulty))
    }
    bundle = tmp / "bundle" / runtime.name
    shutil.copytree(runtime.bundle_dir, bundle)
    folder = tmp / "enrol"
    folder.mkdir()
    for i, data in enumerate(clips(7000, 10, False)):
        (folder / f"healthy_{i:02d}.wav").write_bytes(data)
    _, _, seconds = enrol_folder(bundle, folder, "rpm_1800")
    enrolled = open_runtime(bundle)
    assert isinstance(enrolled, AnomalyRuntime) and enrolled.ready, enrolled.reason
    out["enrol seconds (10 clips of 10 s)"] = round(seconds, 2)
    h, f = levels(enrolled, healthy), levels(enrolled, faulty)
    out["after, nearest"] = rates(h, f)
    out["after, nearest chose it"] = float(
        np.mean(
            [
                enrolled.verdict(
                    enrolled.score(prepare(d, enrolled.manifest.features).images)
                ).condition
                == "rpm_1800"  # type: ignore[union-attr]
                for d in healthy
            ]
        )
    )
    out["after, named"] = rates(
        levels(enrolled, healthy, "rpm_1800"), levels(enrolled, faulty, "rpm_1800")
    )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, default=Path("artifacts/gearbox"))
    p.add_argument("--seeds", default="7,11,13", help="synth data seeds (the bundle used 0)")
    p.add_argument("--quick", action="store_true", help="fewer clips")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    runtime = open_runtime(args.model)
    if not isinstance(runtime, AnomalyRuntime) or not runtime.ready:
        print(f"error: {args.model} is not a loadable anomaly bundle", file=sys.stderr)
        return 1
    assert runtime.manifest is not None and runtime.manifest.thresholds is not None
    seeds = [int(s) for s in args.seeds.split(",")]
    n_test, n_healthy, n_fault, n_eval = (4, 10, 2, 12) if args.quick else (16, 60, 10, 40)
    th = runtime.manifest.thresholds
    figures: dict[str, Any] = {
        "model": f"{args.model.name} {runtime.manifest.version}",
        "thresholds": [round(th.needs_maintenance, 3), round(th.severe, 3)],
    }
    with tempfile.TemporaryDirectory() as tmp:
        figures["unseen"], figures["codecs"] = unseen(runtime, seeds, n_test, Path(tmp))
        print(json.dumps(figures, indent=1), flush=True)
        figures["short faults"] = short_faults(runtime, n_healthy, n_fault)
        print(json.dumps(figures["short faults"], indent=1), flush=True)
        figures["enrol"] = enrol(runtime, n_eval, Path(tmp))
        print(json.dumps(figures["enrol"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
