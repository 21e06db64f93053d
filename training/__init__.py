"""auscult training: datasets, autoencoder, ONNX export, calibration, evaluation.

May import `service.features` and `service.models.bundle` (the contracts); the service never
imports this package.
"""

import os

# Before anything imports TensorFlow: its C++ log lines below FATAL (the graph optimiser's
# "E0000 … NodeDef mentions attribute …" and "remapper failed" among them) say nothing a
# user can act on, and real failures still raise. TF_CPP_MIN_LOG_LEVEL=0 shows them again.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
