"""A fit job's upload → a job folder in the spool: clips streamed to disk within the quotas,
an archive unpacked, every clip decode-checked with the service's own input code.

Nothing of an upload stays on disk unless the job is accepted: every path that refuses it
removes the folder it was being spooled into.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any, BinaryIO

from service.errors import (
    AuscultError,
    BatchTooLarge,
    InsufficientStorage,
    NotEnoughAudio,
    PayloadTooLarge,
)
from service.features import FeatureParams, sniff
from service.inputs import InputLimits, SampleBudget, decode_bounded
from service.jobs.spool import CLIPS_DIR
from service.settings import Settings

COPY_CHUNK = 1 << 20
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def no_space(message: str) -> InsufficientStorage:
    return InsufficientStorage(message, headers={"Retry-After": "60"})


class SpoolFiles:
    """The `sink` of read_files: each file part into `clips/upload_NNNN`, its bytes counted
    against the spool's quota (`room`: bytes the spool may still take). A full disk is
    InsufficientStorage."""

    def __init__(self, folder: Path, room: int) -> None:
        self.folder = folder / CLIPS_DIR
        self.room = room
        self.handles: list[BinaryIO] = []

    def __call__(self, index: int) -> BinaryIO:
        f = open(self.folder / f"upload_{index:04d}", "wb")  # noqa: SIM115  (closed by close)
        handle = _Counted(f, self)
        self.handles.append(handle)  # type: ignore[arg-type]
        return handle  # type: ignore[return-value]

    def take(self, n: int) -> None:
        self.room -= n
        if self.room < 0:
            raise no_space("the jobs folder is full (AUSCULT_FIT_MAX_SPOOL_BYTES); try later")

    def close(self) -> None:
        for h in self.handles:
            with contextlib.suppress(OSError):
                h.close()


class _Counted:
    def __init__(self, f: BinaryIO, owner: SpoolFiles) -> None:
        self.f, self.owner = f, owner

    def write(self, data: Any) -> int:
        self.owner.take(len(data))
        try:
            return self.f.write(data)
        except OSError as e:
            raise _storage_error(e) from e

    def close(self) -> None:
        try:
            self.f.close()
        except OSError as e:
            raise _storage_error(e) from e


def _storage_error(e: OSError) -> AuscultError:
    if e.errno in NO_SPACE:
        return no_space("the disk of the jobs folder is full; nothing was kept")
    return InsufficientStorage(f"could not write the upload to the jobs folder: {e.strerror}")


@dataclass
class Checked:
    """The clips of a spooled upload after the decode check."""

    clips: list[dict[str, Any]] = field(default_factory=list)  # file, filename, seconds
    skipped: list[dict[str, str]] = field(default_factory=list)  # filename, code, reason

    @property
    def seconds(self) -> float:
        return sum(c["seconds"] for c in self.clips)


def display_name(name: str | None, index: int) -> str:
    """An uploaded file's name as shown back: its last path component, at most 200
    characters (never used as a path)."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    return base[:200] or f"clip {index + 1}"


def archive_kind(head: bytes) -> str | None:
    """ "zip", "tar", "tar.gz" by magic bytes, None for anything else."""
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return "zip"
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def _members(path: Path, kind: str) -> Iterator[tuple[str, IO[bytes]]]:
    """(name, readable) of every regular file of the archive."""
    if kind == "zip":
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.is_dir():
                    with z.open(info) as f:
                        yield info.filename, f
        return
    with tarfile.open(path, "r:gz" if kind == "tar.gz" else "r:") as t:
        for member in t:
            if member.isreg():
                extracted = t.extractfile(member)
                if extracted is not None:
                    yield member.name, extracted


def _junk(name: str) -> bool:
    """Files archivers add beside the content (macOS resource forks, hidden files)."""
    path = PurePosixPath(name.replace("\\", "/"))
    return "__MACOSX" in path.parts or path.name.startswith(".")


def unpack(archive: Path, kind: str, folder: Path, settings: Settings, room: int) -> list[str]:
    """Unpack the archive's files into `folder` as upload_NNNN (never by their own names),
    counting what they unpack to against the job's and the spool's quotas. Returns their
    display names. Raises PayloadTooLarge, BatchTooLarge, InsufficientStorage,
    InvalidRequest (a damaged archive)."""
    from service.errors import InvalidRequest

    names: list[str] = []
    total = 0
    try:
        for name, src in _members(archive, kind):
            if _junk(name):
                continue
            if len(names) >= settings.fit_max_clips:
                raise BatchTooLarge(
                    f"the archive holds more than {settings.fit_max_clips} files "
                    "(AUSCULT_FIT_MAX_CLIPS)"
                )
            with open(folder / f"upload_{len(names):04d}", "wb") as out:
                while chunk := src.read(COPY_CHUNK):
                    total += len(chunk)
                    if total > settings.fit_max_job_bytes:
                        raise PayloadTooLarge(
                            f"the archive unpacks to more than {settings.fit_max_job_bytes} "
                            "bytes (AUSCULT_FIT_MAX_JOB_BYTES)"
                        )
                    if total > room:
                        raise no_space(
                            "the jobs folder is full (AUSCULT_FIT_MAX_SPOOL_BYTES); try later"
                        )
                    out.write(chunk)
            names.append(display_name(name, len(names)))
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as e:
        raise InvalidRequest(f"the archive could not be read: {e}") from e
    except OSError as e:
        raise _storage_error(e) from e
    return names


def expand_archive(
    folder: Path, filenames: list[str | None], settings: Settings, room: int
) -> list[str | None]:
    """One uploaded file that is a zip or tar archive → its files in its place."""
    clips = folder / CLIPS_DIR
    if len(filenames) != 1:
        return filenames
    first = clips / "upload_0000"
    with open(first, "rb") as f:
        kind = archive_kind(f.read(512))
    if kind is None:
        return filenames
    archive = first.rename(clips / "archive")
    try:
        names = unpack(archive, kind, clips, settings, room + archive.stat().st_size)
    finally:
        archive.unlink()
    return list(names)


def check_clips(folder: Path, filenames: list[str | None], settings: Settings) -> Checked:
    """Decode every spooled file as the service decodes an upload; a readable clip is
    renamed clip_NNNN.<format> (the trainer finds audio by extension), an unreadable one is
    removed and listed with the reason (its error code and message)."""
    limits = InputLimits(
        settings.max_audio_seconds, settings.min_sample_rate, settings.max_sample_rate
    )
    params = FeatureParams()
    checked = Checked()
    clips = folder / CLIPS_DIR
    for i, name in enumerate(filenames):
        path = clips / f"upload_{i:04d}"
        shown = display_name(name, i)
        try:
            data = path.read_bytes()
            kind, fmt = sniff(data)
            if kind != "audio":
                raise NotEnoughAudio("a spectrogram image; fit jobs learn from audio")
            audio = decode_bounded(data, params, limits, SampleBudget(settings.max_request_samples))
        except AuscultError as e:
            path.unlink()
            code = "unsupported_media_type" if isinstance(e, NotEnoughAudio) else e.code
            checked.skipped.append({"filename": shown, "code": code, "reason": e.message})
            continue
        target = f"clip_{len(checked.clips):04d}.{fmt}"
        path.rename(clips / target)
        checked.clips.append(
            {"file": target, "filename": shown, "seconds": round(audio.duration_s, 3)}
        )
    return checked


def require_enough(checked: Checked, settings: Settings) -> None:
    if checked.seconds >= settings.fit_min_seconds:
        return
    skipped = "; ".join(f"{s['filename']}: {s['reason']}" for s in checked.skipped[:5])
    more = f" ({len(checked.skipped)} unreadable: {skipped})" if checked.skipped else ""
    raise NotEnoughAudio(
        f"{checked.seconds:.1f} s of readable healthy audio in {len(checked.clips)} clips; "
        f"a fit needs at least {settings.fit_min_seconds:g} s (AUSCULT_FIT_MIN_SECONDS){more}"
    )


def discard(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
