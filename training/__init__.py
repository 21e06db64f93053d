"""auscult training: datasets, autoencoder, ONNX export, calibration, evaluation.

May import `service.features` and `service.models.bundle` (the contracts); the service never
imports this package.
"""
