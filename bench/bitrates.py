"""Low bitrates (issue 23): healthy and faulty recordings the bundle never saw, sent as mp3
and Ogg (Opus, Vorbis) at the bitrates voice-note and phone apps use, scored as the service
scores an upload of that format (AnomalyRuntime.score → verdict; tests/api check that the
HTTP API gives the same levels):

    .venv/bin/python bench/bitrates.py --model artifacts/gearbox --seed 7 --clips 4

Per codec and rate: the file's real kbit/s, the decoded sound's effective bandwidth
(service.features.input_bandwidth, median over the healthy clips), the healthy clips' median and
highest score, their levels (normal / needs_maintenance / severe) and warnings
(low_bandwidth, low_bitrate: how many carried each), and the share of faulty clips still
caught (not `normal`) and how many of them read `severe`. The encoders are libsndfile's
own (the soundfile wheel carries LAME, libopus and libvorbis), at the clips' 16 kHz (and
mp3 from 22.05 and 44.1 kHz, as recorders at those rates write it: `mp3 48 @44.1k`);
libvorbis has no bitrate setting there, only its lowest quality (about 28 kbit/s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from service.features import prepare, resample
from service.models.runtimes import AnomalyRuntime, open_runtime
from training.augment import encode_at
from training.synth import generate

MP3_RATES = (16, 24, 32, 48, 64)
OPUS_RATES = (16, 24, 32)


def _wav(x: np.ndarray, sr: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _vorbis_lowest(x: np.ndarray, sr: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, sr, format="OGG", subtype="VORBIS", compression_level=1.0)
    return buf.getvalue()


def encoders() -> dict[str, Callable[[np.ndarray, int], bytes]]:
    """Row name → (audio, rate) → file bytes."""
    out: dict[str, Callable[[np.ndarray, int], bytes]] = {"wav": _wav}
    for k in MP3_RATES:
        out[f"mp3 {k}"] = lambda x, sr, k=k: encode_at(x, sr, "mp3", k)
    # recorders at 22.05 and 44.1 kHz: LAME at that rate, decoded and resampled to 16 kHz
    for rate, k in ((22050, 24), (22050, 48), (44100, 32), (44100, 48), (44100, 64)):
        out[f"mp3 {k} @{rate / 1000:g}k"] = lambda x, sr, rate=rate, k=k: encode_at(
            resample(x, sr, rate), rate, "mp3", k
        )
    for k in OPUS_RATES:
        out[f"opus {k}"] = lambda x, sr, k=k: encode_at(x, sr, "opus", k)
    out["vorbis lowest"] = _vorbis_lowest
    return out


def judge(runtime: AnomalyRuntime, data: bytes) -> dict[str, Any]:
    """One upload's score, level, warning codes and bandwidth, as the service gives them."""
    assert runtime.manifest is not None
    p = prepare(data, runtime.manifest.features)
    v = runtime.verdict_of(runtime.score(p.images), p)
    return {
        "score": v.score,
        "level": v.level,
        "warnings": [w.code for w in v.warnings],
        "bandwidth_hz": p.bandwidth_hz,
    }


def table(runtime: AnomalyRuntime, seed: int, n_clips: int, tmp: Path) -> list[dict[str, Any]]:
    import soundfile as sf

    assert runtime.manifest is not None
    data = tmp / f"synth-{seed}"
    generate(data, seed=seed, seconds=10.0, n_train=0, n_train_target=0, n_test=n_clips)
    files = sorted([*data.glob("source_test/*.wav"), *data.glob("target_test/*.wav")])
    clips = [(sf.read(p, dtype="float32"), "_anomaly_" in p.name) for p in files]
    shutil.rmtree(data)
    rows = []
    for name, encode in encoders().items():
        healthy, faulty, kbps, bws = [], [], [], []
        for (x, sr), is_fault in clips:
            blob = encode(x, sr)
            kbps.append(len(blob) * 8 / (len(x) / sr) / 1000)
            r = judge(runtime, blob)
            (faulty if is_fault else healthy).append(r)
            if not is_fault:
                bws.append(r["bandwidth_hz"])
        scores = np.array([r["score"] for r in healthy])
        known = [b for b in bws if b is not None]
        rows.append(
            {
                "codec": name,
                "kbit_s": round(float(np.median(kbps)), 1),
                "bandwidth_hz": round(float(np.median(known))) if known else None,
                "healthy": len(healthy),
                "median": round(float(np.median(scores)), 2),
                "max": round(float(scores.max()), 2),
                **{
                    lv: sum(r["level"] == lv for r in healthy)
                    for lv in ("normal", "needs_maintenance", "severe")
                },
                **{
                    code: sum(code in r["warnings"] for r in healthy)
                    for code in ("low_bandwidth", "low_bitrate")
                },
                "faulty": len(faulty),
                "caught": round(float(np.mean([r["level"] != "normal" for r in faulty])), 3),
                "faults_severe": sum(r["level"] == "severe" for r in faulty),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", type=Path, default=Path("artifacts/gearbox"))
    p.add_argument("--seed", type=int, default=7, help="synth data seed (the bundle used 0)")
    p.add_argument("--clips", type=int, default=4, help="healthy and faulty clips per domain")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args(argv)
    runtime = open_runtime(args.model)
    if not isinstance(runtime, AnomalyRuntime) or not runtime.ready:
        print(f"error: {args.model} is not a loadable anomaly bundle", file=sys.stderr)
        return 1
    assert runtime.manifest is not None and runtime.manifest.thresholds is not None
    th = runtime.manifest.thresholds
    print(
        f"{args.model.name} {runtime.manifest.version}: thresholds "
        f"{th.needs_maintenance:.3f} / {th.severe:.3f}, fmax {runtime.manifest.features.fmax} Hz"
    )
    with tempfile.TemporaryDirectory() as tmp:
        rows = table(runtime, args.seed, args.clips, Path(tmp))
    cols = list(rows[0])
    print(" | ".join(cols))
    print(" | ".join("---" for _ in cols))
    for r in rows:
        print(" | ".join("" if r[c] is None else str(r[c]) for c in cols))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
