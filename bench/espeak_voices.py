"""Synthetic voices for the digit classifier: the ten digit words spoken by eSpeak NG in
random accents, voice variants, pitches and rates, written as 8-kHz wavs named like the
fsdd clips (`{digit}_espeak_{take}.wav`), for `fit-classifier --extra-train DIR`.

Needs the `espeak-ng` program (Debian: `apt-get install espeak-ng`); it is not a
dependency of the project. docs/archive/experiments.md ("Classifier: voices it never heard")
has what these voices did to the leave-one-speaker-out accuracy.

    .venv/bin/python bench/espeak_voices.py --out /tmp/espeak --per-digit 400
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ACCENTS = [
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
]
RATE = 8000


def variants() -> list[str]:
    """eSpeak NG's voice variants (m1…, f1…, klatt…): the files of its `voices/!v` folder."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    data = Path(out.split("Data at:")[-1].strip())
    return sorted(p.name for p in (data / "voices" / "!v").iterdir())


def speak(word: str, voice: str, pitch: int, wpm: int) -> np.ndarray:
    """One word → (n,) float32 at 8 kHz, trimmed to 25 ms around where it is audible."""
    cmd = ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(wpm), "--stdout", word]
    audio, rate = sf.read(io.BytesIO(subprocess.run(cmd, capture_output=True, check=True).stdout))
    if rate != RATE:
        audio = resample_poly(audio, RATE, rate)
    loud = np.flatnonzero(np.abs(audio) > 0.02 * np.abs(audio).max())
    pad = RATE // 40
    return audio[max(loud[0] - pad, 0) : loud[-1] + pad].astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-digit", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("espeak-ng is not installed (Debian: apt-get install espeak-ng)", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    kinds = variants()
    args.out.mkdir(parents=True, exist_ok=True)
    for digit, word in enumerate(WORDS):
        for take in range(args.per_digit):
            voice = f"{rng.choice(ACCENTS)}+{rng.choice(kinds)}"
            audio = speak(word, voice, rng.randint(20, 80), rng.randint(110, 220))
            audio *= rng.uniform(0.1, 0.9) / np.abs(audio).max()
            sf.write(args.out / f"{digit}_espeak_{take}.wav", audio, RATE, subtype="PCM_16")
    print(f"{10 * args.per_digit} clips in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
