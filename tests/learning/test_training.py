"""The training package through its CLI and functions, on small generated data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.features import FeatureParams, load_file, prepare
from service.models.bundle import read_manifest, sha256_file, verify_files
from service.models.runtimes import AnomalyRuntime, open_runtime
from tests.conftest import shared_data, tone, wav_bytes
from training.__main__ import main
from training.datasets import discover, parse_name

TINY = ["--filters", "4,8,8", "--latent-dim", "8", "--n-mels", "32", "--width", "32"]


def test_synth_writes_the_dcase2021_layout(tmp_path: Path) -> None:
    assert main(["synth", "--out", str(tmp_path), "--train", "6", "--test", "2"]) == 0
    assert len(list((tmp_path / "train").glob("*.wav"))) == 6 + 4  # + target-domain clips
    clips = discover(tmp_path)
    test = [c for c in clips if c.split == "test"]
    assert {c.label for c in test} == {"normal", "anomaly"}
    assert {c.domain for c in test} == {"source", "target"}


@pytest.mark.parametrize(
    ("folder", "name", "label", "domain", "section"),
    [
        ("train", "normal_id_02_00000001.wav", "normal", "source", "02"),  # DCASE 2020
        ("test", "anomaly_id_04_00000007.wav", "anomaly", "source", "04"),
        ("target_test", "section_01_target_test_anomaly_0003_a_b.wav", "anomaly", "target", "01"),
        ("test", "section_02_source_test_normal_0011_vel_4.wav", "normal", "source", "02"),
        ("test", "section_00_0042.wav", None, "source", "00"),  # unlabelled evaluation clip
    ],
)
def test_names_give_label_domain_and_section(
    folder: str, name: str, label: str | None, domain: str, section: str
) -> None:
    split = "train" if folder == "train" else "test"
    clip = parse_name(Path(name), split, folder)  # type: ignore[arg-type]
    assert (clip.label, clip.domain, clip.section) == (label, domain, section)


def test_fit_writes_a_complete_verified_bundle(tiny_bundle: Path) -> None:
    m = read_manifest(tiny_bundle)
    verify_files(tiny_bundle, m)  # every file's sha256 matches
    for f in ("encoder.onnx", "autoencoder.onnx", "autoencoder.keras", "report.png"):
        assert f in m.files and (tiny_bundle / f).stat().st_size > 0
    assert m.files["encoder.onnx"] == sha256_file(tiny_bundle / "encoder.onnx")
    assert m.kind == "anomaly" and m.features.height == 32
    assert m.thresholds is not None
    assert 0 < m.thresholds.needs_maintenance < m.thresholds.severe
    assert m.thresholds.method == "crossfit_gamma_tail"
    assert m.calibration is not None and m.calibration.false_alarm_rate == 0.01
    assert m.training["onnx_keras_max_abs_diff"] <= 1e-4
    assert m.evaluation is not None and m.evaluation["hmean"] is not None
    assert set(m.evaluation["groups"]) == {"section_00_source", "section_00_target"}
    report = json.loads((tiny_bundle / "report.json").read_text())
    assert len(report["clips"]) == 16


def test_onnx_encoder_matches_keras(tiny_bundle: Path) -> None:
    from training.anomaly.autoencoder import load_autoencoder, scoring_encoder_for
    from training.export import onnx_run

    ae = load_autoencoder(tiny_bundle / "autoencoder.keras")
    encoder = scoring_encoder_for(ae, read_manifest(tiny_bundle).training["autoencoder"])
    x = np.random.default_rng(0).uniform(0, 1, (5, 32, 32, 1)).astype(np.float32)
    onnx_latent = onnx_run((tiny_bundle / "encoder.onnx").read_bytes(), x)
    assert np.abs(onnx_latent - encoder(x).numpy()).max() <= 1e-4
    recon = onnx_run((tiny_bundle / "autoencoder.onnx").read_bytes(), x)
    assert np.abs(recon - ae(x).numpy()).max() <= 1e-4


@pytest.mark.parametrize("window", [None, 0.4])
def test_training_and_service_paths_give_identical_features(
    synth_dir: Path, window: float | None
) -> None:
    from training.anomaly.evaluate import load_windows

    clips = discover(synth_dir)[:3]
    params = FeatureParams(height=32, n_mels=32, width=32, window_seconds=window)
    training_path, owners = load_windows(clips, params, "parity")
    service = [prepare(c.path.read_bytes(), params).images for c in clips]
    assert training_path.dtype == service[0].dtype == np.float32
    np.testing.assert_array_equal(training_path, np.concatenate(service))
    assert owners.tolist() == [i for i, s in enumerate(service) for _ in range(len(s))]
    # 1-s clips: 32 frames; 0.4-s windows of 13 frames every 6 → starts 0, 6, 12, 18 and 19
    assert len(service[0]) == (1 if window is None else 5)


def test_log_mel_agrees_with_librosa() -> None:
    import librosa

    from service.features import log_mel

    params = FeatureParams()
    audio = tone(1.0, 1000.0)
    ours = log_mel(audio, params)
    ref = librosa.power_to_db(
        librosa.feature.melspectrogram(
            y=audio,
            sr=16000,
            n_fft=1024,
            hop_length=512,
            n_mels=64,
            fmax=8000,
            power=2.0,
            pad_mode="reflect",
        ),
        ref=1.0,
        top_db=None,
    )
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-2)


def test_same_seed_gives_the_same_bundle_metrics(synth_dir: Path, tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        argv = ["fit", "--data", str(synth_dir), "--out", str(out), "--epochs", "2", *TINY]
        # the autoencoder's features in the score, so its training must be deterministic too
        assert main([*argv, "--pooling", "time_stats+band_stats"]) == 0
        m = read_manifest(out)
        runs.append((m.evaluation, m.training["heldout_scores"], m.thresholds))
    assert runs[0] == runs[1]


def test_band_stats_detector_does_not_depend_on_the_training_seed(
    synth_dir: Path, tmp_path: Path
) -> None:
    """band_stats alone scores statistics of the input, fitted on every training clip: the
    autoencoder's random start cannot move the scores. (The seed draws the held-out clips,
    whose mean distance is the score's unit: scores may differ by one constant factor.)"""
    scores = []
    for seed in ("0", "1"):
        out = tmp_path / seed
        argv = ["fit", "--data", str(synth_dir), "--out", str(out), "--epochs", "2", *TINY]
        assert main([*argv, "--seed", seed, "--pooling", "band_stats"]) == 0
        assert read_manifest(out).training["autoencoder"]["pooling"] == "band_stats"
        report = json.loads((out / "report.json").read_text())
        scores.append({c["file"]: c["score"] for c in report["clips"]})
    assert scores[0].keys() == scores[1].keys()
    ratio = np.array(list(scores[0].values())) / np.array(list(scores[1].values()))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)


def test_evaluate_prints_the_table_and_writes_the_report(
    tiny_bundle: Path, synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle, bundle)
    before = (bundle / "report.json").stat().st_mtime_ns
    assert main(["evaluate", "--data", str(synth_dir), "--model", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert "section_00_source" in out and "harmonic mean" in out
    assert (bundle / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert (bundle / "report.json").stat().st_mtime_ns > before
    verify_files(bundle, read_manifest(bundle))


def test_spectrograms_command_writes_pngs_that_score_like_the_audio(
    synth_dir: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "png"
    rc = main(
        [
            "spectrograms",
            "--in",
            str(synth_dir / "source_test"),
            "--out",
            str(out),
            "--model",
            str(tiny_bundle),
        ]
    )
    assert rc == 0
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 8 and pngs[0].stem.endswith("_w000")  # 1-s clips: one window each
    rt = open_runtime(tiny_bundle)
    assert isinstance(rt, AnomalyRuntime)
    params = read_manifest(tiny_bundle).features
    wav = synth_dir / "source_test" / f"{pngs[0].stem.removesuffix('_w000')}.wav"
    from_audio = rt.score(load_file(str(wav), params).images)[0]
    from_png = rt.score(load_file(str(pngs[0]), params).image[None])[0]
    assert from_png == pytest.approx(from_audio, rel=0.05)


def test_fit_reads_the_seed_image_layout(
    synth_dir: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    images = tmp_path / "SpectrogramImage"
    for sub in ("train", "source_test", "target_test"):
        assert (
            main(
                [
                    "spectrograms",
                    "--in",
                    str(synth_dir / sub),
                    "--out",
                    str(images / sub),
                    "--model",
                    str(tiny_bundle),
                ]
            )
            == 0
        )
    out = tmp_path / "img-bundle"
    assert main(["fit", "--data", str(tmp_path), "--out", str(out), "--epochs", "2", *TINY]) == 0
    m = read_manifest(out)
    assert (m.features.height, m.features.width) == (32, 32)
    assert m.evaluation is not None


def _bad_dataset(kind: str, root: Path) -> Path:
    root.mkdir()
    if kind == "anomalies_only":
        for i in range(4):
            (root / f"anomaly_id_00_{i:08d}.wav").write_bytes(wav_bytes(tone(0.5, seed=i)))
    elif kind == "unreadable":
        for i in range(4):
            (root / f"normal_id_00_{i:08d}.wav").write_bytes(wav_bytes(tone(0.5, seed=i)))
        (root / "normal_id_00_00000099.wav").write_bytes(b"RIFF....WAVEjunk")
    elif kind == "too_few":
        (root / "normal_id_00_00000000.wav").write_bytes(wav_bytes(tone(0.5)))
    return root


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "no audio or image files"),
        ("anomalies_only", "no normal training clips"),
        ("unreadable", "1 unreadable file(s): normal_id_00_00000099.wav"),
        ("too_few", "at least 4 normal training clips"),
    ],
)
def test_fit_refuses_a_bad_dataset_and_writes_nothing(
    kind: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _bad_dataset(kind, tmp_path / "data")
    out = tmp_path / "artifacts" / "bad"
    strict = ["--strict-files"] if kind == "unreadable" else []  # else: skipped, a warning
    rc = main(["fit", "--data", str(data), "--out", str(out), "--epochs", "1", *TINY, *strict])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
    assert rc == 2
    assert err.startswith("error: ") and message in err
    assert not out.exists()
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").iterdir())


@pytest.mark.realdata
def test_fit_on_real_machine_recordings_and_score_them(tmp_path: Path) -> None:
    data = shared_data("machine-normal")
    out = tmp_path / "machine"
    assert main(["fit", "--data", str(data), "--out", str(out), "--epochs", "3", *TINY]) == 0
    rt = open_runtime(out)
    assert isinstance(rt, AnomalyRuntime) and rt.ready
    m = read_manifest(out)
    assert m.training["clips"] == 40 and m.evaluation is None  # normal clips only: no metrics
    clips = sorted(data.glob("*.wav"))[:5]
    scores = rt.score(np.stack([load_file(str(c), m.features).image for c in clips]))
    # a flat folder of one machine (normal_id_00_…): one operating condition
    assert rt.conditions == ["section_00_source"] and scores.shape == (5, 1)
    assert np.isfinite(scores).all() and (scores >= 0).all()
    # a clip the model never heard, far from this machine: white noise at full scale
    noise = np.random.default_rng(0).uniform(-1, 1, 16000 * 10).astype(np.float32)
    odd = rt.verdict(rt.score(prepare(wav_bytes(noise), m.features).images))
    assert odd.level != "normal" and odd.condition_source == "only"
    assert odd.score > 1.3 * m.thresholds.needs_maintenance  # type: ignore[union-attr]


def test_input_stats_pooling_exports_band_stats_and_scores_in_the_service(
    synth_dir: Path, tmp_path: Path
) -> None:
    import keras

    from training.anomaly.autoencoder import scoring_encoder
    from training.export import onnx_run

    out = tmp_path / "stats_in"
    argv = ["fit", "--data", str(synth_dir), "--out", str(out), "--epochs", "1", *TINY]
    assert main([*argv, "--pooling", "time_stats+input", "--detector-clips", "fit"]) == 0
    m = read_manifest(out)
    assert m.output.shape == [None, 2 * 4 * 8 + 2 * 32]  # last block (4 rows x 8) + 32 bands
    assert m.scoring["detector_clips"] == "fit"
    x = np.random.default_rng(0).uniform(0, 1, (3, 32, 32, 1)).astype(np.float32)
    latent = onnx_run((out / "encoder.onnx").read_bytes(), x)
    ae = keras.models.load_model(out / "autoencoder.keras", compile=False)
    assert np.abs(latent - scoring_encoder(ae, "time_stats+input")(x).numpy()).max() <= 1e-4
    # the last 2·32 values are every band's mean and std over time of the input
    np.testing.assert_allclose(latent[:, -64:-32], x[..., 0].mean(axis=2), atol=1e-5)
    np.testing.assert_allclose(latent[:, -32:], x[..., 0].std(axis=2), atol=1e-4)
    runtime = open_runtime(out)
    assert isinstance(runtime, AnomalyRuntime)
    assert np.isfinite(runtime.score(x[..., 0])).all()


def band_stats_reference(x: np.ndarray, pool: int, flux: bool) -> np.ndarray:
    """(b, h, w) → numpy BandStats: [means, stds, peak fluxes] of h/pool averaged bands."""
    b, h, w = x.shape
    bands = x.reshape(b, h // pool, pool, w).mean(axis=2)
    stats = [bands.mean(axis=2), bands.std(axis=2)]
    if flux:
        stats.append(np.abs(np.diff(bands, axis=2)).max(axis=2))
    return np.concatenate(stats, axis=1)


@pytest.mark.parametrize(("pool", "flux"), [(2, True), (4, False)])
def test_band_stats_pooling_exports_band_statistics_and_scores_in_the_service(
    synth_dir: Path, tmp_path: Path, pool: int, flux: bool
) -> None:
    from training.export import onnx_run

    out = tmp_path / "bands"
    argv = ["fit", "--data", str(synth_dir), "--out", str(out), "--epochs", "1", *TINY]
    flags = ["--band-pool", str(pool), "--band-flux" if flux else "--no-band-flux"]
    assert main([*argv, "--pooling", "band_stats", *flags]) == 0
    m = read_manifest(out)
    assert m.output.shape == [None, (3 if flux else 2) * 32 // pool]
    x = np.random.default_rng(0).uniform(0, 1, (3, 32, 32, 1)).astype(np.float32)
    latent = onnx_run((out / "encoder.onnx").read_bytes(), x)
    np.testing.assert_allclose(latent, band_stats_reference(x[..., 0], pool, flux), atol=1e-4)
    runtime = open_runtime(out)
    assert isinstance(runtime, AnomalyRuntime)
    assert np.isfinite(runtime.score(x[..., 0])).all()


def test_band_pool_must_divide_the_mel_bands(
    synth_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["fit", "--data", str(synth_dir), "--out", str(tmp_path / "b"), "--epochs", "1"]
    with pytest.raises(SystemExit) as exc:
        main([*argv, *TINY, "--band-pool", "3"])
    assert exc.value.code == 2
    assert "--band-pool 3 must divide --n-mels 32" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_minmax_ae_input_makes_the_conv_part_level_independent() -> None:
    # --ae-input minmax: the flattened conv maps of a window and of a gain/offset change of
    # it are the same; the band statistics beside them still see the change
    from training.anomaly.autoencoder import AutoencoderConfig, build

    cfg = AutoencoderConfig(filters=(4, 8), pooling="flat+band_stats", ae_input="minmax")
    model = build(16, 16, cfg)
    x = np.random.default_rng(0).uniform(0.2, 0.6, (3, 16, 16, 1)).astype(np.float32)
    a, b = model.encoder(x).numpy(), model.encoder(0.5 * x + 0.3).numpy()
    flat = 4 * 4 * 8
    np.testing.assert_allclose(a[:, :flat], b[:, :flat], atol=1e-5)
    assert np.abs(a[:, flat:] - b[:, flat:]).max() > 0.05


def test_both_ae_input_feeds_the_convolutions_the_window_min_max_scaled_and_as_is() -> None:
    # --ae-input both: channel 0 of what the convolutions see is the window min-max scaled,
    # channel 1 the window as the features scaled it, so a gain/offset change moves the conv
    # part; the autoencoder reconstructs both channels and the exported encoder agrees
    import keras

    from training.anomaly.autoencoder import AutoencoderConfig, build
    from training.export import onnx_run, to_onnx

    cfg = AutoencoderConfig(filters=(4, 8), pooling="flat+band_stats", ae_input="both")
    model = build(16, 16, cfg)
    x = np.random.default_rng(0).uniform(0.2, 0.6, (3, 16, 16, 1)).astype(np.float32)
    views = keras.Model(model.autoencoder.inputs[0], model.autoencoder.get_layer("views").output)
    seen = views(x).numpy()
    lo, hi = x.min(axis=(1, 2, 3), keepdims=True), x.max(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(seen[..., :1], (x - lo) / (hi - lo), atol=1e-6)
    np.testing.assert_allclose(seen[..., 1:], x, atol=1e-7)
    assert model.autoencoder(x).shape == (3, 16, 16, 2)
    a, b = model.encoder(x).numpy(), model.encoder(0.5 * x + 0.3).numpy()
    flat = 4 * 4 * 8
    assert np.abs(a[:, :flat] - b[:, :flat]).max() > 1e-3
    onnx = to_onnx(model.encoder, "spectrogram", "latent")
    np.testing.assert_allclose(onnx_run(onnx, x), a, atol=1e-5)


def test_centred_ae_input_removes_a_gain_change_but_keeps_the_contrast() -> None:
    # --ae-input centred: the convolutions see the window minus its own mean (+0.5, clipped to
    # [0, 1]): an offset in dB (a gain change) leaves the conv part as it was, a change of
    # contrast does not; the exported encoder agrees with Keras
    import keras

    from training.anomaly.autoencoder import AutoencoderConfig, build
    from training.export import onnx_run, to_onnx

    cfg = AutoencoderConfig(filters=(4, 8), pooling="flat+band_stats", ae_input="centred")
    model = build(16, 16, cfg)
    x = np.random.default_rng(0).uniform(0.2, 0.6, (3, 16, 16, 1)).astype(np.float32)
    seen = keras.Model(model.autoencoder.inputs[0], model.autoencoder.get_layer("centred").output)
    expected = x - x.mean(axis=(1, 2, 3), keepdims=True) + 0.5
    np.testing.assert_allclose(seen(x).numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(seen(np.ones_like(x)).numpy(), 0.5, atol=1e-6)
    a = model.encoder(x).numpy()
    flat = 4 * 4 * 8
    np.testing.assert_allclose(model.encoder(x + 0.3).numpy()[:, :flat], a[:, :flat], atol=1e-5)
    assert np.abs(model.encoder(0.5 * x).numpy()[:, :flat] - a[:, :flat]).max() > 1e-3
    onnx = to_onnx(model.encoder, "spectrogram", "latent")
    np.testing.assert_allclose(onnx_run(onnx, x), a, atol=1e-5)
