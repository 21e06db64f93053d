"""/docs and /redoc render in a real browser with every non-loopback request refused."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from tests.helpers import RunningService
from tests.web.conftest import Offline, screenshot


def test_swagger_ui_renders_every_operation_without_network(
    page: Any, offline: Offline, service: RunningService
) -> None:
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))
    page.goto(f"{service.url}/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    for path in (
        "/v1/models",
        "/v1/models/{name}/score",
        "/v1/models/{name}/score/batch",
        "/v1/models/{name}/classify",
        "/v1/models/{name}/spectrogram",
    ):
        assert any(p.replace("\u200b", "") == path for p in paths), (path, paths)
    assert metadata.version("auscult") in page.locator(".info .title").inner_text()
    assert offline.blocked == []
    assert all(u.startswith(service.url) for u in requested), requested
    assert any(u.endswith("/static/docs/swagger-ui-bundle.js") for u in requested)


def test_swagger_ui_offers_the_loaded_models_and_each_errors_own_example(
    page: Any, offline: Offline, service: RunningService
) -> None:
    page.goto(f"{service.url}/docs#/models/score_clip_v1_models__name__score_post")
    op = page.locator("#operations-models-score_clip_v1_models__name__score_post")
    op.locator(".opblock-summary").first.wait_for()
    if not op.locator(".opblock-body").is_visible():
        op.locator(".opblock-summary").first.click()
    op.locator(".parameters").first.wait_for()  # "Try it out" is on from the start
    # the name parameter: a choice of the loaded models, anomaly models first
    choice = op.locator(".parameters select").first
    options = choice.locator("option").all_inner_texts()
    assert any("gearbox" in o for o in options) and any("digits" in o for o in options), options
    assert "gearbox" in options[0]
    responses = op.locator(".responses-table").first
    text = responses.inner_text()
    for code in ("unauthorized", "model_not_found", "wrong_model_kind", "unsupported_media_type"):
        assert code in text, code
    screenshot(page, "docs", op)
    assert offline.blocked == []


def test_redoc_renders_without_network(
    page: Any, offline: Offline, service: RunningService
) -> None:
    requested: list[str] = []
    refused: dict[str, str] = {}
    page.on("request", lambda r: requested.append(r.url))
    page.on("requestfailed", lambda r: refused.setdefault(r.url, r.failure or ""))
    page.goto(f"{service.url}/redoc")
    page.get_by_role("heading", name="Score Clip").first.wait_for()
    page.get_by_text("wrong_model_kind").first.wait_for(state="attached")
    page.wait_for_load_state("networkidle")
    assert offline.blocked == []  # nothing reached the network layer for another host
    assert any(u.endswith("/static/docs/redoc.standalone.js") for u in requested)
    # ReDoc's bundle always asks for its makers' logo from their CDN: the page's
    # Content-Security-Policy refuses it inside the browser, before any connection
    elsewhere = [u for u in requested if not u.startswith((service.url, "blob:", "data:"))]
    assert all(refused.get(u) == "csp" for u in elsewhere), (elsewhere, refused)
