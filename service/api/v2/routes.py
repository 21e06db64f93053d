"""The v2 routes: health, server and model metadata, readiness, inference.

Inputs of a model (send one per request): `audio`, BYTES `[n]` — n encoded clips
(wav/flac/ogg/mp3 or a png/jpeg spectrogram), each scored as `POST /v1/.../score`
would; or the model's own input (`spectrogram` for the committed bundles), FP32
`[n, height, width, 1]` (or `[n, height, width]`) — n windows of the model's input,
values in [0, 1] as the service's features make them, one result per window.
Outputs: anomaly models `score` (FP64 `[n]`), `level` (BYTES `[n]`) and `warnings` (BYTES
`[n]`: comma-separated codes such as `low_bandwidth`, empty when none); classifiers
`label` (BYTES `[n]`) and `probabilities` (FP32 `[n, labels]`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from service.api.deps import RegistryDep, ScorerDep, SettingsDep, require_api_key
from service.api.uploads import body_deadline, read_body
from service.api.v2.codec import (
    HEADER_LENGTH,
    InvalidInference,
    Output,
    Tensor,
    encode_response,
    parse_request,
)
from service.api.v2.schemas import (
    InferenceResponse,
    LiveResponse,
    ModelMetadata,
    ModelReadyResponse,
    ReadyResponse,
    ServerMetadata,
    TensorMetadata,
    V2Error,
)
from service.budgets import Lease, Upload
from service.errors import (
    AuscultError,
    BatchTooLarge,
    Failure,
    InvalidInput,
    ModelNotFound,
    NonFiniteValues,
    NotReady,
    PayloadTooLarge,
)
from service.inputs import check_finite_images
from service.models.registry import ModelRegistry
from service.models.runtimes import (
    AnomalyRuntime,
    ClassifierRuntime,
    GeneratorRuntime,
    ModelRuntime,
)
from service.models.scoring import Scorer
from service.schemas import ClassifyResult, FileError, ScoreResult
from service.settings import Settings
from service.web import package_version

AUDIO = "audio"
PARSE_IN_THREAD_BYTES = 64 * 1024  # larger JSON is parsed off the event loop
WINDOW_RANGE_SLACK = 1e-3  # float32 round-off of features scaled to [0, 1]


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        400: "a malformed inference request (shape, datatype, data, unknown input or output)",
        401: "missing or wrong API key",
        404: "unknown model, or a version that is not the one serving",
        408: "the body did not arrive within AUSCULT_BODY_TIMEOUT_S",
        409: "an input of the other model kind",
        413: "body or element count over the limits",
        415: "an element that is neither audio nor an image",
        422: "an element that does not decode, or is too short, too long or not finite",
        503: "not ready, or overloaded (with Retry-After)",
    }
    return {c: {"model": V2Error, "description": what[c]} for c in codes}


v2_health = APIRouter(prefix="/v2", tags=["v2"])
v2 = APIRouter(prefix="/v2", tags=["v2"], dependencies=[Depends(require_api_key)])


@v2_health.get("", response_model=ServerMetadata)
async def read_server_metadata() -> ServerMetadata:
    """Server metadata: name, version and the protocol extensions served."""
    return ServerMetadata(
        name="auscult", version=package_version(), extensions=["binary_tensor_data"]
    )


@v2_health.get("/health/live", response_model=LiveResponse)
async def read_live() -> LiveResponse:
    """Liveness: 200 while the process runs."""
    return LiveResponse(live=True)


@v2_health.get("/health/ready", response_model=ReadyResponse, responses=_errors(503))
async def read_ready(registry: RegistryDep, settings: SettingsDep) -> ReadyResponse:
    """Readiness, as GET /readyz: 200 once a model (and the default model) is loaded."""
    if registry.ready_count == 0:
        raise NotReady("no model bundle is loaded")
    default = settings.default_model
    if default is not None and not registry.runtimes.get(default, _NONE).ready:
        raise NotReady(f"the default model {default!r} is not loaded")
    return ReadyResponse(ready=True)


class _Missing:
    ready = False


_NONE: Any = _Missing()


def _runtime(registry: ModelRegistry, name: str, version: str | None) -> ModelRuntime:
    rt = registry.get(name)
    assert rt.manifest is not None
    if version is not None and version != rt.manifest.version:
        raise ModelNotFound(
            f"model {name!r} serves version {rt.manifest.version!r}, not {version!r}"
        )
    return rt


def _metadata(rt: ModelRuntime) -> ModelMetadata:
    m = rt.manifest
    assert m is not None
    if isinstance(rt, GeneratorRuntime):  # no v2 inference: it makes audio, scores nothing
        return ModelMetadata(
            name=rt.name,
            versions=[m.version],
            platform=f"auscult_{m.kind}",
            inputs=[],
            outputs=[],
            parameters={
                "kind": m.kind,
                "labels": m.labels,
                "generate": f"POST /v1/models/{rt.name}/generate",
            },
        )
    f = m.features
    inputs = [
        TensorMetadata(
            name=AUDIO,
            datatype="BYTES",
            shape=[-1],
            description="encoded clips, one per element (base64 strings in JSON)",
        ),
        TensorMetadata(
            name=m.input.name,
            datatype="FP32",
            shape=[-1, f.height, f.width, 1],
            description="windows of the model's input, values in [0, 1]",
        ),
    ]
    params: dict[str, Any] = {"kind": m.kind}
    if isinstance(rt, AnomalyRuntime):
        assert m.thresholds is not None
        outputs = [
            TensorMetadata(name="score", datatype="FP64", shape=[-1]),
            TensorMetadata(name="level", datatype="BYTES", shape=[-1]),
            TensorMetadata(
                name="warnings",
                datatype="BYTES",
                shape=[-1],
                description="what limits each verdict: comma-separated codes (low_bandwidth: "
                "an audio element missing the model's top bands, its level at most "
                "needs_maintenance), empty when nothing does",
            ),
        ]
        params["thresholds"] = {
            "needs_maintenance": m.thresholds.needs_maintenance,
            "severe": m.thresholds.severe,
        }
        if m.calibration is not None:
            params["false_alarm_rate"] = m.calibration.false_alarm_rate
            params["severe_rate"] = m.calibration.severe_rate
            params["conditions"] = rt.conditions
    else:
        outputs = [
            TensorMetadata(name="label", datatype="BYTES", shape=[-1]),
            TensorMetadata(name="probabilities", datatype="FP32", shape=[-1, len(m.labels or [])]),
        ]
        params["labels"] = m.labels
    return ModelMetadata(
        name=rt.name,
        versions=[m.version],
        platform=f"auscult_{m.kind}",
        inputs=inputs,
        outputs=outputs,
        parameters=params,
    )


@v2.get("/models/{name}", response_model=ModelMetadata, responses=_errors(401, 404, 503))
async def read_model_metadata(name: str, registry: RegistryDep) -> ModelMetadata:
    """Model metadata: version, inputs (send one of them), outputs, thresholds or labels."""
    return _metadata(_runtime(registry, name, None))


@v2.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    responses=_errors(401, 404, 503),
)
async def read_model_version_metadata(
    name: str, version: str, registry: RegistryDep
) -> ModelMetadata:
    """Model metadata of one version (only the version serving exists)."""
    return _metadata(_runtime(registry, name, version))


def _ready(registry: ModelRegistry, name: str, version: str | None) -> ModelReadyResponse:
    rt = registry.runtimes.get(name)
    if rt is None:
        raise ModelNotFound(f"no model named {name!r}; GET /v1/models lists them")
    if not rt.ready:
        raise NotReady(f"model {name!r} is not ready: {rt.reason or rt.status}")
    _runtime(registry, name, version)
    return ModelReadyResponse(name=name, ready=True)


@v2.get("/models/{name}/ready", response_model=ModelReadyResponse, responses=_errors(401, 404, 503))
async def read_model_ready(name: str, registry: RegistryDep) -> ModelReadyResponse:
    """200 when the model is loaded; 404 unknown, 503 failed to load."""
    return _ready(registry, name, None)


@v2.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReadyResponse,
    responses=_errors(401, 404, 503),
)
async def read_model_version_ready(
    name: str, version: str, registry: RegistryDep
) -> ModelReadyResponse:
    """200 when this version is the one loaded."""
    return _ready(registry, name, version)


_TENSOR_SCHEMA = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "examples": ["audio"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["BYTES", "FP32"]},
        "parameters": {"type": "object"},
        "data": {"type": "array", "description": "BYTES: base64 strings; FP32: numbers"},
    },
}
_REQUEST_SCHEMA = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "items": _TENSOR_SCHEMA, "minItems": 1, "maxItems": 1},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "an inference request; with the binary tensor data extension, its "
        "JSON is followed by the tensors' bytes (header Inference-Header-Content-Length)",
        "content": {
            "application/json": {"schema": _REQUEST_SCHEMA},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_INFER_RESPONSES = {
    200: {
        "model": InferenceResponse,
        "description": "the outputs (with binary tensors after the JSON when asked for)",
    },
    **_errors(400, 401, 404, 408, 413, 415, 422, 503),
}


async def _read_body(request: Request, settings: Settings, lease: Lease) -> bytes:
    """The whole body, within AUSCULT_MAX_BATCH_BYTES and AUSCULT_BODY_TIMEOUT_S, counted
    against AUSCULT_MAX_BUFFERED_BYTES by `lease`."""
    limit = settings.max_batch_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the request body is over {limit} bytes")
    async with body_deadline(settings.body_timeout_s, "body"):
        return await read_body(
            request.stream(), limit, f"the request body is over {limit} bytes", lease
        )


_STATUS: dict[str, int] = {}


def _status_of(code: str) -> int:
    """The HTTP status of an error code (per-file errors keep only the code)."""
    if not _STATUS:
        todo: list[type[AuscultError]] = [AuscultError]
        while todo:
            cls = todo.pop()
            _STATUS.setdefault(cls.code, cls.status_code)
            todo.extend(cls.__subclasses__())
    return _STATUS.get(code, 422)


def _check_count(n: int, settings: Settings) -> None:
    if n == 0:
        raise InvalidInference("the input has no elements")
    if n > settings.max_batch_files:
        raise BatchTooLarge(f"{n} elements; at most {settings.max_batch_files} per request")


def _condition(rt: ModelRuntime, parameters: dict[str, Any]) -> str | None:
    """The request's `condition` parameter → a condition the anomaly model knows, or None
    (the nearest). Raises InvalidInference naming the known ones."""
    value = parameters.get("condition")
    if value is None or value == "" or not isinstance(rt, AnomalyRuntime):
        return None
    if not isinstance(value, str) or value not in rt.conditions:
        listed = ", ".join(rt.conditions) or "none"
        raise InvalidInference(f"unknown condition {value!r}; the model knows: {listed}")
    return value


async def _infer_audio(
    rt: ModelRuntime, tensor: Tensor, settings: Settings, scorer: Scorer, condition: str | None
) -> list[Output]:
    n = len(tensor.elements)
    _check_count(n, settings)
    for i, data in enumerate(tensor.elements):
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(
                f"element {i} of {AUDIO!r} is over {settings.max_upload_bytes} bytes"
            )
    uploads = [Upload(f"{AUDIO}[{i}]", data) for i, data in enumerate(tensor.elements)]
    tensor.elements = []
    async with scorer.slot():
        if isinstance(rt, AnomalyRuntime):
            results: list[Any] = await scorer.score(rt, uploads, condition=condition)
        else:
            assert isinstance(rt, ClassifierRuntime)
            results = await scorer.classify(rt, uploads)
    for r in results:
        if isinstance(r, FileError):
            code, message = r.error.code, r.error.message
            raise Failure(_status_of(code), code, f"{r.filename}: {message}")
    if isinstance(rt, AnomalyRuntime):
        scored = [r for r in results if isinstance(r, ScoreResult)]
        warnings = [",".join(w.code for w in r.warnings) for r in scored]
        return _anomaly_outputs(
            np.asarray([r.score for r in scored]), [r.level for r in scored], warnings
        )
    probs = [
        [r.probabilities[lab] for lab in rt.manifest.labels or []]  # type: ignore[union-attr]
        for r in results
        if isinstance(r, ClassifyResult)
    ]
    labels = [r.label for r in results if isinstance(r, ClassifyResult)]
    return _classifier_outputs(np.asarray(probs, np.float32), labels)


def _anomaly_outputs(
    scores: np.ndarray, levels: list[str], warnings: list[str] | None = None
) -> list[Output]:
    """`warnings`: each element's comma-separated warning codes (none: all empty)."""
    n = len(levels)
    return [
        Output("score", "FP64", [n], scores),
        Output("level", "BYTES", [n], levels),
        Output("warnings", "BYTES", [n], warnings if warnings is not None else [""] * n),
    ]


def _classifier_outputs(probs: np.ndarray, labels: list[str]) -> list[Output]:
    n = len(labels)
    return [
        Output("label", "BYTES", [n], labels),
        Output("probabilities", "FP32", list(probs.shape) if n else [0, 0], probs),
    ]


async def _infer_windows(
    rt: ModelRuntime, tensor: Tensor, settings: Settings, scorer: Scorer, condition: str | None
) -> list[Output]:
    m = rt.manifest
    assert m is not None and tensor.array is not None
    f = m.features
    shape = list(tensor.shape)
    if shape[1:] not in ([f.height, f.width, 1], [f.height, f.width]):
        raise InvalidInference(
            f"input {tensor.name!r} has shape {shape}; this model takes "
            f"[n, {f.height}, {f.width}, 1] (or [n, {f.height}, {f.width}])"
        )
    _check_count(shape[0], settings)
    images = tensor.array.reshape(shape[0], f.height, f.width)
    check_finite_images(images)
    low, high = float(images.min()), float(images.max())
    if low < -WINDOW_RANGE_SLACK or high > 1 + WINDOW_RANGE_SLACK:
        raise InvalidInput(
            f"input {tensor.name!r} holds values in [{low:.4g}, {high:.4g}]; windows are "
            "log-mel images scaled to [0, 1] as the service's features make them"
        )
    async with scorer.slot():
        if isinstance(rt, AnomalyRuntime):
            windows = await scorer.in_thread(lambda: rt.score(images))
            verdicts = [rt.verdict(windows[i : i + 1], condition) for i in range(len(windows))]
            scores = np.asarray([v.score for v in verdicts])
            if not (np.isfinite(scores).all() and np.isfinite(windows).all()):
                raise NonFiniteValues("the model's score for this input is not a finite number")
            levels = [v.level for v in verdicts]
            for level in levels:
                scorer.metrics.clips.labels(rt.name, level).inc()
            return _anomaly_outputs(scores, levels)
        assert isinstance(rt, ClassifierRuntime) and m.labels
        probs = await scorer.in_thread(lambda: rt.probabilities(images))
        if not np.isfinite(probs).all():
            raise NonFiniteValues("the model's probabilities for this input are not finite")
        labels = [m.labels[int(i)] for i in np.argmax(probs, axis=1)]
        for label in labels:
            scorer.metrics.clips.labels(rt.name, label).inc()
        return _classifier_outputs(probs.astype(np.float32), labels)


async def _infer(
    name: str,
    version: str | None,
    request: Request,
    registry: ModelRegistry,
    scorer: Scorer,
    settings: Settings,
) -> Response:
    rt = _runtime(registry, name, version)  # held to the end: a reload does not change it
    assert rt.manifest is not None
    if isinstance(rt, GeneratorRuntime):  # the protocol's bad request: no input it takes
        raise InvalidInference(
            f"model {name!r} is a generator and takes no inference input; "
            f"use POST /v1/models/{name}/generate"
        )
    with scorer.buffers.lease() as lease:
        try:
            body = await _read_body(request, settings, lease)
            header = request.headers.get(HEADER_LENGTH)
            limit = settings.max_json_values
            if len(body) > PARSE_IN_THREAD_BYTES:
                parsed = await scorer.in_thread(lambda: parse_request(body, header, limit))
            else:
                parsed = parse_request(body, header, limit)
            body = b""  # the tensors hold what is needed
            req, tensors = parsed
            if len(tensors) != 1:
                raise InvalidInference(
                    f"send exactly one input ({AUDIO!r} or {rt.manifest.input.name!r}), "
                    f"not {len(tensors)}"
                )
            (tensor,) = tensors
            condition = _condition(rt, req.parameters)
            if tensor.name == AUDIO:
                if tensor.datatype != "BYTES":
                    raise InvalidInference(f"input {AUDIO!r} is BYTES, not {tensor.datatype}")
                outputs = await _infer_audio(rt, tensor, settings, scorer, condition)
            elif tensor.name == rt.manifest.input.name:
                if tensor.datatype != "FP32":
                    raise InvalidInference(f"input {tensor.name!r} is FP32, not {tensor.datatype}")
                if len(tensor.shape) not in (3, 4):
                    raise InvalidInference(f"input {tensor.name!r} has shape {tensor.shape}")
                outputs = await _infer_windows(rt, tensor, settings, scorer, condition)
            else:
                raise InvalidInference(
                    f"unknown input {tensor.name!r}; this model takes {AUDIO!r} (BYTES) or "
                    f"{rt.manifest.input.name!r} (FP32)"
                )
            content, json_length = encode_response(req, rt.name, rt.manifest.version, outputs)
        finally:
            scorer.request_done(lease.taken)  # a trim after a large request
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


@v2.post(
    "/models/{name}/infer",
    response_model=InferenceResponse,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer(
    name: str, request: Request, registry: RegistryDep, scorer: ScorerDep, settings: SettingsDep
) -> Response:
    """Inference: one input, `audio` (BYTES, one encoded clip per element) or the model's
    own input (FP32 windows); outputs `score` and `level` (anomaly) or `label` and
    `probabilities` (classifier), one row per element. JSON, or the binary tensor data
    extension (`tritonclient`'s default)."""
    return await _infer(name, None, request, registry, scorer, settings)


@v2.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    responses=_INFER_RESPONSES,
    openapi_extra=_INFER_BODY,
)
async def infer_version(
    name: str,
    version: str,
    request: Request,
    registry: RegistryDep,
    scorer: ScorerDep,
    settings: SettingsDep,
) -> Response:
    """Inference on a given version (only the version serving exists; another is 404)."""
    return await _infer(name, version, request, registry, scorer, settings)


def is_v2(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")
