"""`python -m training worker`: the trainer of fit jobs.

It takes jobs from the spool folder the service writes (`service.jobs.spool`), runs the same
fit as `python -m training fit` with the job's preset, and publishes the bundle into the
artifacts folder atomically: built in a hidden folder, moved to `.versions/NAME-VERSION`,
then served through the link `NAME` → `.versions/NAME-VERSION`, flipped with one rename.
The service loads it by itself (service.jobs.watch). One job at a time per trainer; run
more trainers (or `--ray`) for more.

States: a job is `queued` until a trainer claims it (claim.json), `running` while it fits,
then `succeeded`, `failed` or `cancelled`. A trainer that starts marks the jobs left
`running` by a trainer that died `failed`, and removes what they had half built.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from service.jobs.spool import (
    CLIPS_DIR,
    HEARTBEAT_S,
    JOB_FILE,
    REPORT_FILE,
    Spool,
    pid_alive,
    read_json,
    write_json,
)
from training.fit_job import Cancelled, Progress, run_fit

log = logging.getLogger("auscult.trainer")

# `python -m training fit` options of each preset (standard: the command's defaults)
PRESETS: dict[str, list[str]] = {
    "quick": ["--epochs", "20"],
    "standard": [],
}
PIECE_SECONDS = 10.0  # long recordings are cut into pieces of this length…
MIN_PIECES = 8  # …or shorter, down to MIN_PIECE_SECONDS, to give the fit this many clips
MIN_PIECE_SECONDS = 2.0
WORK_DIR = "work"  # inside the job folder: the pieces the fit reads
VERSIONS = ".versions"
RECOVER_EVERY_S = 30.0  # how often a running trainer looks for jobs a dead one left


# ---------------------------------------------------------------------------- data
def cut_pieces(clips_dir: Path, clips: list[dict[str, Any]], out: Path) -> tuple[int, str | None]:
    """The job's clips → wav pieces `rNNNN_pMMM.wav` in `out` (long recordings cut so the
    fit has clips to hold out). Returns (pieces, the --group-by regex naming a piece's
    recording, or None when there are too few recordings to hold whole ones out)."""
    import soundfile as sf

    from service.features import decode_audio

    total = sum(float(c["seconds"]) for c in clips)
    piece = max(MIN_PIECE_SECONDS, min(PIECE_SECONDS, total / MIN_PIECES))
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for r, clip in enumerate(clips):
        audio = decode_audio((clips_dir / clip["file"]).read_bytes())
        step = round(piece * audio.sample_rate)
        samples = audio.samples
        starts = list(range(0, max(len(samples) - step, 0) + 1, step)) or [0]
        if len(samples) - (starts[-1] + step) >= MIN_PIECE_SECONDS * audio.sample_rate:
            starts.append(starts[-1] + step)  # a long enough remainder is a piece too
        for p, start in enumerate(starts):
            sf.write(
                out / f"r{r:04d}_p{p:03d}.wav",
                samples[start : start + step],
                audio.sample_rate,
                subtype="PCM_16",
            )
            n += 1
    return n, (r"^(r\d+)_" if len(clips) >= 2 else None)


def fit_arguments(
    data: Path, out: Path, job: dict[str, Any], group_by: str | None, extra: list[str]
) -> list[str]:
    """The `python -m training fit` command line a job runs (without the program name)."""
    argv = ["fit", "--data", str(data), "--out", str(out), *PRESETS[job["preset"]], *extra]
    if job.get("false_alarm_rate") is not None:
        argv += ["--false-alarm-rate", str(job["false_alarm_rate"])]
    if group_by:
        argv += ["--group-by", group_by]
    return [*argv, "--no-evaluate", "--force"]


def build_report(bundle: Path, data: Path) -> dict[str, Any]:
    """report.json: the healthy clips' scores as the service scores them (a histogram and
    the held-out ones), the thresholds and the false-alarm rates they were set for."""
    import numpy as np

    from service.models.runtimes import AnomalyRuntime, open_runtime
    from training.anomaly.evaluate import score_clips
    from training.datasets import discover, training_clips

    runtime = open_runtime(bundle)
    assert isinstance(runtime, AnomalyRuntime) and runtime.manifest is not None
    m = runtime.manifest
    scores = score_clips(runtime, training_clips(discover(data))).scores
    th = m.thresholds
    assert th is not None
    top = max(float(scores.max()), th.severe) * 1.05
    counts, edges = np.histogram(scores, bins=20, range=(0.0, top))
    cal = m.calibration
    return {
        "model": m.name,
        "version": m.version,
        "clips": m.training.get("clips"),
        "epochs": m.training.get("epochs"),
        "thresholds": {"needs_maintenance": th.needs_maintenance, "severe": th.severe},
        "false_alarm_rate": cal.false_alarm_rate if cal else None,
        "severe_rate": cal.severe_rate if cal else None,
        "estimate": cal.estimate if cal else {},
        "scores": {
            "what": "the healthy clips it learned from, scored as the service scores them",
            "histogram": {"edges": [float(e) for e in edges], "counts": counts.tolist()},
            "percentiles": {f"p{q}": float(np.percentile(scores, q)) for q in (50, 90, 99)},
            "heldout": m.training.get("heldout_scores", {}),
        },
    }


# ---------------------------------------------------------------------- publishing
def publish(build: Path, artifacts: Path, name: str) -> str:
    """Move the built bundle into `.versions/NAME-VERSION` and point `artifacts/NAME` at it
    with one rename (a plain folder already there is first moved into `.versions`, so that
    first replacement leaves a moment without the model). Keeps the version it replaced
    and removes older ones. Returns the version."""
    from service.models.bundle import read_manifest

    version = read_manifest(build).version
    versions = artifacts / VERSIONS
    versions.mkdir(exist_ok=True)
    target = versions / f"{name}-{version}"
    if target.exists():
        shutil.rmtree(target)
    os.rename(build, target)
    link = artifacts / name
    previous = os.readlink(link) if link.is_symlink() else None
    if link.exists() and not link.is_symlink():
        old = versions / f"{name}-{read_manifest(link).version}"
        shutil.rmtree(old, ignore_errors=True)
        os.rename(link, old)
        previous = f"{VERSIONS}/{old.name}"
    tmp_link = artifacts / f".{name}.{uuid.uuid4().hex[:8]}.link"
    os.symlink(f"{VERSIONS}/{target.name}", tmp_link)
    os.replace(tmp_link, link)
    keep = {target.name, Path(previous).name if previous else ""}
    mine = re.compile(rf"^{re.escape(name)}-\d{{8}}-[0-9a-f]+$")
    for old_version in versions.iterdir():
        if old_version.name not in keep and mine.match(old_version.name):
            shutil.rmtree(old_version, ignore_errors=True)
    return version


def build_dir(artifacts: Path, job_id: str) -> Path:
    """Where a job's bundle is built: hidden, never scanned by the service."""
    return artifacts / VERSIONS / f".build-{job_id}"


# -------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(
        self,
        jobs: Path,
        artifacts: Path,
        ray_address: str | None = None,
        extra_args: list[str] | None = None,
        poll_s: float = 1.0,
    ) -> None:
        self.spool = Spool(jobs)
        self.artifacts = Path(artifacts)
        self.ray_address = ray_address
        self.extra = extra_args or []
        self.poll_s = poll_s
        self.id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.current: str | None = None
        self.stopping = threading.Event()
        self._beat: threading.Thread | None = None

    # heartbeat ------------------------------------------------------------
    def start_heartbeat(self) -> None:
        self.spool.heartbeat(self.id, job=None, ray=self.ray_address)

        def beat() -> None:
            while not self.stopping.wait(HEARTBEAT_S):
                with contextlib.suppress(OSError):
                    self.spool.heartbeat(self.id, job=self.current, ray=self.ray_address)

        self._beat = threading.Thread(target=beat, name="heartbeat", daemon=True)
        self._beat.start()

    def stop(self) -> None:
        self.stopping.set()
        with contextlib.suppress(OSError):
            (self.spool.root / ".trainers" / f"{self.id}.json").unlink()

    # recovery -------------------------------------------------------------
    def orphaned(self, claim: dict[str, Any]) -> bool:
        """Whether the trainer that claimed a job is gone: its process on this host is not
        alive (or is this one, restarted), or its heartbeat went stale."""
        if claim.get("trainer") == self.id:
            return False
        if claim.get("host") == socket.gethostname():
            pid = int(claim.get("pid") or 0)
            if pid == os.getpid() or not pid_alive(pid):
                return True
        return not self.spool.trainer_alive(claim.get("trainer"))

    def recover(self) -> list[str]:
        """Jobs a dead trainer left `running` (or claimed but never started) → `failed`
        with the reason; their half-built bundles are removed. Returns their ids."""
        failed = []
        for job_id in self.spool.job_ids():
            state = self.spool.state(job_id).get("state")
            claim = self.spool.claim_of(job_id)
            if state not in ("queued", "running") or claim is None or not claim.get("trainer"):
                continue
            if not self.orphaned(claim):
                continue
            shutil.rmtree(build_dir(self.artifacts, job_id), ignore_errors=True)
            shutil.rmtree(self.spool.job_dir(job_id) / WORK_DIR, ignore_errors=True)
            reason = (
                f"the trainer running it ({claim.get('trainer')}) stopped before the fit "
                "ended (killed, crashed or out of memory); nothing of it was published. "
                "Start the job again."
            )
            self.spool.log(job_id, "failed: the trainer running it stopped")
            self.spool.finish(job_id, "failed", stage="failed", error=reason)
            log.warning("job_orphaned", extra={"job": job_id})
            failed.append(job_id)
        return failed

    # one job --------------------------------------------------------------
    def next_job(self) -> str | None:
        """Claim the oldest queued job (None: nothing to do)."""
        for job_id in self.spool.job_ids():
            if self.spool.state(job_id).get("state") != "queued":
                continue
            owner = {
                "trainer": self.id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "at": time.time(),
            }
            if self.spool.claim(job_id, owner):
                return job_id
        return None

    def run(self, job_id: str) -> str:
        """Run a claimed job to its end; returns its final state."""
        self.current = job_id
        folder = self.spool.job_dir(job_id)
        job = read_json(folder / JOB_FILE) or {}
        build = build_dir(self.artifacts, job_id)
        try:
            if self.spool.cancel_requested(job_id):
                raise Cancelled()
            self.spool.update(
                job_id,
                state="running",
                started_at=time.time(),
                stage="preparing the clips",
                trainer=self.id,
                progress={"epoch": None, "epochs": None, "percent": 1},
            )
            self.spool.log(job_id, f"trainer {self.id} took the job ({job.get('preset')})")
            pieces, group_by = cut_pieces(folder / CLIPS_DIR, job["clips"], folder / WORK_DIR)
            self.spool.log(
                job_id, f"{pieces} pieces of healthy audio from {len(job['clips'])} clips"
            )
            shutil.rmtree(build, ignore_errors=True)
            build.mkdir(parents=True)
            bundle = build / job["name"]
            argv = fit_arguments(folder / WORK_DIR, bundle, job, group_by, self.extra)
            progress = self.progress(job_id)
            if self.ray_address:
                from training.ray_fit import run_on_ray

                run_on_ray(self.ray_address, argv, folder / WORK_DIR, bundle, progress)
            else:
                run_fit(argv, progress)
            progress.stage("publishing the model")
            report = build_report(bundle, folder / WORK_DIR)
            from service.models.bundle import update_bundle

            update_bundle(bundle, {REPORT_FILE: _json_bytes(report)})
            if self.spool.cancel_requested(job_id):
                raise Cancelled()
            version = publish(bundle, self.artifacts, job["name"])
            write_json(folder / REPORT_FILE, report)
            self.spool.log(job_id, f"published {job['name']} version {version}")
            self.spool.finish(
                job_id,
                "succeeded",
                stage="done",
                model={"name": job["name"], "version": version},
                progress={**progress._progress(None), "percent": 100.0},
            )
            return "succeeded"
        except Cancelled:
            self.spool.log(job_id, "cancelled")
            self.spool.finish(job_id, "cancelled", stage="cancelled")
            return "cancelled"
        except (KeyboardInterrupt, SystemExit):  # stopped (Ctrl-C, SIGTERM): say so, then stop
            self.spool.finish(
                job_id,
                "failed",
                stage="failed",
                error="the trainer was stopped during the fit; nothing was published",
            )
            raise
        except Exception as e:  # the job fails; the trainer goes on with the next
            reason = describe_failure(e)
            log.error("job_failed", extra={"job": job_id, "detail": reason})
            with contextlib.suppress(Exception):
                self.spool.log(job_id, f"failed: {reason}")
            self.spool.finish(job_id, "failed", stage="failed", error=reason)
            return "failed"
        finally:
            shutil.rmtree(build, ignore_errors=True)
            shutil.rmtree(folder / WORK_DIR, ignore_errors=True)
            self.current = None

    def progress(self, job_id: str) -> Progress:
        def write(**fields: Any) -> None:
            self.spool.update(job_id, **fields)

        def line(text: str) -> None:
            self.spool.log(job_id, text)

        return Progress(write, line, lambda: self.spool.cancel_requested(job_id))

    # loop -----------------------------------------------------------------
    def serve(self, once: bool = False) -> int:
        """Take jobs until stopped (or, with `once`, until none is queued). Returns the
        number of jobs run."""
        self.spool.ensure()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.start_heartbeat()
        ran = 0
        try:
            self.recover()
            recovered = time.monotonic()
            while not self.stopping.is_set():
                if time.monotonic() - recovered > RECOVER_EVERY_S:  # another trainer died
                    self.recover()
                    recovered = time.monotonic()
                job_id = self.next_job()
                if job_id is None:
                    if once:
                        break
                    self.stopping.wait(self.poll_s)
                    continue
                state = self.run(job_id)
                ran += 1
                print(f"job {job_id}: {state}", file=sys.stderr, flush=True)
        finally:
            self.stop()
        return ran


def describe_failure(e: BaseException) -> str:
    import errno

    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({e.strerror}); nothing was published"
    from training.datasets import DatasetError

    if isinstance(e, DatasetError):
        return str(e)
    return f"{type(e).__name__}: {e}"


def _json_bytes(obj: Any) -> bytes:
    import json

    return (json.dumps(obj, indent=2) + "\n").encode()
