"""The page's "New model" section in a real browser with the real service and a real trainer
(`python -m training worker`, a tiny quick fit): name a machine, add healthy recordings, see
how much audio it has and needs, press Fit, watch it, then the new model is chosen in the
model list and its report is shown."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, wav_bytes
from tests.helpers import RunningService, stop_service
from tests.web.conftest import screenshot, start_service

expect = pytest.importorskip("playwright.sync_api", reason="needs the playwright package").expect
pytestmark = pytest.mark.slow

TINY = "--filters 4,8,8 --latent-dim 8 --n-mels 32 --max-components 16 --epochs 2"


@pytest.fixture
def fitting(chromium: str, tmp_path: Path) -> Iterator[tuple[RunningService, Path]]:
    """The service on a copy of the committed bundles with a jobs folder, and a trainer."""
    artifacts, jobs = tmp_path / "artifacts", tmp_path / "jobs"
    shutil.copytree(REPO / "artifacts" / "gearbox", artifacts / "gearbox")
    svc = start_service(
        tmp_path,
        AUSCULT_ARTIFACTS_DIR=str(artifacts),
        AUSCULT_JOBS_DIR=str(jobs),
        AUSCULT_FIT_MIN_SECONDS="10",
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "training", "worker", "--jobs", str(jobs)]
    cmd += ["--artifacts", str(artifacts), "--poll", "0.2", "--fit-args", TINY]
    with (tmp_path / "trainer.log").open("w") as log:
        trainer = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield svc, tmp_path
    finally:
        trainer.terminate()
        trainer.wait(timeout=30)
        stop_service(svc)


def test_a_new_model_is_fitted_from_the_page_then_chosen_with_its_report(
    page: Any, fitting: tuple[RunningService, Path]
) -> None:
    service, tmp = fitting
    from training.synth import recording

    clips = [tmp / f"healthy-{i}.wav" for i in range(4)]
    for i, path in enumerate(clips):  # four recordings of the same healthy machine
        path.write_bytes(wav_bytes(recording(seconds=4, seed=10 + i)))
    page.goto(f"{service.url}/")
    page.locator("#model option[value='gearbox']").wait_for(state="attached")
    section = page.locator("#new-model")
    expect(section.locator("#fit-amount")).to_contain_text("needs at least 10 s")
    page.fill("#fit-name", "pump-7")
    page.set_input_files("#fit-files", [str(clips[0])])
    expect(page.locator("#fit-amount")).to_contain_text(
        "4 s of healthy audio: a fit needs at least 10 s"
    )
    expect(page.locator("#fit-start")).to_be_disabled()
    page.set_input_files("#fit-files", [str(c) for c in clips[1:]])
    expect(page.locator("#fit-amount")).to_contain_text("16 s of healthy audio: enough to fit")
    expect(page.locator("#fit-list li")).to_have_count(4)
    expect(page.locator("#fit-start")).to_be_enabled()
    page.click("#fit-start")
    report = page.locator("#fit-report")
    expect(report).to_be_visible(timeout=180_000)
    expect(page.locator("#fit-stage")).to_contain_text("model pump-7 is ready")
    expect(page.locator("#fit-bar")).to_have_attribute("value", "100")
    expect(report).to_contain_text("needs maintenance")
    expect(report.locator("svg.fit-hist rect")).to_have_count(20)
    assert "epoch 2/2" in page.locator("#fit-log").inner_text()
    # the new model is listed, chosen, and scores a clip
    expect(page.locator("#model")).to_have_value("pump-7")
    page.locator("#model-info[data-model='pump-7']").wait_for()
    with page.expect_response(lambda r: r.url.endswith("/v1/models/pump-7/score")) as answer:
        page.set_input_files("#files", str(clips[0]))
    assert answer.value.status == 200
    screenshot(page, "new-model", section)


def test_recording_the_machine_adds_a_clip_and_counts_its_audio(
    page: Any, service: RunningService
) -> None:
    page.goto(f"{service.url}/")
    page.fill("#fit-name", "pump-8")
    page.click("#fit-record")
    expect(page.locator("#fit-record")).to_have_attribute("aria-pressed", "true")
    expect(page.locator("#fit-record-status")).to_contain_text("Recording the machine… 3 s")
    page.click("#fit-record")
    expect(page.locator("#fit-list li")).to_have_count(1)
    expect(page.locator("#fit-list li").first).to_contain_text("recording-1.wav")
    seconds = page.evaluate("() => document.getElementById('fit-meter').value")
    assert 1.5 <= seconds <= 10  # what arrived of ~3 s (the recorder starts late)
    expect(page.locator("#fit-amount")).to_contain_text("a fit needs at least 30 s")
    expect(page.locator("#fit-start")).to_be_disabled()  # not enough audio yet
