"""The mel filterbank is computed without librosa, yet equals librosa's bit for bit."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from service.features import mel_filterbank
from tests.conftest import REPO


@pytest.mark.parametrize(
    ("sr", "n_fft", "n_mels", "fmin", "fmax"),
    [
        (16000, 1024, 64, 0.0, 8000.0),  # the default bundle
        (16000, 1024, 128, 0.0, None),
        (8000, 256, 32, 0.0, 4000.0),  # fit-classifier's default
        (8000, 128, 24, 0.0, 4000.0),  # the committed digits classifier (16-ms windows)
        (22050, 2048, 128, 20.0, 8000.0),
        (44100, 512, 40, 300.0, 11025.0),
        (16000, 400, 80, 50.0, 7600.0),
    ],
)
def test_mel_filterbank_equals_librosa(
    sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None
) -> None:
    librosa = pytest.importorskip("librosa")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "empty filters" for some narrow settings
        expected = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    got = mel_filterbank.__wrapped__(sr, n_fft, n_mels, fmin, fmax)
    assert got.dtype == np.float32 and got.shape == (n_mels, 1 + n_fft // 2)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_service_start_up_does_not_import_librosa() -> None:
    # librosa pulls numba and most of scipy: seconds of start-up and tens of MB the service
    # never uses (it imports scipy.fft for the float32 FFT and scipy.sparse for the mel
    # product: ~8 ms and ~1.5 MB together)
    code = (
        "import sys; from fastapi.testclient import TestClient;"
        "from service.app import create_app; from service.settings import Settings\n"
        "with TestClient(create_app(Settings(artifacts_dir='artifacts'))) as c:\n"
        "    assert c.get('/readyz').status_code == 200\n"
        "heavy = sorted({m for m in sys.modules if m.split('.')[0] in ('librosa', 'numba')}\n"
        "    | {m for m in sys.modules if m in ('scipy.signal', 'scipy.stats')})\n"
        "assert not heavy, heavy"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
