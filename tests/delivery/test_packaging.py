"""The service install must not pull TensorFlow, and the service must not import it."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata

from tests.conftest import REPO

HEAVY = {"tensorflow", "tensorflow-cpu", "keras", "tf2onnx", "tf-keras", "torch"}
UNUSED = {"librosa", "numba", "llvmlite", "matplotlib", "sklearn", "scikit-learn"}


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _closure(requirements: list[str]) -> set[str]:
    """Names of every distribution the requirements pull in, from installed metadata."""
    seen: set[str] = set()
    todo = [r for r in requirements if "extra ==" not in r]
    while todo:
        name = _name(todo.pop())
        if name in seen or name == "auscult":
            continue
        seen.add(name)
        try:
            todo += [r for r in metadata.requires(name) or [] if "extra ==" not in r]
        except metadata.PackageNotFoundError:
            continue
    return seen


def test_serve_extra_does_not_pull_tensorflow() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    serve = project["dependencies"] + project["optional-dependencies"]["serve"]
    deps = _closure(serve)
    assert {"onnxruntime", "fastapi", "soundfile", "soxr", "scipy", "pillow"} <= deps
    assert not deps & HEAVY, deps & HEAVY
    # nothing the service does not import: librosa brought numba and llvmlite (~300 MB)
    assert not deps & UNUSED, deps & UNUSED


def test_service_imports_none_of_what_the_serve_extra_left_out() -> None:
    code = (
        "import sys; from service.app import create_app; from service.settings import Settings;"
        "app = create_app(Settings(artifacts_dir='artifacts'));"
        "from fastapi.testclient import TestClient\n"
        "import io, numpy as np, soundfile as sf; buf = io.BytesIO()\n"
        "sf.write(buf, np.sin(np.arange(16000) / 5.0) * 0.3, 16000, format='WAV')\n"
        "with TestClient(app) as c:\n"
        "    r = c.post('/v1/models/gearbox/score', files={'file': ('a.wav', buf.getvalue())})\n"
        "    assert r.status_code == 200, r.text\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {sorted(UNUSED)!r}]\n"
        "assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]


def test_train_extra_is_where_tensorflow_lives() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "tensorflow-cpu" in {_name(r) for r in project["optional-dependencies"]["train"]}


def test_service_imports_neither_tensorflow_nor_training() -> None:
    code = (
        "import sys; from service.app import create_app; from service.settings import Settings;"
        "app = create_app(Settings(artifacts_dir='artifacts'));"
        "from fastapi.testclient import TestClient\n"
        "with TestClient(app) as c: assert c.get('/readyz').status_code in (200, 503)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'training',"
        " 'tf2onnx')]\n"
        "assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
