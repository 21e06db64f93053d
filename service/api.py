"""Routes: HTTP concerns only (multipart, status codes); the logic is in service.scoring."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.deps import RegistryDep, ScorerDep, SettingsDep, require_api_key
from service.errors import ModelNotFound, NotReady
from service.runtime import ModelRuntime
from service.schemas import (
    BatchClassifyResponse,
    BatchScoreResponse,
    ClassifyResult,
    ErrorBody,
    Health,
    ModelDetail,
    ModelInfo,
    ModelList,
    Readiness,
    ScoreResult,
)
from service.uploads import Upload, openapi_body, read_files

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": desc}
    for code, desc in (
        (401, "missing or wrong API key (unauthorized)"),
        (404, "unknown model (model_not_found)"),
        (409, "the model is of the other kind (wrong_model_kind)"),
        (413, "payload_too_large / batch_too_large"),
        (415, "not multipart, or content that is neither audio nor image (unsupported_media_type)"),
        (422, "invalid_audio / invalid_image / audio_too_short / audio_too_long / invalid_request"),
        (503, "overloaded (with Retry-After) / not_ready"),
    )
}

health = APIRouter(tags=["health"])
models = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


@health.get("/healthz", response_model=Health)
async def read_health() -> Health:
    """Liveness: 200 while the process runs."""
    return Health(status="ok")


@health.get("/readyz", response_model=Readiness, responses={503: {"model": ErrorBody}})
async def read_readiness(registry: RegistryDep) -> Readiness:
    """Readiness: 200 once at least one bundle is loaded, else 503 not_ready."""
    if registry.ready_count == 0:
        raise NotReady("no model bundle is loaded")
    return Readiness(status="ready", models_ready=registry.ready_count)


@health.get("/metrics", response_class=Response)
async def read_metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    metrics = request.app.state.metrics
    metrics.models_ready.set(request.app.state.registry.ready_count)
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _info(rt: ModelRuntime) -> ModelInfo:
    m = rt.manifest
    return ModelInfo(
        name=rt.name,
        kind=rt.kind,
        status=rt.status,
        reason=rt.reason,
        version=m.version if m else None,
        created_at=m.created_at if m else None,
    )


@models.get("/models", response_model=ModelList)
async def read_models(registry: RegistryDep, settings: SettingsDep) -> ModelList:
    """Every bundle found: name, kind, status (ready / failed with the reason), version."""
    return ModelList(
        default_model=settings.default_model,
        models=[_info(rt) for rt in registry.runtimes.values()],
    )


@models.get("/models/{name}", response_model=ModelDetail, responses=ERRORS)
async def read_model(name: str, registry: RegistryDep) -> ModelDetail:
    """One bundle's manifest summary: features, thresholds or labels, training, evaluation."""
    rt = registry.runtimes.get(name)
    if rt is None:
        raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists them")
    m = rt.manifest
    detail = ModelDetail(**_info(rt).model_dump())
    if m is not None:
        training = {k: v for k, v in m.training.items() if k != "heldout_scores"}
        detail = detail.model_copy(
            update={
                "features": m.features.model_dump(),
                "input": m.input.model_dump(),
                "thresholds": m.thresholds.model_dump() if m.thresholds else None,
                "labels": m.labels,
                "scoring": m.scoring,
                "training": training,
                "evaluation": m.evaluation,
                "versions": m.versions,
            }
        )
    return detail


async def _uploads(request: Request, settings: SettingsDep, field: str, many: bool) -> list[Upload]:
    return await read_files(
        request.headers.get("content-type"),
        request.headers.get("content-length"),
        request.stream(),
        field,
        settings.max_batch_files if many else 1,
        settings.max_upload_bytes,
    )


@models.post(
    "/models/{name}/score",
    response_model=ScoreResult,
    responses=ERRORS,
    openapi_extra=openapi_body("file", many=False),
)
async def score_clip(
    name: str, request: Request, registry: RegistryDep, scorer: ScorerDep, settings: SettingsDep
) -> ScoreResult:
    """Score one clip (multipart field `file`: wav/flac/ogg/mp3 audio, or a png/jpeg
    spectrogram of the model's size). Larger scores are further from normal."""
    async with scorer.slot():
        runtime = registry.anomaly(name)
        uploads = await _uploads(request, settings, "file", many=False)
        (result,) = await scorer.score(runtime, uploads, raise_errors=True)
    assert isinstance(result, ScoreResult)
    return result


@models.post(
    "/models/{name}/score/batch",
    response_model=BatchScoreResponse,
    responses=ERRORS,
    openapi_extra=openapi_body("files", many=True),
)
async def score_batch(
    name: str, request: Request, registry: RegistryDep, scorer: ScorerDep, settings: SettingsDep
) -> BatchScoreResponse:
    """Score many clips (repeated multipart field `files`): one result per file, in order.
    A bad file gets its own error entry and does not fail the others."""
    async with scorer.slot():
        runtime = registry.anomaly(name)
        uploads = await _uploads(request, settings, "files", many=True)
        request.app.state.metrics.batch_size.labels("request").observe(len(uploads))
        results = await scorer.score(runtime, uploads)
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
    async with scorer.slot():
        runtime = registry.classifier(name)
        uploads = await _uploads(request, settings, "file", many=False)
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
    async with scorer.slot():
        runtime = registry.classifier(name)
        uploads = await _uploads(request, settings, "files", many=True)
        request.app.state.metrics.batch_size.labels("request").observe(len(uploads))
        results = await scorer.classify(runtime, uploads)
    assert runtime.manifest is not None
    return BatchClassifyResponse(
        model=name, model_version=runtime.manifest.version, results=results
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )
