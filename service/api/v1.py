"""Routes: HTTP concerns only (multipart, status codes); the logic is in service.models.scoring."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.deps import (
    RegistryDep,
    ScorerDep,
    SettingsDep,
    require_admin_key,
    require_api_key,
)
from service.api.uploads import body_deadline, openapi_body, read_body, read_files
from service.budgets import Upload
from service.errors import (
    EnrolFailed,
    InvalidRequest,
    ModelNotFound,
    NotReady,
    public_message,
)
from service.models.conditions import check_name as check_condition_name
from service.models.conditions import measure as measure_condition
from service.models.conditions import write_enrolled
from service.models.generator import wav_bytes, zip_bytes
from service.models.registry import ReloadOutcome
from service.models.runtimes import AnomalyRuntime, ModelRuntime
from service.models.scoring import Scorer
from service.schemas import (
    BatchClassifyResponse,
    BatchScoreResponse,
    ClassifyResult,
    EnrolledCondition,
    EnrolResult,
    ErrorBody,
    GenerateRequest,
    Health,
    ModelDetail,
    ModelInfo,
    ModelList,
    Readiness,
    ReloadResponse,
    ReloadResult,
    ScoreResult,
)
from service.settings import Settings

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": desc}
    for code, desc in (
        (401, "missing or wrong API key (unauthorized, with WWW-Authenticate)"),
        (404, "unknown model (model_not_found)"),
        (408, "the upload did not arrive within AUSCULT_BODY_TIMEOUT_S (request_timeout)"),
        (409, "the model is of the other kind (wrong_model_kind)"),
        (413, "payload_too_large / batch_too_large"),
        (415, "not multipart, or content that is neither audio nor image (unsupported_media_type)"),
        (
            422,
            "invalid_audio / invalid_image / audio_too_short / audio_too_long / "
            "sample_rate_out_of_range / non_finite_values / invalid_request",
        ),
        (503, "overloaded (with Retry-After) / not_ready"),
    )
}

health = APIRouter(tags=["health"])
models = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])
admin = APIRouter(prefix="/v1", tags=["admin"], dependencies=[Depends(require_admin_key)])


@health.get("/healthz", response_model=Health)
async def read_health() -> Health:
    """Liveness: 200 while the process runs."""
    return Health(status="ok")


@health.api_route(
    "/v1/models/reload",
    methods=["GET", "PUT", "PATCH", "DELETE", "OPTIONS"],
    include_in_schema=False,
)
async def reload_is_post() -> None:
    """GET would otherwise reach GET /v1/models/{name} and answer 404 for a model
    named "reload"; the route exists, for POST."""
    raise StarletteHTTPException(405, "Method Not Allowed", headers={"Allow": "POST"})


@health.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorBody}})
async def read_readiness(registry: RegistryDep, settings: SettingsDep) -> Readiness:
    """Readiness: 200 once at least one bundle is loaded (and the default model, when one
    is set), else 503 not_ready."""
    if registry.ready_count == 0:
        raise NotReady("no model bundle is loaded")
    default = settings.default_model
    rt = registry.runtimes.get(default) if default is not None else None
    if default is not None and (rt is None or not rt.ready):
        raise NotReady(f"the default model {default!r} is not loaded")
    return Readiness(status="ready", models_ready=registry.ready_count)


@health.get("/metrics", response_class=Response)
async def read_metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    metrics = request.app.state.metrics
    metrics.models_ready.set(request.app.state.registry.ready_count)
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


def _info(rt: ModelRuntime, reload_error: str | None = None) -> ModelInfo:
    m = rt.manifest
    return ModelInfo(
        name=rt.name,
        kind=rt.kind,
        status=rt.status,
        reason=public_message(rt.reason) if rt.reason else None,
        version=m.version if m else None,
        created_at=m.created_at if m else None,
        reload_error=public_message(reload_error) if reload_error else None,
        labels=m.labels if m else None,
    )


@models.get("/models", response_model=ModelList, responses={401: ERRORS[401]})
async def read_models(registry: RegistryDep, settings: SettingsDep) -> ModelList:
    """Every bundle found: name, kind, status (ready / failed with the reason), version."""
    return ModelList(
        default_model=settings.default_model,
        models=[
            _info(rt, registry.reload_errors.get(name)) for name, rt in registry.runtimes.items()
        ],
    )


@models.get("/models/{name}", response_model=ModelDetail, responses=ERRORS)
async def read_model(name: str, registry: RegistryDep) -> ModelDetail:
    """One bundle's manifest summary: features, thresholds or labels, training, evaluation."""
    rt = registry.runtimes.get(name)
    if rt is None:
        raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists them")
    m = rt.manifest
    detail = ModelDetail(**_info(rt, registry.reload_errors.get(name)).model_dump())
    if m is not None:
        training = {k: v for k, v in m.training.items() if k != "heldout_scores"}
        detail = detail.model_copy(
            update={
                "features": m.features.model_dump(),
                "input": m.input.model_dump(),
                "thresholds": m.thresholds.model_dump() if m.thresholds else None,
                "calibration": m.calibration.model_dump() if m.calibration else None,
                "generator": m.generator.model_dump() if m.generator else None,
                "scoring": m.scoring,
                "training": training,
                "evaluation": m.evaluation,
                "versions": m.versions,
            }
        )
    return detail


@asynccontextmanager
async def _uploads(
    request: Request,
    settings: Settings,
    scorer: Scorer,
    field: str,
    many: bool,
    text_fields: dict[str, str] | None = None,
) -> AsyncIterator[list[Upload]]:
    """The request's files, read whole within AUSCULT_BODY_TIMEOUT_S and the memory
    budgets, *before* a scoring slot is taken: a slow upload holds no slot. The bytes
    count against AUSCULT_MAX_BUFFERED_BYTES until the request ends. `text_fields`: short
    text fields to read as well (filled in)."""
    with scorer.buffers.lease() as lease:
        try:
            async with body_deadline(settings.body_timeout_s, "upload"):
                uploads = await read_files(
                    request.headers.get("content-type"),
                    request.headers.get("content-length"),
                    request.stream(),
                    field,
                    settings.max_batch_files if many else 1,
                    settings.max_upload_bytes,
                    max_body_bytes=settings.max_batch_bytes,
                    max_parts=settings.max_form_parts,
                    reserve=lease,
                    text_fields=text_fields,
                )
            yield uploads
        finally:
            scorer.request_done(lease.taken)  # a trim after a large request


CONDITION_FIELD = {
    "condition": "optional: the operating condition the clip was recorded under, one of the "
    "model's (GET /v1/models/{name}, calibration.conditions); empty: the nearest known one",
    "codec": "optional: `lossy` when the sound went through a lossy codec before this file "
    "(a voice-note app, a browser recording), `lossless` when not; empty: ogg and mp3 "
    "uploads are lossy, wav and flac lossless",
}


def _lossy(value: str) -> bool | None:
    """The request's `codec` field → whether to judge the clip as lossy (None: by format)."""
    if not value:
        return None
    if value not in ("lossy", "lossless"):
        raise InvalidRequest(f"codec {value[:40]!r} must be lossy or lossless")
    return value == "lossy"


def _condition(runtime: AnomalyRuntime, value: str) -> str | None:
    """The request's `condition` field → a condition the model knows, or None (nearest).
    Raises InvalidRequest (422) naming the known ones."""
    if not value:
        return None
    known = runtime.conditions
    if value not in known:
        listed = ", ".join(known) if known else "none (this model predates conditions)"
        raise InvalidRequest(f"unknown condition {value!r}; the model knows: {listed}")
    return value


@models.post(
    "/models/{name}/score",
    response_model=ScoreResult,
    responses=ERRORS,
    openapi_extra=openapi_body("file", many=False, text=CONDITION_FIELD),
)
async def score_clip(
    name: str, request: Request, registry: RegistryDep, scorer: ScorerDep, settings: SettingsDep
) -> ScoreResult:
    """Score one clip (multipart field `file`: wav/flac/ogg/mp3 audio, or a png/jpeg
    spectrogram of the model's size). Larger scores are further from normal. Optional
    text field `condition`: the operating condition it was recorded under (one the model
    lists in GET /v1/models/{name}); without it, the nearest known condition. Optional
    `codec` (`lossy` / `lossless`): whether the sound went through a lossy codec first."""
    runtime = registry.anomaly(name)
    fields = {"condition": "", "codec": ""}
    async with (
        _uploads(request, settings, scorer, "file", many=False, text_fields=fields) as uploads,
        scorer.slot(),  # taken once the body is in: a slow upload holds no slot
    ):
        condition, lossy = _condition(runtime, fields["condition"]), _lossy(fields["codec"])
        (result,) = await scorer.score(runtime, uploads, True, condition, lossy)
    assert isinstance(result, ScoreResult)
    return result


@models.post(
    "/models/{name}/score/batch",
    response_model=BatchScoreResponse,
    responses=ERRORS,
    openapi_extra=openapi_body("files", many=True, text=CONDITION_FIELD),
)
async def score_batch(
    name: str, request: Request, registry: RegistryDep, scorer: ScorerDep, settings: SettingsDep
) -> BatchScoreResponse:
    """Score many clips (repeated multipart field `files`): one result per file, in order.
    A bad file gets its own error entry and does not fail the others. Optional text field
    `condition`, as for one clip, applies to every file."""
    runtime = registry.anomaly(name)
    fields = {"condition": "", "codec": ""}
    async with _uploads(request, settings, scorer, "files", True, fields) as uploads:
        condition, lossy = _condition(runtime, fields["condition"]), _lossy(fields["codec"])
        request.app.state.metrics.batch_size.labels("request").observe(len(uploads))
        async with scorer.slot():
            results = await scorer.score(runtime, uploads, condition=condition, lossy=lossy)
    assert runtime.manifest is not None
    return BatchScoreResponse(model=name, model_version=runtime.manifest.version, results=results)


@models.post(
    "/models/{name}/classify",
    response_model=ClassifyResult,
    responses=ERRORS,
    openapi_extra=openapi_body("file", many=False),
)
async def classify_clip(
    name: str, request: Request, registry: RegistryDep, scorer: ScorerDep, settings: SettingsDep
) -> ClassifyResult:
    """Classify one clip with a classifier bundle: label, confidence, every probability."""
    runtime = registry.classifier(name)
    async with (
        _uploads(request, settings, scorer, "file", many=False) as uploads,
        scorer.slot(),  # taken once the body is in: a slow upload holds no slot
    ):
        (result,) = await scorer.classify(runtime, uploads, raise_errors=True)
    assert isinstance(result, ClassifyResult)
    return result


@models.post(
    "/models/{name}/classify/batch",
    response_model=BatchClassifyResponse,
    responses=ERRORS,
    openapi_extra=openapi_body("files", many=True),
)
async def classify_batch(
    name: str, request: Request, registry: RegistryDep, scorer: ScorerDep, settings: SettingsDep
) -> BatchClassifyResponse:
    """Classify many clips (repeated field `files`); per-file errors inside the response."""
    runtime = registry.classifier(name)
    async with _uploads(request, settings, scorer, "files", many=True) as uploads:
        request.app.state.metrics.batch_size.labels("request").observe(len(uploads))
        async with scorer.slot():
            results = await scorer.classify(runtime, uploads)
    assert runtime.manifest is not None
    return BatchClassifyResponse(
        model=name, model_version=runtime.manifest.version, results=results
    )


GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "one clip: a 16-bit mono WAV; several: a zip of them "
        "(`<model>_<label>_<seed>_<i>.wav`). The seed used is in X-Auscult-Seed.",
        "content": {
            "audio/wav": {"schema": {"type": "string", "format": "binary"}},
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **{code: ERRORS[code] for code in (401, 404, 408, 409, 503)},
    413: {"model": ErrorBody, "description": "a body over 4 KiB (payload_too_large)"},
    422: {
        "model": ErrorBody,
        "description": "invalid_request: an unknown label, count outside 1 to "
        "AUSCULT_MAX_GENERATE_COUNT, a bad seed or a malformed body",
    },
}


GENERATE_BODY_BYTES = 4096


async def _generate_request(request: Request, settings: Settings) -> GenerateRequest:
    """The JSON body (at most GENERATE_BODY_BYTES, within AUSCULT_BODY_TIMEOUT_S), parsed
    here so that any malformed body, bytes that are not UTF-8 included, is a 422."""
    async with body_deadline(settings.body_timeout_s, "body"):
        data = await read_body(
            request.stream(),
            GENERATE_BODY_BYTES,
            f"a generate request is at most {GENERATE_BODY_BYTES} bytes of JSON",
        )
    try:
        return GenerateRequest.model_validate_json(data)
    except ValidationError as e:
        msg = "; ".join(
            f"{'.'.join(map(str, ('body', *err['loc'])))}: {err['msg']}" for err in e.errors()
        )
        raise InvalidRequest(msg) from None


@models.post(
    "/models/{name}/generate",
    response_class=Response,
    responses=GENERATE_RESPONSES,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
        }
    },
)
async def generate_clips(
    name: str,
    request: Request,
    registry: RegistryDep,
    scorer: ScorerDep,
    settings: SettingsDep,
) -> Response:
    """Make `count` clips of class `label` with a generator bundle (a conditional GAN's
    spectrograms turned into audio by Griffin-Lim). The same seed gives the same audio."""
    runtime = registry.generator(name)
    body = await _generate_request(request, settings)
    manifest = runtime.manifest
    assert manifest is not None and manifest.labels is not None
    label = str(body.label)
    if label not in manifest.labels:
        raise InvalidRequest(
            f"unknown label {label!r}; model {name!r} makes {', '.join(manifest.labels)}"
        )
    if body.count > settings.max_generate_count:
        raise InvalidRequest(
            f"count {body.count} is over the limit of {settings.max_generate_count} "
            "(AUSCULT_MAX_GENERATE_COUNT)"
        )
    seed = body.seed if body.seed is not None else secrets.randbits(32)
    index, rate = manifest.labels.index(label), manifest.features.sample_rate
    async with scorer.slot():
        clips = await scorer.in_thread(lambda: runtime.generate(index, body.count, seed))
        wavs = [wav_bytes(a, rate) for a in clips]
    headers = {"X-Auscult-Seed": str(seed), "X-Auscult-Model-Version": manifest.version}
    if len(wavs) == 1:
        return Response(wavs[0], media_type="audio/wav", headers=headers)
    names = {f"{name}_{label}_{seed}_{i}.wav": w for i, w in enumerate(wavs)}
    headers["Content-Disposition"] = f'attachment; filename="{name}_{label}_{seed}.zip"'
    return Response(zip_bytes(names), media_type="application/zip", headers=headers)


ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "missing or wrong admin key (unauthorized)"},
    503: {"model": ErrorBody, "description": "the service has not loaded its bundles yet"},
}


def _result(o: ReloadOutcome) -> ReloadResult:
    reason = public_message(o.reason) if o.reason else None
    return ReloadResult(
        model=o.model,
        action=o.action,
        version=o.version,
        previous_version=o.previous_version,
        reason=reason,
    )


@admin.post("/models/reload", response_model=ReloadResponse, responses=ADMIN_ERRORS)
async def reload_models(request: Request, force: bool = False) -> ReloadResponse:
    """Re-scan the artifacts folder: new bundle folders load, removed ones unload, changed
    ones are re-read (all with `force=true`). A new version loads and verifies beside the
    one serving and replaces it at once; a broken one leaves it serving (action `failed`,
    also shown as `reload_error` in GET /v1/models). Requests in flight finish on the
    version they started with. Needs an admin key (AUSCULT_ADMIN_KEYS) when keys are on."""
    outcomes = await request.app.state.reloader.reload(None, force)
    return ReloadResponse(results=[_result(o) for o in outcomes])


@admin.post(
    "/models/{name}/reload",
    response_model=ReloadResult,
    responses={
        **ADMIN_ERRORS,
        404: {"model": ErrorBody, "description": "no such bundle folder or model"},
    },
)
async def reload_model(name: str, request: Request) -> ReloadResult:
    """Re-read one bundle folder (as POST /v1/models/reload does for all): `loaded` when the
    new version serves, `failed` (the previous version keeps serving, the reason says
    why), `removed` when its folder is gone."""
    (outcome,) = await request.app.state.reloader.reload(name, True)
    return _result(outcome)


@admin.post(
    "/models/{name}/conditions/{condition}",
    response_model=EnrolResult,
    responses={
        **ADMIN_ERRORS,
        404: {"model": ErrorBody, "description": "unknown model (model_not_found)"},
        409: {
            "model": ErrorBody,
            "description": "not an anomaly model (wrong_model_kind), or the new version could "
            "not be written or loaded (enrol_failed); the served version is unchanged",
        },
        413: ERRORS[413],
        415: ERRORS[415],
        422: {
            "model": ErrorBody,
            "description": "fewer than 10 clips, a bad condition name, a model without "
            "conditions (invalid_request), or an unreadable clip (its code, naming the file)",
        },
    },
    openapi_extra=openapi_body("files", many=True),
)
async def enrol_condition(
    name: str,
    condition: str,
    request: Request,
    registry: RegistryDep,
    scorer: ScorerDep,
    settings: SettingsDep,
) -> EnrolResult:
    """Enrol an operating condition (a new speed, load, site or microphone) from at least 10
    healthy clips (repeated multipart field `files`), refitting nothing: the condition's
    healthy sound is measured with the model's own encoder and detector, and a new version
    of the bundle is written and served by every worker. Enrolling a name again replaces
    it. Any failure leaves the served version as it was."""
    runtime = registry.anomaly(name)
    check_condition_name(condition)
    async with (
        _uploads(request, settings, scorer, "files", many=True) as uploads,
        scorer.slot(),
    ):
        latents = await scorer.latents(runtime, uploads)
        measured, offset = await scorer.in_thread(
            lambda: measure_condition(runtime, condition, latents)
        )
    previous = runtime.manifest.version if runtime.manifest else None
    try:
        manifest, outcome = await request.app.state.reloader.write_and_reload(
            name, lambda: write_enrolled(runtime, measured, offset)
        )
    except OSError as e:
        raise EnrolFailed(f"could not write the new version: {e}") from e
    if outcome.action != "loaded":
        raise EnrolFailed(f"the new version did not load: {outcome.reason}")
    return EnrolResult(
        model=name,
        condition=EnrolledCondition(
            name=measured.name, clips=measured.clips, loc=measured.loc, scale=measured.scale
        ),
        version=manifest.version,
        previous_version=previous,
        conditions=manifest.calibration.condition_names() if manifest.calibration else [],
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )
