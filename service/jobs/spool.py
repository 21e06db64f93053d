"""The jobs folder (AUSCULT_JOBS_DIR): layout, atomic state files, claims and heartbeats.

```
JOBS/.incoming/<id>/      an upload being spooled (nobody else looks here)
JOBS/<id>/job.json        the request: name, preset, rate, replace, clips, skipped clips
JOBS/<id>/state.json      state, stage, progress, log tail, model, error (replaced whole)
JOBS/<id>/claim.json      created once (O_EXCL) by whoever takes the job out of `queued`:
                          a trainer starting it, or the service cancelling it first
JOBS/<id>/cancel          asks the trainer running the job to stop
JOBS/<id>/clips/          the uploaded clips; removed when the job ends
JOBS/<id>/report.json     on success: score distribution, thresholds, false-alarm rates
JOBS/.names/<name>        the live job that holds a model name (created O_EXCL)
JOBS/.trainers/<id>.json  each trainer's heartbeat
```

A job folder appears whole (renamed from `.incoming`), so a trainer never sees half a job.
After `claim.json` exists only its owner writes `state.json`; before, only the service
(which created it). Every JSON file is written to a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Literal

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
LIVE_STATES = ("queued", "running")
JOB_FILE, STATE_FILE, CLAIM_FILE = "job.json", "state.json", "claim.json"
CANCEL_FILE, CLIPS_DIR, REPORT_FILE = "cancel", "clips", "report.json"
INCOMING, NAMES, TRAINERS = ".incoming", ".names", ".trainers"
LOG_LINES = 20  # the log tail kept in state.json
HEARTBEAT_S = 5.0  # how often a trainer writes its heartbeat
TRAINER_STALE_S = 30.0  # a heartbeat older than this: that trainer is gone
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
# a model name is a folder name of the artifacts folder: no separators, not hidden
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def write_json(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside `path` and rename it over (readers see the
    old or the new content, whole)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_json(path: Path) -> Any:
    """The file's JSON, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (0 when it is gone)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def now() -> float:
    return time.time()


class Spool:
    """One jobs folder. Methods are blocking file operations (call them in a thread from
    async code)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure(self) -> None:
        for sub in (INCOMING, NAMES, TRAINERS):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ jobs
    def job_dir(self, job_id: str) -> Path:
        if not JOB_ID.match(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def job_ids(self) -> list[str]:
        """Every job folder, oldest first."""
        try:
            entries = [p for p in self.root.iterdir() if JOB_ID.match(p.name) and p.is_dir()]
        except FileNotFoundError:
            return []
        return [p.name for p in sorted(entries, key=_created)]

    def new_upload(self) -> tuple[str, Path]:
        """A fresh job id and the hidden folder its upload is spooled into."""
        self.ensure()
        job_id = uuid.uuid4().hex
        tmp = self.root / INCOMING / job_id
        (tmp / CLIPS_DIR).mkdir(parents=True)
        return job_id, tmp

    def publish(self, job_id: str, tmp: Path, job: dict[str, Any]) -> None:
        """Write the request and its `queued` state into the spooled folder, then rename it
        into place: from here on a trainer may take it."""
        write_json(tmp / JOB_FILE, {**job, "id": job_id})
        t = now()
        write_json(tmp / STATE_FILE, {"state": "queued", "stage": "queued", "updated_at": t})
        os.rename(tmp, self.root / job_id)

    def read(self, job_id: str) -> dict[str, Any] | None:
        """The job's request and state merged (plus `report` when there is one), or None."""
        folder = self.job_dir(job_id)
        job = read_json(folder / JOB_FILE)
        state = read_json(folder / STATE_FILE)
        if not isinstance(job, dict) or not isinstance(state, dict):
            return None
        out = {**job, **state}
        report = read_json(folder / REPORT_FILE)
        if report is not None:
            out["report"] = report
        return out

    def state(self, job_id: str) -> dict[str, Any]:
        state = read_json(self.job_dir(job_id) / STATE_FILE)
        return state if isinstance(state, dict) else {}

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Merge fields into state.json (its owner only: see the module docstring)."""
        state = {**self.state(job_id), **fields, "updated_at": now()}
        write_json(self.job_dir(job_id) / STATE_FILE, state)
        return state

    def log(self, job_id: str, line: str, **fields: Any) -> dict[str, Any]:
        """Append a line to the job's log tail (and merge fields) in one state write."""
        state = self.state(job_id)
        tail = [*state.get("log", []), line][-LOG_LINES:]
        return self.update(job_id, log=tail, **fields)

    def claim(self, job_id: str, owner: dict[str, Any]) -> bool:
        """Take the job out of `queued` (True), unless someone did first (False)."""
        path = self.job_dir(job_id) / CLAIM_FILE
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        return True

    def claim_of(self, job_id: str) -> dict[str, Any] | None:
        claim = read_json(self.job_dir(job_id) / CLAIM_FILE)
        return claim if isinstance(claim, dict) else None

    def request_cancel(self, job_id: str) -> None:
        (self.job_dir(job_id) / CANCEL_FILE).touch()

    def cancel_requested(self, job_id: str) -> bool:
        return (self.job_dir(job_id) / CANCEL_FILE).exists()

    def finish(self, job_id: str, state: JobState, **fields: Any) -> dict[str, Any]:
        """End the job: its final state, then the uploads go (only the record, the report
        and the bundle stay) and its model name is free again."""
        final = self.update(job_id, state=state, finished_at=now(), **fields)
        folder = self.job_dir(job_id)
        shutil.rmtree(folder / CLIPS_DIR, ignore_errors=True)
        with contextlib.suppress(OSError):
            (folder / CANCEL_FILE).unlink()
        job = read_json(folder / JOB_FILE) or {}
        if job.get("name"):
            self.release_name(job["name"], job_id)
        return final

    def live_jobs(self) -> list[str]:
        return [j for j in self.job_ids() if self.state(j).get("state") in LIVE_STATES]

    def usage_bytes(self) -> int:
        """Bytes the spool holds (uploads being spooled included)."""
        return folder_bytes(self.root)

    # ----------------------------------------------------------------- names
    def reserve_name(self, name: str, job_id: str) -> str | None:
        """Hold `name` for job_id; the id of the live job already holding it otherwise.
        A reservation whose job has ended (or vanished) is taken over."""
        self.ensure()
        path = self.root / NAMES / name
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_text(path)
                if holder and self._live_or_spooling(holder):
                    return holder
                with contextlib.suppress(OSError):
                    path.unlink()  # stale: its job ended without releasing it
                continue
            with os.fdopen(fd, "w") as f:
                f.write(job_id)
            return None
        return _read_text(path) or "unknown"

    def release_name(self, name: str, job_id: str) -> None:
        path = self.root / NAMES / name
        if _read_text(path) == job_id:
            with contextlib.suppress(OSError):
                path.unlink()

    def _live_or_spooling(self, job_id: str) -> bool:
        if (self.root / INCOMING / job_id).is_dir():
            return True
        if not JOB_ID.match(job_id):
            return False
        return self.state(job_id).get("state") in LIVE_STATES

    def sweep_incoming(self, older_than_s: float) -> None:
        """Remove uploads left half-spooled by a process that died (older than the
        longest an upload may take)."""
        with contextlib.suppress(FileNotFoundError):
            for p in (self.root / INCOMING).iterdir():
                with contextlib.suppress(OSError):
                    if now() - p.stat().st_mtime > older_than_s:
                        shutil.rmtree(p, ignore_errors=True)

    # -------------------------------------------------------------- trainers
    def heartbeat(self, trainer_id: str, **info: Any) -> None:
        self.ensure()
        beat = {"id": trainer_id, "host": socket.gethostname(), "pid": os.getpid(), **info}
        write_json(self.root / TRAINERS / f"{trainer_id}.json", {**beat, "seen_at": now()})

    def trainers(self) -> list[dict[str, Any]]:
        """Every heartbeat file's content (fresh or stale)."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for p in (self.root / TRAINERS).glob("*.json"):
                beat = read_json(p)
                if isinstance(beat, dict) and isinstance(beat.get("seen_at"), int | float):
                    out.append(beat)
        return out

    def trainer_alive(self, trainer_id: str | None) -> bool:
        """Whether that trainer's heartbeat is fresh."""
        for beat in self.trainers():
            if beat.get("id") == trainer_id:
                return now() - float(beat["seen_at"]) < TRAINER_STALE_S
        return False

    def last_trainer_seen(self) -> float | None:
        """When any trainer last wrote its heartbeat (epoch seconds), None if never."""
        seen = [float(b["seen_at"]) for b in self.trainers()]
        return max(seen) if seen else None


def _created(path: Path) -> float:
    job = read_json(path / JOB_FILE)
    if isinstance(job, dict) and isinstance(job.get("created_at"), int | float):
        return float(job["created_at"])
    return 0.0


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
