"""Browser tests: the real service in a subprocess, driven by Debian's chromium through
Playwright (launched by executable path: Playwright's own browser download is not used).

Chromium is found at $AUSCULT_CHROMIUM, /usr/bin/chromium or on PATH (`make test` installs
Debian's package when apt is usable); without it, or without the playwright package, every
test here skips with the reason. Every page runs with all requests to hosts other than the
loopback address aborted and recorded: a test fails if the page tried to reach one.

AUSCULT_SCREENSHOTS=DIR makes the tests save their screenshots there (`make screenshots`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest

from tests import helpers
from tests.conftest import REPO, wav_bytes
from tests.helpers import RunningService, stop_service

# read at import: the suite's autouse fixture clears AUSCULT_* variables inside each test
CHROMIUM_ENV = os.environ.get("AUSCULT_CHROMIUM")
SCREENSHOTS = os.environ.get("AUSCULT_SCREENSHOTS")
DEFAULT_CHROMIUM = "/usr/bin/chromium"  # Debian's package
LOOPBACK = {"127.0.0.1", "localhost", "[::1]", "::1"}
TABLET = {"width": 820, "height": 1180}  # a tablet held upright
# Without the background-networking flags chromium keeps trying hosts that a closed
# network refuses; Playwright gives every launch a fresh temporary profile of its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]


def find_chromium() -> str | None:
    for candidate in (CHROMIUM_ENV, DEFAULT_CHROMIUM):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Any, name: str, element: Any = None) -> None:
    """Save a screenshot of the whole page (or of `element`) as DIR/name.png when
    AUSCULT_SCREENSHOTS=DIR is set (README.md and docs/getting-started.md show them)."""
    if SCREENSHOTS:
        out = Path(SCREENSHOTS)
        if not out.is_absolute():
            out = REPO / out
        out.mkdir(parents=True, exist_ok=True)
        if element is not None:
            element.screenshot(path=str(out / f"{name}.png"))
        else:
            page.screenshot(path=str(out / f"{name}.png"), full_page=True)


def start_service(log_dir: Path, **env_overrides: str) -> RunningService:
    """`python -m service` on a free port, serving the committed bundles; waits for /healthz."""
    settings = {"AUSCULT_ARTIFACTS_DIR": str(REPO / "artifacts"), "AUSCULT_LOG_LEVEL": "warning"}
    return helpers.start_service(log_dir, "/healthz", **{**settings, **env_overrides})


@pytest.fixture(scope="session")
def chromium() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install -e '.[dev]')")
    path = find_chromium()
    if path is None:
        pytest.skip("no chromium: install Debian's package (make chromium) or set AUSCULT_CHROMIUM")
    return path


@pytest.fixture(scope="session")
def fake_microphone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What chromium's fake microphone plays: a healthy gearbox recording, resampled to a
    48-kHz wav (synthesised at 48 kHz its noise would spread over 24 kHz: another sound)."""
    from service.features import resample
    from training.synth import recording

    path = tmp_path_factory.mktemp("mic") / "gearbox.wav"
    x = resample(recording(seconds=4, seed=2), 16000, 48000)
    path.write_bytes(wav_bytes(x, sr=48000))
    return path


def chromium_hearing(chromium: str, microphone: Path) -> Iterator[Any]:
    """A headless chromium whose fake microphone plays the wav `microphone` (in a loop)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        args = [*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={microphone}"]
        b = pw.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def browser(chromium: str, fake_microphone: Path) -> Iterator[Any]:
    """One chromium per test module. Not per session: Playwright's sync API keeps an event
    loop running on the main thread while it is open, which async tests after it cannot
    share."""
    yield from chromium_hearing(chromium, fake_microphone)


@pytest.fixture(scope="session")
def service(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    svc = start_service(tmp_path_factory.mktemp("service"))
    yield svc
    stop_service(svc)


@dataclass
class Offline:
    """Requests a page tried to send to hosts other than loopback (all aborted)."""

    blocked: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def open_page(browser: Any, offline: Offline, **context_args: Any) -> Any:
    """A page in a fresh browser context where any non-loopback request is aborted and
    recorded, and page errors (uncaught JavaScript exceptions) are collected."""
    context = browser.new_context(viewport=TABLET, accept_downloads=True, **context_args)

    def route(r: Any) -> None:
        host = urlsplit(r.request.url).hostname or ""
        if r.request.url.startswith(("data:", "blob:")) or host in LOOPBACK:
            r.continue_()
        else:
            offline.blocked.append(r.request.url)
            r.abort("internetdisconnected")

    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(15000)
    page.on("pageerror", lambda e: offline.failed.append(f"page error: {e}"))
    # Playwright subscribes to response events without waiting for the subscription, so
    # an expect_response() opened just before the request could miss it under load.
    page.on("response", lambda r: None)
    return page


@pytest.fixture
def offline() -> Offline:
    return Offline()


@pytest.fixture
def page(browser: Any, offline: Offline) -> Iterator[Any]:
    p = open_page(browser, offline)
    try:
        yield p
    finally:
        p.context.close()
    assert offline.blocked == [], f"the page tried to reach the network: {offline.blocked}"
    assert offline.failed == [], offline.failed


def clip_wav(path: Path, seconds: float = 4.0, fault: str | None = None, **kw: Any) -> Path:
    """Write a synthetic gearbox recording (healthy, or with `fault`) as a 16-kHz wav."""
    from training.synth import recording

    x = recording(seconds=seconds, seed=1, fault=fault, **kw)
    path.write_bytes(wav_bytes(x))
    return path


def tone_wav(path: Path, seconds: float = 1.0, sr: int = 8000) -> Path:
    t = np.arange(round(seconds * sr)) / sr
    path.write_bytes(wav_bytes((0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), sr=sr))
    return path
