"""Shared fixtures: generated audio, a tiny real bundle, the app with its lifespan run."""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from service.observability import flush_logs, stop_logging

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
ARTIFACTS = REPO / "artifacts"


def shared_data(name: str) -> Path:
    """A folder of ../shared/data, or skip the test when it is absent (a user's clone)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real-audio data {path} is not available")
    return path


def wav_bytes(
    samples: np.ndarray, sr: int = 16000, subtype: str = "PCM_16", fmt: str = "WAV"
) -> bytes:
    """(n,) or (n, channels) float array → encoded audio bytes."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def tone(seconds: float = 1.0, freq: float = 440.0, sr: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(
        np.float32
    )


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic DCASE-2021-layout dataset (generated, seeded)."""
    from training.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, seed=1, seconds=1.0, n_train=16, n_train_target=2, n_test=4)
    return out


@pytest.fixture(scope="session")
def tiny_bundle(synth_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real anomaly bundle fitted by the training package with a tiny network."""
    from service.features import FeatureParams
    from training.anomaly.autoencoder import AutoencoderConfig
    from training.anomaly.fit import fit

    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    cfg = AutoencoderConfig(filters=(4, 8, 8), latent_dim=8, epochs=3, batch_size=8, seed=0)
    fit(synth_dir, out, cfg, FeatureParams(height=32, n_mels=32, width=32))
    return out


@pytest.fixture
def artifacts_dir(tiny_bundle: Path, tmp_path: Path) -> Path:
    """An artifacts folder holding a copy of the tiny bundle (tests may break it)."""
    root = tmp_path / "artifacts"
    shutil.copytree(tiny_bundle, root / "tiny")
    return root


@pytest.fixture
def settings_factory(artifacts_dir: Path):  # type: ignore[no-untyped-def]
    from service.settings import Settings

    def make(**overrides: object) -> Settings:
        return Settings(artifacts_dir=artifacts_dir, **overrides)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def client(settings_factory) -> AsyncIterator:  # type: ignore[no-untyped-def]
    """An async client on the app with the lifespan run (bundles loaded)."""
    import httpx
    from asgi_lifespan import LifespanManager

    from service.app import create_app

    app = create_app(settings_factory())
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key in list(os.environ):
        if key.startswith("AUSCULT_"):
            monkeypatch.delenv(key)
    yield


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture[str]) -> Iterator[Callable[[], list[dict]]]:
    """Reads the service's log lines (each must be JSON) written to stdout so far.

    Build the app inside the test: logging binds the stdout of the moment.
    """

    def read() -> list[dict]:
        flush_logs()  # lines are written by a background thread
        return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]

    yield read
    stop_logging()  # its stream was capsys's, now closed
    logging.getLogger("auscult").handlers.clear()
