"""Someone records a spoken digit on the page: they press Record, wait a moment, say it and
press again. The page sends the recording (through the browser's codec) to the `digits`
classifier, which hears one second: the second that starts just before the word, not the
first second of the recording (features.onset_margin_s)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import REPO, wav_bytes
from tests.helpers import RunningService
from tests.web.conftest import chromium_hearing, screenshot

SEVEN = REPO / "docs" / "examples" / "7_george_0.wav"
expect = pytest.importorskip("playwright.sync_api", reason="needs the playwright package").expect


@pytest.fixture(scope="module")
def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A chromium whose fake microphone plays 1.2 s of a quiet room, "seven", then 4 s of
    the room again (48 kHz, as the other fake microphone)."""
    from scipy.signal import resample_poly

    seven, sr = sf.read(SEVEN, dtype="float32")
    seven = resample_poly(seven, 48000, sr).astype(np.float32)
    room = np.random.default_rng(0).standard_normal(int(5.2 * 48000)).astype(np.float32) * 0.002
    cut = int(1.2 * 48000)
    path = tmp_path_factory.mktemp("mic") / "seven.wav"
    path.write_bytes(wav_bytes(np.concatenate([room[:cut], seven, room[cut:]]), sr=48000))
    yield from chromium_hearing(chromium, path)


def test_a_digit_said_a_moment_after_pressing_record_is_heard(
    page: Any, service: RunningService
) -> None:
    page.goto(f"{service.url}/")
    page.locator("#model option[value='digits']").wait_for(state="attached")
    page.select_option("#model", "digits")
    page.locator("#model-info[data-model='digits']").wait_for()
    page.click("#record")
    page.wait_for_function(
        "() => document.querySelector('#record').getAttribute('aria-pressed') === 'true'"
    )
    time.sleep(3.0)
    page.click("#record")
    card = page.locator("#results .card[data-label]").first
    card.wait_for()
    facts = card.locator("dl.facts").text_content() or ""
    assert float(facts.split("Duration")[1].split(" s")[0]) > 2.5  # the word is not at 0 s
    assert card.get_attribute("data-label") == "7", card.inner_text()
    assert card.locator(".badge").inner_text() == "Heard: 7"
    screenshot(page, "page-recorded-digit")
