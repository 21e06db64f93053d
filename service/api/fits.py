"""Fit jobs (admin): `POST /v1/fits` spools healthy clips for a trainer, `GET /v1/fits[/{id}]`
reads jobs, `DELETE /v1/fits/{id}` cancels. The service trains nothing (service.jobs)."""

from __future__ import annotations

import time
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.deps import RegistryDep, SettingsDep, require_admin_key
from service.api.uploads import FORM_OVERHEAD, body_deadline, openapi_body, read_files
from service.errors import (
    FitInProgress,
    FitNotFound,
    FitsDisabled,
    InvalidRequest,
    ModelExists,
    Overloaded,
    WrongModelKind,
)
from service.jobs import intake
from service.jobs.spool import LIVE_STATES, MODEL_NAME, TRAINER_STALE_S, Spool
from service.jobs.watch import FitWatcher, served_version
from service.models.registry import ModelRegistry
from service.schemas import ErrorBody, FitAccepted, FitJob, FitLimits, FitList
from service.settings import Settings

fits = APIRouter(prefix="/v1", tags=["fit jobs"], dependencies=[Depends(require_admin_key)])
fits_methods = APIRouter(prefix="/v1", include_in_schema=False)


def _not_allowed(allow: str) -> Any:
    async def route() -> None:
        # one route per method: Starlette's own 405 would name the first route's method only
        raise StarletteHTTPException(405, "Method Not Allowed", headers={"Allow": allow})

    return route


fits_methods.add_api_route(
    "/fits", _not_allowed("GET, POST"), methods=["PUT", "PATCH", "DELETE", "OPTIONS"]
)
fits_methods.add_api_route(
    "/fits/{job_id}", _not_allowed("GET, DELETE"), methods=["PUT", "PATCH", "POST", "OPTIONS"]
)

PRESETS = ("quick", "standard")
FIT_FIELDS = {
    "name": "the model's name (a folder of the artifacts): 1-64 letters, digits, '_' or '-'",
    "preset": "quick (minutes, fewer epochs) or standard (as `python -m training fit`)",
    "false_alarm_rate": "optional: share of healthy clips that may reach needs_maintenance "
    "(default 0.01)",
    "replace": "optional: true to fit a new version of a model that exists",
}


def _error(desc: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": desc}


FIT_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("missing or wrong admin key (unauthorized)"),
    404: _error("no such job (fit_not_found)"),
    503: _error("no jobs folder is set (fits_disabled)"),
}
POST_ERRORS: dict[int | str, dict[str, Any]] = {
    401: FIT_ERRORS[401],
    408: _error("the upload did not arrive within AUSCULT_BODY_TIMEOUT_S (request_timeout)"),
    409: _error(
        "the model exists and replace is not true (model_exists), another job for the name "
        "is queued or running (fit_in_progress), or the model is not an anomaly model "
        "(wrong_model_kind)"
    ),
    413: _error(
        "over AUSCULT_FIT_MAX_JOB_BYTES (payload_too_large) or AUSCULT_FIT_MAX_CLIPS "
        "(batch_too_large)"
    ),
    415: _error("not multipart (unsupported_media_type)"),
    422: _error(
        "a bad name, preset, rate or form (invalid_request); too little readable "
        "audio (not_enough_audio, naming the clips that could not be read)"
    ),
    503: _error(
        "AUSCULT_FIT_MAX_JOBS jobs are queued or running (overloaded, Retry-After); "
        "no jobs folder (fits_disabled)"
    ),
    507: _error(
        "the jobs folder is full: its quota AUSCULT_FIT_MAX_SPOOL_BYTES or its disk "
        "(insufficient_storage); nothing was kept"
    ),
}


def get_spool(request: Request) -> Spool:
    spool: Spool | None = getattr(request.app.state, "spool", None)
    if spool is None:
        raise FitsDisabled("this service takes no fit jobs: set AUSCULT_JOBS_DIR")
    return spool


def _fields(fields: dict[str, str]) -> tuple[str, str, float | None, bool]:
    name, preset = fields["name"], fields["preset"] or "quick"
    if not MODEL_NAME.match(name):
        raise InvalidRequest(
            f"name {name[:80]!r} must be 1-64 letters, digits, '_' or '-', starting with a "
            "letter or digit"
        )
    if preset not in PRESETS:
        raise InvalidRequest(f"preset {preset[:40]!r} must be quick or standard")
    rate: float | None = None
    if fields["false_alarm_rate"]:
        try:
            rate = float(fields["false_alarm_rate"])
        except ValueError:
            rate = -1.0
        if not 0 < rate < 0.5:
            raise InvalidRequest("false_alarm_rate must be a fraction between 0 and 0.5, e.g. 0.01")
    replace = fields["replace"].lower()
    if replace not in ("", "true", "false", "1", "0"):
        raise InvalidRequest("replace must be true or false")
    return name, preset, rate, replace in ("true", "1")


def _check_name(name: str, replace: bool, registry: ModelRegistry, settings: Settings) -> None:
    rt = registry.runtimes.get(name)
    exists = rt is not None or (settings.artifacts_dir / name).exists()
    if exists and not replace:
        raise ModelExists(
            f"a model named {name!r} exists; send replace=true to fit a new version of it"
        )
    if rt is not None and rt.kind not in (None, "anomaly"):
        raise WrongModelKind(f"model {name!r} is a {rt.kind}; a fit job makes anomaly models")


def _spool_upload(
    spool: Spool,
    job_id: str,
    tmp: Any,
    names: list[str | None],
    settings: Settings,
    room: int,
    job: dict[str, Any],
) -> intake.Checked:
    """Blocking: unpack an archive, decode-check the clips, publish the job folder."""
    names = intake.expand_archive(tmp, names, settings, room)
    checked = intake.check_clips(tmp, names, settings)
    intake.require_enough(checked, settings)
    job.update(
        clips=checked.clips, skipped=checked.skipped, audio_seconds=round(checked.seconds, 3)
    )
    spool.publish(job_id, tmp, job)
    return checked


@fits.post(
    "/fits",
    status_code=202,
    response_model=FitAccepted,
    responses=POST_ERRORS,
    openapi_extra=openapi_body("files", many=True, text=FIT_FIELDS),
)
async def create_fit(request: Request, registry: RegistryDep, settings: SettingsDep) -> FitAccepted:
    """Start a fit job: a new anomaly model `name` learned from healthy clips (repeated
    multipart field `files`, or one zip/tar archive of them) by a trainer beside the
    service. `preset`: quick or standard. Unreadable clips are skipped and listed in the
    job; too little readable audio is refused (422 not_enough_audio). Poll the job's `url`."""
    spool = get_spool(request)
    if len(await anyio.to_thread.run_sync(spool.live_jobs)) >= settings.fit_max_jobs:
        raise Overloaded(
            f"{settings.fit_max_jobs} fit jobs are queued or running (AUSCULT_FIT_MAX_JOBS); "
            "try again when one has ended",
            headers={"Retry-After": "60"},
        )
    room = settings.fit_max_spool_bytes - await anyio.to_thread.run_sync(spool.usage_bytes)
    length = request.headers.get("content-length", "")
    if room <= 0 or (length.isdigit() and int(length) > room + FORM_OVERHEAD):
        raise intake.no_space("the jobs folder is full (AUSCULT_FIT_MAX_SPOOL_BYTES); try later")
    job_id, tmp = await anyio.to_thread.run_sync(spool.new_upload)
    files = intake.SpoolFiles(tmp, room)
    fields = dict.fromkeys(FIT_FIELDS, "")
    reserved: str | None = None
    try:
        async with body_deadline(settings.body_timeout_s, "upload"):
            uploads = await read_files(
                request.headers.get("content-type"),
                length,
                request.stream(),
                "files",
                settings.fit_max_clips,
                settings.fit_max_job_bytes,
                max_body_bytes=settings.fit_max_job_bytes + FORM_OVERHEAD,
                max_parts=settings.fit_max_clips + len(FIT_FIELDS),
                text_fields=fields,
                sink=files,
                body_setting="AUSCULT_FIT_MAX_JOB_BYTES",
            )
        files.close()
        name, preset, rate, replace = _fields(fields)
        _check_name(name, replace, registry, settings)
        holder = await anyio.to_thread.run_sync(spool.reserve_name, name, job_id)
        if holder is not None:
            raise FitInProgress(f"fit job {holder} for {name!r} is queued or running")
        reserved = name
        job = {
            "name": name,
            "preset": preset,
            "false_alarm_rate": rate,
            "replace": replace,
            "created_at": time.time(),
        }
        names = [u.filename for u in uploads]
        await anyio.to_thread.run_sync(
            _spool_upload, spool, job_id, tmp, names, settings, files.room, job
        )
    except BaseException:
        files.close()
        await anyio.to_thread.run_sync(intake.discard, tmp)
        if reserved is not None:
            spool.release_name(reserved, job_id)
        raise
    return FitAccepted(id=job_id, state="queued", url=f"/v1/fits/{job_id}")


def _trainer(spool: Spool, job: dict[str, Any]) -> dict[str, Any]:
    last = spool.last_trainer_seen()
    ago = None if last is None else round(time.time() - last, 1)
    seen = ago is not None and ago < TRAINER_STALE_S
    message = None
    state = job.get("state")
    if state == "queued" and not seen:
        when = "ever" if ago is None else f"for {ago:.0f} s"
        message = (
            f"no trainer has been seen {when}: the job waits until one runs "
            "(python -m training worker --jobs DIR --artifacts DIR; docs/operations.md)"
        )
    elif state == "running":
        claim = spool.claim_of(job["id"]) or {}
        if not spool.trainer_alive(claim.get("trainer")):
            message = (
                "the trainer running this job has stopped writing its heartbeat; the job "
                "is marked failed when a trainer starts again"
            )
    return {"seen": seen, "last_seen_s": ago, "message": message}


def _view(spool: Spool, job: dict[str, Any], registry: ModelRegistry) -> FitJob:
    model = job.get("model")
    if model:
        model = {**model, "served": served_version(registry, model["name"]) == model["version"]}
    progress = job.get("progress") or {}
    return FitJob.model_validate(
        {
            **job,
            "url": f"/v1/fits/{job['id']}",
            "progress": progress,
            "clips": len(job.get("clips") or []),
            "audio_seconds": job.get("audio_seconds", 0.0),
            "model": model,
            "cancel_requested": job.get("state") in LIVE_STATES
            and spool.cancel_requested(job["id"]),
            "trainer": _trainer(spool, job),
        }
    )


async def _read(spool: Spool, job_id: str) -> dict[str, Any]:
    try:
        job = await anyio.to_thread.run_sync(spool.read, job_id)
    except KeyError:
        job = None
    if job is None:
        raise FitNotFound(f"no fit job {job_id[:40]!r}; GET /v1/fits lists them")
    return job


def _watcher(request: Request) -> FitWatcher:
    return request.app.state.fit_watcher


RECOMMENDED_SECONDS = 120.0  # two minutes: the quick preset's benchmark (bench/fits.py)


@fits.get("/fits", response_model=FitList, responses=FIT_ERRORS)
async def read_fits(request: Request, registry: RegistryDep, settings: SettingsDep) -> FitList:
    """Every fit job, newest first, and what a job takes (limits)."""
    spool = get_spool(request)

    def read_all() -> list[FitJob]:
        jobs = [spool.read(j) for j in reversed(spool.job_ids())]
        return [_view(spool, j, registry) for j in jobs if j is not None]

    limits = FitLimits(
        min_seconds=settings.fit_min_seconds,
        recommended_seconds=max(RECOMMENDED_SECONDS, settings.fit_min_seconds),
        max_clips=settings.fit_max_clips,
        max_job_bytes=settings.fit_max_job_bytes,
    )
    return FitList(fits=await anyio.to_thread.run_sync(read_all), limits=limits)


@fits.get("/fits/{job_id}", response_model=FitJob, responses=FIT_ERRORS)
async def read_fit(job_id: str, request: Request, registry: RegistryDep) -> FitJob:
    """One job: state, stage, progress, log tail; on success the model and its report."""
    spool = get_spool(request)
    job = await _read(spool, job_id)
    if job.get("state") == "succeeded":
        await _watcher(request).settle(job)  # served by this process before it answers
    return await anyio.to_thread.run_sync(_view, spool, job, request.app.state.registry)


@fits.delete("/fits/{job_id}", response_model=FitJob, responses=FIT_ERRORS)
async def cancel_fit(job_id: str, request: Request, registry: RegistryDep) -> FitJob:
    """Cancel a job: a queued one is cancelled at once, a running one at the trainer's next
    check (between epochs and stages; `cancel_requested` until then). An ended job is
    left as it is."""
    spool = get_spool(request)
    job = await _read(spool, job_id)

    def cancel() -> None:
        if job.get("state") not in LIVE_STATES:
            return
        spool.request_cancel(job_id)
        if spool.claim(job_id, {"trainer": None, "by": "cancel", "at": time.time()}):
            spool.finish(job_id, "cancelled", stage="cancelled", error=None)

    await anyio.to_thread.run_sync(cancel)
    job = await _read(spool, job_id)
    return await anyio.to_thread.run_sync(_view, spool, job, registry)
