"""Find the clips of a dataset folder and read labels, domain and section from names.

Layouts (DESIGN.md):
- DCASE 2020: DIR/train/normal_id_XX_*.wav, DIR/test/{normal,anomaly}_id_XX_*.wav
- DCASE 2021: DIR/train/, DIR/source_test/, DIR/target_test/ with
  section_00_source_test_anomaly_0003_<attrs>.wav
- DCASE 2022+: DIR/train/, DIR/test/ with section_XX_{source,target}_{train,test}_{normal,anomaly}_…
- the seed's images: DIR/SpectrogramImage/{train,source_test,target_test}/*.png
- a flat folder of normal clips (e.g. normal_id_00_*.wav): all used for training
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

AUDIO_EXTS = {".wav", ".flac", ".ogg", ".mp3"}
IMAGE_EXTS = {".png", ".jpg", ".jpeg"}
TEST_DIRS = ("test", "source_test", "target_test")

Label = Literal["normal", "anomaly"]


class DatasetError(Exception):
    """The folder is not a usable dataset; the message says why in one line."""


@dataclass(frozen=True)
class Clip:
    path: Path
    split: Literal["train", "test"]
    label: Label | None  # None: unlabelled (scored, left out of metrics)
    domain: Literal["source", "target"]
    section: str  # e.g. "00" (from section_00 or id_00)

    @property
    def group(self) -> str:
        return f"section_{self.section}_{self.domain}"


_SECTION = re.compile(r"(?:section|id)_(\d+)")


def parse_name(path: Path, split: Literal["train", "test"], folder: str) -> Clip:
    """Labels, domain and section from the file name tokens (and the folder for domain)."""
    tokens = path.stem.lower().split("_")
    label: Label | None
    if "anomaly" in tokens:
        label = "anomaly"
    elif "normal" in tokens or split == "train":
        label = "normal"  # DCASE training folders hold normal clips only
    else:
        label = None
    domain: Literal["source", "target"] = (
        "target" if "target" in tokens or folder.startswith("target") else "source"
    )
    m = _SECTION.search(path.stem.lower())
    return Clip(path, split, label, domain, m.group(1).zfill(2) if m else "00")


def _files(folder: Path) -> list[Path]:
    exts = AUDIO_EXTS | IMAGE_EXTS
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)


def discover(data_dir: Path) -> list[Clip]:
    """All clips of the dataset at data_dir, train first. Raises DatasetError."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DatasetError(f"{data_dir} is not a folder")
    if (data_dir / "SpectrogramImage").is_dir():
        data_dir = data_dir / "SpectrogramImage"
    clips: list[Clip] = []
    if (data_dir / "train").is_dir():
        clips += [parse_name(p, "train", "train") for p in _files(data_dir / "train")]
        for name in TEST_DIRS:
            if (data_dir / name).is_dir():
                clips += [parse_name(p, "test", name) for p in _files(data_dir / name)]
    else:
        clips += [parse_name(p, "train", "") for p in _files(data_dir)]
    if not clips:
        raise DatasetError(f"no audio or image files found under {data_dir}")
    kinds = {"image" if c.path.suffix.lower() in IMAGE_EXTS else "audio" for c in clips}
    if len(kinds) > 1:
        raise DatasetError(f"{data_dir} mixes audio files and spectrogram images")
    return clips


def training_clips(clips: list[Clip]) -> list[Clip]:
    """The normal clips of the train split. Raises DatasetError if there are none."""
    train = [c for c in clips if c.split == "train" and c.label == "normal"]
    if not train:
        raise DatasetError("the dataset has no normal training clips")
    return train


def labelled_test_clips(clips: list[Clip]) -> list[Clip]:
    return [c for c in clips if c.split == "test" and c.label is not None]
