"""The page at `/` (plain HTML, CSS and JavaScript in `static/`, no build step, no CDN) and
the one endpoint it needs beyond the v1 API: the log-mel spectrogram of a clip as PNG.

The page only calls the public API (`GET /v1/models`, `/score`, `/classify`, their batch
forms and `/spectrogram`), with the API key the person types when keys are on.
"""

from __future__ import annotations

from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.api.deps import RegistryDep, ScorerDep, SettingsDep, require_api_key
from service.api.uploads import openapi_body
from service.api.v1 import ERRORS, _uploads
from service.budgets import Upload
from service.features import (
    FeatureParams,
    image_to_png,
    log_mel,
    resample,
    sniff,
    to_image,
)
from service.inputs import InputLimits, SampleBudget, decode_bounded, prepare_bounded
from service.settings import Settings

STATIC = Path(__file__).parent / "static"
STATIC_URL = "/static/web"
MAX_COLUMNS = 1600  # a longer clip's spectrogram is resized to this many frames

# The page loads nothing from elsewhere; the policy makes sure of it (and of no inline code).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "connect-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; "
        "base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

page = APIRouter(include_in_schema=False)
spectrograms = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])


@lru_cache(maxsize=1)
def _index_html() -> str:
    return (STATIC / "index.html").read_text(encoding="utf-8")


@page.get("/", response_class=HTMLResponse)
async def read_page() -> HTMLResponse:
    """The page for people: pick a model, upload or record clips, see the verdicts."""
    return HTMLResponse(_index_html(), headers=PAGE_HEADERS)


def spectrogram_png(upload: Upload, params: FeatureParams, settings: Settings) -> bytes:
    """An upload → PNG of the log-mel spectrogram the model sees (high bands on top).

    The upload is checked exactly as for scoring (same limits, same errors). Audio gives the
    whole clip's log-mel with the model's parameters and level scaling (one column per frame,
    at most MAX_COLUMNS); a model without windows sees the whole clip resized to its input,
    and a spectrogram picture is shown as the model read it.
    """
    s = settings
    limits = InputLimits(s.max_audio_seconds, s.min_sample_rate, s.max_sample_rate)
    budget = SampleBudget(s.max_request_samples)
    try:
        if upload.data and sniff(upload.data)[0] == "audio" and params.window_seconds:
            audio = decode_bounded(upload.data, params, limits, budget)  # decoded once
        else:
            return image_to_png(prepare_bounded(upload.data, params, limits, budget).image)
    finally:
        upload.data = b""
    mel = log_mel(resample(audio.samples, audio.sample_rate, params.sample_rate), params)
    whole = params.model_copy(
        update={"height": params.n_mels, "width": min(mel.shape[1], MAX_COLUMNS)}
    )
    return image_to_png(np.asarray(to_image(mel, whole)))


@spectrograms.post(
    "/models/{name}/spectrogram",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}},
            "description": "grayscale PNG: time left to right, the lowest mel band at the "
            "bottom, louder is lighter",
        },
        **{k: v for k, v in ERRORS.items() if k != 409},
    },
    openapi_extra=openapi_body("file", many=False),
)
async def read_spectrogram(
    name: str, request: Request, registry: RegistryDep, scorer: ScorerDep, settings: SettingsDep
) -> Response:
    """The log-mel spectrogram of one clip (multipart field `file`) as the model `name`
    computes it, as a PNG picture; the web page shows it beside the score."""
    runtime = registry.get(name)
    assert runtime.manifest is not None
    params = runtime.manifest.features
    async with (
        _uploads(request, settings, scorer, "file", many=False) as uploads,
        scorer.slot(),
    ):
        (upload,) = uploads
        png = await scorer.in_thread(partial(spectrogram_png, upload, params, settings))
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})


def install_page(app: FastAPI) -> None:
    """Mount the page, its static files and the spectrogram endpoint."""
    app.include_router(page)
    app.include_router(spectrograms)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC), name="web-static")
