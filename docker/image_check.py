"""Build-time check of the service image's Python closure (docker/service.Dockerfile).

Run after the slimming steps (stripped shared objects, no pip/setuptools, no test
suites): every compiled library the service loads must still import and work, so a
removal that broke one fails the build, not the first request. Then it starts the
server (`python -m service`, two workers, no bundles) and sends it a few requests.
Run with bytecode writing on after the venv's __pycache__ folders were emptied, it
leaves .pyc files for exactly the modules the service imports. docker/smoke.sh then
scores a clip through the running container with a real model.
"""

from __future__ import annotations

import importlib.util
import io
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import wave

import numpy as np


def main() -> None:
    # the app and the CLI entry point, with everything they import at start-up; then
    # the log-mel path: soxr resampling, scipy.fft, scipy.sparse, PIL resizing
    import soxr

    import service.__main__
    import service.app  # noqa: F401
    from service import features

    rate = 22050
    t = np.arange(rate * 2) / rate
    audio = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    audio = soxr.resample(audio, rate, 16000)
    params = features.FeatureParams()
    image = features.audio_to_image(audio, 16000, params)
    assert image.shape == (params.height, params.width) and np.isfinite(image).all(), image.shape
    # PNG out and back in (PIL's zlib and PNG codecs)
    back = features.decode_image(features.image_to_png(image), params)
    assert back.shape == image.shape, back.shape

    # soundfile's bundled libsndfile reads a WAV
    import soundfile

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((audio * 20000).astype("<i2").tobytes())
    data, sr = soundfile.read(io.BytesIO(buf.getvalue()), dtype="float32")
    assert sr == 16000 and len(data) == len(audio), (sr, len(data))

    # onnxruntime's native library loads; numpy and scipy's BLAS answer
    import onnxruntime
    import scipy.linalg  # noqa: F401  (not used by the service; proves scipy's BLAS loads)

    assert "CPUExecutionProvider" in onnxruntime.get_available_providers()
    m = np.arange(16.0).reshape(4, 4) + np.eye(4) * 10
    assert np.allclose(np.linalg.inv(m) @ m, np.eye(4))

    # the server's compiled parts
    import httptools  # noqa: F401
    import pydantic_core  # noqa: F401
    import uvloop  # noqa: F401

    # nothing the service image must not have
    for name in ("tensorflow", "keras", "librosa", "numba", "llvmlite", "pip", "setuptools"):
        assert importlib.util.find_spec(name) is None, f"{name} must not be in the service image"
    serve_briefly()
    print("image check: ok", file=sys.stderr)


def _get(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def serve_briefly() -> None:
    """The server starts with two workers and answers; stopped with SIGTERM."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as empty:
        env = dict(os.environ, AUSCULT_ARTIFACTS_DIR=empty, AUSCULT_WORKERS="2")
        log_path = os.path.join(empty, "server.log")
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            # both workers started (each logs "ready"), so SIGTERM below meets no start-up
            deadline = time.monotonic() + 90
            while _ready_workers(log_path) < 2:
                assert proc.poll() is None, f"the server exited with {proc.returncode}"
                assert time.monotonic() < deadline, "the two workers were not ready in 90 s"
                time.sleep(0.5)
            assert _get(f"{base}/healthz") == 200
            assert _get(f"{base}/readyz") == 503  # no bundle here
            assert _get(f"{base}/v1/models") == 200
            assert _get(f"{base}/metrics") == 200
            body = (
                b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                b"Content-Type: audio/wav\r\n\r\n" + b"RIFF" + b"\0" * 40 + b"\r\n--b--\r\n"
            )
            ctype = {"Content-Type": "multipart/form-data; boundary=b"}
            assert _get(f"{base}/v1/models/none/score", body, ctype) == 404
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, f"the server exited with {proc.returncode}"
        except BaseException:
            if proc.poll() is None:
                proc.kill()
            with open(log_path, errors="replace") as f:
                print(f.read()[-4000:], file=sys.stderr)
            raise


def _ready_workers(log_path: str) -> int:
    with open(log_path, errors="replace") as f:
        return sum('"event": "ready"' in line for line in f)


if __name__ == "__main__":
    main()
