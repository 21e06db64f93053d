"""The page's Listen mode in chromium: the fake microphone plays a healthy gearbox recording
and then a faulty one (8 s each, the synthetic gearbox of `training synth`); the page
streams it through its AudioWorklet and the WebSocket, and the level it shows turns within
two windows of the fault. Stop gives the summary and the two downloads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import wav_bytes
from tests.helpers import RunningService
from tests.web.conftest import chromium_hearing, screenshot

pytest.importorskip("playwright.sync_api", reason="needs the playwright package")

HEALTHY_S = 8.0
SETTLE_S = 0.5  # the page does not send the microphone's first half second


@pytest.fixture(scope="module")
def browser(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A chromium whose fake microphone plays 8 s of a healthy gearbox, then 8 s of one
    that rubs (48 kHz, as the other fake microphones)."""
    from service.features import resample
    from training.synth import recording

    healthy = recording(seconds=HEALTHY_S, seed=2)
    faulty = recording(seconds=8.0, seed=3, fault="rubbing")
    x = resample(np.concatenate([healthy, faulty]), 16000, 48000)
    path = tmp_path_factory.mktemp("mic") / "healthy-then-rubbing.wav"
    path.write_bytes(wav_bytes(x, sr=48000))
    yield from chromium_hearing(chromium, path)


def _rows(page: Any) -> list[tuple[float, str]]:
    """The windows the page lists: (start_s, level so far), oldest first."""
    rows = page.eval_on_selector_all(
        "#listen-rows tr", "rows => rows.map(r => [Number(r.dataset.start), r.dataset.level])"
    )
    return [(float(a), str(b)) for a, b in reversed(rows)]


def test_the_level_turns_within_two_windows_of_the_fault(
    page: Any, service: RunningService, tmp_path: Path
) -> None:
    page.goto(f"{service.url}/")
    page.locator("#model option[value='gearbox']").wait_for(state="attached")
    page.select_option("#model", "gearbox")
    page.locator("#model-info[data-model='gearbox']").wait_for()
    toggle = page.locator("#listen-toggle")
    page.wait_for_function("() => !document.querySelector('#listen-toggle').disabled")
    toggle.click()
    page.wait_for_function(
        "() => document.querySelector('#listen-toggle').getAttribute('aria-pressed') === 'true'"
    )
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        rows = _rows(page)
        if rows and rows[-1][0] >= HEALTHY_S + 2.0:
            break
        time.sleep(0.25)
    screenshot(page, "page-listen", page.locator("#listen"))
    toggle.click()
    summary = page.locator("#listen-summary")
    summary.wait_for(state="visible")
    rows = _rows(page)
    assert rows and rows[-1][0] >= HEALTHY_S + 2.0, rows
    window_s = 1.0  # the gearbox model's windows
    fault_s = HEALTHY_S - SETTLE_S  # where the fault starts in the stream
    healthy = [level for start, level in rows if start + window_s <= fault_s - 0.2]
    assert healthy and set(healthy) == {"normal"}, rows
    first_fault = next(i for i, (start, _) in enumerate(rows) if start + window_s > fault_s)
    first_alarm = next(i for i, (_, level) in enumerate(rows) if level != "normal")
    assert first_fault - 1 <= first_alarm <= first_fault + 1, rows  # within two windows
    level = page.locator("#listen-level")
    assert level.get_attribute("data-level") in ("needs_maintenance", "severe")
    assert level.inner_text() in ("Needs maintenance", "Severe anomaly")
    assert summary.get_attribute("data-level") in ("needs_maintenance", "severe")
    assert page.locator("#listen-chart circle").count() >= len(rows) - 1  # the last minute
    assert page.locator("#listen-chart line.threshold").count() == 2

    page.locator("#listen-downloads").wait_for(state="visible")
    with page.expect_download() as wav_download:
        page.click("#listen-wav")
    wav = tmp_path / "listen.wav"
    wav_download.value.save_as(wav)
    import soundfile as sf

    audio, rate = sf.read(wav)
    assert audio.ndim == 1 and len(audio) / rate >= HEALTHY_S + 2.5
    with page.expect_download() as csv_download:
        page.click("#listen-csv")
    csv = tmp_path / "listen.csv"
    csv_download.value.save_as(csv)
    lines = csv.read_text().splitlines()
    assert lines[0] == "index,start_s,end_s,score,level_so_far,condition"
    assert len(lines) - 1 >= len(rows)
