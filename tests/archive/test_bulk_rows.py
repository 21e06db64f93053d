"""bulk/ without Ray: which files a job takes, rows for a model that misbehaves, the
command line's usage errors (all before Ray would start), and what the bulk extra pulls."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from bulk.__main__ import main
from bulk.limits import Limits
from bulk.rows import OUTPUT_SCHEMA, prepare_table, score_table
from bulk.sources import NoFiles, find_files
from service.models.bundle import read_manifest
from tests.conftest import ARTIFACTS, REPO, tone, wav_bytes
from tests.delivery.test_packaging import HEAVY, _closure
from tests.helpers import FakeAnomalyRuntime


def _touch(root: Path, *names: str) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_find_files_takes_audio_and_images_under_a_folder(tmp_path: Path) -> None:
    _touch(tmp_path, "a/1.wav", "a/b/2.FLAC", "3.png", "notes.txt", ".hidden/4.wav", "a/.5.wav")
    assert find_files(str(tmp_path)) == [
        str(tmp_path / "3.png"),
        str(tmp_path / "a/1.wav"),
        str(tmp_path / "a/b/2.FLAC"),
    ]


def test_find_files_takes_what_a_glob_or_a_path_names(tmp_path: Path) -> None:
    _touch(tmp_path, "a/1.wav", "a/b/2.wav", "a/b/3.bin")
    assert find_files(f"{tmp_path}/**/*.wav") == [
        str(tmp_path / "a/1.wav"),
        str(tmp_path / "a/b/2.wav"),
    ]
    assert find_files(f"{tmp_path}/a/b/*") == [
        str(tmp_path / "a/b/2.wav"),
        str(tmp_path / "a/b/3.bin"),
    ]
    assert find_files(str(tmp_path / "a/b/3.bin")) == [str(tmp_path / "a/b/3.bin")]


@pytest.mark.parametrize("spec", ["missing-folder", "*.nothing-matches"])
def test_find_files_refuses_nothing(tmp_path: Path, spec: str) -> None:
    (tmp_path / "empty").mkdir()
    for s in (str(tmp_path / spec), str(tmp_path / "empty")):
        with pytest.raises(NoFiles):
            find_files(s)


def test_score_table_turns_a_non_finite_model_output_into_the_files_error() -> None:
    manifest = read_manifest(ARTIFACTS / "gearbox")
    broken = FakeAnomalyRuntime("gearbox", manifest, lambda x: np.full(len(x), np.nan))
    wav = wav_bytes(tone(3.0))
    prepared = prepare_table(
        ["a.wav", "b.wav"], [wav, b""], manifest.features, Limits.service_defaults()
    )
    rows = score_table(broken, prepared)
    assert rows.schema.equals(OUTPUT_SCHEMA)
    a, b = rows.to_pylist()
    assert (a["error_code"], a["score"], a["level"], a["windows"]) == (
        "non_finite_values",
        None,
        None,
        None,
    )
    assert a["error_message"] == "the model's score for this input is not a finite number"
    assert (b["error_code"], b["error_message"]) == ("invalid_audio", "empty upload")


def test_limits_follow_the_services_defaults_and_the_command_line() -> None:
    wav = wav_bytes(tone(3.0))
    params = read_manifest(ARTIFACTS / "gearbox").features
    d = Limits.service_defaults()
    tight = Limits(2.0, d.min_sample_rate, d.max_sample_rate, d.max_samples)
    (row,) = prepare_table(["a.wav"], [wav], params, tight).to_pylist()
    assert row["error_code"] == "audio_too_long"
    (row,) = prepare_table(["a.wav"], [wav], params, d).to_pylist()
    assert row["error_code"] is None and row["n_windows"] == 3 and row["duration_s"] == 3.0


def test_cli_refuses_what_it_cannot_score(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "a.wav").write_bytes(wav_bytes(tone(1.0)))
    out = str(tmp_path / "out.parquet")
    broken = tmp_path / "broken"
    shutil.copytree(ARTIFACTS / "gearbox", broken)
    (broken / "inv_cov.npy").write_bytes(b"not the file the manifest lists")
    cases = [
        (["--model", str(ARTIFACTS / "digits"), "--in", str(clips)], "bulk scores anomaly"),
        (["--model", str(broken), "--in", str(clips)], "checksum mismatch for inv_cov.npy"),
        (["--model", str(tmp_path / "none"), "--in", str(clips)], str(tmp_path / "none")),
        (["--model", str(ARTIFACTS / "gearbox"), "--in", str(tmp_path / "x")], "no such"),
        (
            ["--model", str(ARTIFACTS / "gearbox"), "--in", str(clips), "--batch-size", "0"],
            "--batch-size",
        ),
    ]
    for argv, says in cases:
        assert main(["score", *argv, "--out", out]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("bulk: ") and says in err, (argv, err)
    assert not Path(out).exists()


def test_bulk_extra_keeps_tensorflow_out_and_ray_out_of_the_service() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    assert not _closure(extras["bulk"]) & HEAVY
    assert "ray" not in _closure(extras["serve"])
    assert {"ray", "pyarrow"} <= _closure(extras["bulk"])


def test_nothing_imports_bulk() -> None:
    """DESIGN.md: bulk imports service; service and training never import bulk."""
    for package in ("service", "training"):
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            assert "import bulk" not in text and "from bulk" not in text, path


def test_bench_bulk_core_scores_its_own_clips(tmp_path: Path) -> None:
    """bench/bulk.py's clips and its in-process figure (the Ray and HTTP parts are the
    code tests/archive/test_bulk.py runs)."""
    import soundfile as sf

    from bench.bulk import bench_core, write_clips

    files = write_clips(3, seed=0, folder=tmp_path)
    assert len({p.read_bytes() for p in files}) == 3
    assert {(sf.info(p).duration, sf.info(p).samplerate) for p in files} == {(10.0, 16000)}
    assert bench_core(ARTIFACTS / "gearbox", files) > 0
