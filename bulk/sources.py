"""Which files a job scores: a folder (recursively, by extension), a glob, or one file."""

from __future__ import annotations

import glob
import os
from pathlib import Path

# What the service accepts (service/features.py: AUDIO_FORMATS, IMAGE_FORMATS), by name.
EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".png", ".jpg", ".jpeg")


class NoFiles(Exception):
    """The input names nothing to score."""


def find_files(spec: str) -> list[str]:
    """Absolute paths, sorted, of what `spec` names: every file with an audio or image
    extension under a folder (hidden folders skipped), every file a glob matches (`**`
    recurses; any extension: a glob is explicit), or one file. Raises NoFiles."""
    path = Path(spec)
    if path.is_dir():
        found = []
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [
                os.path.join(root, n)
                for n in names
                if not n.startswith(".") and n.lower().endswith(EXTENSIONS)
            ]
        if not found:
            raise NoFiles(f"{spec}: no {'/'.join(e[1:] for e in EXTENSIONS)} files under it")
    elif path.is_file():
        found = [spec]
    else:
        found = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
        if not found:
            raise NoFiles(f"{spec}: no such folder or file, and no file matches it as a glob")
    return sorted(os.path.abspath(p) for p in found)
