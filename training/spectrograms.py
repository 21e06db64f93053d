"""`python -m training spectrograms`: the seed's AudioToSpectrogram, through service.features."""

from __future__ import annotations

import os
from pathlib import Path

from tqdm import tqdm

from service.features import FeatureParams, image_to_png, load_file
from training.datasets import AUDIO_EXTS


def default_model() -> Path:
    """The bundle a running service scores by default: AUSCULT_ARTIFACTS_DIR (./artifacts)
    / AUSCULT_DEFAULT_MODEL (gearbox, the committed bundle, as `make serve` and compose
    set it)."""
    root = Path(os.environ.get("AUSCULT_ARTIFACTS_DIR") or "artifacts")
    return root / (os.environ.get("AUSCULT_DEFAULT_MODEL") or "gearbox")


def write_spectrograms(in_dir: Path, out_dir: Path, params: FeatureParams) -> tuple[int, list[str]]:
    """Every audio file under in_dir → a grayscale PNG at the same relative path under out_dir;
    with windowed params (a windowed bundle's), one PNG per window: NAME_w000.png, … — each
    is an input that bundle scores as one window.

    Returns (written, failures) where failures are "name: reason" strings.
    """
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    files = sorted(p for p in in_dir.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTS)
    written, failures = 0, []
    for path in tqdm(files, desc="spectrograms", unit="clip"):
        try:
            images = load_file(str(path), params).images
        except Exception as e:
            failures.append(f"{path.relative_to(in_dir)}: {e}")
            continue
        target = out_dir / path.relative_to(in_dir).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        if params.window_seconds is None:
            target.write_bytes(image_to_png(images[0]))
        else:
            for i, image in enumerate(images):
                target.with_stem(f"{target.stem}_w{i:03d}").write_bytes(image_to_png(image))
        written += 1
    return written, failures
