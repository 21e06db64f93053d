"""`fit --aux-labels`: the labels DCASE file names carry as an auxiliary training signal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.models.bundle import read_manifest
from service.models.runtimes import AnomalyRuntime, open_runtime
from training.__main__ import main
from training.anomaly.aux_labels import choose, clip_labels
from training.datasets import parse_name

TINY = ["--filters", "4,8,8", "--latent-dim", "8", "--n-mels", "32", "--width", "32"]
FIT = ["--epochs", "2", "--no-codec-copies", "--no-evaluate", *TINY]


def train_clips(names: list[str]) -> list:  # type: ignore[type-arg]
    return [parse_name(Path(n), "train", "train") for n in names]


def test_a_take_number_is_taken_away_and_the_speaker_stays() -> None:
    names = [
        f"section_00_source_train_normal_{i:04d}_digit_0_{spk}_{take}.wav"
        for i, (spk, take) in enumerate(
            (s, t) for s in ("george", "lucas", "nicolas") for t in range(5, 10)
        )
    ]
    chosen = choose("auto", train_clips(names))
    assert chosen is not None
    assert chosen.summary() == {
        "section_00_source_digit_0_george": 5,
        "section_00_source_digit_0_lucas": 5,
        "section_00_source_digit_0_nicolas": 5,
    }
    assert chosen.clip_class[:6] == (0, 0, 0, 0, 0, 1)


def test_an_operating_attribute_stays_and_a_rare_label_is_not_classified() -> None:
    names = [f"section_00_source_train_normal_{i:04d}_rpm_1500.wav" for i in range(6)]
    names += [f"section_00_target_train_normal_{i:04d}_rpm_2100.wav" for i in range(4)]
    names += [f"section_01_source_train_normal_{i:04d}_rpm_900.wav" for i in range(2)]
    chosen = choose("auto", train_clips(names))
    assert chosen is not None
    assert chosen.names == ("section_00_source_rpm_1500", "section_00_target_rpm_2100")
    assert chosen.clip_class == (0,) * 6 + (1,) * 4 + (-1,) * 2
    assert clip_labels(train_clips(names))[-1] == "section_01_source_rpm_900"


def test_names_that_carry_nothing_or_one_label_leave_it_off() -> None:
    flat = [f"r{i:04d}_p000.wav" for i in range(8)]
    assert choose("auto", train_clips(flat)) is None
    one = [f"section_00_source_train_normal_{i:04d}_rpm_1500.wav" for i in range(8)]
    assert choose("auto", train_clips(one)) is None
    two = one + [f"section_00_target_train_normal_{i:04d}_rpm_2100.wav" for i in range(4)]
    assert choose("off", train_clips(two)) is None
    with pytest.raises(ValueError, match="aux labels"):
        choose("on", train_clips(two))  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def two_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 source clips (rpm_1500) and 4 target clips (rpm_2100): two labels."""
    out = tmp_path_factory.mktemp("two-labels")
    argv = ["synth", "--out", str(out), "--train", "6", "--train-target", "4"]
    assert main([*argv, "--seconds", "1", "--test", "1"]) == 0
    return out


def test_auto_turns_on_for_two_labels_records_them_and_exports_the_encoder_only(
    two_labels: Path, tmp_path: Path
) -> None:
    import onnx

    on, off = tmp_path / "on", tmp_path / "off"
    argv = ["fit", "--data", str(two_labels), *FIT]
    assert main([*argv, "--out", str(on), "--aux-labels", "auto", "--aux-weight", "0.5"]) == 0
    assert main([*argv, "--out", str(off)]) == 0  # the default: off
    aux = read_manifest(on).training["aux_labels"]
    assert aux["mode"] == "auto" and aux["on"] is True and aux["weight"] == 0.5
    assert aux["labels"] == {"section_00_source_rpm_1500": 6, "section_00_target_rpm_2100": 4}
    assert np.isfinite(aux["final_val_loss"])
    assert read_manifest(off).training["aux_labels"]["on"] is False

    # the served graphs are the encoder's and the autoencoder's, not the trainer's head
    m = read_manifest(on)
    graph = onnx.load(on / "encoder.onnx").graph
    assert [i.name for i in graph.input] == ["spectrogram"]
    assert [o.name for o in graph.output] == ["latent"]
    assert m.output.shape[1] == read_manifest(off).output.shape[1]
    assert not any("aux" in n.name for n in graph.node)
    recon = onnx.load(on / "autoencoder.onnx").graph
    assert [o.name for o in recon.output] == ["reconstruction"]
    from training.anomaly.autoencoder import load_autoencoder

    ae = load_autoencoder(on / "autoencoder.keras")
    assert not [layer.name for layer in ae.layers if layer.name.startswith("aux_")]

    # the head changed what the encoder learned, and the bundle scores in the service
    x = np.random.default_rng(0).uniform(0, 1, (3, 32, 32, 1)).astype(np.float32)
    latents = []
    for bundle in (on, off):
        runtime = open_runtime(bundle)
        assert isinstance(runtime, AnomalyRuntime)
        latents.append(runtime.latents(x[..., 0]))
        assert np.isfinite(runtime.score(x[..., 0])).all()
    assert not np.allclose(latents[0], latents[1])


def test_auto_stays_off_when_the_names_carry_one_label_with_enough_clips(
    synth_dir: Path, tmp_path: Path
) -> None:
    # synth_dir: 16 source clips and 2 target clips (too few to be a label)
    out = tmp_path / "b"
    argv = ["fit", "--data", str(synth_dir), "--out", str(out), *FIT, "--aux-labels", "auto"]
    assert main(argv) == 0
    aux = read_manifest(out).training["aux_labels"]
    assert aux == {
        "mode": "auto",
        "on": False,
        "labels": {},
        "weight": None,
        "final_val_loss": None,
    }
