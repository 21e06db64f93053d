"""fit-classifier: layouts, leave-one-group-out folds, augmentation, a tiny end-to-end fit
(with leave-one-speaker-out) on generated tones, ONNX/Keras parity, and the committed
digits bundle on the real fsdd test takes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.features import audio_to_image, prepare
from service.models.runtimes import ClassifierRuntime, open_runtime
from training.__main__ import main
from training.augment import (
    AugmentConfig,
    band_centres,
    perturbed_copies,
    perturbed_image,
    spec_augment,
    warp_batch,
    warp_matrix,
)
from training.classifier.data import (
    discover_extra,
    discover_labelled,
    group_folds,
    label_key,
    split_validation,
)
from training.classifier.network import extra_fit_set, feature_params, with_extra
from training.datasets import DatasetError

SR = 8000
TONES = {"low": 300.0, "mid": 900.0, "high": 2400.0}  # class → pitch (Hz)
NAME_PATTERN = r"^(?P<label>[a-z]+)_(?P<speaker>[a-z]+)_"
REPO = Path(__file__).resolve().parents[2]
FSDD = REPO.parent / "shared" / "data" / "fsdd"
DIGITS = REPO / "artifacts" / "digits"
TINY = ["--filters", "8,16,16", "--n-mels", "16", "--clip-seconds", "0.5", "--batch-size", "8"]


def tone(rng: np.random.Generator, pitch: float) -> np.ndarray:
    """A 0.3-0.6 s tone (pitch ±3 %, random level, a little noise) → (n,) float32."""
    n = int(SR * rng.uniform(0.3, 0.6))
    t = np.arange(n) / SR
    x = rng.uniform(0.1, 0.5) * np.sin(2 * np.pi * pitch * rng.uniform(0.97, 1.03) * t)
    return (x + 0.01 * rng.standard_normal(n)).astype(np.float32)


def write_wav(audio: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, SR, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def named_tones(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Flat folder `{class}_{speaker}_{take}.wav`; takes 0-1 are the test split."""
    root = tmp_path_factory.mktemp("named")
    rng = np.random.default_rng(0)
    for label, pitch in TONES.items():
        for speaker in ("anna", "bob"):
            for take in range(8):
                write_wav(tone(rng, pitch), root / f"{label}_{speaker}_{take}.wav")
    return root


@pytest.fixture(scope="module")
def tone_bundle(named_tones: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny classifier fitted through the CLI (a few seconds)."""
    out = tmp_path_factory.mktemp("bundles") / "tones"
    argv = ["fit-classifier", "--data", str(named_tones), "--out", str(out)]
    argv += ["--label-pattern", NAME_PATTERN, "--test-pattern", r"_[01]\.wav$"]
    argv += ["--loso", "speaker", "--arch", "tc", "--normalise", "clip"]
    argv += ["--warp", "0.1"]
    assert main([*argv, *TINY, "--epochs", "20", "--seed", "1"]) == 0
    return out


def make_folder_layout(root: Path, rng: np.random.Generator, n_train: int, n_test: int) -> Path:
    for label, pitch in TONES.items():
        for i in range(n_train):
            write_wav(tone(rng, pitch), root / "train" / label / f"{i}.wav")
        for i in range(n_test):
            write_wav(tone(rng, pitch), root / "test" / label / f"{i}.wav")
    return root


# --- layouts (no TensorFlow) ---------------------------------------------------------


def test_folder_layout_labels_come_from_class_folders(tmp_path: Path) -> None:
    make_folder_layout(tmp_path, np.random.default_rng(0), n_train=3, n_test=2)
    clips = discover_labelled(tmp_path)
    assert len(clips) == 15
    assert {c.label for c in clips} == set(TONES)
    assert sum(c.split == "test" for c in clips) == 6
    assert all(c.path.parent.name == c.label for c in clips)


def test_name_layout_reads_labels_splits_and_groups(named_tones: Path) -> None:
    clips = discover_labelled(named_tones, NAME_PATTERN, r"_[01]\.wav$", r"_(?P<take>\d+)\.wav$")
    test = [c for c in clips if c.split == "test"]
    assert len(clips) == 48 and len(test) == 12
    assert all(re.search(r"_[01]\.wav$", c.path.name) for c in test)
    first = next(c for c in clips if c.path.name == "high_anna_0.wav")
    assert (first.label, first.groups) == ("high", {"speaker": "anna", "take": "0"})


def test_numeric_labels_sort_by_value() -> None:
    assert sorted(["10", "2", "b", "1", "a"], key=label_key) == ["1", "2", "10", "a", "b"]


def test_validation_split_is_stratified_and_seeded() -> None:
    y = np.repeat(np.arange(4), [10, 10, 5, 2])
    fit, val = split_validation(y, 0.2, seed=3)
    assert sorted([*fit, *val]) == list(range(len(y)))
    assert np.bincount(y[val]).tolist() == [2, 2, 1, 1]
    again = split_validation(y, 0.2, seed=3)
    assert np.array_equal(val, again[1]) and np.array_equal(fit, again[0])


def test_folder_without_train_is_a_dataset_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no audio files"):
        discover_labelled(tmp_path)


def _layout(case: str, root: Path) -> list[str]:
    """Build a broken dataset under root; return the extra CLI arguments."""
    rng = np.random.default_rng(0)
    if case == "empty folder":
        return []
    if case == "missing folder":
        return ["--data", str(root / "nope")]
    if case == "one class":
        for i in range(3):
            write_wav(tone(rng, 300), root / "train" / "low" / f"{i}.wav")
        return []
    if case == "files outside class folders":
        write_wav(tone(rng, 300), root / "train" / "a.wav")
        return []
    if case == "empty class folder":
        make_folder_layout(root, rng, 2, 0)
        (root / "train" / "empty").mkdir()
        return []
    if case == "label pattern without label group":
        write_wav(tone(rng, 300), root / "low_anna_0.wav")
        return ["--label-pattern", r"^(?P<digit>[a-z]+)_"]
    if case == "file not matching the label pattern":
        write_wav(tone(rng, 300), root / "low_anna_0.wav")
        write_wav(tone(rng, 300), root / "README.wav")
        return ["--label-pattern", NAME_PATTERN]
    if case == "invalid regex":
        write_wav(tone(rng, 300), root / "low_anna_0.wav")
        return ["--label-pattern", "(?P<label>"]
    if case == "leave-one-out group not in the patterns":
        for name in ("low_anna_0", "low_anna_1", "mid_anna_0", "mid_bob_1"):
            write_wav(tone(rng, 300), root / f"{name}.wav")
        return ["--label-pattern", NAME_PATTERN, "--loso", "take"]
    if case == "leave-one-out over one speaker":
        for label in ("low", "mid"):
            for take in range(2):
                write_wav(tone(rng, 300), root / f"{label}_anna_{take}.wav")
        return ["--label-pattern", NAME_PATTERN, "--loso", "speaker"]
    if case == "a class only one speaker said":
        for name in ("low_anna_0", "low_anna_1", "low_bob_0", "mid_anna_0", "mid_anna_1"):
            write_wav(tone(rng, 300), root / f"{name}.wav")
        return ["--label-pattern", NAME_PATTERN, "--loso", "speaker"]
    if case == "unreadable audio":
        make_folder_layout(root, rng, 2, 0)
        (root / "train" / "low" / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
        return []
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case",
    [
        "empty folder",
        "missing folder",
        "one class",
        "files outside class folders",
        "empty class folder",
        "label pattern without label group",
        "file not matching the label pattern",
        "invalid regex",
        "leave-one-out group not in the patterns",
        "leave-one-out over one speaker",
        "a class only one speaker said",
        "unreadable audio",
    ],
)
def test_fit_classifier_rejects_bad_layouts_in_one_line(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    extra = _layout(case, data)
    argv = ["fit-classifier", "--data", str(data), "--out", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    # stderr may also hold a progress bar (redrawn with \r); the error is one line of its own
    lines = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip()]
    assert lines[-1].startswith("error: ") and sum("error" in line for line in lines) == 1, lines
    assert not (tmp_path / "out").exists()


# --- leave-one-group-out folds and augmentation (no TensorFlow) ---------------------------


def assert_no_leak(clips: list, key: str) -> list[str]:
    """group_folds over clips: every clip held out exactly once, never beside its group."""
    folds = group_folds(clips, key)
    for value, train_idx, test_idx in folds:
        assert {clips[i].groups[key] for i in test_idx} == {value}
        assert value not in {clips[i].groups[key] for i in train_idx}
        assert sorted([*train_idx, *test_idx]) == list(range(len(clips)))
    held = np.concatenate([test_idx for *_, test_idx in folds])
    assert sorted(held) == list(range(len(clips)))
    return [value for value, *_ in folds]


def test_speaker_folds_never_put_a_speaker_on_both_sides(named_tones: Path) -> None:
    clips = discover_labelled(named_tones, NAME_PATTERN, r"_[01]\.wav$")
    assert assert_no_leak(clips, "speaker") == ["anna", "bob"]


@pytest.mark.realdata
def test_fsdd_speaker_folds_from_a_group_pattern() -> None:
    if not FSDD.is_dir():
        pytest.skip(f"real data not available: {FSDD} is absent")
    clips = discover_labelled(FSDD, r"^(?P<label>\d)_", None, r"_(?P<speaker>[a-z]+)_\d+\.wav$")
    speakers = assert_no_leak(clips, "speaker")
    assert len(speakers) == 5 and all(
        len(test_idx) == 500 for *_, test_idx in group_folds(clips, "speaker")
    )


def test_unperturbed_copy_is_the_service_features() -> None:
    params = feature_params(SR, 0.5, 16)
    audio = tone(np.random.default_rng(0), 900.0)
    image = perturbed_image(audio, params, AugmentConfig(), np.random.default_rng(0))
    assert np.array_equal(image, audio_to_image(audio, SR, params))


def test_perturbed_copies_are_seeded_and_differ_from_the_clip() -> None:
    params = feature_params(SR, 0.5, 16)
    rng = np.random.default_rng(1)
    audios = [tone(rng, 300.0), tone(rng, 2400.0)]
    aug = AugmentConfig(copies=2, speed=0.1, tempo=0.1, gain_db=6, noise_snr_db=20)
    copies = perturbed_copies(audios, params, aug, seed=3)
    assert copies.shape == (2, 2, 16, params.width) and copies.dtype == np.float32
    assert copies.min() >= 0 and copies.max() <= 1
    assert np.array_equal(copies, perturbed_copies(audios, params, aug, seed=3))
    for audio, own in zip(audios, copies, strict=True):
        original = audio_to_image(audio, SR, params)
        assert all(np.abs(c - original).mean() > 1e-3 for c in own)


def test_spec_augment_masks_whole_bands_and_frames_with_the_mean() -> None:
    batch = np.random.default_rng(0).uniform(0, 1, (8, 16, 30)).astype(np.float32)
    before = batch.copy()
    aug = AugmentConfig(freq_masks=2, freq_mask_width=3, time_masks=2, time_mask_width=5)
    out = spec_augment(batch, aug, np.random.default_rng(7))
    assert np.array_equal(batch, before)
    assert np.array_equal(out, spec_augment(batch, aug, np.random.default_rng(7)))
    assert (out != batch).any()
    for img, masked in zip(batch, out, strict=True):
        changed = masked != img
        rows, cols = changed.all(axis=1), changed.all(axis=0)
        assert np.array_equal(changed, rows[:, None] | cols[None, :])
        assert np.allclose(masked[changed], img.mean())


def test_warp_matrix_moves_a_tone_to_the_band_of_its_warped_frequency() -> None:
    params = feature_params(SR, 0.5, 24, n_fft=128, hop_length=64)
    centres = band_centres(params)
    assert centres.shape == (24,) and np.all(np.diff(centres) > 0)
    assert np.array_equal(warp_matrix(centres, 1.0), np.eye(24, dtype=np.float32))
    image = audio_to_image(tone(np.random.default_rng(0), 900.0), SR, params)
    source = int(image.mean(axis=1).argmax())
    for alpha in (0.7, 1.3):
        warped = warp_matrix(centres, alpha) @ image
        expected = int(np.abs(centres - centres[source] * alpha).argmin())
        assert abs(int(warped.mean(axis=1).argmax()) - expected) <= 1
        assert abs(expected - source) >= 2  # the tone did move


def test_warp_batch_is_seeded_and_warps_every_image_by_its_own_factor() -> None:
    params = feature_params(SR, 0.5, 16)
    batch = np.random.default_rng(0).uniform(0.2, 0.8, (6, 16, 30)).astype(np.float32)
    before = batch.copy()
    centres = band_centres(params)
    warped = warp_batch(batch, centres, 0.15, np.random.default_rng(4))
    assert np.array_equal(batch, before)
    assert np.array_equal(warped, warp_batch(batch, centres, 0.15, np.random.default_rng(4)))
    assert warped.shape == batch.shape and warped.dtype == np.float32
    alphas = np.random.default_rng(4).uniform(0.85, 1.15, 6)
    for img, out, alpha in zip(batch, warped, alphas, strict=True):
        assert np.allclose(out, warp_matrix(centres, alpha) @ img, atol=1e-6)
        assert np.abs(out - img).mean() > 1e-4


# --- a tiny end-to-end fit -------------------------------------------------------------


@pytest.mark.slow
def test_fit_classifier_writes_a_classifier_bundle(tone_bundle: Path) -> None:
    manifest = json.loads((tone_bundle / "manifest.json").read_text())
    assert manifest["kind"] == "classifier"
    assert manifest["labels"] == ["high", "low", "mid"]
    assert manifest["input"] == {"name": "spectrogram", "shape": [None, 16, 32, 1]}
    assert manifest["output"] == {"name": "probabilities", "shape": [None, 3]}
    assert manifest["features"]["clip_seconds"] == 0.5
    assert manifest["training"]["onnx_keras_max_abs_diff"] <= 1e-4
    assert {"classifier.onnx", "classifier.keras", "report.json", "report.png"} <= set(
        manifest["files"]
    )
    evaluation = manifest["evaluation"]
    assert evaluation["split"] == "test" and evaluation["n"] == 12
    assert evaluation["accuracy"] == 1.0
    assert set(evaluation["groups"]["speaker"]) == {"anna", "bob"}
    assert np.array(evaluation["confusion"]).trace() == 12
    report = json.loads((tone_bundle / "report.json").read_text())
    assert len(report["clips"]) == 12
    assert manifest["training"]["classifier"]["normalise"] == "clip"
    assert manifest["training"]["augment"]["warp"] == 0.1
    loso = evaluation["leave_one_group_out"]
    assert report["metrics"]["leave_one_group_out"] == loso
    assert loso["group"] == "speaker" and set(loso["folds"]) == {"anna", "bob"}
    assert all(f["n"] == 24 for f in loso["folds"].values())  # all of a speaker's takes
    accs = [f["accuracy"] for f in loso["folds"].values()]
    assert loso["mean"] == pytest.approx(np.mean(accs)) and loso["worst"] == min(accs)
    assert loso["worst"] >= 0.5  # chance is 1/3; 21 clips and 20 epochs per fold


@pytest.mark.slow
def test_loso_only_prints_the_leave_one_speaker_out_table(
    named_tones: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fit-classifier", "--data", str(named_tones), "--label-pattern", NAME_PATTERN]
    argv += ["--loso", "speaker", "--loso-only", "--normalise", "clip", "--copies", "1"]
    argv += ["--speed", "0.05", "--gain-db", "6", "--freq-masks", "1", "--time-masks", "1"]
    argv += ["--warp", "0.1"]
    assert main([*argv, *TINY, "--epochs", "8", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    table = out[out.index("leave-one-speaker-out (2 fits)") :].splitlines()
    rows = {line.split()[0]: float(line.split()[1]) for line in table[2:]}
    assert set(rows) == {"anna", "bob", "mean", "worst"}
    assert rows["mean"] == pytest.approx((rows["anna"] + rows["bob"]) / 2, abs=1e-4)
    assert rows["worst"] == min(rows["anna"], rows["bob"]) and rows["worst"] >= 0.5


@pytest.mark.slow
def test_loso_groups_fits_only_the_named_folds(
    named_tones: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fit-classifier", "--data", str(named_tones), "--label-pattern", NAME_PATTERN]
    argv += ["--loso", "speaker", "--loso-only", "--arch", "tc", *TINY, "--epochs", "1"]
    assert main([*argv, "--loso-groups", "bob"]) == 0
    out = capsys.readouterr().out
    assert "leave-one-speaker-out (1 fits)" in out and "anna" not in out
    assert main([*argv, "--loso-groups", "bob,carol"]) == 2
    assert "--loso-groups: no speaker carol" in capsys.readouterr().err


def test_extra_clips_only_ever_train(named_tones: Path, tmp_path: Path) -> None:
    """--extra-train clips are read with the data's label pattern, all in the fit set."""
    rng = np.random.default_rng(5)
    for label, pitch in TONES.items():
        for take in range(3):
            write_wav(tone(rng, pitch), tmp_path / "extra" / f"{label}_synth_{take}.wav")
    extra = discover_extra(tmp_path / "extra", NAME_PATTERN)
    assert len(extra) == 9 and {c.split for c in extra} == {"train"}
    params = feature_params(SR, 0.5, 16)
    clips = discover_labelled(named_tones, NAME_PATTERN)
    labels = sorted({c.label for c in clips}, key=label_key)
    fit_set = extra_fit_set(extra, labels, params, AugmentConfig(copies=2, gain_db=6), 0)
    assert fit_set is not None
    ex, ey, ec = fit_set
    assert ex.shape == (9, params.height, params.width) and ec is not None
    assert ec.shape == (9, 2, params.height, params.width)
    assert [labels[i] for i in ey] == [c.label for c in extra]
    x = np.zeros((4, params.height, params.width), np.float32)
    xs, ys, cs = with_extra(x, np.zeros(4, int), None, fit_set)
    assert xs.shape[0] == ys.shape[0] == 13 and cs is None  # no copies unless both have them
    assert extra_fit_set([], labels, params, AugmentConfig(), 0) is None
    with pytest.raises(DatasetError, match="not in the data: high"):
        extra_fit_set(extra, ["low", "mid"], params, AugmentConfig(), 0)
    with pytest.raises(DatasetError, match=r"--extra-train: .* is not a folder"):
        discover_extra(tmp_path / "nowhere", NAME_PATTERN)


def test_fit_with_extra_clips_records_them_and_holds_none_out(
    named_tones: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(6)
    for label, pitch in TONES.items():
        for take in range(4):
            write_wav(tone(rng, pitch), tmp_path / "extra" / f"{label}_synth_{take}.wav")
    out = tmp_path / "bundle"
    argv = ["fit-classifier", "--data", str(named_tones), "--out", str(out)]
    argv += ["--label-pattern", NAME_PATTERN, "--test-pattern", r"_[01]\.wav$"]
    argv += ["--loso", "speaker", "--arch", "tc", "--extra-train", str(tmp_path / "extra")]
    assert main([*argv, *TINY, "--epochs", "1"]) == 0
    training = json.loads((out / "manifest.json").read_text())["training"]
    assert training["clips"] == {"train": 36, "test": 12} and training["clips_extra"] == 12
    assert training["clips_validation"] == 3  # one per class, of the data's own clips
    assert training["clips_fit"] == 36 - 3 + 12
    loso = json.loads((out / "manifest.json").read_text())["evaluation"]["leave_one_group_out"]
    assert set(loso["folds"]) == {"anna", "bob"}  # the extra clips are never held out
    assert all(f["n"] == 24 for f in loso["folds"].values())


def test_loso_only_needs_loso(named_tones: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["fit-classifier", "--data", str(named_tones), "--loso-only"])
    assert e.value.code == 2


@pytest.mark.slow
def test_tone_bundle_classifies_new_tones_through_the_service_runtime(
    tone_bundle: Path, tmp_path: Path
) -> None:
    runtime = open_runtime(tone_bundle)
    assert isinstance(runtime, ClassifierRuntime) and runtime.ready, runtime.reason
    assert runtime.manifest is not None and runtime.manifest.labels is not None
    rng = np.random.default_rng(123)
    truth, images = [], []
    for label, pitch in TONES.items():
        for i in range(4):
            path = write_wav(tone(rng, pitch), tmp_path / f"{label}{i}.wav")
            images.append(prepare(path.read_bytes(), runtime.manifest.features).image)
            truth.append(label)
    probs = runtime.probabilities(np.stack(images))
    assert probs.shape == (12, 3)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert [runtime.manifest.labels[k] for k in probs.argmax(axis=1)] == truth


@pytest.mark.slow
def test_onnx_and_keras_classifiers_agree(tone_bundle: Path) -> None:
    import keras

    runtime = open_runtime(tone_bundle)
    assert isinstance(runtime, ClassifierRuntime)
    model = keras.models.load_model(tone_bundle / "classifier.keras")
    batch = np.random.default_rng(5).uniform(0, 1, (6, 16, 32)).astype(np.float32)
    diff = np.abs(runtime.probabilities(batch) - model(batch[..., None]).numpy()).max()
    assert diff <= 1e-4


# --- the committed default bundle on real speech ------------------------------------------


def test_committed_digits_bundle_records_its_unseen_speaker_accuracy() -> None:
    manifest = json.loads((DIGITS / "manifest.json").read_text())
    loso = manifest["evaluation"]["leave_one_group_out"]
    assert loso["group"] == "speaker" and len(loso["folds"]) == 5
    assert all(f["n"] == 500 for f in loso["folds"].values())  # every take of a speaker
    accs = [f["accuracy"] for f in loso["folds"].values()]
    assert loso["mean"] == pytest.approx(np.mean(accs)) and loso["worst"] == min(accs)
    assert manifest["training"]["augment"]["copies"] > 0  # the recipe it was measured with


@pytest.mark.realdata
def test_committed_digits_bundle_recognises_fsdd_test_takes() -> None:
    if not FSDD.is_dir():
        pytest.skip(f"real data not available: {FSDD} is absent")
    from training.classifier.evaluate import evaluate_classifier

    clips = discover_labelled(FSDD, r"^(?P<label>\d)_(?P<speaker>[a-z]+)_", r"_[0-4]\.wav$")
    test = [c for c in clips if c.split == "test"]
    assert len(test) == 250
    metrics = evaluate_classifier(DIGITS, test, write=False)
    assert metrics["accuracy"] >= 0.97
    assert all(r["accuracy"] >= 0.9 for r in metrics["groups"]["speaker"].values())
