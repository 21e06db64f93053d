"""The page at `/` in a real browser (tablet-sized, offline): choose a model, upload one or
several clips or record one, and see levels, scores, charts, spectrograms, bars, errors."""

from __future__ import annotations

import base64
import csv
import io
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import RunningService, stop_service
from tests.web.conftest import (
    Offline,
    clip_wav,
    open_page,
    screenshot,
    start_service,
    tone_wav,
)

expect = pytest.importorskip("playwright.sync_api", reason="needs the playwright package").expect


def _open(page: Any, service: RunningService, model: str) -> None:
    page.goto(f"{service.url}/")
    page.locator("#model option[value='gearbox']").wait_for(state="attached")
    page.select_option("#model", model)
    page.locator(f"#model-info[data-model='{model}']").wait_for()
    expect(page.locator("#choose")).to_be_enabled()


def _spectrograms_loaded(page: Any, count: int) -> None:
    page.wait_for_function(
        "n => [...document.querySelectorAll('#results .spectrogram img')]"
        ".filter(i => i.complete && i.naturalWidth > 0).length === n",
        arg=count,
    )


def test_a_healthy_clip_chosen_with_the_keyboard_is_normal_with_its_score_chart_and_spectrogram(
    page: Any, service: RunningService, tmp_path: Path
) -> None:
    healthy = clip_wav(tmp_path / "pump-healthy.wav", seconds=6)
    # Playwright turns on file-chooser interception without waiting for it; a listener
    # registered only around the key press can miss a chooser opened on a loaded machine.
    chooser_opened: list[bool] = []
    page.on("filechooser", lambda fc: (chooser_opened.append(True), fc.set_files(str(healthy))))
    _open(page, service, "gearbox")
    page.focus("#choose")
    assert page.evaluate("() => document.activeElement.id") == "choose"
    with page.expect_response(lambda r: r.url.endswith("/v1/models/gearbox/score")) as answer:
        page.keyboard.press("Enter")
    assert chooser_opened == [True]
    result = answer.value.json()
    card = page.locator("#results .card").first
    card.wait_for()
    assert result["level"] == card.get_attribute("data-level") == "normal"
    assert card.locator(".badge").inner_text() == "Normal"
    assert card.locator(".score").inner_text() == f"{result['score']:.2f}"
    assert 'below the "needs maintenance" threshold' in card.inner_text()
    # one point per window of the model's length
    assert card.locator(".chart circle.window").count() == len(result["windows"]) > 1
    _spectrograms_loaded(page, 1)
    assert page.locator("#batch").is_hidden()  # the table is for several clips
    assert "1 clip done: 1 normal" in page.locator("#status").inner_text()


def test_a_faulty_clip_dropped_on_the_page_is_severe(
    page: Any, service: RunningService, tmp_path: Path
) -> None:
    _open(page, service, "gearbox")
    faulty = clip_wav(tmp_path / "pump-rubbing.wav", seconds=4, fault="rubbing")
    # what a drag and drop from the file manager delivers: a DataTransfer holding the file
    data = base64.b64encode(faulty.read_bytes()).decode()
    transfer = page.evaluate_handle(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: "audio/wav" }));
            return dt;
        }""",
        [faulty.name, data],
    )
    page.dispatch_event("#drop", "dragenter", {"dataTransfer": transfer})
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    card = page.locator("#results .card[data-level]").first
    card.wait_for()
    assert card.get_attribute("data-level") == "severe"
    assert card.locator(".badge").inner_text() == "Severe anomaly"


def test_a_batch_gives_a_table_row_per_clip_and_a_csv(
    page: Any, service: RunningService, tmp_path: Path
) -> None:
    _open(page, service, "gearbox")
    files = [
        clip_wav(tmp_path / "pump-a.wav", seconds=6),
        clip_wav(tmp_path / "pump-b.wav", seconds=6, fault="rubbing", fault_span=(2.0, 4.0)),
    ]
    with page.expect_response(lambda r: r.url.endswith("/score/batch")) as answer:
        page.set_input_files("#files", [str(f) for f in files])
    results = answer.value.json()["results"]
    levels = [r["level"] for r in results]
    # rubbing for 2 of 6 s: the worst stretch, which decides the level, lies on the fault
    assert levels[0] == "normal" and levels[1] != "normal", results
    worst = results[1]["worst"]
    assert worst["start_s"] < 4.0 and worst["end_s"] > 2.0, results[1]
    rows = page.locator("#batch-table tbody tr")
    rows.nth(1).wait_for()
    assert rows.count() == 2
    assert rows.nth(0).locator("th").inner_text() == "pump-a.wav"
    shown = {"normal": "Normal", "needs_maintenance": "Needs maintenance", "severe": "Severe"}
    for row, level in zip(rows.all(), levels, strict=True):
        assert shown[level] in row.inner_text()
    cards = page.locator("#results .card")
    assert cards.count() == 2
    assert [c.get_attribute("data-level") for c in cards.all()] == levels
    # the page says which stretch decided and outlines it on the chart
    decided = cards.nth(1).locator(".decided")
    assert float(decided.get_attribute("data-worst-start")) == worst["start_s"]
    assert "Decided by its worst stretch" in decided.inner_text()
    assert cards.nth(1).locator(".chart rect.worst-stretch").count() == 1
    _spectrograms_loaded(page, 2)
    screenshot(page, "page-batch")
    with page.expect_download() as download:
        page.click("#csv")
    assert download.value.suggested_filename.startswith("auscult-gearbox-")
    table = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [r["file"] for r in table] == ["pump-a.wav", "pump-b.wav"]
    assert [r["level"] for r in table] == levels
    assert float(table[1]["worst_start_s"]) == worst["start_s"]
    assert float(table[1]["score"]) >= float(table[1]["needs_maintenance"])


def test_a_file_that_is_not_audio_shows_the_apis_message(
    page: Any, service: RunningService, tmp_path: Path
) -> None:
    _open(page, service, "gearbox")
    notes = tmp_path / "notes.wav"
    notes.write_text("this is not a recording\n")
    page.set_input_files("#files", str(notes))
    error = page.locator("#error")
    error.wait_for()
    assert "unrecognised content: send wav, flac, ogg or mp3 audio" in error.inner_text()
    assert "unsupported_media_type" in error.inner_text()
    # in a batch the bad file gets its row and the good one its score
    good = clip_wav(tmp_path / "good.wav", seconds=2)
    page.set_input_files("#files", [str(good), str(notes)])
    rows = page.locator("#batch-table tbody tr")
    rows.nth(1).wait_for()
    assert "unrecognised content" in rows.nth(1).inner_text()
    assert page.locator("#results .card.failed").count() == 1
    assert error.is_hidden()


def test_the_classifier_shows_a_bar_per_label(
    page: Any, service: RunningService, tmp_path: Path
) -> None:
    _open(page, service, "digits")
    page.set_input_files("#files", str(tone_wav(tmp_path / "beep.wav")))
    card = page.locator("#results .card").first
    card.wait_for()
    bars = card.locator(".bars li")
    assert bars.count() == 10
    assert card.locator(".bars li.top").count() == 1
    label = card.get_attribute("data-label")
    assert card.locator(".bars li.top").get_attribute("data-label") == label
    assert card.locator(".badge").inner_text() == f"Heard: {label}"
    widths = card.locator(".bars .fill").evaluate_all("els => els.map(e => e.offsetWidth)")
    assert max(widths) == widths[[str(i) for i in range(10)].index(label)] > 0
    _spectrograms_loaded(page, 1)
    screenshot(page, "page-classifier")


def test_recording_from_the_microphone_scores_the_recording(
    page: Any, service: RunningService
) -> None:
    _open(page, service, "gearbox")
    page.click("#record")
    page.wait_for_function(
        "() => document.querySelector('#record').getAttribute('aria-pressed') === 'true'"
    )
    time.sleep(2.0)
    with page.expect_request(lambda r: r.url.endswith("/v1/models/gearbox/score")) as sent:
        page.click("#record")
    # the recording went through the browser's opus encoder: it is judged as lossy
    assert b'name="codec"\r\n\r\nlossy' in (sent.value.post_data_buffer or b"")
    card = page.locator("#results .card[data-level]").first
    card.wait_for()
    assert card.locator("h3").inner_text().startswith("recording-")
    # chromium's fake microphone plays a healthy gearbox recording (through opus and back)
    assert card.get_attribute("data-level") == "normal"
    facts = card.locator("dl.facts").text_content() or ""
    duration = float(facts.split("Duration")[1].split(" s")[0])
    assert 1.0 < duration < 5.0
    screenshot(page, "page-recording")


def test_the_page_fits_a_phone_and_every_control_has_a_label(
    browser: Any, offline: Offline, service: RunningService, tmp_path: Path
) -> None:
    page = open_page(browser, offline)
    clips = [str(clip_wav(tmp_path / f"a-rather-long-file-name-{i}.wav", 2)) for i in (1, 2)]
    try:
        for width in (820, 390):
            page.set_viewport_size({"width": width, "height": 900})
            _open(page, service, "gearbox")
            assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
            page.set_input_files("#files", clips)
            page.locator("#batch-table tbody tr").nth(1).wait_for()
            assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
            unlabelled = page.evaluate(
                "[...document.querySelectorAll('select, input:not([hidden])')]"
                ".filter(e => !e.labels || e.labels.length === 0).map(e => e.id)"
            )
            assert unlabelled == []
            small = page.evaluate(
                "[...document.querySelectorAll('button:not([hidden])')]"
                ".filter(b => b.offsetParent && b.getBoundingClientRect().height < 44)"
                ".map(b => b.id)"
            )
            assert small == []
    finally:
        page.context.close()
    assert offline.blocked == [] and offline.failed == []


@pytest.fixture(scope="module")
def keyed_service(chromium: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    svc = start_service(tmp_path_factory.mktemp("keyed"), AUSCULT_API_KEYS="s3cret-key")
    yield svc
    stop_service(svc)


def test_with_api_keys_on_the_page_asks_for_one(
    page: Any, keyed_service: RunningService, tmp_path: Path
) -> None:
    page.goto(f"{keyed_service.url}/")
    page.locator("#key-row").wait_for()
    assert page.locator("#api-key").evaluate("e => document.activeElement === e")
    page.fill("#api-key", "wrong")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#key-hint').textContent.includes('refused')"
    )
    assert "the API key is not valid" in page.locator("#key-hint").inner_text()
    page.fill("#api-key", "s3cret-key")
    page.click("#key-use")
    page.locator("#model option[value='gearbox']").wait_for(state="attached")
    page.select_option("#model", "gearbox")
    page.set_input_files("#files", str(clip_wav(tmp_path / "pump.wav", seconds=2)))
    page.locator("#results .card[data-level]").first.wait_for()
    _spectrograms_loaded(page, 1)
