"""auscult training: datasets, autoencoder, ONNX export, calibration, evaluation.

May import `service.features` and `service.models.bundle` (the contracts); the service never
imports this package.
"""

import os

# Before anything imports TensorFlow: its C++ log lines below FATAL (the graph optimiser's
# "E0000 … NodeDef mentions attribute …" and "remapper failed" among them) say nothing a
# user can act on, and real failures still raise. TF_CPP_MIN_LOG_LEVEL=0 shows them again.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its start-up banner left out of stderr (the absl preamble and
    "oneDNN custom operations are on", printed by native code as it loads, before any
    setting applies); every other line it writes is passed on. Later imports are cached."""
    import re
    import sys
    import tempfile

    if "tensorflow" in sys.modules:
        return
    banner = re.compile(r"absl::InitializeLog\(\)|oneDNN custom operations are on")
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(keepends=True):
                if not banner.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()
