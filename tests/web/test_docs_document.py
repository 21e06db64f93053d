"""The OpenAPI document and the pages' plumbing over HTTP, without a browser: local docs
assets, the package's version, each error's own example (equal to what the service really
answers), the loaded models on `name`, the page and its policy, the spectrogram endpoint."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from importlib import metadata
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.models.bundle import read_manifest
from service.settings import Settings
from service.web.page import STATIC
from tests.conftest import ARTIFACTS, REPO, tone, wav_bytes
from tests.helpers import assert_error, png_bytes, serve

pytestmark = pytest.mark.anyio

# DESIGN.md / README: the error codes each status may carry
CODES = {
    "401": {"unauthorized"},
    "404": {"model_not_found", "fit_not_found"},
    "408": {"request_timeout"},
    "409": {"wrong_model_kind", "enrol_failed", "model_exists", "fit_in_progress"},
    "413": {"payload_too_large", "batch_too_large"},
    "415": {"unsupported_media_type"},
    "422": {
        "invalid_audio",
        "invalid_image",
        "audio_too_short",
        "audio_too_long",
        "sample_rate_out_of_range",
        "non_finite_values",
        "invalid_request",
        "not_enough_audio",
    },
    "503": {"overloaded", "not_ready", "fits_disabled"},
    "507": {"insufficient_storage"},
}


@pytest.fixture
async def committed() -> AsyncIterator[httpx.AsyncClient]:
    """A client on the app serving the committed bundles (gearbox and digits)."""
    async with serve(create_app(Settings(artifacts_dir=ARTIFACTS))) as c:
        yield c


def _examples(doc: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    response = doc["paths"][path][method]["responses"][status]
    return response["content"]["application/json"]["examples"]  # type: ignore[no-any-return]


async def test_docs_pages_load_their_assets_from_the_service(
    committed: httpx.AsyncClient,
) -> None:
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        r = await committed.get(page)
        assert r.status_code == 200
        assert f"/static/docs/{asset}" in r.text
        assert "cdn." not in r.text and "fonts.googleapis" not in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        js = await committed.get(f"/static/docs/{asset}")
        assert js.status_code == 200 and len(js.content) > 100_000
    assert (await committed.get("/static/docs/swagger-ui.css")).status_code == 200


async def test_openapi_version_is_the_packages(committed: httpx.AsyncClient) -> None:
    doc = (await committed.get("/openapi.json")).json()
    assert doc["info"]["version"] == metadata.version("auscult")


async def test_every_error_response_has_examples_of_its_own_codes(
    committed: httpx.AsyncClient,
) -> None:
    doc = (await committed.get("/openapi.json")).json()
    seen: set[str] = set()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            for status, response in op["responses"].items():
                if status[0] not in "45":
                    continue
                examples = response["content"]["application/json"]["examples"]
                assert examples, (path, method, status)
                if path.startswith("/v2"):  # the Open Inference Protocol's body
                    for example in examples.values():
                        assert set(example["value"]) == {"error"}, (path, status, example)
                        assert isinstance(example["value"]["error"], str)
                    continue
                for example in examples.values():
                    code = example["value"]["error"]["code"]
                    assert code in CODES[status], (path, method, status, code)
                    assert example["value"]["error"]["message"]
                    seen.add(code)
    assert seen == set().union(*CODES.values())
    # a GET of one model answers 401 or 404, never an upload's errors
    assert set(doc["paths"]["/v1/models/{name}"]["get"]["responses"]) == {"200", "401", "404"}
    batch = _examples(doc, "/v1/models/{name}/score/batch", "post", "413")
    assert {e["value"]["error"]["code"] for e in batch.values()} == {
        "payload_too_large",
        "batch_too_large",
    }


@pytest.mark.parametrize(
    ("path", "status", "upload"),
    [
        ("/v1/models/digits/score", "409", ("file", GOOD := wav_bytes(tone(1.0)))),
        ("/v1/models/gearbox/classify", "409", ("file", GOOD)),
        ("/v1/models/gearbox/score", "415", ("file", b"just some text")),
        ("/v1/models/gearbox/score", "422", ("files", GOOD)),
    ],
)
async def test_examples_are_what_the_service_answers(
    committed: httpx.AsyncClient, path: str, status: str, upload: tuple[str, bytes]
) -> None:
    doc = (await committed.get("/openapi.json")).json()
    template = path.replace("digits", "{name}").replace("gearbox", "{name}")
    field, data = upload
    r = await committed.post(path, files={field: ("clip.wav", data)})
    assert r.status_code == int(status)
    examples = [e["value"] for e in _examples(doc, template, "post", status).values()]
    assert r.json() in examples


async def test_the_name_parameter_lists_the_loaded_models(committed: httpx.AsyncClient) -> None:
    doc = (await committed.get("/openapi.json")).json()
    for path, first in (
        ("/v1/models/{name}/score", "gearbox"),
        ("/v1/models/{name}/classify", "digits"),
    ):
        (param,) = doc["paths"][path]["post"]["parameters"]
        assert param["name"] == "name"
        assert next(iter(param["examples"])) == first
        assert set(param["examples"]) == {"gearbox", "digits"}
        assert "gearbox" in param["description"] and "digits" in param["description"]


async def test_the_page_is_served_with_a_policy_that_forbids_other_hosts(
    committed: httpx.AsyncClient,
) -> None:
    r = await committed.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self';" in csp
    for asset in ("app.js", "style.css"):
        assert f"static/web/{asset}" in r.text
        assert (await committed.get(f"/static/web/{asset}")).status_code == 200
    assert "http://" not in r.text and "https://" not in r.text


async def test_spectrogram_of_a_clip_is_its_log_mel_as_png(committed: httpx.AsyncClient) -> None:
    r = await committed.post(
        "/v1/models/gearbox/spectrogram", files={"file": ("a.wav", wav_bytes(tone(3.0)))}
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    img = Image.open(io.BytesIO(r.content))
    # 64 mel bands; one column per 512-sample frame of 3 s at 16 kHz
    assert img.size == (1 + 3 * 16000 // 512, 64) and img.mode == "L"
    pixels = np.asarray(img)
    assert pixels.std() > 0
    # a 440-Hz tone: the brightest row is low in the picture (high bands on top)
    assert int(np.argmax(pixels.mean(axis=1))) > 32


async def test_spectrogram_without_windows_is_the_models_input(
    committed: httpx.AsyncClient,
) -> None:
    r = await committed.post(
        "/v1/models/digits/spectrogram", files={"file": ("a.wav", wav_bytes(tone(1.0), sr=8000))}
    )
    assert r.status_code == 200
    features = read_manifest(ARTIFACTS / "digits").features  # the digits model's input
    size = (features.width, features.height)
    assert Image.open(io.BytesIO(r.content)).size == size
    picture = png_bytes(*size)
    r = await committed.post("/v1/models/digits/spectrogram", files={"file": ("s.png", picture)})
    assert r.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(r.content))).mean() == pytest.approx(128, abs=1)


async def test_spectrogram_errors_are_the_scoring_errors(committed: httpx.AsyncClient) -> None:
    path = "/v1/models/gearbox/spectrogram"
    assert_error(
        await committed.post(path, files={"file": ("a", b"text")}), 415, "unsupported_media_type"
    )
    short = wav_bytes(tone(0.01))
    assert_error(await committed.post(path, files={"file": ("a", short)}), 422, "audio_too_short")
    assert_error(
        await committed.post("/v1/models/nope/spectrogram", files={"file": ("a", short)}),
        404,
        "model_not_found",
    )


async def test_spectrogram_needs_the_key_when_keys_are_on() -> None:
    app = create_app(Settings(artifacts_dir=ARTIFACTS, api_keys=["k1"]))  # type: ignore[arg-type]
    async with serve(app) as c:
        files = {"file": ("a.wav", wav_bytes(tone(1.0)))}
        assert_error(
            await c.post("/v1/models/gearbox/spectrogram", files=files), 401, "unauthorized"
        )
        r = await c.post("/v1/models/gearbox/spectrogram", files=files, headers={"X-API-Key": "k1"})
        assert r.status_code == 200
        assert (await c.get("/")).status_code == 200  # the page itself is open; its calls are not


def test_the_pages_files_ship_in_the_package() -> None:
    import tomllib

    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["service.web"]
    assert patterns == ["static/*"]
    files = list(STATIC.rglob("*"))
    assert {"index.html", "app.js", "style.css"} <= {f.name for f in files}
    assert all(f.parent == STATIC for f in files)  # no sub-folder that static/* would miss


def test_an_operation_the_docs_do_not_know_keeps_its_statuses_with_fitting_examples() -> None:
    from service.models.registry import ModelRegistry
    from service.web.docs import complete

    schema: dict[str, Any] = {
        "paths": {
            "/v1/models/{name}/reload": {
                "post": {
                    "parameters": [{"name": "name", "in": "path", "schema": {"type": "string"}}],
                    "responses": {"200": {}, "401": {}, "404": {}, "503": {}},
                }
            },
            "/v2/health/live": {"get": {"responses": {"200": {}, "503": {"x": 1}}}},
        }
    }
    complete(schema, ModelRegistry(), Settings(artifacts_dir=ARTIFACTS))
    reload = schema["paths"]["/v1/models/{name}/reload"]["post"]
    assert set(reload["responses"]) == {"200", "401", "404", "503"}
    for status in ("401", "404", "503"):
        examples = reload["responses"][status]["content"]["application/json"]["examples"]
        assert {e["value"]["error"]["code"] for e in examples.values()} <= CODES[status]
    assert reload["parameters"][0]["examples"]  # an example name even with nothing loaded
    # the v2 routes get examples in the protocol's own body
    v2 = schema["paths"]["/v2/health/live"]["get"]["responses"]["503"]
    assert v2["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/V2Error"}
    assert all(
        isinstance(e["value"]["error"], str)
        for e in v2["content"]["application/json"]["examples"].values()
    )
