"""Metrics, request ids, JSON logs, the OpenAPI document and the ways to start the app."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.app import create_app
from service.models.bundle import read_manifest
from service.models.registry import ModelRegistry
from service.settings import Settings
from tests.conftest import REPO
from tests.helpers import GOOD_WAV, FakeAnomalyRuntime, serve

pytestmark = pytest.mark.anyio


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample in the text exposition (0 if absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


async def test_metrics_count_requests_latency_clips_errors_and_batch_sizes(
    client: httpx.AsyncClient,
) -> None:
    clip = {"file": ("a.wav", GOOD_WAV)}
    assert (await client.post("/v1/models/tiny/score", files=clip)).status_code == 200
    batch = [
        ("files", ("a.wav", GOOD_WAV)),
        ("files", ("b.wav", b"text")),
        ("files", ("c.wav", GOOD_WAV)),
    ]
    assert (await client.post("/v1/models/tiny/score/batch", files=batch)).status_code == 200
    assert (await client.post("/v1/models/nope/score", files=clip)).status_code == 404

    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    m = r.text
    route = "/v1/models/{name}/score"
    assert sample(m, "auscult_requests_total", method="POST", route=route, status="200") == 1
    assert sample(m, "auscult_requests_total", method="POST", route=route, status="404") == 1
    assert sample(m, "auscult_request_duration_seconds_count", route=route) == 2
    assert sample(m, "auscult_request_duration_seconds_bucket", route=route, le="+Inf") == 2
    clips = sum(
        sample(m, "auscult_clips_scored_total", model="tiny", result=level)
        for level in ("normal", "needs_maintenance", "severe")
    )
    assert clips == 3
    assert sample(m, "auscult_errors_total", code="unsupported_media_type") == 1
    assert sample(m, "auscult_errors_total", code="model_not_found") == 1
    assert sample(m, "auscult_batch_size_count", source="request") == 1
    assert sample(m, "auscult_batch_size_sum", source="request") == 3
    assert sample(m, "auscult_batch_size_sum", source="encoder") == 3
    assert sample(m, "auscult_models_ready") == 1


async def test_request_id_is_returned_and_a_safe_incoming_one_echoed(
    client: httpx.AsyncClient,
) -> None:
    fresh = (await client.get("/healthz")).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", fresh)
    assert (await client.get("/healthz")).headers["x-request-id"] != fresh
    r = await client.get("/healthz", headers={"x-request-id": "gw-7.abc_1"})
    assert r.headers["x-request-id"] == "gw-7.abc_1"
    # Errors carry it too.
    r = await client.get("/v1/models/nope", headers={"x-request-id": "gw-8"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "gw-8"


@pytest.mark.parametrize(
    "unsafe",
    ["has space", "x" * 65, "new\nline-injection", "trailing-newline\n", 'quote"s', ""],
    ids=["space", "too-long", "newline", "trailing-newline", "quote", "empty"],
)
async def test_unsafe_incoming_request_id_is_replaced(
    client: httpx.AsyncClient, unsafe: str
) -> None:
    headers = [(b"x-request-id", unsafe.encode())]
    r = await client.get("/healthz", headers=headers)
    assert re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


async def test_log_lines_are_json_with_the_request_id(settings_factory, log_lines) -> None:  # type: ignore[no-untyped-def]
    async with serve(create_app(settings_factory())) as client:
        r = await client.post(
            "/v1/models/tiny/score",
            files={"file": ("a.wav", GOOD_WAV)},
            headers={"x-request-id": "trace-42"},
        )
        assert r.status_code == 200
    lines = log_lines()  # every line parsed as JSON
    (access,) = [line for line in lines if line.get("request_id") == "trace-42"]
    assert access["event"] == "request" and access["level"] == "info"
    assert access["path"] == "/v1/models/tiny/score" and access["status"] == 200
    assert {"time", "logger", "ms", "method"} <= set(access)


async def test_unexpected_error_is_logged_with_the_request_id(tiny_bundle: Path, log_lines) -> None:  # type: ignore[no-untyped-def]
    def explode(images: np.ndarray) -> np.ndarray:
        raise RuntimeError("kaboom")

    registry = ModelRegistry({"x": FakeAnomalyRuntime("x", read_manifest(tiny_bundle), explode)})
    app = create_app(Settings(artifacts_dir=tiny_bundle.parent), registry=registry)
    async with serve(app) as client:
        r = await client.post(
            "/v1/models/x/score",
            files={"file": ("a.wav", GOOD_WAV)},
            headers={"x-request-id": "t-500"},
        )
        assert r.status_code == 500 and r.headers["x-request-id"] == "t-500"
    lines = [line for line in log_lines() if line.get("request_id") == "t-500"]
    assert [(line["event"], line["level"]) for line in lines] == [
        ("unhandled", "error"),
        ("request", "info"),
    ]
    assert "kaboom" in lines[0]["exc"]
    assert lines[1]["status"] == 500


DESIGN_ROUTES = {
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{name}"),
    ("post", "/v1/models/{name}/score"),
    ("post", "/v1/models/{name}/score/batch"),
    ("post", "/v1/models/{name}/classify"),
}


async def test_openapi_lists_every_design_route(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    routes = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert routes >= DESIGN_ROUTES


@pytest.mark.parametrize(
    ("path", "field", "many"),
    [
        ("/v1/models/{name}/score", "file", False),
        ("/v1/models/{name}/score/batch", "files", True),
        ("/v1/models/{name}/classify", "file", False),
    ],
)
async def test_openapi_documents_the_multipart_upload(
    client: httpx.AsyncClient, path: str, field: str, many: bool
) -> None:
    spec = (await client.get("/openapi.json")).json()
    op = spec["paths"][path]["post"]
    schema = op["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert schema["required"] == [field]
    prop = schema["properties"][field]
    part = prop["items"] if many else prop
    assert (part["type"], part["format"]) == ("string", "binary")
    if many:
        assert prop["type"] == "array" and prop["minItems"] == 1
    for status in ("401", "404", "413", "415", "422", "503"):
        assert status in op["responses"], status


async def test_docs_page_is_html(client: httpx.AsyncClient) -> None:
    r = await client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in r.text


def _run(code: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AUSCULT_")}
    return subprocess.run(
        [sys.executable, *code],
        cwd=REPO,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_uvicorn_import_string_builds_the_app_lazily(tiny_bundle: Path) -> None:
    # `uvicorn service.app:app` imports the module, then reads `app`: nothing heavy before.
    code = """
import sys
import service.app as m
assert "app" not in vars(m), "app built at import time"
assert "onnxruntime" not in sys.modules and "training" not in sys.modules
assert not any(name.startswith("tensorflow") for name in sys.modules)
from uvicorn.importer import import_from_string
app = import_from_string("service.app:app")
assert app is m.app and type(app).__name__ == "FastAPI"
import os
assert str(app.state.settings.artifacts_dir) == os.environ["AUSCULT_ARTIFACTS_DIR"]
print("ok")
"""
    result = _run(["-c", code], {"AUSCULT_ARTIFACTS_DIR": str(tiny_bundle.parent)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_python_m_service_help_runs() -> None:
    result = _run(["-m", "service", "--help"])
    assert result.returncode == 0, result.stderr
    assert "--host" in result.stdout and "--port" in result.stdout


def test_python_m_service_refuses_bad_settings(tmp_path: Path) -> None:
    result = _run(["-m", "service"], {"AUSCULT_ARTIFACTS_DIR": str(tmp_path / "missing")})
    assert result.returncode != 0
    assert "artifacts_dir" in result.stderr
