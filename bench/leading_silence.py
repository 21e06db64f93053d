"""A classifier on recordings that do not start with the word: fsdd's held-out takes (0-4,
250 clips) with 0-4 s of quiet room noise before them and 0.5 s after, classified through
the service's runtime, with the bundle's own onset alignment and without it.

    .venv/bin/python bench/leading_silence.py --model artifacts/digits

Prints one row per lead: accuracy as the bundle is (features.onset_margin_s as recorded)
and with the alignment switched off (the recording's own start, the service before it).
"""

from __future__ import annotations

import argparse
import io
import re
from pathlib import Path

import numpy as np
import soundfile as sf

from service.features import prepare
from service.models.runtimes import ClassifierRuntime, open_runtime

LEADS_S = (0.0, 0.3, 0.6, 1.0, 2.0, 4.0)
NOISE_RMS = 0.003  # about -50 dBFS: a quiet room through a laptop microphone


def with_lead(audio: np.ndarray, sr: int, lead_s: float, rng: np.random.Generator) -> bytes:
    """(n,) → wav bytes of lead_s of noise, the clip, then 0.5 s of noise."""
    noise = rng.standard_normal(int((lead_s + 0.5) * sr)).astype(np.float32) * NOISE_RMS
    lead = int(lead_s * sr)
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([noise[:lead], audio, noise[lead:]]), sr, format="WAV")
    return buf.getvalue()


def accuracy(rt: ClassifierRuntime, clips: list[tuple[str, bytes]], margin: float | None) -> float:
    params = rt.manifest.features.model_copy(update={"onset_margin_s": margin})
    images = np.stack([prepare(data, params).image for _, data in clips])
    labels = np.array(rt.manifest.labels)[rt.probabilities(images).argmax(axis=1)]
    return float(np.mean([lab == name[0] for lab, (name, _) in zip(labels, clips, strict=True)]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=Path("artifacts/digits"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/fsdd"))
    ap.add_argument("--takes", default=r"_[0-4]\.wav$", help="regex of the clips to use")
    args = ap.parse_args(argv)
    rt = open_runtime(args.model)
    if not isinstance(rt, ClassifierRuntime) or not rt.ready:
        ap.error(f"{args.model} is not a ready classifier bundle")
    paths = sorted(p for p in args.data.glob("*.wav") if re.search(args.takes, p.name))
    if not paths:
        ap.error(f"no clips matching {args.takes!r} in {args.data}")
    own = rt.manifest.features.onset_margin_s
    print(f"{args.model.name} {rt.manifest.version}, {len(paths)} clips")
    print(f"| silence before the word | onset_margin_s {own} (as bundled) | off |")
    print("|---|---|---|")
    rng = np.random.default_rng(0)
    for lead_s in LEADS_S:
        clips = []
        for p in paths:
            audio, sr = sf.read(p, dtype="float32")
            clips.append((p.name, with_lead(audio, sr, lead_s, rng)))
        row = [accuracy(rt, clips, own), accuracy(rt, clips, None)]
        print(f"| {lead_s:.1f} s | {row[0]:.3f} | {row[1]:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
