"""The effective bandwidth of decoded audio (service.features.input_bandwidth): where a
low-pass (a codec's, a low recording rate's) ends the sound, robust to silence and to a
spectrum that merely falls off."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from service.features import FeatureParams, effective_bandwidth, input_bandwidth, top_band_centre

SR = 16000
PARAMS = FeatureParams(fmax=6400.0)


def _noise(seconds: float = 3.0, seed: int = 0) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(round(seconds * SR))).astype(
        np.float32
    )


@pytest.mark.parametrize("cutoff", [3000.0, 4500.0, 5800.0, 7000.0])
def test_a_sharp_low_pass_ends_the_bandwidth_where_it_cuts(cutoff: float) -> None:
    sos = signal.ellip(12, 0.1, 90, cutoff, fs=SR, output="sos")
    x = signal.sosfilt(sos, _noise()).astype(np.float32)
    assert effective_bandwidth(x, SR) == pytest.approx(cutoff, abs=250)


def test_full_band_noise_and_a_gently_falling_spectrum_have_the_whole_band() -> None:
    assert effective_bandwidth(_noise(), SR) == SR / 2
    sos = signal.butter(1, 500, fs=SR, output="sos")  # -6 dB per octave above 500 Hz
    dull = signal.sosfilt(sos, _noise()).astype(np.float32) + 1e-4 * _noise(seed=1)
    assert effective_bandwidth(dull, SR) == SR / 2


def test_silence_has_no_bandwidth_and_silent_stretches_do_not_count() -> None:
    assert effective_bandwidth(np.zeros(SR, np.float32), SR) is None
    assert effective_bandwidth(np.zeros(100, np.float32), SR) is None
    x = np.zeros(10 * SR, np.float32)
    sos = signal.ellip(12, 0.1, 90, 4000, fs=SR, output="sos")
    x[3 * SR : 5 * SR] = signal.sosfilt(sos, _noise(2.0))
    assert effective_bandwidth(x, SR) == pytest.approx(4000, abs=250)


def test_a_recording_at_another_rate_carries_up_to_its_own_and_the_models_nyquist() -> None:
    from service.features import resample

    x = _noise()
    assert input_bandwidth(resample(x, SR, 8000), 8000, PARAMS) == pytest.approx(4000, abs=250)
    assert input_bandwidth(resample(x, SR, 44100), 44100, PARAMS) == pytest.approx(SR / 2, abs=250)


def test_the_top_band_centre_lies_inside_the_models_range() -> None:
    centre = top_band_centre(PARAMS)
    assert 5500 < centre < 6400
