"""`python -m training` as a newcomer meets it (issue 25): run as a subprocess, mistakes end
in one line, help texts show what the defaults are."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.app import create_app
from service.models.bundle import read_manifest
from service.settings import Settings
from tests.conftest import ARTIFACTS, REPO, tone, wav_bytes
from tests.helpers import serve


def run_training(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUSCULT_")}
    return subprocess.run(
        [sys.executable, "-m", "training", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_synth_refuses_an_unknown_machine_with_a_usage_error(tmp_path: Path) -> None:
    r = run_training("synth", "--out", str(tmp_path / "d"), "--machine", "toaster")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "argument --machine: invalid choice: 'toaster'" in last and "'gearbox'" in last
    assert not (tmp_path / "d").exists()


def test_synth_help_lists_the_machines_and_defaults() -> None:
    r = run_training("synth", "--help")
    assert r.returncode == 0
    assert "--machine {fan,gearbox}" in r.stdout
    assert "(default: gearbox)" in r.stdout and "(default: 2.0)" in r.stdout


def test_fit_help_shows_defaults_and_flat_folders() -> None:
    r = run_training("fit", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "autoencoder training epochs (default: 60)" in text
    assert "seed of every random choice (default: 0)" in text
    assert "flat folder of healthy clips" in text
    assert "(default: None)" not in text


@pytest.mark.anyio
async def test_spectrograms_without_model_makes_images_the_default_model_scores(
    tmp_path: Path,
) -> None:
    audio, out = tmp_path / "audio", tmp_path / "png"
    audio.mkdir()
    (audio / "hum.wav").write_bytes(wav_bytes(tone(2.0)))
    r = run_training("spectrograms", "--in", str(audio), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "artifacts/gearbox: 32x64 images" in r.stderr  # says which bundle it made them for
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["hum_w000.png", "hum_w001.png"]  # 1-s windows
    async with serve(create_app(Settings(artifacts_dir=ARTIFACTS))) as client:
        for png in pngs:
            answer = await client.post(
                "/v1/models/gearbox/score", files={"file": (png.name, png.read_bytes())}
            )
            assert answer.status_code == 200, answer.text


def test_spectrograms_for_a_missing_bundle_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "audio").mkdir()
    r = run_training(
        "spectrograms",
        "--in",
        str(tmp_path / "audio"),
        "--out",
        str(tmp_path / "png"),
        "--model",
        str(tmp_path / "nope"),
    )
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("error: --model") and "is not a bundle folder" in line


TINY_FIT = [
    "--epochs", "1", "--filters", "4,8,8", "--latent-dim", "8", "--n-mels", "32",
    "--no-codec-copies",
]  # fmt: skip


def _flat_folder(root: Path, good: int, junk: int) -> Path:
    root.mkdir()
    for i in range(good):
        (root / f"normal_id_00_{i:08d}.wav").write_bytes(wav_bytes(tone(1.0, seed=i)))
    for i in range(junk):
        (root / f"normal_id_00_junk{i}.wav").write_bytes(b"not audio at all")
    return root


def _stderr_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the progress bars' redraws."""
    return [line for line in r.stderr.replace("\r", "\n").splitlines() if line.strip()]


def test_fit_skips_an_unreadable_file_says_each_stage_and_guards_the_bundle(
    tmp_path: Path,
) -> None:
    data = _flat_folder(tmp_path / "data", good=5, junk=1)
    out = tmp_path / "artifacts" / "machine"
    r = run_training("fit", "--data", str(data), "--out", str(out), *TINY_FIT)
    assert r.returncode == 0, r.stderr
    err = _stderr_lines(r)
    assert (
        "warning: skipped unreadable file normal_id_00_junk0.wav (its content is not wav, "
        "flac, ogg or mp3 audio, nor a png/jpeg spectrogram)"
    ) in err
    assert "send " not in r.stderr  # the API's wording, not a CLI's
    for step in ("exporting", "fitting PCA", "calibrating the levels", "writing the bundle"):
        assert any(line.startswith(f"fit: {step}") for line in err), step
    for noise in ("NodeDef", "remapper", "oneDNN", "absl::InitializeLog"):  # TensorFlow's
        assert noise not in r.stderr, noise
    summary = r.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"bundle written to {out} in ")
    assert summary.endswith("(5 clips, 1 unreadable skipped, 1 epochs)")
    assert read_manifest(out).training["clips"] == 5
    written = (out / "manifest.json").read_bytes()

    again = run_training("fit", "--data", str(data), "--out", str(out), *TINY_FIT)
    assert again.returncode == 2
    (line,) = _stderr_lines(again)
    assert line == (
        f"error: {out} already exists and is not empty; choose another --out or add "
        "--force to replace it"
    )
    strict = run_training(
        "fit", "--data", str(data), "--out", str(out), "--force", "--strict-files", *TINY_FIT
    )
    assert strict.returncode == 2
    assert _stderr_lines(strict)[-1].startswith(
        "error: 1 unreadable file(s): normal_id_00_junk0.wav (its content is not"
    )
    assert (out / "manifest.json").read_bytes() == written  # untouched by both


def test_fit_counts_only_readable_clips(tmp_path: Path) -> None:
    data = _flat_folder(tmp_path / "data", good=1, junk=3)
    r = run_training("fit", "--data", str(data), "--out", str(tmp_path / "b"), *TINY_FIT)
    assert r.returncode == 2
    assert _stderr_lines(r)[-1] == (
        "error: need at least 4 readable normal training clips, found 1 (3 unreadable skipped)"
    )
    assert not (tmp_path / "b").exists()


def test_evaluate_skips_an_unreadable_test_file_with_a_warning(tmp_path: Path) -> None:
    data, bundle = tmp_path / "data", tmp_path / "gearbox"
    assert run_training("synth", "--out", str(data), "--train", "0", "--test", "2").returncode == 0
    junk = data / "source_test" / "section_00_source_test_anomaly_9999.wav"
    junk.write_bytes(b"not audio at all")
    shutil.copytree(ARTIFACTS / "gearbox", bundle)
    r = run_training("evaluate", "--data", str(data), "--model", str(bundle))
    assert r.returncode == 0, r.stderr
    assert f"warning: skipped unreadable test file {junk.name} (its content is not" in r.stderr
    clips = json.loads((bundle / "report.json").read_text())["clips"]
    assert len(clips) == 8 and junk.name not in {c["file"] for c in clips}
