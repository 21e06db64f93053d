"""The API docs pages (`/docs` Swagger UI, `/redoc` ReDoc) with their assets served by the
service itself, and the OpenAPI document made to tell the truth about errors and models.

The Swagger UI and ReDoc bundles come from the `fastapi-offline` package (pinned in the
`serve` extra): nothing is copied into this repository and no CDN is ever contacted, so the
pages work on a factory network without internet.

The OpenAPI document is FastAPI's, completed per request from what is loaded:
- every error response of every operation lists the error codes that operation can
  answer with that status, each with an example body as the service really sends it;
- the `name` path parameter lists the loaded models (the fitting kind first) as examples;
- `info.version` is the installed package's version.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.errors import WrongModelKind, public_message
from service.models.registry import ModelRegistry
from service.settings import Settings

DOCS_ASSETS_URL = "/static/docs"
# The docs pages may load nothing from elsewhere: ReDoc's sidebar shows a logo from its
# makers' CDN, which this policy refuses before any request leaves the browser (and the
# style below hides that link). Swagger UI and ReDoc need inline code and blob: workers.
DOCS_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline' blob:; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
        "font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; "
        "object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
REDOC_STYLE = '<style>a[href^="https://redocly.com"] { display: none; }</style>'
ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}

# Swagger UI options: no online validator badge (it would fetch from the internet), the
# operations listed open enough to find the file pickers, requests' durations shown.
SWAGGER_UI_PARAMETERS = {
    "validatorUrl": None,
    "docExpansion": "list",
    "displayRequestDuration": True,
    "tryItOutEnabled": True,
    "defaultModelsExpandDepth": 0,
}


def package_version() -> str:
    """The installed `auscult` distribution's version (the OpenAPI `info.version`)."""
    try:
        return metadata.version("auscult")
    except metadata.PackageNotFoundError:  # running from a tree that was never installed
        return "0+unknown"


def assets_dir() -> Path:
    """The folder of swagger-ui-bundle.js, swagger-ui.css, redoc.standalone.js and favicon.png
    inside the installed `fastapi_offline` package."""
    return Path(str(resources.files("fastapi_offline") / "static"))


def install_docs(app: FastAPI) -> None:
    """Serve /docs and /redoc from local assets and complete the OpenAPI document.

    The app must be built with `docs_url=None, redoc_url=None` (FastAPI's own pages load
    their assets from a CDN)."""
    app.mount(DOCS_ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def read_swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        html = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} {app.version} — API docs",
            swagger_js_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS,
        )
        return HTMLResponse(bytes(html.body), headers=DOCS_HEADERS)

    @app.get("/redoc", include_in_schema=False)
    async def read_redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        html = get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} {app.version} — API reference",
            redoc_js_url=f"{root}{DOCS_ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
        body = bytes(html.body).decode().replace("</head>", f"{REDOC_STYLE}</head>", 1)
        return HTMLResponse(body, headers=DOCS_HEADERS)

    app.openapi = _completed_openapi(app, app.openapi)  # type: ignore[method-assign]


def _completed_openapi(app: FastAPI, base: Callable[[], dict[str, Any]]) -> Callable[[], dict]:
    """FastAPI's document (built once), completed for the models loaded now; cached until
    the set of models changes."""
    cache: dict[tuple, dict[str, Any]] = {}

    def openapi() -> dict[str, Any]:
        registry: ModelRegistry = app.state.registry
        settings: Settings = app.state.settings
        key = tuple((rt.name, rt.kind, rt.status) for rt in registry.runtimes.values())
        if key not in cache:
            cache.clear()
            schema = copy.deepcopy(base())
            complete(schema, registry, settings)
            cache[key] = schema
        return cache[key]

    return openapi


# --- error examples ------------------------------------------------------------------


def _body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": public_message(message)}}


def _wrong_kind_message(registry: ModelRegistry, want: str) -> str:
    """The 409 a `want` endpoint answers for a model of the other kind: taken from the
    registry itself when such a model is loaded, so the example is the real message."""
    for rt in registry.runtimes.values():
        # the other scoring kind: a generator's 409 names /generate, which no example shows
        if rt.ready and rt.kind not in (want, None, "generator"):
            try:
                registry.anomaly(rt.name) if want == "anomaly" else registry.classifier(rt.name)
            except WrongModelKind as e:
                return e.message
    name, kind, other = (
        ("digits", "classifier", "classify")
        if want == "anomaly"
        else ("gearbox", "anomaly", "score")
    )
    return f"model {name!r} is a {kind}; use POST /v1/models/{name}/{other}"


def _examples(
    registry: ModelRegistry, settings: Settings, want: str | None, many: bool
) -> dict[str, list[tuple[str, str, str]]]:
    """status → [(code, summary, message)] for an upload endpoint of kind `want`
    (`anomaly`, `classifier` or None for either)."""
    field = "files" if many else "file"
    limit = settings.max_upload_bytes
    out: dict[str, list[tuple[str, str, str]]] = {
        "401": [
            (
                "unauthorized",
                "no API key (keys are configured)",
                "an API key is required: send X-API-Key or Authorization: Bearer",
            ),
            ("unauthorized", "a wrong API key", "the API key is not valid"),
        ],
        "404": [
            (
                "model_not_found",
                "no bundle of that name",
                "no model named 'pump-7'; GET /v1/models lists them",
            )
        ],
        "408": [
            (
                "request_timeout",
                "the upload was too slow",
                f"the upload did not arrive within {settings.body_timeout_s:g} s",
            )
        ],
        "413": [
            (
                "payload_too_large",
                "a file over AUSCULT_MAX_UPLOAD_BYTES",
                f"file 'long-recording.wav' is larger than {limit} bytes",
            )
        ],
        "415": [
            (
                "unsupported_media_type",
                "content that is neither audio nor an image",
                "unrecognised content: send wav, flac, ogg or mp3 audio, or a png/jpeg spectrogram",
            ),
            (
                "unsupported_media_type",
                "a body that is not multipart/form-data",
                f"send multipart/form-data with the field {field!r}, not application/json",
            ),
        ],
        "422": [
            (
                "invalid_audio",
                "a file that looks like audio but does not decode",
                "could not decode audio: Error in WAV/W64/RF64 file. Short 'fmt ' chunk.",
            ),
            (
                "invalid_image",
                "a spectrogram picture of the wrong size",
                "image is 640x480; this model expects 64x64 (width x height) spectrograms",
            ),
            (
                "audio_too_short",
                "a clip shorter than the model's minimum",
                "audio is 0.006 s long; the minimum is 0.1 s",
            ),
            (
                "audio_too_long",
                "a clip over AUSCULT_MAX_AUDIO_SECONDS",
                f"audio is 612.0 s long; the limit is {settings.max_audio_seconds:g} s",
            ),
            (
                "sample_rate_out_of_range",
                "an absurd sample rate",
                f"sample rate 4000000 Hz is outside {settings.min_sample_rate}-"
                f"{settings.max_sample_rate} Hz",
            ),
            (
                "non_finite_values",
                "samples that are NaN, infinite or huge",
                "audio samples reach inf; samples beyond ±1e+06 (or NaN, infinite) cannot be "
                "scored",
            ),
            (
                "invalid_request",
                "the multipart field is missing",
                f"the multipart field {field!r} is required",
            ),
        ],
        "503": [
            (
                "overloaded",
                "too many requests in flight (with Retry-After)",
                f"more than {settings.max_concurrency} requests in flight; retry shortly",
            ),
            (
                "not_ready",
                "the model's bundle failed to load",
                "model 'pump-7' is not ready: checksum mismatch",
            ),
        ],
    }
    if many:
        out["413"].append(
            (
                "batch_too_large",
                "more files than AUSCULT_MAX_BATCH_FILES",
                f"a batch holds at most {settings.max_batch_files} files",
            )
        )
    else:
        out["422"][-1:-1] = [
            (
                "invalid_request",
                "more than one file",
                f"send exactly one file in the field {field!r}",
            )
        ]
    if want is not None:
        out["409"] = [
            (
                "wrong_model_kind",
                f"a model that is not an {want} model" if want == "anomaly" else "an anomaly model",
                _wrong_kind_message(registry, want),
            )
        ]
    return out


def _generate_examples(
    registry: ModelRegistry, settings: Settings
) -> dict[str, list[tuple[str, str, str]]]:
    """status → [(code, summary, message)] for POST /v1/models/{name}/generate."""
    base = _examples(registry, settings, None, many=False)
    limit = settings.max_generate_count
    return {
        "401": base["401"],
        "404": base["404"],
        "408": [
            (
                "request_timeout",
                "the body was too slow",
                f"the body did not arrive within {settings.body_timeout_s:g} s",
            )
        ],
        "409": [
            (
                "wrong_model_kind",
                "a model that is not a generator",
                "model 'gearbox' is a anomaly; use POST /v1/models/gearbox/score",
            )
        ],
        "413": [
            (
                "payload_too_large",
                "a body over 4 KiB",
                "a generate request is at most 4096 bytes of JSON",
            )
        ],
        "422": [
            (
                "invalid_request",
                "a label the model does not make",
                "unknown label '11'; model 'digits-gan' makes 0, 1, 2, 3, 4, 5, 6, 7, 8, 9",
            ),
            (
                "invalid_request",
                "more clips than AUSCULT_MAX_GENERATE_COUNT",
                f"count {limit + 1} is over the limit of {limit} (AUSCULT_MAX_GENERATE_COUNT)",
            ),
            (
                "invalid_request",
                "a malformed body",
                "body.count: Input should be greater than or equal to 1",
            ),
        ],
        "503": base["503"],
    }


def _enrol_examples(
    registry: ModelRegistry, settings: Settings
) -> dict[str, list[tuple[str, str, str]]]:
    """status → [(code, summary, message)] for POST /v1/models/{name}/conditions/{condition}."""
    out = _examples(registry, settings, "anomaly", many=True)
    out["409"].append(
        (
            "enrol_failed",
            "the new version could not be written or loaded",
            "could not write the new version: [Errno 28] No space left on device",
        )
    )
    out["422"][0:0] = [
        (
            "invalid_request",
            "fewer than 10 healthy clips",
            "enrolling a condition needs at least 10 healthy clips, got 4",
        ),
        (
            "invalid_request",
            "a condition name that is not a plain name",
            "condition name 'rpm 1800!' must be 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit",
        ),
    ]
    return out


def _fit_examples(
    method: str, path: str, settings: Settings
) -> dict[str, list[tuple[str, str, str]]]:
    """status → [(code, summary, message)] for the fit jobs' routes."""
    out: dict[str, list[tuple[str, str, str]]] = {
        "401": [
            (
                "unauthorized",
                "no admin key (admin keys are configured)",
                "an admin key is required: send X-API-Key or Authorization: Bearer",
            ),
            ("unauthorized", "a wrong admin key", "the admin key is not valid"),
        ],
        "503": [
            (
                "fits_disabled",
                "no jobs folder",
                "this service takes no fit jobs: set AUSCULT_JOBS_DIR",
            )
        ],
    }
    if path.endswith("{job_id}"):
        out["404"] = [
            ("fit_not_found", "no such job", "no fit job '6f03'; GET /v1/fits lists them")
        ]
    if method != "post":
        return out
    out["408"] = [
        (
            "request_timeout",
            "the upload was too slow",
            f"the upload did not arrive within {settings.body_timeout_s:g} s",
        )
    ]
    out["409"] = [
        (
            "model_exists",
            "the name is a model already",
            "a model named 'gearbox' exists; send replace=true to fit a new version of it",
        ),
        (
            "fit_in_progress",
            "a job for the name is queued or running",
            "fit job 6f03334f5e764ad58fb8979dedfb7490 for 'pump-3' is queued or running",
        ),
        (
            "wrong_model_kind",
            "replacing a classifier",
            "model 'digits' is a classifier; a fit job makes anomaly models",
        ),
    ]
    out["413"] = [
        (
            "payload_too_large",
            "more than AUSCULT_FIT_MAX_JOB_BYTES",
            f"file 'recordings.zip' is larger than {settings.fit_max_job_bytes} bytes",
        ),
        (
            "batch_too_large",
            "more than AUSCULT_FIT_MAX_CLIPS clips",
            f"a batch holds at most {settings.fit_max_clips} files",
        ),
    ]
    out["415"] = [
        (
            "unsupported_media_type",
            "a body that is not multipart/form-data",
            "send multipart/form-data with the field 'files', not application/json",
        )
    ]
    out["422"] = [
        (
            "invalid_request",
            "a name that is not a folder name",
            "name '../pump' must be 1-64 letters, digits, '_' or '-', starting with a letter "
            "or digit",
        ),
        (
            "not_enough_audio",
            "too little readable healthy audio",
            f"12.0 s of readable healthy audio in 2 clips; a fit needs at least "
            f"{settings.fit_min_seconds:g} s (AUSCULT_FIT_MIN_SECONDS) (1 unreadable: "
            "notes.txt: unrecognised content: send wav, flac, ogg or mp3 audio, or a png/jpeg "
            "spectrogram)",
        ),
    ]
    out["503"].append(
        (
            "overloaded",
            "as many jobs as the service takes",
            f"{settings.fit_max_jobs} fit jobs are queued or running (AUSCULT_FIT_MAX_JOBS); "
            "try again when one has ended",
        )
    )
    out["507"] = [
        (
            "insufficient_storage",
            "the jobs folder is full",
            "the jobs folder is full (AUSCULT_FIT_MAX_SPOOL_BYTES); try later",
        )
    ]
    return out


UPLOAD_ENDPOINTS = ("/score", "/score/batch", "/classify", "/classify/batch", "/spectrogram")


def _operation_errors(
    method: str, path: str, registry: ModelRegistry, settings: Settings
) -> tuple[dict[str, list[tuple[str, str, str]]], bool] | None:
    """(the error examples of an operation by status, whether that list is complete), or
    None for an operation this module does not know (left as FastAPI made it). A complete
    list also removes the error statuses the operation never answers; an incomplete one only
    gives the statuses the operation declares their examples."""
    if path == "/readyz":
        return {
            "503": [
                ("not_ready", "no bundle is loaded", "no model bundle is loaded"),
                (
                    "not_ready",
                    "the default model failed to load",
                    "the default model 'gearbox' is not loaded",
                ),
            ]
        }, True
    if not path.startswith("/v1/"):
        return None
    if path.startswith("/v1/fits"):
        return _fit_examples(method, path, settings), True
    if method == "get":
        errors = _examples(registry, settings, None, many=False)
        keep = ("401", "404") if "{name}" in path else ("401",)
        return {status: errors[status] for status in keep}, True
    if path == "/v1/models/{name}/generate":
        return _generate_examples(registry, settings), True
    if path == "/v1/models/{name}/conditions/{condition}":
        return _enrol_examples(registry, settings), True
    if path.startswith("/v1/models/{name}") and path.endswith(UPLOAD_ENDPOINTS):
        many = path.endswith("/batch")
        want = "anomaly" if "/score" in path else "classifier" if "/classify" in path else None
        return _examples(registry, settings, want, many), True
    return _examples(registry, settings, None, many=True), False


V2_ERROR_SCHEMA = {"$ref": "#/components/schemas/V2Error"}
V2_BAD_REQUEST = [
    (
        "a malformed inference request",
        "not an inference request: inputs: Input should be a valid list",
    ),
    (
        "an input the model does not take",
        "unknown input 'pcm'; this model takes 'audio' (BYTES) or 'spectrogram' (FP32)",
    ),
    ("data that does not fit its shape", "input 'audio' has 1 elements, its shape [2] says 2"),
]


def _set_v2_errors(op: dict[str, Any], registry: ModelRegistry, settings: Settings) -> None:
    """Examples for the v2 routes' error statuses, in the protocol's body `{"error": ...}`:
    the v1 messages of the same statuses (audio errors name the element, `audio[0]: …`)."""
    v1 = _examples(registry, settings, None, many=True)
    v1["400"] = [("invalid_inference_request", summary, msg) for summary, msg in V2_BAD_REQUEST]
    responses = op.get("responses", {})
    for status in [s for s in responses if s[0] in "45"]:
        examples: dict[str, Any] = {}
        for code, summary, message in v1.get(status, []):
            text = public_message(message)
            if status in ("415", "422") and code != "invalid_request":
                text = f"audio[0]: {text}"
            examples[summary if summary not in examples else f"{summary} ({code})"] = {
                "summary": summary,
                "value": {"error": text},
            }
        if examples:
            responses[status] = {
                "description": responses[status].get("description", ""),
                "content": {"application/json": {"schema": V2_ERROR_SCHEMA, "examples": examples}},
            }


def complete(schema: dict[str, Any], registry: ModelRegistry, settings: Settings) -> None:
    """Complete FastAPI's OpenAPI document in place: error examples per operation and
    status, the loaded models on the `name` parameter."""
    for path, operations in schema.get("paths", {}).items():
        for method, op in operations.items():
            if path == "/v2" or path.startswith("/v2/"):
                _set_v2_errors(op, registry, settings)
                for param in op.get("parameters", []):
                    if param.get("in") == "path" and param.get("name") == "name":
                        _describe_name(param, registry, path)
                continue
            known = _operation_errors(method, path, registry, settings)
            if known is not None:
                _set_errors(op, *known)
            for param in op.get("parameters", []):
                if param.get("in") == "path" and param.get("name") == "name":
                    _describe_name(param, registry, path)


def _set_errors(
    op: dict[str, Any], errors: dict[str, list[tuple[str, str, str]]], complete: bool
) -> None:
    responses = op.setdefault("responses", {})
    declared = [s for s in responses if s[0] in "45"]
    if complete:
        for status in declared:
            if status not in errors:
                del responses[status]  # a status this operation never answers
    else:
        errors = {status: errors[status] for status in declared if status in errors}
    for status, entries in sorted(errors.items()):
        codes = list(dict.fromkeys(code for code, _, _ in entries))
        examples: dict[str, Any] = {}
        for code, summary, message in entries:
            key = code if code not in examples else f"{code} ({summary})"
            examples[key] = {"summary": summary, "value": _body(code, message)}
        responses[status] = {
            "description": " / ".join(codes),
            "content": {"application/json": {"schema": ERROR_SCHEMA, "examples": examples}},
        }


def _describe_name(param: dict[str, Any], registry: ModelRegistry, path: str) -> None:
    want = "anomaly" if "/score" in path else "classifier" if "/classify" in path else None
    want = "generator" if path.endswith("/generate") else want
    ready = [rt for rt in registry.runtimes.values() if rt.ready]
    if want in ("anomaly", "classifier"):  # a generator answers neither: not an example
        ready = [rt for rt in ready if rt.kind != "generator"]
    ready.sort(key=lambda rt: rt.kind != want)  # the fitting kind first (stable otherwise)
    listed = ", ".join(f"`{rt.name}` ({rt.kind})" for rt in ready) or "none yet"
    param["description"] = (
        f"a model bundle's name; loaded now: {listed}. GET /v1/models lists every bundle."
    )
    if ready:
        param["examples"] = {
            rt.name: {"summary": f"{rt.name} ({rt.kind})", "value": rt.name} for rt in ready
        }
    else:
        param["examples"] = {"gearbox": {"summary": "a bundle's name", "value": "gearbox"}}
    param.get("schema", {}).pop("examples", None)
